"""What runs inside a worker process: one job, read from the store and reported back to it.

:func:`run_job` is the task the dispatcher submits through the executor interface (a plain function
with plain arguments, so any backend can run it). It loads the job's parameters from the store, runs
the job kind's runner and writes progress, per-epoch history and the outcome to the store itself; the
app only reads the store. A watcher thread polls the job's cancel flag every 0.1 s and sets the
``threading.Event`` the trainer checks at every optimizer step, and it notices when the server that
started this worker has gone (:func:`~scd_core.runtime.executors.parent_gone`), so an orphaned run
stops and is recorded as interrupted; the worker's parent watch lets it finish that before the
process exits.

A distillation run writes into a hidden staging folder next to its final folder and is published by
one ``rename`` after ``run.json`` was written, so a killed worker never leaves a half-written student
where the app would offer it for download.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from scd_core.errors import ScdError
from scd_core.progress import ProgressEvent
from scd_core.runtime.executors import parent_gone, stops_itself_when_orphaned
from scd_core.runtime.store import JobSnapshot, JobStatus, JobStore

LOGGER = logging.getLogger(__name__)
POLL_S = 0.1  # cancel flag and parent check: a cancel takes effect within about one step after this
HEARTBEAT_S = 2.0
REPORT_EVERY_S = 0.25  # progress writes at most 4 per second (epoch records are always written)
STAGING_PREFIX = ".staging-"


def staging_dir(run_dir: str | Path) -> Path:
    """The hidden folder a run writes into before it is published as ``run_dir``."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{STAGING_PREFIX}{run_dir.name}"


class _Watcher(threading.Thread):
    """Sets ``cancel`` when the store asks the job to stop or the parent (server) process is gone."""

    def __init__(self, store: JobStore, job_id: str, cancel: threading.Event) -> None:
        super().__init__(name=f"scd-watch-{job_id}", daemon=True)
        self.store, self.job_id, self.cancel = store, job_id, cancel
        self.parent = os.getppid()
        self.orphaned = False
        self.done = threading.Event()

    def run(self) -> None:
        last_beat = 0.0
        while not self.done.wait(POLL_S):
            try:
                if parent_gone() or os.getppid() != self.parent:
                    self.orphaned = True
                    ORPHANED.set()
                    self.cancel.set()
                elif self.store.cancel_requested(self.job_id):
                    self.cancel.set()
                now = time.monotonic()
                if now - last_beat > HEARTBEAT_S:
                    self.store.report(self.job_id)
                    last_beat = now
            except Exception:  # a locked or vanished store must not kill the run; try again next poll
                LOGGER.debug("watcher poll failed:\n%s", traceback.format_exc())


