"""The Ray backend of the executor interface (an optional extra: ``pip install -r requirements-ray.txt``).

:class:`RayExecutor` connects to the cluster at ``RAY_ADDRESS`` when that is set (the Ray convention)
and otherwise starts a local Ray instance with a small CPU count. Each :meth:`submit` is one Ray task:
it asks for one CPU, and for one GPU when the cluster has GPUs (unless the caller's
:class:`~scd_core.runtime.executors.Resources` says otherwise). A task whose worker process died
(killed, out of memory, node lost) makes its future raise :class:`WorkerLost`, so
:meth:`Executor.map` retries it once and then reports it by name; Ray's own retries are off so that
there is exactly one retry policy. Per-task progress: each task's future completes on its own, and
:meth:`Executor.map` reports every outcome as it arrives.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import ray
from ray import exceptions as ray_exceptions

from scd_core.errors import ScdError
from scd_core.runtime.executors import Executor, Resources, WorkerLost, _init_worker

__all__ = ["RayExecutor"]
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the scd_core package

# Exceptions that mean the worker (or its node) went away, not that the task itself failed.
_LOST = tuple(getattr(ray_exceptions, name) for name in (
    "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError", "ActorDiedError",
    "ObjectLostError", "OwnerDiedError") if hasattr(ray_exceptions, name))


def _call(fn: Callable[..., Any], torch_threads: int, args: tuple, kwargs: dict) -> Any:
    """Inside the Ray worker: pin torch's threads to the task's CPUs, then run the task."""
    _init_worker(torch_threads)
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """Ray tasks on the cluster at ``address`` (default ``RAY_ADDRESS``) or on a local instance.

    ``num_cpus`` sizes a local instance (default: 2, or the machine's count when smaller); it is
    ignored when connecting to a cluster. ``cpus_per_task`` is the torch thread count of a task and
    its CPU request, which bounds how many tasks run at once on a node.
    """

    name: ClassVar[str] = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1,
                 object_store_memory: int = 256 << 20) -> None:
        if cpus_per_task < 1:
            raise ScdError("ray executor: cpus_per_task must be >= 1")
        from scd_core.config import settings, worker_environment

        self.address = address if address is not None else settings().ray_address
        self.cpus_per_task = int(cpus_per_task)
        self._started_here = False
        self._lock = threading.Lock()
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
                else:
                    cpus = num_cpus if num_cpus is not None else min(2, os.cpu_count() or 1)
                    # the workers of a local instance see this process's settings (cache, workspace)
                    # and import this copy of the project
                    env = worker_environment(_PROJECT_ROOT)
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                             object_store_memory=object_store_memory, runtime_env={"env_vars": env})
                    self._started_here = True
            except ConnectionError as exc:
                raise ScdError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from exc
        self._remote = ray.remote(max_retries=0)(_call)
        self._gpus = float(ray.cluster_resources().get("GPU", 0.0))

    def _options(self, resources: Resources | None) -> dict[str, Any]:
        if resources is not None:
            return {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
        return {"num_cpus": self.cpus_per_task, "num_gpus": 1 if self._gpus >= 1 else 0}

    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources | None = None,
               **kwargs: Any) -> cf.Future:
        threads = max(1, int(resources.cpus)) if resources is not None else self.cpus_per_task
        ref = self._remote.options(**self._options(resources)).remote(fn, threads, args, kwargs)
        outer: cf.Future = cf.Future()

        def relay(inner: cf.Future) -> None:
            try:
                outer.set_result(inner.result())
            except ray_exceptions.RayTaskError as exc:  # the task's own exception: hand it over as raised
                cause = getattr(exc, "cause", None)
                outer.set_exception(cause if isinstance(cause, BaseException) else exc)
            except _LOST as exc:
                outer.set_exception(WorkerLost(_first_line(exc)))
            except BaseException as exc:
                outer.set_exception(exc)

        ref.future().add_done_callback(relay)
        return outer

    def describe(self) -> dict[str, Any]:
        total = ray.cluster_resources()
        free = ray.available_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {
            "executor": self.name,
            "address": self.address or "local instance",
            "nodes": len(nodes),
            "workers": int(total.get("CPU", 0) // self.cpus_per_task),
            "cpus": float(total.get("CPU", 0.0)),
            "gpus": float(total.get("GPU", 0.0)),
            "free_cpus": float(free.get("CPU", 0.0)),
            "free_gpus": float(free.get("GPU", 0.0)),
            "memory_gib": round(float(total.get("memory", 0.0)) / 2**30, 1),
        }

    def shutdown(self) -> None:
        """Disconnect; a local instance started by this executor is stopped."""
        if self._started_here and ray.is_initialized():
            ray.shutdown()
            self._started_here = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
