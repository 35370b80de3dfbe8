"""Runtime settings: read from the environment once, validated, with defaults that fit the machine.

=========================  ==========================================================  ===============
variable                   meaning                                                     default
=========================  ==========================================================  ===============
``SCD_EXECUTOR``           executor backend of the job workers (``local``, ``ray``)     ``local``
``SCD_WORKERS``            worker processes running training jobs at once               GPUs, else 1
``SCD_TORCH_THREADS``      torch threads per worker                                    cores / workers
``SCD_SESSION_MAX_RUNNING``  running jobs one session may hold                          workers - 1 (>= 1)
``SCD_SESSION_TTL_S``      idle seconds after which a session and its files go           604800 (7 days)
=========================  ==========================================================  ===============

A bad value is an :class:`~scd_core.errors.ScdError` naming the variable and what it accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from scd_core.errors import ScdError


@dataclass(frozen=True)
class RuntimeSettings:
    executor: str
    workers: int
    torch_threads: int
    session_max_running: int
    session_ttl_s: float


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ScdError(f"{name}={raw!r}: expected a whole number >= {minimum}") from None
    if value < minimum:
        raise ScdError(f"{name}={raw!r}: expected a whole number >= {minimum}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ScdError(f"{name}={raw!r}: expected a number >= {minimum}") from None
    if not value >= minimum:
        raise ScdError(f"{name}={raw!r}: expected a number >= {minimum}")
    return value


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - torch always imports in this project
        return 0


def read_settings() -> RuntimeSettings:
    """The settings as the environment gives them now (see the module table)."""
    executor = os.environ.get("SCD_EXECUTOR", "").strip() or "local"
    if executor not in ("local", "ray"):
        raise ScdError(f"SCD_EXECUTOR={executor!r}: expected local or ray")
    cores = os.cpu_count() or 1
    gpus = _gpus()
    # one worker per GPU (each its own device); on CPUs one worker with every core beats several
    # that split them, and leaves the UI process responsive
    workers = _int("SCD_WORKERS", max(1, gpus))
    threads = _int("SCD_TORCH_THREADS", max(1, cores // workers))
    limit = _int("SCD_SESSION_MAX_RUNNING", max(1, workers - 1))
    ttl = _float("SCD_SESSION_TTL_S", 7 * 24 * 3600.0, minimum=1.0)
    return RuntimeSettings(executor, workers, threads, limit, ttl)


@lru_cache(maxsize=1)
def settings() -> RuntimeSettings:
    """The settings of this process, read once."""
    return read_settings()
