"""Executors: one interface for running work outside the calling process.

Every backend behaves alike and is found in one registry, resolved at one point
(:func:`get_executor`):

- ``local`` (the default, nothing to start): a pool of worker processes from the standard library
  (``spawn`` start method, so a worker never inherits the UI's threads or a CUDA context), each with
  a fixed number of torch threads;
- ``ray``: Ray tasks on the cluster at ``RAY_ADDRESS`` (the Ray convention) or on a local Ray
  instance (:mod:`scd_core.runtime.ray_executor`, an optional extra).

A task is a plain picklable function called with plain arguments; it runs in a worker and returns a
picklable result. :meth:`Executor.submit` returns a :class:`concurrent.futures.Future`, the one handle
both backends can give. :meth:`Executor.map` fans one function out over named items (one per teacher,
one per validation student), retries a task once when its worker died, and reports the others'
results even when one failed: a failure is a :class:`TaskOutcome` with the item's name and the reason.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import sys
import threading
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scd_core.errors import ScdError

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "Resources",
    "TaskOutcome",
    "WorkerLost",
    "get_executor",
    "register_executor",
]


class WorkerLost(RuntimeError):
    """The process running a task died (killed, out of memory) before it returned."""


@dataclass(frozen=True)
class Resources:
    """What one task asks for: CPU threads and GPUs (fractions allowed where the backend shares GPUs)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class TaskOutcome:
    """The end of one named task of :meth:`Executor.map`: its value, or why it failed."""

    name: str
    value: Any = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


ProgressFn = Callable[[int, int, TaskOutcome], None]  # (done, total, outcome just finished)


class Executor(ABC):
    """Runs picklable functions outside the calling process."""

    name: ClassVar[str]

    @abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources | None = None,
               **kwargs: Any) -> cf.Future:
        """Start ``fn(*args, **kwargs)`` in a worker; the future raises :class:`WorkerLost` if it died."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the backend has: ``{"executor", "workers", "cpus", "gpus", ...}`` for the UI and the logs."""

    def shutdown(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release workers and connections; the executor is unusable afterwards."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any], *, names: Sequence[str],
            resources: Resources | None = None, retries: int = 1,
            progress: ProgressFn | None = None) -> list[TaskOutcome]:
        """``fn(item)`` for every item, in parallel; outcomes in the order of ``items``.

        A task whose worker died is submitted again up to ``retries`` times; any other exception is
        the task's own failure and is not retried. Other tasks' results are kept either way.
        """
        if len(names) != len(items):
            raise ValueError("one name per item")
        outcomes: list[TaskOutcome | None] = [None] * len(items)
        attempts = [0] * len(items)
        pending: dict[cf.Future, int] = {}

        def start(i: int) -> None:
            attempts[i] += 1
            pending[self.submit(fn, items[i], resources=resources)] = i

        for i in range(len(items)):
            start(i)
        done = 0
        while pending:
            finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                i = pending.pop(future)
                try:
                    outcome = TaskOutcome(names[i], value=future.result(), attempts=attempts[i])
                except WorkerLost as exc:
                    if attempts[i] <= retries:
                        start(i)
                        continue
                    outcome = TaskOutcome(names[i], error=f"worker died ({exc})", attempts=attempts[i])
                except Exception as exc:  # the task's own error, reported by name
                    outcome = TaskOutcome(names[i], error=f"{type(exc).__name__}: {exc}", attempts=attempts[i])
                outcomes[i] = outcome
                done += 1
                if progress is not None:
                    progress(done, len(items), outcome)
        return [o for o in outcomes if o is not None]

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


PARENT_POLL_S = 0.5
ORPHAN_GRACE_S = 300.0  # how long a task that stops itself may take to record its interruption

_spawn_parent: int | None = None  # in a LocalExecutor worker: the pid of the process that started it
_stopping_itself = threading.Event()


def parent_gone() -> bool:
    """In a worker of :class:`LocalExecutor`: whether the process that started it has died (it was
    killed, not shut down). False in any other process."""
    return _spawn_parent is not None and os.getppid() != _spawn_parent


@contextlib.contextmanager
def stops_itself_when_orphaned() -> Iterator[None]:
    """Around a task that notices a dead parent itself and records its own interruption (a job of the
    app's runtime): the worker then waits for it, up to :data:`ORPHAN_GRACE_S`, before it exits."""
    _stopping_itself.set()
    try:
        yield
    finally:
        _stopping_itself.clear()


