"""Module-level task functions for executor tests (workers import them by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x


def die_once(arg: tuple[int, str]) -> int:
    """Kill the own worker with SIGKILL the first time (a marker file remembers), succeed the second."""
    x, marker_dir = arg
    marker = Path(marker_dir) / f"died-{x}"
    if x == 1 and not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def always_die(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def main_module_file() -> str | None:
    """What the worker imported as its ``__main__`` (None when nothing)."""
    import sys

    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    return getattr(main, "__file__", None)


def report_pid_and_sleep(path: str) -> int:
    """Write the worker's pid to ``path``, then sleep far longer than any test waits."""
    import time

    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)  # atomically: the test never reads a half-written pid
    time.sleep(120)
    return 0
