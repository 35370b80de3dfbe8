"""Background jobs (distillation runs, demo builds) that outlive a page visit, per browser session.

A :class:`JobManager` runs each job in a worker thread; at most ``max_workers`` run at once and the
rest wait in order. A job is a callable ``fn(report, cancel)``: it calls ``report(event_dict)`` with
progress (the trainer's progress events are understood as they are) and checks the
``threading.Event`` ``cancel``. The manager keeps each job's status, progress, message, per-epoch
history, result and error in a plain object behind a lock; readers get copies (:meth:`JobManager.jobs`),
so a UI can poll from any thread without touching the worker.

Jobs belong to a *session* (one browser session in the app): a session sees, cancels and forgets
only its own jobs. A session can register a liveness probe with :meth:`JobManager.touch`; a reaper
thread cancels the jobs of a session whose probe has said "gone" for ``grace_s`` seconds (the
browser was closed) and then calls the ``on_session_closed`` hooks (the app deletes the session's
uploads there). Nothing here imports streamlit.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scd_core.config import settings
from scd_core.errors import ScdError
from scd_core.progress import ProgressEvent

LOGGER = logging.getLogger(__name__)

QUEUED, RUNNING, CANCELLING = "queued", "running", "cancelling"
FINISHED, CANCELLED, FAILED = "finished", "cancelled", "failed"
ACTIVE_STATES = frozenset({QUEUED, RUNNING, CANCELLING})
TERMINAL_STATES = frozenset({FINISHED, CANCELLED, FAILED})
SHARED_SESSION = "__shared__"

Report = Callable[[dict], None]
JobFn = Callable[[Report, threading.Event], Any]


@dataclass
class Job:
    """One job's state; mutate only through :class:`JobManager` (it holds the lock)."""

    id: str
    session: str
    label: str
    kind: str
    fn: JobFn | None
    key: str | None = None
    meta: dict = field(default_factory=dict)
    status: str = QUEUED
    progress: float = 0.0
    message: str = "waiting for a worker"
    history: list[dict] = field(default_factory=list)
    last_event: dict = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    uses_slot: bool = True

    def snapshot(self) -> dict:
        """A copy safe to hand to another thread."""
        return {
            "id": self.id, "session": self.session, "label": self.label, "kind": self.kind, "key": self.key,
            "meta": dict(self.meta), "status": self.status, "progress": self.progress, "message": self.message,
            "history": [dict(h) for h in self.history], "last_event": dict(self.last_event),
            "result": self.result, "error": self.error, "created": self.created, "started": self.started,
            "ended": self.ended, "active": self.status in ACTIVE_STATES,
            "elapsed": ((self.ended or time.time()) - self.started) if self.started else 0.0,
        }


@dataclass
class _Session:
    alive: Callable[[], bool] | None = None
    dead_since: float | None = None
    last_touch: float = field(default_factory=time.time)