class Reporter:
    """The job's progress callback: takes a :class:`ProgressEvent` (or the trainer's event dict) and
    writes progress, message and per-epoch records to the store, throttled."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self._last = 0.0

    def __call__(self, event: ProgressEvent | dict | float, message: str | None = None) -> None:
        if isinstance(event, ProgressEvent):
            data = event.to_json()
        elif isinstance(event, dict):
            data = dict(event)
        else:  # progress(fraction, message), the demo builder's shape
            data = {"fraction": float(event), "message": message or ""}
        phase = data.get("phase")
        fraction = data.get("fraction")
        if fraction is None and data.get("steps"):
            fraction = data.get("step", 0) / max(1, data["steps"])
        text = data.get("message") or None
        if phase == "epoch":
            record = {k: v for k, v in data.items() if k not in ("phase", "steps", "step", "message", "fraction")}
            self.store.add_history(self.job_id, record)
            loss, acc = _num(data.get("train_loss")), _num(data.get("val_acc"))
            text = f"epoch {data.get('epoch')}/{data.get('epochs')}: loss {loss:.4f}, val acc {acc:.1%}"
        elif phase == "training":
            text = f"epoch {data.get('epoch')}/{data.get('epochs')}: loss {_num(data.get('loss')):.4f}"
            now = time.monotonic()
            if now - self._last < REPORT_EVERY_S:
                return
            self._last = now
        self.store.report(self.job_id, progress=None if fraction is None else float(fraction), message=text)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


Runner = Callable[[JobStore, JobSnapshot, Reporter, threading.Event, "int | None"], tuple[JobStatus, dict]]
RUNNERS: dict[str, Runner] = {}


def register_runner(kind: str, runner: Runner) -> None:
    """Make job kind ``kind`` runnable: ``runner(store, job, report, cancel, device_index) -> (status, result)``."""
    RUNNERS[kind] = runner


ORPHANED = threading.Event()
"""Set in a worker whose server has gone: runners then publish nothing (the job is interrupted)."""


def run_job(store_file: str, job_id: str, device_index: int | None = None) -> str:
    """Run job ``job_id`` of the store at ``store_file`` in this process; returns its final status.

    The worker's parent watch (:mod:`scd_core.runtime.executors`) waits while this runs: an orphaned
    job stops and records itself as interrupted, then the worker leaves. A job taken from the queue
    after the server died is not started: it stays queued for the next server.
    """
    with stops_itself_when_orphaned():
        if parent_gone():
            return "orphaned"
        return _run_job(store_file, job_id, device_index)


def _run_job(store_file: str, job_id: str, device_index: int | None) -> str:
    store = JobStore(store_file)
    job = store.get(job_id, history=False)
    if job is None or not job.active:
        return "gone"
    if job.cancel_requested:
        store.finish(job_id, JobStatus.CANCELLED, message="cancelled before it started")
        return JobStatus.CANCELLED.value
    store.mark_started(job_id, os.getpid())
    cancel = threading.Event()
    watcher = _Watcher(store, job_id, cancel)
    watcher.start()
    try:
        runner = RUNNERS.get(job.kind)
        if runner is None:
            raise ScdError(f"unknown job kind {job.kind!r}")
        status, result = runner(store, job, Reporter(store, job_id), cancel, device_index)
        if watcher.orphaned:
            store.finish(job_id, JobStatus.INTERRUPTED, result=result,
                         error="the server stopped while this job ran; restart it to run it again")
            return JobStatus.INTERRUPTED.value
        if cancel.is_set() and status == JobStatus.FINISHED:
            status = JobStatus.CANCELLED
        store.finish(job_id, status, result=result)
        return JobStatus(status).value
    except (ScdError, ValueError) as exc:  # bad input or options: the message is written for users
        store.finish(job_id, JobStatus.FAILED, error=str(exc))
    except Exception as exc:  # a bug or a resource problem: the traceback goes to the log
        LOGGER.error("job %s failed:\n%s", job_id, traceback.format_exc())
        store.finish(job_id, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
    finally:
        watcher.done.set()
        watcher.join(1.0)
    return JobStatus.FAILED.value


def warm_up() -> int:
    """Import the heavy modules once, so the first job of a fresh worker does not pay for them."""
    import timm  # noqa: F401

    import scd_core.distill.trainer  # noqa: F401

    return os.getpid()


# ------------------------------------------------------------------------------------------------
# Runners
# ------------------------------------------------------------------------------------------------


def teacher_spec_to_json(spec) -> dict | None:
    """A :class:`~scd_core.teachers.repository.TeacherSpec` as plain JSON (job parameters)."""
    if spec is None:
        return None
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(spec), default=str))


def teacher_spec_from_json(data: dict | None):
    if data is None:
        return None
    from scd_core.teachers.repository import TeacherSpec

    known = {f.name for f in fields(TeacherSpec)}
    values = {k: v for k, v in data.items() if k in known}
    values["label_names"] = tuple(values.get("label_names", ()))
    return TeacherSpec(**values)


def _job_target(params: dict):
    """The job's target set from its source (``demo:WORLD``, a folder, a .zip and its extraction folder)."""
    from scd_core.sources import load_target

    extract = params.get("extract_dir")
    target = load_target(params["target"], extract_dir=Path(extract) if extract else None)
    if params.get("target_name"):
        target.name = params["target_name"]
    return target


def _job_config(params: dict, device_index: int | None):
    """The job's DistillConfig (unknown keys of an older version dropped), on the worker's own GPU."""
    from scd_core.distill.trainer import DistillConfig

    known = {f.name for f in fields(DistillConfig)}
    config = DistillConfig(**{k: v for k, v in params.get("config", {}).items() if k in known})
    if device_index is not None and config.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 1:  # one device per worker
            config.device = f"cuda:{device_index % torch.cuda.device_count()}"
    return config


