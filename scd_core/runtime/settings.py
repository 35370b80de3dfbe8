"""Runtime settings: the job-runtime part of :func:`scd_core.config.settings`, with ``auto`` values
resolved for this machine.

- ``SCD_EXECUTOR``: executor backend of the workers (``local`` or ``ray``);
- ``SCD_WORKERS``: worker processes training at once; auto: one per GPU (each its own device), else 1
  (on CPUs one worker with every core trains as fast as several that split them, and leaves the UI's
  process responsive);
- ``SCD_TORCH_THREADS``: torch threads per worker; auto: (CPU cores - 1) / workers, at least 1;
- ``SCD_SESSION_MAX_RUNNING``: running jobs per session; auto: workers - 1, at least 1;
- ``SCD_SESSION_TTL_S``: idle seconds after which a session and its files are deleted (7 days).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from scd_core.config import settings as config_settings


@dataclass(frozen=True)
class RuntimeSettings:
    executor: str
    workers: int
    torch_threads: int
    session_max_running: int
    session_ttl_s: float


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def read_settings() -> RuntimeSettings:
    """The runtime settings of the current environment (a bad value is an ScdError naming the variable)."""
    config = config_settings()
    workers = config.workers or max(1, _gpus())
    # one core stays with the server: workers whose OpenMP threads compete with the UI's reruns spin at every
    # barrier (a 30-step run took 43x longer with 2 threads on 2 cores while its page was watched, 1.06x with 1)
    threads = config.torch_threads or max(1, ((os.cpu_count() or 1) - 1) // workers)
    limit = config.session_max_running or max(1, workers - 1)
    return RuntimeSettings(config.executor, workers, threads, limit, config.session_ttl_s)


def settings() -> RuntimeSettings:
    """The settings of this process."""
    return read_settings()
