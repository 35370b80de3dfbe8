"""Background jobs: they run, report progress, cancel within a second, and sessions do not see each other."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import make_teacher, write_image_folder

from scd_core import ScdError
from scd_core.data.targets import load_target
from scd_core.distill.trainer import DistillConfig
from scd_core.runtime.jobs import CANCELLED, FAILED, FINISHED, JobManager, distill_job
from scd_core.teachers.repository import spec_from_folder


@pytest.fixture
def manager():
    m = JobManager(max_workers=1, grace_s=0.0, reap_interval_s=3600)
    yield m
    m.shutdown()


def _epochs(n: int, delay: float = 0.0):
    def fn(report, cancel):
        for epoch in range(1, n + 1):
            if cancel.is_set():
                return {"status": "cancelled"}
            time.sleep(delay)
            report({"phase": "epoch", "epoch": epoch, "epochs": n, "train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch,
                    "step": epoch, "steps": n})
        return {"status": "finished", "val_acc": 0.1 * n}

    return fn


def _until_cancelled(started: threading.Event):
    def fn(report, cancel):
        started.set()
        while not cancel.is_set():
            report({"phase": "training", "epoch": 1, "epochs": 1, "step": 1, "steps": 2, "loss": 0.5})
            time.sleep(0.01)
        return {"status": "cancelled"}

    return fn


def test_a_job_runs_and_reports_progress_and_history(manager):
    job_id = manager.submit("s1", _epochs(3), label="three epochs", kind="distill", meta={"method": "ce"})
    job = manager.wait("s1", job_id, timeout=10)
    assert job["status"] == FINISHED and job["progress"] == 1.0 and not job["active"]
    assert [h["epoch"] for h in job["history"]] == [1, 2, 3]
    assert job["history"][-1]["val_acc"] == pytest.approx(0.3)
    assert job["result"]["val_acc"] == pytest.approx(0.3) and job["meta"] == {"method": "ce"}
    assert job["message"] == "finished" and job["last_event"]["epoch"] == 3


def test_progress_is_visible_while_running(manager):
    gate = threading.Event()

    def fn(report, cancel):
        report({"fraction": 0.25, "message": "a quarter"})
        gate.wait(5)
        return 1

    job_id = manager.submit("s1", fn, label="slow")
    deadline = time.time() + 5
    while manager.get("s1", job_id)["progress"] < 0.25 and time.time() < deadline:
        time.sleep(0.01)
    job = manager.get("s1", job_id)
    assert job["status"] == "running" and job["progress"] == 0.25 and job["message"] == "a quarter"
    gate.set()
    assert manager.wait("s1", job_id, 5)["status"] == FINISHED


def test_cancel_stops_a_running_job_within_a_second(manager):
    started = threading.Event()
    job_id = manager.submit("s1", _until_cancelled(started), label="endless")
    assert started.wait(5)
    t0 = time.perf_counter()
    assert manager.cancel("s1", job_id)
    assert manager.get("s1", job_id)["status"] in ("cancelling", CANCELLED)
    job = manager.wait("s1", job_id, timeout=1.0)
    assert job["status"] == CANCELLED and time.perf_counter() - t0 < 1.0
    assert not manager.cancel("s1", job_id)  # already over


def test_queued_jobs_wait_for_a_worker_and_cancel_at_once(manager):
    started = threading.Event()
    first = manager.submit("s1", _until_cancelled(started), label="first")
    assert started.wait(5)
    second = manager.submit("s1", _epochs(1), label="second")
    time.sleep(0.2)
    assert manager.get("s1", second)["status"] == "queued"
    manager.cancel("s1", second)
    assert manager.wait("s1", second, 1.0)["status"] == CANCELLED
    manager.cancel("s1", first)
    assert manager.wait("s1", first, 1.0)["status"] == CANCELLED


def test_two_sessions_are_isolated(manager):
    a = manager.submit("alice", _epochs(1), label="a")
    b = manager.submit("bob", _epochs(1), label="b")
    manager.wait("alice", a, 5)
    manager.wait("bob", b, 5)
    assert [j["id"] for j in manager.jobs("alice")] == [a]
    assert [j["id"] for j in manager.jobs("bob")] == [b]
    assert manager.get("alice", b) is None and manager.get("bob", a) is None
    assert not manager.cancel("alice", b) and not manager.forget("alice", b)
    assert manager.forget("alice", a) and manager.jobs("alice") == [] and len(manager.jobs("bob")) == 1


def test_errors_become_messages(manager):
    def bad_input(report, cancel):
        raise ScdError("method 'kd' needs the teacher's label space to equal the target's")

    def bug(report, cancel):
        raise RuntimeError("boom")

    j1 = manager.submit("s", bad_input, label="kd")
    j2 = manager.submit("s", bug, label="bug")
    assert manager.wait("s", j1, 5)["error"].startswith("method 'kd' needs")
    job = manager.wait("s", j2, 5)
    assert job["status"] == FAILED and job["error"] == "RuntimeError: boom"


def test_a_key_reuses_the_active_job(manager):
    gate = threading.Event()
    first = manager.submit("shared", lambda r, c: gate.wait(5), label="build", key="demo:x", uses_slot=False)
    assert manager.submit("shared", lambda r, c: None, label="build", key="demo:x", uses_slot=False) == first
    assert manager.find("shared", "demo:x")["id"] == first
    gate.set()
    manager.wait("shared", first, 5)


def test_a_closed_session_has_its_jobs_cancelled_and_is_forgotten(manager):
    closed = []
    manager.on_session_closed.append(closed.append)
    alive = {"alice": True, "bob": True}
    manager.touch("alice", alive=lambda: alive["alice"])
    manager.touch("bob", alive=lambda: alive["bob"])
    started = threading.Event()
    job_id = manager.submit("alice", _until_cancelled(started), label="endless")
    assert started.wait(5)
    assert manager.reap() == []
    alive["alice"] = False
    manager.reap()  # cancels; the session closes once its worker has stopped
    manager.wait("alice", job_id, 1.0)
    assert manager.reap() == ["alice"] and closed == ["alice"]
    assert manager.jobs("alice") == [] and "bob" in manager.sessions()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    splits = {"train": {"red": 4, "blue": 4}, "val": {"red": 2, "blue": 2}}
    target = load_target(write_image_folder(root / "target", {}, size=16, splits=splits, unlabeled=4))
    teacher = spec_from_folder(make_teacher(root / "teacher", 3, img_size=16, seed=3))
    return target, teacher, root


def test_a_real_distillation_job_reports_epochs(manager, tiny):
    target, teacher, root = tiny
    config = DistillConfig(method="scd", student="test_resnet", epochs=2, batch_size=8, device="cpu")
    job_id = manager.submit("s", distill_job(target, teacher, config, root / "run-a"), label="scd", kind="distill")
    job = manager.wait("s", job_id, timeout=120)
    assert job["status"] == FINISHED, job["error"]
    assert [h["epoch"] for h in job["history"]] == [1, 2]
    assert job["result"]["status"] == "finished" and (root / "run-a" / "student" / "config.json").is_file()


def test_a_real_distillation_job_cancels_within_a_second(manager, tiny):
    target, _teacher, root = tiny
    config = DistillConfig(method="ce", student="test_resnet", epochs=500, batch_size=4, device="cpu")
    job_id = manager.submit("s", distill_job(target, None, config, root / "run-b"), label="long", kind="distill")
    deadline = time.time() + 60
    while not manager.get("s", job_id)["history"] and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.perf_counter()
    manager.cancel("s", job_id)
    while manager.get("s", job_id)["status"] == "cancelling" and time.perf_counter() - t0 < 5:
        time.sleep(0.01)
    job = manager.get("s", job_id)
    # the trainer stops at its next step; exporting the partial student adds a little
    assert job["status"] == CANCELLED and time.perf_counter() - t0 < 3.0  # < 1 s unloaded; slack for busy CI
    assert len(job["history"]) < 500