def _distill_runner(store: JobStore, job: JobSnapshot, report: Reporter, cancel: threading.Event,
                    device_index: int | None) -> tuple[JobStatus, dict]:
    from scd_core.distill.trainer import distill
    from scd_core.runtime import workspace

    p = job.params
    target = _job_target(p)
    if p.get("fold"):  # one fold of a k-fold cross-validated comparison: train + val re-split, test unchanged
        from scd_core.distill.compare import kfold_targets

        fold = p["fold"]
        target = kfold_targets(target, int(fold["k"]), int(fold.get("seed", 0)))[int(fold["index"])]
    teacher = teacher_spec_from_json(p.get("teacher"))
    config = _job_config(p, device_index)
    final = Path(p["run_dir"])
    if final.exists():  # a restarted job: its first attempt published (or left) this folder
        final = final.with_name(f"{final.name}-{job.id.rsplit('-', 1)[-1][:6]}")
    staging = staging_dir(final)
    store.set_artefacts(job.id, run_dir=str(final), staging=str(staging))
    shutil.rmtree(staging, ignore_errors=True)
    teacher_dir = teacher.location if teacher is not None and teacher.source == "folder" else None
    # the target set, the teacher folder and the run are in use: the workspace limit never evicts them
    with workspace.hold(getattr(target, "root", None), teacher_dir, staging, final):
        result = distill(target, teacher, config, progress=report, cancel=cancel, run_dir=staging).to_json()
        if ORPHANED.is_set():  # nobody will read this run: interrupted, keep nothing
            shutil.rmtree(staging, ignore_errors=True)
            return JobStatus.INTERRUPTED, {}
        result = _published(result, staging, final)
        (staging / ".run.json.tmp").write_text(json.dumps(result, indent=2, default=str))
        (staging / ".run.json.tmp").replace(staging / "run.json")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)  # atomic: the run appears complete or not at all
        workspace.enforce_limit(keep=(final,))
    store.set_artefacts(job.id, run_dir=str(final), student_dir=result.get("student_dir", ""))
    status = JobStatus.CANCELLED if result.get("status") == "cancelled" else JobStatus.FINISHED
    return status, result


def _published(result: dict, staging: Path, final: Path) -> dict:
    """The run record with the staging folder's paths replaced by the published ones."""
    text = json.dumps(result, default=str).replace(json.dumps(str(staging))[1:-1], json.dumps(str(final))[1:-1])
    return json.loads(text)


def lowest_priority() -> None:
    """Run this worker process at the lowest CPU priority from now on (it only ever does background work)."""
    # without nice (another platform) the dispatcher's ordering still keeps it out of the way
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19 - os.nice(0))


def _demo_runner(store: JobStore, job: JobSnapshot, report: Reporter, cancel: threading.Event,
                 device_index: int | None) -> tuple[JobStatus, dict]:
    from scd_core.demo.worlds import ensure_world

    if job.lane == "background":  # a world built ahead of need must not slow anybody's own jobs
        lowest_priority()

    world = ensure_world(job.params["world"], size=job.params.get("size"), progress=report)
    return JobStatus.FINISHED, {"root": str(world.root)}


def _validate_runner(store: JobStore, job: JobSnapshot, report: Reporter, cancel: threading.Event,
                     device_index: int | None) -> tuple[JobStatus, dict]:
    """Check a ranking: a student per teacher and seed (and the ce baseline), the agreement per metric."""
    from scd_core.assess.validate import validate
    from scd_core.teachers.repository import TeacherRepository

    p = job.params
    target = _job_target(p)
    repo = TeacherRepository([teacher_spec_from_json(t) for t in p["teachers"]])
    config = _job_config(p, device_index)
    result = validate(target, repo, metrics=p.get("metrics"), top=p.get("top"), seeds=int(p.get("seeds", 1)),
                      config=config, device=config.device, progress=report, cancel=cancel)
    return (JobStatus.CANCELLED if cancel.is_set() else JobStatus.FINISHED), result


def _call_runner(store: JobStore, job: JobSnapshot, report: Reporter, cancel: threading.Event,
                 device_index: int | None) -> tuple[JobStatus, dict]:
    """Any importable function ``module:name`` called as ``fn(report, cancel, **kwargs)`` (a dict back)."""
    import importlib

    module, _, name = job.params["callable"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    result = fn(report, cancel, **job.params.get("kwargs", {}))
    status = JobStatus.CANCELLED if cancel.is_set() else JobStatus.FINISHED
    return status, result if isinstance(result, dict) else {"value": result}


register_runner("distill", _distill_runner)
register_runner("demo", _demo_runner)
register_runner("validate", _validate_runner)
register_runner("call", _call_runner)
