"""Jobs that outlive a page, a browser tab and the server: the dispatcher and the job helpers.

Jobs live in the :class:`~scd_core.runtime.store.JobStore`. A page queues a job (a row) and from
then on only reads the store. One :class:`Dispatcher` per server process (a thread, started lazily)
takes queued jobs in the store's fair order and submits :func:`scd_core.runtime.worker.run_job` to
worker processes through the executor interface (:func:`scd_core.runtime.executors.get_executor`).
The worker writes progress and the outcome to the store itself, so no rerun of the UI touches a
training loop and a job's speed does not depend on which page is open.

- **Slots.** ``workers`` training slots, each an executor of one worker process (one device each
  when there are several GPUs), and one service slot for demo-world builds, which every page may
  wait for and which must not queue behind long runs. A slot of its own per worker means a worker
  that dies (SIGKILL, out of memory) takes no other job with it. A background slot (its worker started
  only when needed) builds the demo worlds nobody waits for yet: a background job starts only while no
  training or service job is queued or running, and its worker runs at the lowest CPU priority, so it
  never delays a user's own jobs. A page that comes to need it moves a queued one to the service lane
  (:meth:`JobStore.promote`).
- **Fairness.** Round-robin between sessions (:meth:`JobStore.queue`), and at most
  ``session_max_running`` running jobs per session.
- **Cancel.** The worker stops at the next optimizer step after its watcher sees the flag; a worker
  that has not ended ``cancel_grace_s`` after the request (busy decoding images or in a teacher's
  forward pass) is killed, and its staging folder removed.
- **Faults.** A worker that died is recorded as failed with the reason and its staging folder is
  removed (if it died after publishing its run, the run counts as finished). Running jobs whose worker
  is gone, e.g. the server was killed, are marked interrupted when a dispatcher starts, with their
  history kept; :meth:`JobStore.restart` queues them again.
- **Sessions.** Every ``sweep_s`` seconds, sessions idle for ``session_ttl_s`` with no active job are
  deleted with their files.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scd_core.errors import ScdError
from scd_core.runtime.executors import Executor, WorkerLost, get_executor
from scd_core.runtime.settings import RuntimeSettings, settings
from scd_core.runtime.store import (
    ACTIVE_STATES,
    SHARED_SESSION,
    TERMINAL_STATES,
    JobSnapshot,
    JobStatus,
    JobStore,
    QueueSlot,
    store_path,
)
from scd_core.runtime.worker import run_job, staging_dir, teacher_spec_to_json, warm_up

__all__ = [
    "ACTIVE_STATES",
    "BACKGROUND",
    "SHARED_SESSION",
    "TERMINAL_STATES",
    "Dispatcher",
    "JobSnapshot",
    "JobStatus",
    "JobStore",
    "QueueSlot",
    "default_dispatcher",
    "default_store",
    "demo_build_key",
    "submit_demo_build",
    "submit_distill",
    "submit_validate",
]

LOGGER = logging.getLogger(__name__)
BACKGROUND = "background"
"""The lane of low-priority jobs (demo worlds built ahead of need)."""


@dataclass
class _Slot:
    lane: str
    index: int
    factory: Callable[[], Executor]
    executor: Executor | None = None
    job_id: str | None = None
    future: cf.Future | None = None
    killed_for_cancel: bool = False
    cancel_seen: float | None = None

    def ensure(self) -> Executor:
        if self.executor is None:
            self.executor = self.factory()
        return self.executor


@dataclass
class Dispatcher:
    """Takes queued jobs from ``store`` and runs them in worker processes (see the module doc)."""

    store: JobStore
    config: RuntimeSettings = field(default_factory=settings)
    poll_s: float = 0.1
    stale_s: float = 30.0
    cancel_grace_s: float = 1.0
    sweep_s: float = 300.0
    on_session_expired: Callable[[str], None] | None = None
    warm: bool = True

    def __post_init__(self) -> None:
        def factory() -> Executor:
            if self.config.executor == "local":  # one process per slot, so a dying worker takes only its job
                # the server's __main__ is whichever page runs: workers must not import it
                return get_executor("local", workers=1, torch_threads=self.config.torch_threads, import_main=False)
            return get_executor(self.config.executor, cpus_per_task=self.config.torch_threads)

        self.slots = [_Slot("train", i, factory) for i in range(self.config.workers)]
        self.slots.append(_Slot("service", 0, factory))
        self.slots.append(_Slot(BACKGROUND, 0, factory))
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self._last_sweep = 0.0
        self._last_stale = 0.0

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> Dispatcher:
        with self._lock:
            if self._thread is None:
                self.recover()
                if self.warm:  # start the workers now: the first run does not wait for torch to import
                    for slot in self.slots:
                        if slot.lane == BACKGROUND:  # started on first use: most servers never need it
                            continue
                        with contextlib.suppress(Exception):
                            slot.ensure().submit(warm_up)
                self._thread = threading.Thread(target=self._loop, name="scd-dispatcher", daemon=True)
                self._thread.start()
        return self

    def kick(self) -> None:
        """Look at the queue now (after a submit or a cancel) instead of at the next poll."""
        self._kick.set()

    def shutdown(self) -> None:
        """Stop dispatching; running jobs are recorded as interrupted and their workers ended."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(5.0)
        for slot in self.slots:
            if slot.job_id is not None:
                self.store.finish(slot.job_id, JobStatus.INTERRUPTED,
                                  error="the server stopped while this job ran; restart it to run it again")
                job = self.store.get(slot.job_id, history=False)
                if job is not None:
                    self._kill_worker(job)
                    self._remove_staging(job)
            if slot.executor is not None:
                with contextlib.suppress(Exception):
                    slot.executor.shutdown()
                slot.executor = None

    def recover(self) -> list[str]:
        """Mark running jobs whose worker is gone as interrupted and clean their staging folders."""
        gone = self.store.interrupt_stale(stale_s=self.stale_s, host=self._host, alive=_pid_alive)
        for job_id in gone:
            job = self.store.get(job_id, history=False)
            if job is not None:
                self._remove_staging(job)
        if gone:
            LOGGER.warning("marked %d job(s) as interrupted: %s", len(gone), ", ".join(gone))
        return gone

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the loop must survive a locked store or a bug in one job's bookkeeping
                LOGGER.error("dispatcher step failed:\n%s", traceback.format_exc())
            self._kick.wait(self.poll_s)
            self._kick.clear()

    def step(self) -> None:
        """One pass: settle ended jobs, enforce cancels, start queued jobs, housekeeping."""
        for slot in self.slots:
            if slot.future is not None and slot.future.done():
                self._settle(slot)
        self._enforce_cancels()
        for lane in ("service", "train", BACKGROUND):
            free = [s for s in self.slots if s.lane == lane and s.job_id is None]
            if not free:
                continue
            queued = self.store.queue(lane)
            if lane == BACKGROUND and queued and self._foreground_busy():
                continue  # background work waits for every user's queue to empty
            for job, _ in queued:
                if not free:
                    break
                if lane == "train" and self.store.running_count(lane, job.session) >= self.config.session_max_running:
                    continue
                if self.store.claim(job.id, f"{self._host}:{os.getpid()}"):
                    self._submit(free.pop(0), job)
        now = time.monotonic()
        if now - self._last_stale > max(5.0, self.stale_s / 3):
            self._last_stale = now
            mine = [s.job_id for s in self.slots if s.job_id]
            for job_id in self.store.interrupt_stale(stale_s=self.stale_s, host=self._host, alive=_pid_alive,
                                                     skip=mine):
                LOGGER.warning("job %s lost its worker (another server's, which stopped): interrupted", job_id)
        if self.on_session_expired is not None and now - self._last_sweep > self.sweep_s:
            self._last_sweep = now
            self.sweep_sessions()

    def _foreground_busy(self) -> bool:
        """Whether any training or service job is queued or running (background jobs wait for that)."""
        return self.store.any_active(("service", "train"))

    def _submit(self, slot: _Slot, job: JobSnapshot) -> None:
        slot.job_id, slot.killed_for_cancel, slot.cancel_seen = job.id, False, None
        try:
            slot.future = slot.ensure().submit(run_job, str(self.store.path), job.id, slot.index)
        except Exception as exc:
            slot.job_id, slot.future = None, None
            self.store.finish(job.id, JobStatus.FAILED, error=f"no worker could take this job ({exc})")

    def _settle(self, slot: _Slot) -> None:
        job_id, future = slot.job_id, slot.future
        slot.job_id, slot.future = None, None
        if job_id is None or future is None:
            return
        try:
            future.result()
        except WorkerLost as exc:
            slot.executor = None  # the backend starts a fresh worker on the next submit
            self._worker_died(job_id, str(exc), cancelled=slot.killed_for_cancel)
        except Exception as exc:  # the task could not even start (e.g. unpicklable arguments)
            self.store.finish(job_id, JobStatus.FAILED, error=f"the worker could not run this job "
                                                              f"({type(exc).__name__}: {exc})")
        job = self.store.get(job_id, history=False)
        if job is not None and job.active:  # the worker returned without recording an outcome
            self.store.finish(job_id, JobStatus.FAILED, error="the worker ended without a result")

    def _worker_died(self, job_id: str, reason: str, *, cancelled: bool) -> None:
        job = self.store.get(job_id, history=False)
        if job is None or not job.active:
            return
        run_json = Path(job.artefacts.get("run_dir", "")) / "run.json" if job.artefacts.get("run_dir") else None
        if run_json is not None and run_json.is_file():  # died after publishing: the run is complete
            try:
                result = json.loads(run_json.read_text())
            except (OSError, ValueError):
                result = None
            if result is not None:
                status = JobStatus.CANCELLED if result.get("status") == "cancelled" else JobStatus.FINISHED
                self.store.finish(job_id, status, result=result)
                return
        self._remove_staging(job)
        if cancelled:
            self.store.finish(job_id, JobStatus.CANCELLED, message="cancelled (worker stopped)")
            return
        phase = job.message or "its work"
        self.store.finish(job_id, JobStatus.FAILED,
                          error=f"the worker process died during '{phase}' (killed by a signal or out of "
                                f"memory: {reason}); nothing of this run was kept")

    def _enforce_cancels(self) -> None:
        now = time.time()
        for slot in self.slots:
            if slot.job_id is None or slot.killed_for_cancel:
                continue
            job = self.store.get(slot.job_id, history=False)
            if job is None or job.status != JobStatus.CANCELLING:
                continue
            if slot.cancel_seen is None:
                slot.cancel_seen = now
                continue
            if now - slot.cancel_seen > self.cancel_grace_s and self._kill_worker(job):
                slot.killed_for_cancel = True

    def _kill_worker(self, job: JobSnapshot) -> bool:
        """SIGKILL the job's worker when it is a child of this process on this host."""
        pid = job.worker_pid
        if not pid or job.worker_host != self._host or not _is_child(pid):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            return True
        return False

    @staticmethod
    def _remove_staging(job: JobSnapshot) -> None:
        staging = job.artefacts.get("staging") or (str(staging_dir(job.params["run_dir"]))
                                                   if job.params.get("run_dir") else None)
        if staging and Path(staging).name.startswith(".staging-"):
            shutil.rmtree(staging, ignore_errors=True)

    def sweep_sessions(self, now: float | None = None) -> list[str]:
        """Delete sessions idle for ``session_ttl_s`` (no active job) and, through the hook, their files."""
        expired = self.store.expired_sessions(self.config.session_ttl_s, now)
        for session in expired:
            try:
                if self.on_session_expired is not None:
                    self.on_session_expired(session)
                self.store.delete_session(session)
            except Exception:
                LOGGER.warning("could not expire session %s:\n%s", session, traceback.format_exc())
        return expired


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    return True


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process (never signal a pid that was reused by a stranger)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------
# The process-wide store and dispatcher
# ------------------------------------------------------------------------------------------------