class JobManager:
    """Runs jobs in worker threads, at most ``max_workers`` at once, grouped by session."""

    def __init__(self, max_workers: int = 1, *, grace_s: float = 60.0, reap_interval_s: float = 5.0,
                 max_jobs_per_session: int = 64) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.grace_s = grace_s
        self.reap_interval_s = reap_interval_s
        self.max_jobs_per_session = max_jobs_per_session
        self._lock = threading.RLock()
        self._slots = threading.Semaphore(max_workers)
        self._jobs: dict[str, Job] = {}
        self._sessions: dict[str, _Session] = {}
        self._ids = itertools.count(1)
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_session_closed: list[Callable[[str], None]] = []

    # -- submitting ------------------------------------------------------------------------------
    def submit(self, session: str, fn: JobFn, *, label: str, kind: str = "task", meta: dict | None = None,
               key: str | None = None, uses_slot: bool = True) -> str:
        """Queue ``fn`` for ``session``; returns the job id.

        With a ``key``, an active job of the same session and key is reused instead of starting a
        second one (e.g. one build of a demo world however many pages ask for it). ``uses_slot=False``
        starts the job at once, outside the ``max_workers`` limit (short shared jobs such as demo builds).
        """
        with self._lock:
            if key is not None:
                for job in self._jobs.values():
                    if job.session == session and job.key == key and job.status in ACTIVE_STATES:
                        return job.id
            mine = [j for j in self._jobs.values() if j.session == session]
            if len([j for j in mine if j.status in ACTIVE_STATES]) >= self.max_jobs_per_session:
                raise ScdError(f"too many runs in progress (limit {self.max_jobs_per_session}); "
                               "wait for some to finish or cancel them")
            finished = sorted((j for j in mine if j.status in TERMINAL_STATES), key=lambda j: j.created)
            for old in finished[: max(0, len(mine) - 4 * self.max_jobs_per_session)]:
                del self._jobs[old.id]
            job_id = f"job{next(self._ids):04d}-{int(time.time() * 1000) % 100000:05d}"
            job = Job(id=job_id, session=session, label=label, kind=kind, fn=fn, key=key, meta=dict(meta or {}),
                      uses_slot=uses_slot)
            self._jobs[job_id] = job
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"scd-{job_id}", daemon=True)
            job.thread.start()
            return job_id

    def _run(self, job: Job) -> None:
        while job.uses_slot and not self._slots.acquire(timeout=0.1):
            if job.cancel_event.is_set():
                self._finish(job, CANCELLED, message="cancelled before it started")
                return
        try:
            with self._lock:
                if job.cancel_event.is_set():
                    self._finish(job, CANCELLED, message="cancelled before it started")
                    return
                job.status, job.started, job.message = RUNNING, time.time(), "starting"
            fn = job.fn
            try:
                result = fn(lambda event: self._report(job, event), job.cancel_event)
            except ScdError as exc:  # bad input or options: a readable message
                self._finish(job, FAILED, error=str(exc))
            except ValueError as exc:
                self._finish(job, FAILED, error=str(exc))
            except Exception as exc:  # a bug or resource problem: keep the traceback in the log
                LOGGER.error("job %s failed:\n%s", job.id, traceback.format_exc())
                self._finish(job, FAILED, error=f"{type(exc).__name__}: {exc}")
            else:
                status = CANCELLED if job.cancel_event.is_set() or _status_of(result) == CANCELLED else FINISHED
                self._finish(job, status, result=result)
        finally:
            if job.uses_slot:
                self._slots.release()

    def _finish(self, job: Job, status: str, *, result: Any = None, error: str | None = None,
                message: str | None = None) -> None:
        with self._lock:
            job.status, job.result, job.error, job.ended = status, result, error, time.time()
            job.fn = None  # drop references to data held by the closure (target sets, models)
            if status == FINISHED:
                job.progress = 1.0
            job.message = message or {FINISHED: "finished", CANCELLED: "cancelled", FAILED: error or "failed"}[status]

    def _report(self, job: Job, event: dict | ProgressEvent) -> None:
        """Fold one progress event into the job (trainer events: preparing, training, epoch, done)."""
        event = event.to_json() if isinstance(event, ProgressEvent) else dict(event)
        with self._lock:
            job.last_event = event
            if event.get("fraction") is not None:
                job.progress = float(min(1.0, max(0.0, event["fraction"])))
            elif event.get("steps"):
                job.progress = float(min(1.0, event.get("step", 0) / max(1, event["steps"])))
            phase = event.get("phase")
            if phase == "epoch":
                job.history.append({k: v for k, v in event.items()
                                    if k not in ("phase", "steps", "step", "message", "fraction")})
                loss, acc = event.get("train_loss", float("nan")), event.get("val_acc", float("nan"))
                job.message = f"epoch {event.get('epoch')}/{event.get('epochs')}: loss {loss:.4f}, val acc {acc:.1%}"
            elif phase == "training":
                job.message = f"epoch {event.get('epoch')}/{event.get('epochs')}: loss {event.get('loss', 0):.4f}"
            elif "message" in event:
                job.message = str(event["message"])
            if job.cancel_event.is_set():
                job.status = CANCELLING

    # -- reading ---------------------------------------------------------------------------------
    def jobs(self, session: str) -> list[dict]:
        """Snapshots of the session's jobs, oldest first."""
        with self._lock:
            return [j.snapshot() for j in sorted(self._jobs.values(), key=lambda j: j.created) if j.session == session]

    def get(self, session: str, job_id: str) -> dict | None:
        """A snapshot of one job of ``session`` (None for unknown ids and other sessions' jobs)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.snapshot() if job is not None and job.session == session else None

    def find(self, session: str, key: str) -> dict | None:
        """The newest job of ``session`` with ``key``."""
        with self._lock:
            matches = [j for j in self._jobs.values() if j.session == session and j.key == key]
            return max(matches, key=lambda j: j.created).snapshot() if matches else None

    def active(self, session: str) -> list[dict]:
        return [j for j in self.jobs(session) if j["active"]]

    def sessions(self) -> list[str]:
        with self._lock:
            return sorted({j.session for j in self._jobs.values()} | set(self._sessions))

    # -- controlling -----------------------------------------------------------------------------
    def cancel(self, session: str, job_id: str) -> bool:
        """Ask one job of ``session`` to stop; True when it was active."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.session != session or job.status not in ACTIVE_STATES:
                return False
            job.cancel_event.set()
            if job.status == RUNNING:
                job.status, job.message = CANCELLING, "cancelling"
            return True

    def cancel_session(self, session: str) -> int:
        """Cancel every active job of ``session``; returns how many were asked to stop."""
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.session == session and j.status in ACTIVE_STATES]
        return sum(self.cancel(session, i) for i in ids)

    def forget(self, session: str, job_id: str) -> bool:
        """Remove a finished, cancelled or failed job of ``session`` from the list."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.session != session or job.status not in TERMINAL_STATES:
                return False
            del self._jobs[job_id]
            return True

    def wait(self, session: str, job_id: str, timeout: float | None = None) -> dict | None:
        """Block until the job ends (or ``timeout``); returns its last snapshot."""
        with self._lock:
            job = self._jobs.get(job_id)
            thread = job.thread if job is not None and job.session == session else None
        if thread is not None:
            thread.join(timeout)
        return self.get(session, job_id)

    # -- sessions --------------------------------------------------------------------------------
    def touch(self, session: str, alive: Callable[[], bool] | None = None) -> None:
        """Register ``session`` (on every page run) with a probe telling whether its browser is still there."""
        with self._lock:
            state = self._sessions.setdefault(session, _Session())
            state.last_touch = time.time()
            if alive is not None:
                state.alive = alive
            if self._reaper is None and not self._stop.is_set():
                self._reaper = threading.Thread(target=self._reap_loop, name="scd-job-reaper", daemon=True)
                self._reaper.start()

    def reap(self, now: float | None = None) -> list[str]:
        """One reaper pass: cancel the jobs of sessions gone for ``grace_s``; returns the closed sessions."""
        now = time.time() if now is None else now
        with self._lock:
            items = list(self._sessions.items())
        closed = []
        for session, state in items:
            alive = True
            if state.alive is not None:
                try:
                    alive = bool(state.alive())
                except Exception:  # a probe that cannot tell keeps the session
                    alive = True
            if alive:
                state.dead_since = None
                continue
            if state.dead_since is None:
                state.dead_since = now
            if now - state.dead_since < self.grace_s:
                continue
            self.cancel_session(session)
            with self._lock:
                busy = any(j.session == session and j.status in ACTIVE_STATES for j in self._jobs.values())
                if busy:
                    continue  # close once its workers have stopped
                for job_id in [j.id for j in self._jobs.values() if j.session == session]:
                    del self._jobs[job_id]
                del self._sessions[session]
            closed.append(session)
            for hook in list(self.on_session_closed):
                try:
                    hook(session)
                except Exception:
                    LOGGER.warning("session-closed hook failed for %s:\n%s", session, traceback.format_exc())
        return closed

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.reap_interval_s):
            with contextlib.suppress(Exception):
                self.reap()

    def shutdown(self, wait: float = 5.0) -> None:
        """Cancel everything and stop the reaper (tests, process exit)."""
        self._stop.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
        deadline = time.time() + wait
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.time()))


def _status_of(result: Any) -> str | None:
    if isinstance(result, dict):
        return result.get("status")
    return getattr(result, "status", None)


# ------------------------------------------------------------------------------------------------
# Distillation and demo-build jobs
# ------------------------------------------------------------------------------------------------


def distill_job(target, teacher, config, run_dir: str | Path | None = None) -> JobFn:
    """A job function running :func:`scd_core.distill.trainer.distill`; its result is the run's JSON record."""

    def run(report: Report, cancel: threading.Event) -> dict:
        from scd_core.distill.trainer import distill
        from scd_core.runtime import workspace

        # The target set, the teacher folder and the run folder are in use: the workspace size limit
        # never evicts them while the run goes on.
        teacher_dir = teacher.location if teacher is not None and teacher.source == "folder" else None
        with workspace.hold(getattr(target, "root", None), teacher_dir, run_dir):
            result = distill(target, teacher, config, progress=report, cancel=cancel, run_dir=run_dir)
            workspace.enforce_limit(keep=(result.run_dir,))
        return result.to_json()

    return run


def demo_build_job(world: str, size: str | None = None) -> JobFn:
    """A job function building (or opening) demo world ``world``; its result is the world's root folder."""

    def run(report: Report, cancel: threading.Event) -> str:
        from scd_core.demo.worlds import ensure_world

        w = ensure_world(world, size=size, progress=lambda f, m: report({"fraction": f, "message": m}))
        return str(w.root)

    return run


_DEFAULT: JobManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> JobManager:
    """The process-wide manager (``SCD_MAX_JOBS`` workers, default 1; ``SCD_SESSION_GRACE_S`` seconds)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            config = settings()
            _DEFAULT = JobManager(config.max_jobs, grace_s=config.session_grace_s)
            atexit.register(_DEFAULT.shutdown, 10.0)  # stop training threads before the interpreter goes
        return _DEFAULT
