"""The runtime: the SQLite job store, worker processes through the executor interface, fair queueing,
fast cancel, and real SIGKILLs of workers and of the server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import write_image_folder

from scd_core import ScdError
from scd_core.distill.trainer import DistillConfig
from scd_core.runtime import store as store_mod
from scd_core.runtime.jobs import (
    BACKGROUND,
    SHARED_SESSION,
    Dispatcher,
    JobStatus,
    JobStore,
    submit_demo_build,
    submit_distill,
)
from scd_core.runtime.settings import read_settings
from scd_core.runtime.worker import staging_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path) -> JobStore:
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


@pytest.fixture
def dispatch(store):
    """A dispatcher with one training worker (the store's own, stopped after the test)."""
    config = replace(read_settings(), workers=1, torch_threads=1, session_max_running=1)
    d = Dispatcher(store, config=config, cancel_grace_s=0.5, warm=False)
    yield d
    d.shutdown()


def wait_for(predicate, timeout: float = 120.0, every: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def call(store: JobStore, session: str, fn: str = "steps", **kwargs) -> str:
    return store.submit(session, "call", f"{fn} {kwargs}", params={"callable": f"job_tasks:{fn}", "kwargs": kwargs})


@pytest.fixture(scope="module")
def target_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("rt") / "t", {"red": 16, "blue": 16}, size=16)


def distill_run(store: JobStore, folder: Path, tmp_path: Path, session: str = "s1", epochs: int = 400,
                batch: int = 4) -> tuple[str, Path]:
    config = DistillConfig(method="ce", student="test_resnet", epochs=epochs, batch_size=batch, device="cpu")
    run_dir = tmp_path / "runs" / f"run-{session}-{time.time_ns()}"
    job = submit_distill(store, session, target=str(folder), extract_dir=None, teacher=None, config=config,
                         run_dir=run_dir, label="ce", meta={"method": "ce"})
    return job, run_dir


def stepping(dispatch: Dispatcher, store: JobStore, job_id: str, predicate):
    """A wait condition that drives ``dispatch`` and tests the job with ``predicate``."""
    def check():
        dispatch.step()
        job = store.get(job_id)
        return job if predicate(job) else None

    return check


def settle(dispatch: Dispatcher, store: JobStore, job_id: str, timeout: float = 120.0):
    def ended():
        dispatch.step()
        job = store.get(job_id)
        return job if not job.active else None

    return wait_for(ended, timeout)


# ------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------


def test_store_keeps_jobs_history_and_sessions_apart(store):
    a = store.submit("alice", "call", "one", params={"x": 1}, meta={"method": "ce"})
    b = store.submit("bob", "call", "two")
    assert store.get(a).status is JobStatus.QUEUED and store.get(a).params == {"x": 1}
    assert store.get(a, session="bob") is None and not store.request_cancel(a, session="bob")
    assert [j.id for j in store.jobs("alice")] == [a] and [j.id for j in store.jobs("bob")] == [b]
    assert store.claim(a) and not store.claim(a)  # claimed once
    store.mark_started(a, os.getpid())
    store.report(a, progress=0.5, message="half")
    store.add_history(a, {"epoch": 1, "val_acc": 0.5})
    store.add_history(a, {"epoch": 2, "val_acc": 0.75})
    job = store.get(a)
    assert job.status is JobStatus.RUNNING and job.progress == 0.5 and job.message == "half"
    assert [h["epoch"] for h in job.history] == [1, 2] and job.worker_pid == os.getpid()
    assert store.finish(a, JobStatus.FINISHED, result={"val_acc": 0.75}) and not store.finish(a, JobStatus.FAILED)
    job = store.get(a)
    assert job.status is JobStatus.FINISHED and job.progress == 1.0 and job.result == {"val_acc": 0.75}
    assert not job.active and job.elapsed >= 0 and store.forget(a, session="alice") and store.get(a) is None
    assert store.request_cancel(b) and store.get(b).status is JobStatus.CANCELLED  # queued: cancelled at once
    assert store.session_exists("alice") and store.session_exists("bob")
    with pytest.raises(ValueError):
        store.finish(b, JobStatus.RUNNING)


def test_a_key_joins_the_active_job_and_a_limit_refuses_more(store):
    first = store.submit("s", "demo", "build", key="demo:x", lane="service")
    assert store.submit("s", "demo", "build", key="demo:x", lane="service") == first
    store.submit("s", "call", "a", max_active=3)
    with pytest.raises(ScdError, match="too many runs"):
        store.submit("s", "call", "b", max_active=2)


def test_a_demo_world_built_ahead_moves_to_the_service_lane_when_somebody_waits_for_it(store):
    ahead = submit_demo_build(store, "digits", "small", background=True)
    assert store.get(ahead).lane == BACKGROUND and store.queue(BACKGROUND)[0][0].id == ahead
    assert submit_demo_build(store, "digits", "small") == ahead  # joined, not built twice
    assert store.get(ahead).lane == "service" and store.queue(BACKGROUND) == []
    assert store.claim(ahead) and not store.promote(ahead, BACKGROUND)  # a running job stays where it runs


def test_background_jobs_start_only_when_no_user_job_is_queued_or_running(store, dispatch):
    """A demo world built ahead of need never delays a user's run: it waits for the queues to empty."""
    user = call(store, "alice", n=4, delay=0.3)
    ahead = store.submit(SHARED_SESSION, "call", "built ahead", lane=BACKGROUND,
                         params={"callable": "job_tasks:steps", "kwargs": {"n": 1, "delay": 0.01}})
    wait_for(stepping(dispatch, store, user, lambda j: j.status is JobStatus.RUNNING))
    later = call(store, "bob", n=1, delay=0.01)  # queued behind alice's run (one worker)
    for _ in range(5):
        dispatch.step()
        assert store.get(ahead).status is JobStatus.QUEUED
    for job_id in (user, later, ahead):
        settle(dispatch, store, job_id)
    jobs = {j.id: j for j in store.jobs()}
    assert all(j.status is JobStatus.FINISHED for j in jobs.values())
    assert jobs[ahead].started >= max(jobs[user].ended, jobs[later].started)


def test_fair_queue_is_round_robin_between_sessions_and_says_why(store):
    running = store.submit("alice", "call", "a0")
    store.claim(running)
    alice = [store.submit("alice", "call", f"a{i}") for i in range(1, 4)]
    bob = store.submit("bob", "call", "b1")
    order = store.queue()
    assert [job.id for job, _ in order] == [bob, alice[0], alice[1], alice[2]]
    slots = {job.id: slot for job, slot in order}
    assert slots[bob].position == 1 and slots[bob].reason() == \
        "queued, position 1: 1 run of other sessions running"
    assert slots[alice[1]].reason() == \
        "queued, position 3: 1 run of other sessions ahead, 1 earlier run of this session ahead"
    assert store.running_count() == 1 and store.running_count(session="bob") == 0


def test_an_older_store_is_migrated_and_a_newer_or_corrupt_one_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert store_mod.migrate(conn, upto=1) == 1  # the store as version 1 wrote it
    conn.execute("INSERT INTO jobs (id, session, kind, label, status, created, ended) "
                 "VALUES ('j1', 'alice', 'distill', 'ce', 'finished', 100.0, 160.0)")
    conn.execute("INSERT INTO job_history (job_id, n, record) VALUES ('j1', 0, '{\"epoch\": 1}')")
    conn.close()
    store = JobStore(path)
    assert store.version == store_mod.SCHEMA_VERSION == 2
    job = store.get("j1")
    assert job.status is JobStatus.FINISHED and job.history == [{"epoch": 1}] and job.heartbeat is None
    assert store.last_seen("alice") == 160.0  # sessions were derived from the old jobs
    store.close()

    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ScdError, match="newer version"):
        JobStore(newer)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ScdError, match="not a readable database"):
        JobStore(corrupt)
    assert corrupt.read_bytes() == b"this is not a database" * 100  # refused, not touched


