"""Distillation: every method trains, the OT gradient is right, runs cancel, reproduce and export."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import make_teacher, write_image_folder

from scd_core import ScdError
from scd_core.assess.validate import ranking_agreement, validate
from scd_core.data.targets import load_target
from scd_core.distill.losses import METHODS, Batch, TeacherContext, make_loss, ot_divergence
from scd_core.distill.trainer import DistillConfig, distill
from scd_core.progress import ProgressEvent
from scd_core.teachers.repository import TeacherRepository, load_teacher, spec_from_folder

CLASSES = {"red": 8, "green": 8, "blue": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    splits = {"train": {c: 5 for c in CLASSES}, "val": {c: 3 for c in CLASSES}, "test": {c: 3 for c in CLASSES}}
    target = load_target(write_image_folder(root / "target", CLASSES, size=16, splits=splits, unlabeled=12))
    make_teacher(root / "repo" / "other", 5, img_size=16, seed=1)
    make_teacher(root / "repo" / "same", 3, img_size=16, seed=2, labels=["green", "red", "blue"])
    return target, TeacherRepository.from_folder(root / "repo")


def _config(method: str, **kw) -> DistillConfig:
    # fixed lambda: these tests exercise each loss, and the random-init test teachers earn no adaptive weight
    base = {"student": "test_resnet", "epochs": 4, "batch_size": 8, "device": "cpu", "lr": 0.05, "weighting": "fixed"}
    return DistillConfig(method=method, **{**base, **kw})


@pytest.mark.parametrize("method", ["ce", "scd", "translate", "rkd", "kd"])
def test_every_method_trains_with_finite_decreasing_loss(setup, method, tmp_path):
    target, repo = setup
    teacher = repo.get("same" if method == "kd" else "other")
    res = distill(target, teacher, _config(method, epochs=6), run_dir=tmp_path / "run")
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert res.status == "finished" and 0 <= res.val_acc <= 1 and res.test_acc is not None
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["method"] == method and len(record["history"]) == 6
    if method != "ce":
        assert f"train_{method}" in res.history[0]


def test_kd_refuses_a_different_label_space(setup, tmp_path):
    target, repo = setup
    with pytest.raises(ScdError, match="label space"):
        distill(target, repo.get("other"), _config("kd"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_method_refusal_is_the_rule_the_loss_applies():
    """The app asks method_refusal before queueing a run; the loss refuses the same pairs when it starts."""
    from scd_core.distill.losses import method_refusal

    assert method_refusal("kd", ["Cat", "dog"], ["dog", "cat"]) is None  # same classes, any order and case
    why = method_refusal("kd", ["cat", "dog", "owl"], ["cat", "dog"])
    assert why is not None and "label space" in why and "3 classes" in why
    assert all(method_refusal(m, ["a", "b", "c"], ["x", "y"]) is None for m in ("ce", "scd", "translate", "rkd"))
    assert "unknown method" in method_refusal("magic", [], [])


def test_unknown_method_and_missing_teacher_are_refused(setup):
    target, _ = setup
    with pytest.raises(ScdError, match="unknown method"):
        make_loss("magic")
    with pytest.raises(ScdError, match="needs a teacher"):
        distill(target, None, _config("scd"))
    assert set(METHODS) == {"ce", "kd", "rkd", "scd", "translate"}


def test_ot_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    cost = torch.rand(6, 4, dtype=torch.float64)
    a = torch.softmax(torch.randn(3, 6, dtype=torch.float64), 1)
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    value = ot_divergence(a, torch.softmax(logits, 1), cost, eps=0.1, max_iter=5000, tol=1e-13)
    value.sum().backward()
    h = 1e-6
    numeric = torch.zeros_like(logits)
    for i in range(3):
        for j in range(4):
            plus, minus = logits.detach().clone(), logits.detach().clone()
            plus[i, j] += h
            minus[i, j] -= h
            f = lambda z: ot_divergence(a, torch.softmax(z, 1), cost, 0.1, 5000, 1e-13).sum()  # noqa: E731
            numeric[i, j] = (f(plus) - f(minus)) / (2 * h)
    torch.testing.assert_close(logits.grad, numeric, atol=1e-7, rtol=1e-5)


def test_ot_value_equals_pot_entropic_objective():
    import ot

    rng = np.random.default_rng(0)
    cost = rng.random((5, 3))
    a, b = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(3))
    ours = ot_divergence(torch.tensor(a)[None], torch.tensor(b)[None], torch.tensor(cost), 0.2, 5000, 1e-13)
    plan = ot.sinkhorn(a, b, cost, 0.2, stopThr=1e-13, numItermax=10000)
    pot = (plan * cost).sum() + 0.2 * (plan * np.log(plan)).sum()
    assert abs(float(ours) - pot) < 1e-8


def test_scd_loss_pulls_the_student_toward_the_cheap_target_class():
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])  # teacher class i maps to target class i
    loss = make_loss("scd", weight=1.0, temperature=1.0, eps=0.05)
    loss.prepare(TeacherContext(["a", "b"], ["x", "y"], cost=cost), torch.device("cpu"))
    student = torch.zeros(1, 2, requires_grad=True)
    batch = Batch(student_logits=student, labels=torch.tensor([-1]), teacher_logits=torch.tensor([[5.0, -5.0]]))
    total, parts = loss(batch)
    total.backward()
    assert parts["ce"] == 0.0  # unlabeled image: teacher term only
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent raises the logit of target class x


def test_translate_uses_the_row_normalised_plan():
    plan = np.array([[0.3, 0.1], [0.0, 0.0], [0.0, 0.6]])  # a massless teacher row -> uniform
    loss = make_loss("translate", temperature=1.0)
    loss.prepare(TeacherContext(["a", "b", "c"], ["x", "y"], plan=plan), torch.device("cpu"))
    np.testing.assert_allclose(loss.translation.numpy(), [[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]])


def test_cancel_stops_within_a_second_and_leaves_a_consistent_run(setup, tmp_path):
    target, repo = setup
    cancel = threading.Event()
    seen: dict[str, float] = {}

    def progress(event: ProgressEvent) -> None:
        if event.phase == "training" and "t" not in seen:
            seen["t"] = time.perf_counter()
            cancel.set()

    result = {}
    thread = threading.Thread(target=lambda: result.update(r=distill(
        target, repo.get("other"), _config("scd", epochs=200), progress=progress, cancel=cancel,
        run_dir=tmp_path / "run")))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    res = result["r"]
    assert res.status == "cancelled" and len(res.history) == 1
    assert time.perf_counter() - seen["t"] < 10  # includes export; the loop itself stops at the next step
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "cancelled"
    assert load_teacher(spec_from_folder(res.student_dir)) is not None


def test_same_seed_reproduces_the_run(setup, tmp_path):
    target, repo = setup
    a = distill(target, repo.get("other"), _config("scd", epochs=2, seed=7), run_dir=tmp_path / "a")
    b = distill(target, repo.get("other"), _config("scd", epochs=2, seed=7), run_dir=tmp_path / "b")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    wa = (Path(a.student_dir) / "model.safetensors").read_bytes()
    wb = (Path(b.student_dir) / "model.safetensors").read_bytes()
    assert wa == wb


def test_exported_student_loads_with_plain_timm_and_joins_a_repository(setup, tmp_path):
    target, repo = setup
    res = distill(target, repo.get("other"), _config("translate", epochs=1), run_dir=tmp_path / "run")
    folder = Path(res.student_dir)
    spec = spec_from_folder(folder)
    assert list(spec.label_names) == target.class_names and "translate" in spec.description
    ours = load_teacher(spec)
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), plain(x))
    assert TeacherRepository.from_folder(tmp_path / "run").names == ["student"]


def test_validate_reports_agreement_per_metric(setup):
    target, repo = setup
    report = validate(target, repo, metrics=["scd", "leep"], seeds=1, config=_config("rkd", epochs=1))
    assert {t["name"] for t in report["teachers"]} == {"other", "same"}
    assert set(report["metrics"]) == {"scd", "leep"}
    for values in report["metrics"].values():
        assert set(values) == {"weighted_tau", "kendall_tau", "pearson", "top1_relative_accuracy"}
    assert report["accuracy_split"] == "test" and "baseline_ce" in report


def test_ranking_agreement_orients_scores_by_direction():
    acc = np.array([0.9, 0.5, 0.7, 0.2])
    good = ranking_agreement(-acc, acc, higher_is_better=False)  # lower score = better accuracy
    assert good["weighted_tau"] == pytest.approx(1.0) and good["top1_relative_accuracy"] == 1.0
    bad = ranking_agreement(acc, acc, higher_is_better=False)
    assert bad["kendall_tau"] == pytest.approx(-1.0) and bad["top1_relative_accuracy"] == pytest.approx(0.2 / 0.9)


def test_scd_loss_refuses_an_eps_too_small_to_converge_per_step():
    with pytest.raises(ScdError, match="eps must be in"):
        make_loss("scd", eps=1e-3)
    assert make_loss("scd", eps=0.01).eps == 0.01


def test_every_method_gets_the_same_number_of_steps(setup, tmp_path):
    """The budget counts the labeled + unlabeled pool for all methods: ce is not starved of steps."""
    target, repo = setup
    ce = distill(target, None, _config("ce", epochs=1), run_dir=tmp_path / "ce")
    scd = distill(target, repo.get("other"), _config("scd", epochs=1), run_dir=tmp_path / "scd")
    pool = len(target.split("train")) + len(target.split("unlabeled"))  # 15 + 12
    assert ce.timing["steps"] == scd.timing["steps"] == -(-pool // 8)


def test_an_index_stream_over_nothing_is_refused_instead_of_waiting_forever():
    from scd_core.distill.data import IndexStream

    with pytest.raises(ValueError, match="at least one index"):
        IndexStream(0, torch.Generator().manual_seed(0))
    stream = IndexStream(3, torch.Generator().manual_seed(0), offset=10)
    assert sorted(stream.take(3).tolist()) == [10, 11, 12] and stream.take(5).numel() == 5
