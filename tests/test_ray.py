"""The Ray backend on a real local Ray instance (2 CPUs) that this module starts and stops.

Skipped, with the reason, only when Ray (the optional extra of requirements-ray.txt) is not installed.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import make_teacher, write_image_folder

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")

from scd_core.assess.ranking import rank  # noqa: E402
from scd_core.assess.validate import validate  # noqa: E402
from scd_core.cli.main import main  # noqa: E402
from scd_core.data.targets import load_target  # noqa: E402
from scd_core.distill.trainer import DistillConfig  # noqa: E402
from scd_core.runtime.executors import get_executor  # noqa: E402
from scd_core.teachers.repository import TeacherRepository  # noqa: E402
from tests import executor_tasks  # noqa: E402

CLASSES = {"red": 6, "green": 5, "blue": 4}


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    with get_executor("ray", num_cpus=2) as executor:
        assert executor._started_here
        yield executor
    assert not ray.is_initialized()  # the instance this module started is gone


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_world")
    splits = {"train": {c: 4 for c in CLASSES}, "val": {c: 2 for c in CLASSES}, "test": {c: 2 for c in CLASSES}}
    target = write_image_folder(root / "target", CLASSES, size=20, seed=1, splits=splits)
    for i, k in enumerate([3, 4, 6]):
        make_teacher(root / "repo" / f"t{k}", k, img_size=16, seed=i)
    return target, root / "repo"


def _same(a, b) -> None:
    """Same teachers in the same order, every score equal to 1e-6."""
    assert a.names == b.names
    for x, y in zip(a.teachers, b.teachers):
        for metric, value in x.scores.items():
            other = y.scores[metric]
            assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= 1e-6, (x.name, metric)


def test_describe_shows_the_cluster(cluster):
    info = cluster.describe()
    assert info["executor"] == "ray" and info["cpus"] == 2.0 and info["gpus"] == 0.0
    assert info["address"] == "local instance" and info["nodes"] == 1


def test_rank_on_ray_equals_in_process(cluster, world):
    target, repo = world
    events = []
    here = rank(target, repo, device="cpu", use_cache=False)
    there = rank(target, repo, device="cpu", use_cache=False, executor=cluster, progress=events.append)
    _same(here, there)
    assert not there.failures
    per_task = [e for e in events if e.phase == "teacher"]
    assert sorted(e.data["teacher"] for e in per_task) == sorted(here.names)
    assert [e.fraction for e in per_task] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_cli_rank_with_executor_ray(cluster, world, tmp_path):
    target, repo = world
    out = tmp_path / "ranking.json"
    assert main(["--quiet", "rank", "--target", str(target), "--repo", str(repo), "--device", "cpu",
                 "--executor", "ray", "--json", str(out)]) == 0
    assert ray.is_initialized()  # the CLI joined the running instance and left it running
    data = json.loads(out.read_text())
    here = rank(target, repo, device="cpu")
    assert [t["name"] for t in data["teachers"]] == here.names
    for entry, score in zip(data["teachers"], here.teachers):
        for metric, value in entry["scores"].items():
            assert value is None or abs(value - score.scores[metric]) <= 1e-6
    assert data["failures"] == {}


def test_a_broken_teacher_is_reported_by_name_and_the_others_ranked(cluster, world, tmp_path):
    import shutil

    target, repo = world
    broken = tmp_path / "repo"
    shutil.copytree(repo, broken)
    (broken / "t4" / "model.safetensors").write_bytes(b"not safetensors at all")
    ranking = rank(target, TeacherRepository.from_folder(broken), device="cpu", executor=cluster)
    assert sorted(ranking.names) == ["t3", "t6"]
    assert set(ranking.failures) == {"t4"} and "t4" in ranking.failures["t4"]


def test_a_killed_worker_is_retried_once(cluster, tmp_path):
    items = [(0, str(tmp_path)), (1, str(tmp_path)), (2, str(tmp_path))]
    out = cluster.map(executor_tasks.die_once, items, names=["t0", "t1", "t2"])
    assert [o.value for o in out] == [100, 101, 102]
    assert out[1].attempts == 2 and (tmp_path / "died-1").exists()
    (doomed,) = cluster.map(executor_tasks.always_die, [7], names=["doomed"])
    assert doomed.name == "doomed" and not doomed.ok and doomed.attempts == 2 and "worker died" in doomed.error
    assert cluster.submit(executor_tasks.square, 9).result(timeout=120) == 81  # the cluster still works


def test_validate_runs_each_student_as_a_task(cluster, world):
    target, repo = world
    config = DistillConfig(method="rkd", student="test_resnet", epochs=1, batch_size=8, device="cpu", lr=0.05)
    report = validate(load_target(target), repo, metrics=["scd", "leep"], top=2, seeds=1, config=config,
                      executor=cluster)
    assert "failures" not in report
    assert len(report["teachers"]) == 2 and all(len(t["accuracies"]) == 1 for t in report["teachers"])
    assert len(report["baseline_ce"]["accuracies"]) == 1


def test_app_sidebar_shows_the_cluster_when_the_operator_asks(cluster, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("SCD_EXECUTOR", "ray")
    at = AppTest.from_file(str(root / "app.py"), default_timeout=120).run()
    assert not at.exception
    text = [m.value for m in at.sidebar.markdown] + [c.value for c in at.sidebar.caption]
    assert any("Runs on:** Ray (local instance)" in t for t in text), text
    assert any("2 CPU" in t and "no GPU" in t for t in text), text