def test_idle_sessions_expire_with_their_files_unless_a_job_runs(store, tmp_path):
    removed = []
    dispatcher = Dispatcher(store, config=replace(read_settings(), session_ttl_s=60.0),
                            on_session_expired=removed.append, warm=False)
    store.create_session("idle")
    store.create_session("busy")
    store.create_session("fresh")
    job = store.submit("busy", "call", "long")
    store.claim(job)
    old = time.time() - 3600
    store._conn().execute("UPDATE sessions SET last_seen=? WHERE id IN ('idle', 'busy')", (old,))
    assert dispatcher.sweep_sessions() == ["idle"] and removed == ["idle"]
    assert not store.session_exists("idle") and store.session_exists("busy") and store.session_exists("fresh")
    store.finish(job, JobStatus.FINISHED)  # a job that ends counts as activity
    assert dispatcher.sweep_sessions() == []


def test_settings_are_validated():
    env = {"SCD_WORKERS": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(ScdError, match="SCD_WORKERS"):
            read_settings()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    s = read_settings()
    assert s.workers >= 1 and s.torch_threads >= 1 and s.session_max_running >= 1


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------


def test_jobs_run_in_worker_processes_in_fair_order(store, dispatch):
    alice = [call(store, "alice", n=2, delay=0.01) for _ in range(3)]
    bob = call(store, "bob", n=2, delay=0.01)
    failing = call(store, "carol", "fail")
    for job_id in [*alice, bob, failing]:
        settle(dispatch, store, job_id)
    jobs = {j.id: j for j in store.jobs()}
    assert all(jobs[j].status is JobStatus.FINISHED for j in [*alice, bob])
    assert jobs[alice[0]].worker_pid != os.getpid()  # it ran in a worker, not in this process
    assert [h["epoch"] for h in jobs[bob].history] == [1, 2]
    starts = sorted([*alice, bob], key=lambda j: jobs[j].started)
    assert starts.index(bob) <= 1  # bob's one run did not wait for alice's three
    assert jobs[failing].status is JobStatus.FAILED and "refused on purpose" in jobs[failing].error


def test_cancel_takes_effect_within_a_second(store, dispatch, target_folder, tmp_path):
    job_id, run_dir = distill_run(store, target_folder, tmp_path)
    wait_for(stepping(dispatch, store, job_id, lambda j: j.message.startswith("epoch")), 180)
    t0 = time.perf_counter()
    assert store.request_cancel(job_id, session="s1")
    dispatch.kick()
    job = wait_for(stepping(dispatch, store, job_id, lambda j: not j.active), 10, every=0.01)
    latency = time.perf_counter() - t0
    assert job.status is JobStatus.CANCELLED, job.error
    assert latency < 1.0, f"cancel took {latency:.2f} s"
    assert not staging_dir(run_dir).exists()  # no half-written run anywhere
    if run_dir.exists():  # it stopped cleanly: a complete run with its student
        assert (run_dir / "run.json").is_file() and (run_dir / "student" / "model.safetensors").is_file()


def _integrity(store: JobStore) -> str:
    return store._conn().execute("PRAGMA integrity_check").fetchone()[0]


def test_sigkill_mid_epoch_fails_the_job_with_the_reason_and_keeps_history(store, dispatch, target_folder,
                                                                             tmp_path):
    job_id, run_dir = distill_run(store, target_folder, tmp_path, epochs=400, batch=16)
    job = wait_for(stepping(dispatch, store, job_id, lambda j: j.history), 180)
    os.kill(job.worker_pid, signal.SIGKILL)
    job = settle(dispatch, store, job_id, 30)
    assert job.status is JobStatus.FAILED and "worker process died" in job.error and "epoch" in job.error
    assert len(job.history) >= 1  # the epochs it finished stay
    assert not run_dir.exists() and not staging_dir(run_dir).exists()
    assert _integrity(store) == "ok"
    again = store.restart("s1", job_id)  # the next job gets a fresh worker
    store.request_cancel(again)
    follow = call(store, "s1", n=1, delay=0.0)
    assert settle(dispatch, store, follow).status is JobStatus.FINISHED


def test_sigkill_mid_export_leaves_no_student(store, dispatch, target_folder, tmp_path):
    job_id, run_dir = distill_run(store, target_folder, tmp_path, epochs=2, batch=16)
    student = staging_dir(run_dir) / "student"

    def exporting():
        dispatch.step()
        return student.exists() or not store.get(job_id).active

    wait_for(exporting, 180, every=0.001)
    job = store.get(job_id)
    if job.active:
        os.kill(job.worker_pid, signal.SIGSTOP)  # freeze it mid-export, look, then kill it
        partial = sorted(p.name for p in student.iterdir()) if student.exists() else []
        os.kill(job.worker_pid, signal.SIGKILL)
        print("killed during export with", partial)
    job = settle(dispatch, store, job_id, 30)
    if job.status is JobStatus.FAILED:
        assert "worker process died" in job.error
        assert not run_dir.exists() and not staging_dir(run_dir).exists()
    else:  # it finished before the kill: then complete
        assert job.status is JobStatus.FINISHED and (run_dir / "student" / "model.safetensors").is_file()
    assert _integrity(store) == "ok"


SERVER = textwrap.dedent("""
    import sys, time
    from dataclasses import replace
    from scd_core.runtime.jobs import Dispatcher, JobStore
    from scd_core.runtime.settings import read_settings
    if __name__ == "__main__":
        store = JobStore(sys.argv[1])
        d = Dispatcher(store, config=replace(read_settings(), workers=1, torch_threads=1), warm=False).start()
        while True:
            time.sleep(1)
""")


def test_a_job_of_a_killed_server_is_interrupted_on_the_next_start_and_restarts(store, target_folder,
                                                                                 tmp_path):
    job_id, run_dir = distill_run(store, target_folder, tmp_path, epochs=400, batch=16)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    server = subprocess.Popen([sys.executable, str(script), str(store.path)], env=env)
    try:
        job = wait_for(lambda: store.get(job_id) if store.get(job_id).history else None, 180, every=0.1)
        worker = job.worker_pid
        server.kill()  # SIGKILL: no clean-up of any kind
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
    # the orphaned worker notices its server is gone and stops on its own
    wait_for(lambda: not _alive(worker), 30, every=0.1)
    restarted = Dispatcher(store, config=replace(read_settings(), workers=1, torch_threads=1), warm=False)
    try:
        restarted.recover()
        job = store.get(job_id)
        # recorded by the worker itself, before it left (recover() words it "the server or its worker ...")
        assert job.status is JobStatus.INTERRUPTED and job.error.startswith("the server stopped while this job ran")
        assert len(job.history) >= 1 and job.restartable
        assert not staging_dir(run_dir).exists()
        again = store.restart("s1", job_id)
        assert store.get(again).params == job.params and store.get(again).meta["restart_of"] == job_id
        store._conn().execute("UPDATE jobs SET params=json_set(params, '$.config.epochs', 1) WHERE id=?", (again,))
        done = settle(restarted, store, again)
        assert done.status is JobStatus.FINISHED and (run_dir / "student" / "model.safetensors").is_file()
    finally:
        restarted.shutdown()


def test_a_worker_whose_server_died_leaves_a_queued_job_queued(store, target_folder, tmp_path, monkeypatch):
    """A task that reaches a worker after its server was killed (the pool had queued it) must not start:
    the job stays queued, untouched, for the next server to run."""
    from scd_core.runtime import executors
    from scd_core.runtime.worker import run_job

    job_id, run_dir = distill_run(store, target_folder, tmp_path, epochs=1)
    monkeypatch.setattr(executors, "_spawn_parent", os.getppid() + 1_000_000)  # not our parent: it "died"
    assert run_job(str(store.path), job_id) == "orphaned"
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.worker_pid is None and not run_dir.exists()


def _alive(pid: int) -> bool:
    from scd_core.runtime.jobs import _pid_alive

    return _pid_alive(pid)


def test_the_dispatchers_workers_never_import_the_page_running_as_main(dispatch):
    executor = dispatch.slots[0].ensure()
    assert executor.import_main is False  # a worker started while a page runs must not execute that page


def test_a_check_of_the_ranking_runs_as_a_job_and_reports_every_metric(store, dispatch, tmp_path):
    """submit_validate: a student per teacher and seed plus ce in a worker process; the report is the result."""
    from helpers import make_teacher

    from scd_core.runtime.jobs import submit_validate
    from scd_core.teachers.repository import TeacherRepository

    folder = write_image_folder(tmp_path / "t", {"red": 8, "blue": 8, "green": 8}, size=16)
    for i, k in enumerate((3, 5)):
        make_teacher(tmp_path / "repo" / f"teacher_{k}", k, img_size=16, seed=i)
    repo = TeacherRepository.from_folder(tmp_path / "repo")
    config = DistillConfig(student="test_resnet", epochs=1, batch_size=8, device="cpu", weighting="fixed")
    job_id = submit_validate(store, "s1", target=str(folder), extract_dir=None, teachers=repo.specs, config=config,
                             metrics=["scd", "leep"], seeds=1, top=None, label="check", meta={"target_fp": "x"})
    job = settle(dispatch, store, job_id, timeout=300)
    assert job.status is JobStatus.FINISHED, job.error
    report = job.result
    assert {r["name"] for r in report["teachers"]} == set(repo.names)
    assert all(len(r["accuracies"]) == 1 for r in report["teachers"]) and len(report["baseline_ce"]["accuracies"]) == 1
    assert set(report["metrics"]) == {"scd", "leep"} and job.progress == pytest.approx(1.0)


def test_a_fold_run_trains_and_validates_on_its_own_fold(store, target_folder, tmp_path, monkeypatch):
    """submit_distill(fold=(k, i)): the worker hands the trainer fold i of the k-fold re-split, test unchanged."""
    import scd_core.distill.trainer as trainer
    from scd_core.distill.compare import kfold_targets
    from scd_core.distill.config import DistillResult
    from scd_core.runtime.worker import run_job
    from scd_core.sources import load_target

    seen = []

    def fake_distill(target, teacher, config, progress=None, cancel=None, run_dir=None):
        seen.append({s: sorted(it.rel for it in target.split(s)) for s in ("val", "test")})
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return DistillResult(run_id="r", run_dir=str(run_dir), status="finished", config={}, teacher=None,
                             val_acc=0.5)

    monkeypatch.setattr(trainer, "distill", fake_distill)
    config = DistillConfig(method="ce", student="test_resnet", epochs=1, device="cpu")
    job = submit_distill(store, "s1", target=str(target_folder), extract_dir=None, teacher=None, config=config,
                         run_dir=tmp_path / "run", label="ce fold 2", fold=(3, 1))
    assert run_job(str(store.path), job) == "finished"
    fold = kfold_targets(load_target(target_folder), 3)[1]
    assert seen == [{s: sorted(it.rel for it in fold.split(s)) for s in ("val", "test")}]
    assert seen[0]["val"] != sorted(it.rel for it in load_target(target_folder).split("val"))
    with pytest.raises(ScdError, match="fold index"):
        submit_distill(store, "s1", target=str(target_folder), extract_dir=None, teacher=None, config=config,
                       run_dir=tmp_path / "run2", label="x", fold=(3, 3))