_STORES: dict[Path, JobStore] = {}
_DISPATCHERS: dict[Path, Dispatcher] = {}
_DEFAULT_LOCK = threading.Lock()


def default_store() -> JobStore:
    """The store of the current workspace (one per process and workspace)."""
    path = store_path()
    with _DEFAULT_LOCK:
        if path not in _STORES:
            _STORES[path] = JobStore(path)
        return _STORES[path]


def default_dispatcher() -> Dispatcher:
    """The dispatcher of this server process for the current workspace, started on first use."""
    store = default_store()
    with _DEFAULT_LOCK:
        dispatcher = _DISPATCHERS.get(store.path)
        if dispatcher is None:
            from scd_core.runtime.session import remove_session

            dispatcher = Dispatcher(store, on_session_expired=remove_session)
            _DISPATCHERS[store.path] = dispatcher
            if len(_DISPATCHERS) == 1:
                _at_exit(_shutdown_all)
    return dispatcher.start()


def _at_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the interpreter exits, before concurrent.futures joins its worker pools.

    Those joins wait for running tasks, so a server stopped with SIGTERM would otherwise wait for its
    training runs to end; hooks registered later with ``threading._register_atexit`` run first.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading atexit hook")
        register(fn)
    except RuntimeError:  # already shutting down, or another Python: the plain hook
        atexit.register(fn)


