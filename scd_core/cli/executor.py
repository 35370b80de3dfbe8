"""``--executor local|ray`` and ``--workers`` for the commands that fan out (rank, validate, distill)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from scd_core.config import EXECUTOR_NAMES
from scd_core.runtime.executors import Executor, get_executor


def add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=EXECUTOR_NAMES,
                   help="run each teacher (each student) as a task: 'local' worker processes, or 'ray' on the "
                        "cluster at $RAY_ADDRESS (else a local Ray instance); default: all in this process")
    p.add_argument("--workers", type=int, default=2,
                   help="local: worker processes; ray: CPUs of a local Ray instance (ignored on a cluster)")


@contextlib.contextmanager
def open_executor(args: argparse.Namespace) -> Iterator[Executor | None]:
    """The executor the arguments ask for (None: in this process), shut down afterwards."""
    name = getattr(args, "executor", None)
    if not name:
        yield None
        return
    options = {"workers": args.workers} if name == "local" else {"num_cpus": args.workers}
    executor = get_executor(name, **options)
    try:
        yield executor
    finally:
        executor.shutdown()
