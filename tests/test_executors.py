"""The executor interface on its local backend: real worker processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scd_core.errors import ScdError
from scd_core.runtime.executors import LocalExecutor, get_executor
from scd_core.runtime.jobs import _pid_alive
from tests import executor_tasks


def test_map_keeps_order_and_reports_failures_by_name():
    with get_executor("local", workers=2) as ex:
        out = ex.map(executor_tasks.fail_on_three, [1, 2, 3, 4], names=["a", "b", "c", "d"])
    assert [o.name for o in out] == ["a", "b", "c", "d"]
    assert [o.value for o in out if o.ok] == [1, 2, 4]
    (bad,) = [o for o in out if not o.ok]
    assert bad.name == "c" and "three is refused" in bad.error and bad.attempts == 1


def test_killed_worker_is_retried_once(tmp_path):
    seen = []
    with LocalExecutor(workers=1) as ex:
        out = ex.map(executor_tasks.die_once, [(0, str(tmp_path)), (1, str(tmp_path)), (2, str(tmp_path))],
                     names=["t0", "t1", "t2"], progress=lambda done, total, o: seen.append((done, total, o.name)))
    assert [o.value for o in out] == [100, 101, 102]
    assert out[1].attempts == 2
    assert (tmp_path / "died-1").exists()
    assert [s[0] for s in seen] == [1, 2, 3] and {s[2] for s in seen} == {"t0", "t1", "t2"}


def test_worker_that_always_dies_is_reported_failed_and_others_kept():
    with LocalExecutor(workers=1) as ex:
        out = ex.map(executor_tasks.always_die, [7], names=["doomed"], retries=1)
        assert out[0].name == "doomed" and not out[0].ok and out[0].attempts == 2
        assert "worker died" in out[0].error
        assert ex.submit(executor_tasks.square, 9).result(timeout=120) == 81  # the pool recovers


def test_unknown_executor_is_a_clear_error():
    with pytest.raises(ScdError, match="unknown executor 'nope'"):
        get_executor("nope")


def test_a_page_running_as_main_is_not_executed_by_new_workers(tmp_path, monkeypatch):
    """Streamlit runs each page as ``__main__``; a server's worker started meanwhile must not run that page."""
    import sys
    import types

    marker = tmp_path / "page-ran"
    page = tmp_path / "page.py"
    page.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(page)  # what streamlit's script runner installs while a page runs
    monkeypatch.setitem(sys.modules, "__main__", fake)
    with LocalExecutor(workers=1, import_main=False) as ex:  # how the app's dispatcher starts its workers
        assert ex.submit(executor_tasks.main_module_file).result(timeout=120) != str(page)
    assert not marker.exists()
    assert sys.modules["__main__"] is fake  # restored for the page's own thread


def test_workers_leave_when_their_parent_is_killed(tmp_path):
    """A parent killed without shutting its pool down (SIGKILL, an OOM kill) must not leave workers
    training on: each worker watches its parent and exits once it is gone."""
    pid_file = tmp_path / "worker.pid"
    parent_code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from scd_core.runtime.executors import LocalExecutor\n"
        "from tests import executor_tasks\n"
        "ex = LocalExecutor(workers=1)\n"
        f"ex.submit(executor_tasks.report_pid_and_sleep, {str(pid_file)!r})\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _pid_alive(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while _pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(worker):  # do not leave it behind either way
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent by 15 s")