def _shutdown_all() -> None:
    for dispatcher in list(_DISPATCHERS.values()):
        with contextlib.suppress(Exception):
            dispatcher.shutdown()


# ------------------------------------------------------------------------------------------------
# Queuing the job kinds
# ------------------------------------------------------------------------------------------------


def submit_distill(store: JobStore, session: str, *, target: str, extract_dir: str | None, teacher,
                   config, run_dir: str | Path, label: str, meta: dict | None = None, target_name: str | None = None,
                   max_active: int | None = 64, fold: tuple[int, int] | None = None) -> str:
    """Queue a distillation run (:func:`scd_core.distill.trainer.distill`) of ``session``; returns its id.

    ``target`` is the target set's source (``demo:WORLD``, a folder, a .zip with its ``extract_dir``),
    ``teacher`` a :class:`~scd_core.teachers.repository.TeacherSpec` or None, ``config`` a
    :class:`~scd_core.distill.trainer.DistillConfig`. The run is published in ``run_dir``. ``fold`` =
    ``(k, i)`` trains on the other folds of a k-fold re-split of the labeled train + val images and
    validates on fold ``i`` (:func:`scd_core.distill.compare.kfold_targets`, seeded by the run's seed 0).
    """
    from dataclasses import asdict

    params = {"target": target, "extract_dir": extract_dir, "target_name": target_name,
              "teacher": teacher_spec_to_json(teacher), "config": asdict(config), "run_dir": str(run_dir)}
    if fold is not None:
        k, index = fold
        if not 0 <= index < k:
            raise ScdError(f"fold {index} of {k}: the fold index must be in 0..{k - 1}")
        params["fold"] = {"k": int(k), "index": int(index), "seed": 0}
    return store.submit(session, "distill", label, params=params, meta=meta, max_active=max_active)