def _exit_with_parent() -> None:
    """Leave once the parent is gone: a pool whose parent was killed would otherwise run its queued tasks
    on, with no one to collect them (a task inside :func:`stops_itself_when_orphaned` finishes first)."""
    while not parent_gone():
        time.sleep(PARENT_POLL_S)
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while _stopping_itself.is_set() and time.monotonic() < deadline:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _init_worker(torch_threads: int, parent: int | None = None) -> None:
    """Worker start-up: pin torch's intra-op threads so several workers do not oversubscribe the cores,
    and, for a process-pool worker, watch ``parent`` (its pid is passed in: read here, a parent that died
    during start-up would be missed). A Ray worker (``parent`` None) lives as long as its cluster says."""
    global _spawn_parent
    if parent is not None and _spawn_parent is None:
        _spawn_parent = parent
        threading.Thread(target=_exit_with_parent, daemon=True, name="scd-parent-watch").start()
    os.environ["OMP_NUM_THREADS"] = str(torch_threads)
    import torch

    torch.set_num_threads(torch_threads)


_MAIN_SWAP = threading.Lock()


@contextlib.contextmanager
def _main_hidden(hide: bool) -> Iterator[None]:
    """While ``hide``, worker processes start with an empty ``__main__`` instead of importing the parent's.

    A spawned worker imports the parent's ``__main__`` by its file so that tasks defined there unpickle.
    In a Streamlit server ``__main__`` is whichever page is running at that moment, so a worker started
    then would execute the page: app code and a second dispatcher, in a process that needs nothing but
    the task's own module.
    """
    if not hide:
        yield
        return
    with _MAIN_SWAP:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")  # no file, no spec: nothing to import
        try:
            yield
        finally:
            sys.modules["__main__"] = main


@dataclass
class LocalExecutor(Executor):
    """Worker processes on this machine (``spawn``), ``workers`` at once, ``torch_threads`` each.

    ``import_main=False`` starts the workers without the parent's ``__main__`` (a server whose tasks live
    in importable modules); the default keeps it, so a script's own functions can be tasks.
    """

    workers: int = 1
    torch_threads: int = 1
    import_main: bool = True
    _pool: cf.ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    name: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.torch_threads < 1:
            raise ScdError("local executor: workers and torch_threads must be >= 1")

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.torch_threads, os.getpid()))
        return self._pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources | None = None,
               **kwargs: Any) -> cf.Future:
        with _main_hidden(not self.import_main):  # submit may start worker processes
            try:
                inner = self._ensure_pool().submit(fn, *args, **kwargs)
            except cf.process.BrokenProcessPool:  # an earlier worker death broke the pool: start a fresh one
                self._pool = None
                inner = self._ensure_pool().submit(fn, *args, **kwargs)
        outer: cf.Future = cf.Future()

        def relay(f: cf.Future) -> None:
            if f.cancelled():
                outer.cancel()
                return
            exc = f.exception()
            if isinstance(exc, cf.process.BrokenProcessPool):
                self._pool = None  # every task of a broken pool fails; the next submit starts a new one
                outer.set_exception(WorkerLost(str(exc) or "worker process ended abruptly"))
            elif exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(f.result())

        inner.add_done_callback(relay)
        return outer

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers, "torch_threads": self.torch_threads,
                "cpus": os.cpu_count() or 1, "gpus": _local_gpus()}

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


EXECUTORS: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make a backend available to :func:`get_executor` under ``name``."""
    EXECUTORS[name] = factory


def _ray_factory(**kwargs: Any) -> Executor:
    try:
        from scd_core.runtime.ray_executor import RayExecutor
    except ImportError as exc:
        raise ScdError("executor 'ray' needs the optional Ray extra: pip install -r requirements-ray.txt") from exc
    return RayExecutor(**kwargs)


register_executor("local", LocalExecutor)
register_executor("ray", _ray_factory)


def get_executor(name: str = "local", **options: Any) -> Executor:
    """The executor registered as ``name`` (``local`` or ``ray``), built with ``options``."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ScdError(f"unknown executor {name!r}; choose one of: {', '.join(sorted(EXECUTORS))}") from None
    return factory(**options)