def submit_validate(store: JobStore, session: str, *, target: str, extract_dir: str | None, teachers,
                    config, metrics, seeds: int, top: int | None, label: str, meta: dict | None = None,
                    target_name: str | None = None) -> str:
    """Queue a check of the ranking (:func:`scd_core.assess.validate.validate`) of ``session``.

    ``teachers`` are the :class:`~scd_core.teachers.repository.TeacherSpec` to check, ``config`` the
    students' :class:`~scd_core.distill.trainer.DistillConfig`; the report is the job's result.
    """
    from dataclasses import asdict

    params = {"target": target, "extract_dir": extract_dir, "target_name": target_name,
              "teachers": [teacher_spec_to_json(t) for t in teachers], "config": asdict(config),
              "metrics": list(metrics) if metrics else None, "seeds": int(seeds), "top": top}
    return store.submit(session, "validate", label, params=params, meta=meta)


def demo_build_key(world: str, size: str | None = None) -> str:
    """The job key of the build of demo world ``world`` of ``size`` (one build however many ask for it)."""
    return f"demo:{world}:{size}"


def submit_demo_build(store: JobStore, world: str, size: str | None = None, *, background: bool = False) -> str:
    """Queue (or join) the build of demo world ``world``, shared by every session.

    ``background``: build it ahead of need, at low priority (see the module doc); otherwise somebody waits
    for it, and a queued background build of the same world is moved to the service lane.
    """
    key = demo_build_key(world, size)
    job_id = store.submit(SHARED_SESSION, "demo", f"demo world {world}", params={"world": world, "size": size},
                          key=key, lane=BACKGROUND if background else "service")
    if not background:
        store.promote(job_id, "service")
    return job_id
