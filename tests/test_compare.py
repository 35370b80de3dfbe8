"""Comparing runs over seeds (intervals, noise labels, cancelled runs left out) and the adaptive teacher weight."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from scd_core import ScdError
from scd_core.distill.compare import (
    NO_TEST_NOTE,
    RunRecord,
    class_weight_rows,
    compare,
    difference,
    kfold_targets,
    lambda_cell,
    matching_baseline,
    record_from_job,
    run_label,
    weight_note,
)
from scd_core.distill.losses import _kl_rows

SETTING = ("fp", "resnet10t", 15, None)  # target, student, epochs, k-fold (None: plain seeds)


def _run(method: str, teacher: str | None, seed: int, val: float, status: str = "finished", **kw) -> RunRecord:
    return RunRecord(run_id=f"{method}-{teacher}-{seed}-{status}", method=method, teacher=teacher, seed=seed,
                     status=status, val_acc=val, n_val=kw.pop("n_val", 40), started=1_700_000_000.0 + seed,
                     setting=SETTING, **kw)


def test_cancelled_and_failed_runs_are_kept_out_of_the_comparison_and_of_best():
    runs = [_run("ce", None, 0, 0.50), _run("scd", "good", 0, 0.70),
            _run("scd", "short", 0, 0.99, status="cancelled"), _run("ce", None, 1, 0.95, status="failed")]
    result = compare(runs)
    names = {g.name for g in result.groups}
    assert names == {"ce (no teacher)", "scd ← good"}
    assert {r.status for r in result.excluded} == {"cancelled", "failed"}
    best = [g for g in result.groups if g.best]
    assert len(best) == 1 and best[0].teacher == "good" and best[0].val_mean == pytest.approx(0.70)
    assert result.baseline is not None and result.baseline.n == 1 and result.baseline.val_mean == pytest.approx(0.5)


def test_the_interval_over_seeds_is_welchs():
    scd, ce = [0.70, 0.74, 0.66], [0.52, 0.55, 0.50]
    runs = [_run("scd", "t", s, v) for s, v in enumerate(scd)] + [_run("ce", None, s, v) for s, v in enumerate(ce)]
    result = compare(runs, n_val=100)
    g = next(g for g in result.groups if g.method == "scd")
    assert g.n == 3 and g.val_mean == pytest.approx(np.mean(scd)) and g.val_std == pytest.approx(np.std(scd, ddof=1))
    ci = stats.ttest_ind(scd, ce, equal_var=False).confidence_interval(0.95)
    assert g.vs_ce.source == "seeds"
    assert (g.vs_ce.low, g.vs_ce.high) == pytest.approx((ci.low, ci.high))
    assert not g.vs_ce.within_noise and g.vs_ce.label.startswith("better than ce beyond noise")
    # more seeds with the same spread give a narrower interval
    more = difference(scd * 3, ce * 3, 100)
    assert more.high - more.low < g.vs_ce.high - g.vs_ce.low


def test_a_one_image_difference_on_a_small_split_is_labelled_noise():
    runs = [_run("ce", None, 0, 1.0, n_val=16), _run("scd", "top", 0, 15 / 16, n_val=16)]
    result = compare(runs)
    d = next(g for g in result.groups if g.method == "scd").vs_ce
    assert d.value == pytest.approx(-1 / 16) and d.source == "validation split" and d.within_noise
    assert "within noise" in d.label and "16 validation images" in d.label and "6.2 points" in d.label
    assert result.one_image_points == pytest.approx(6.25)
    assert any("only 16 images" in w and "k-fold" in w for w in result.warnings)
    assert result.test_note == NO_TEST_NOTE  # no run reports a test accuracy


def test_a_large_difference_on_a_large_split_is_not_noise():
    d = difference([0.80], [0.50], 1000)
    assert not d.within_noise and d.low > 0 and "1000 validation images" in d.label


def test_runs_get_distinct_labels_and_match_their_baseline():
    a, b = _run("scd", "t", 0, 0.6), _run("scd", "t", 1, 0.6)
    assert run_label(a) != run_label(b) and "seed 0" in run_label(a)
    ce_old, ce_new = _run("ce", None, 0, 0.5), _run("ce", None, 0, 0.55)
    ce_new = RunRecord(**{**ce_new.__dict__, "run_id": "new", "started": ce_old.started + 10})
    other_seed = _run("ce", None, 1, 0.9)
    assert matching_baseline(a, [ce_old, ce_new, other_seed]) is ce_new
    job = {"id": "j1", "status": "cancelled", "started": 5.0, "meta": {"method": "scd", "teacher": "t", "seed": 2,
           "n_val": 30, "target_fp": "fp", "student": "resnet10t", "epochs": 15},
           "result": {"val_acc": 0.4, "test_acc": None, "config": {"weighting": "adaptive"}}}
    rec = record_from_job(job)
    assert rec.status == "cancelled" and rec.seed == 2 and rec.weighting == "adaptive" and rec.setting == SETTING
    assert rec.test_acc is None and compare([rec]).groups == []


def test_the_comparison_says_which_lambda_an_adaptive_run_used_and_why():
    evidence = {"accuracy": 0.30, "n": 48, "chance": 1 / 6, "judged": "2-fold cross-fitted, 5 splits"}
    weak = {"weighting": "adaptive", "base": 1.0, "lambda": 0.05, "agreement": 0.05, "evidence": evidence}
    useless = {**weak, "lambda": 0.0, "agreement": 0.0, "evidence": {**evidence, "accuracy": 0.18}}

    def job(i, teacher, weight, method="scd"):
        return {"id": f"j{i}", "status": "finished", "started": float(i),
                "meta": {"method": method, "teacher": teacher, "seed": i, "n_val": 30, "target_fp": "fp",
                         "student": "resnet10t", "epochs": 15, "weighting": "adaptive"},
                "result": {"val_acc": 0.5, "teacher_weight": weight}}

    records = [record_from_job(j) for j in (job(0, "weak", weak), job(1, "weak", weak), job(2, "useless", useless),
                                            job(3, None, {}, method="ce"))]
    groups = {g.teacher: g for g in compare(records).groups}
    assert groups["weak"].lambdas == [0.05] and groups["useless"].lambdas == [0.0] and groups[None].lambdas == []
    assert groups["weak"].weight_note.startswith("λ 0.05 = 1 × agreement 0.05: ")
    assert "30% of 48 labeled train images" in groups["weak"].weight_note and "chance 17%" in groups["weak"].weight_note
    assert "trained as ce" in groups["useless"].weight_note and groups[None].weight_note is None
    assert weight_note({"weighting": "fixed", "base": 1.0, "lambda": 1.0}) is None
    # a weight the user set to 0 is not blamed on the teacher; a tiny one is not shown as 0
    assert weight_note({**weak, "base": 0.0, "lambda": 0.0}).startswith("λ 0: the teacher weight was set to 0")
    assert weight_note({**weak, "lambda": 0.003}).startswith("λ <0.01 = 1 × agreement <0.01")
    assert lambda_cell([0.003]) == "<0.01" and lambda_cell([0.0]) == "0" and lambda_cell([]) == "not recorded"
    assert "did not record" in weight_note({"weighting": "adaptive", "base": 1.0, "lambda": 0.4})
    # one weight per teacher class: how many classes earned one
    classes = {"six": {"weight": 0.4, "n": 20}, "seven": {"weight": 0.0, "n": 28}}
    per_class = {**weak, "lambda": 0.16, "agreement": 0.16, "evidence": {**evidence, "classes": classes}}
    note = weight_note(per_class)
    assert note.startswith("λ 0.16 (mean over the training images) = 1 × mean class weight 0.16: ")
    assert "1 of the 2 teacher classes your labeled images fell in earned weight (six 0.40)" in note
    assert "30% of 48 labeled train images" in note
    assert "none of its classes" in weight_note({**per_class, "lambda": 0.0, "agreement": 0.0})
    # a run from before the weight was set per teacher class (no rule recorded) is compared apart
    today = {**per_class, "rule": "per teacher class, cross-fitted"}
    mixed = [record_from_job(job(i, "weak", w)) for i, w in enumerate((weak, today, today))]
    earlier, now = sorted(compare(mixed).groups, key=lambda g: len(g.runs))
    assert len(now.runs) == 2 and now.name == "scd ← weak, adaptive λ"
    assert len(earlier.runs) == 1 and earlier.name == "scd ← weak, adaptive λ (one per teacher, earlier rule)"
    assert earlier.weight_note.startswith("λ 0.05 = 1 × agreement 0.05: ")
    # the table behind the note: highest weight first; nothing for the earlier rule or a fixed weight
    assert [r["teacher class"] for r in now.class_weights] == ["six", "seven"] and earlier.class_weights == []
    assert now.class_weights[0] == {"teacher class": "six", "labeled images": 20, "training images": None,
                                    "weight": 0.4}
    assert class_weight_rows({"weighting": "fixed", "base": 1.0, "lambda": 1.0}) == []
    # k-fold runs each measure their own weight: a range, and whose note is shown
    folds = [record_from_job(job(i, "weak", {**weak, "lambda": lam})) for i, lam in enumerate((0.03, 0.06))]
    folds = [replace(r, fold=i) for i, r in enumerate(folds)]
    (group,) = compare(folds).groups
    assert lambda_cell(group.lambdas) == "0.03–0.06"
    assert group.weight_note.startswith("λ 0.03–0.06 over 2 folds") and "fold 1: λ 0.03" in group.weight_note


def test_kfold_targets_are_stratified_and_disjoint(tmp_path):
    from helpers import write_image_folder

    from scd_core.data.targets import load_target

    classes = {"a": 8, "b": 8}
    splits = {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}
    target = load_target(write_image_folder(tmp_path / "t", classes, size=8, splits=splits))
    folds = kfold_targets(target, 4)
    vals = [{it.rel for it in f.split("val")} for f in folds]
    assert all(len(v) == 4 for v in vals) and set.union(*vals) == {it.rel for it in target.assessment_items}
    assert all(not (vals[i] & vals[j]) for i in range(4) for j in range(i + 1, 4))
    assert all({it.rel for it in f.split("test")} == {it.rel for it in target.split("test")} for f in folds)
    with pytest.raises(ScdError, match="9-fold"):
        kfold_targets(target, 9)


def test_the_cross_fitted_agreement_gives_a_noise_teacher_no_weight_where_in_sample_would():
    """Features of pure noise through a linear head: a cost fitted to the same few labeled images classifies
    them better than chance (it fits their noise); judged on held-out halves the agreement is about 0. A
    teacher whose outputs do carry the labels keeps its agreement out of sample."""
    from scd_core.distill.signal import crossfit_agreement, label_agreement
    from scd_core.ot.costs import cost_matrix
    from scd_core.outputs.streaming import TeacherOutputs

    labels = np.repeat(np.arange(4), 10)
    one_shot = np.repeat(np.arange(4), [13, 13, 13, 1])  # a class with a single labeled image
    in_sample, crossed, crossed_one_shot, informed = [], [], [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        head = (rng.normal(size=(16, 512)) / np.sqrt(512)).astype(np.float32)
        noise = rng.normal(size=(40, 512)).astype(np.float32)
        outputs = TeacherOutputs.from_arrays(3 * noise @ head.T, labels, noise, num_target_classes=4,
                                             head_weight=head)
        in_sample.append(label_agreement(outputs, cost_matrix(outputs, "prototype"))["agreement"])
        crossed.append(crossfit_agreement(outputs, "prototype", seed=seed)["agreement"])
        rare = TeacherOutputs.from_arrays(3 * noise @ head.T, one_shot, noise, num_target_classes=4, head_weight=head)
        judged = crossfit_agreement(rare, "prototype", seed=seed)
        assert judged["judged"].endswith("cross-fitted, 5 splits")  # no fall-back to in sample
        crossed_one_shot.append(judged["agreement"])
        signal = noise + 4 * head[labels * 4]  # teacher class 4c fires for target class c
        outputs = TeacherOutputs.from_arrays(3 * signal @ head.T, labels, signal, num_target_classes=4,
                                             head_weight=head)
        informed.append(crossfit_agreement(outputs, "prototype", seed=seed)["agreement"])
    assert np.mean(in_sample) > 0.05  # the optimism that cross-fitting removes
    assert np.mean(crossed) < 0.02 and max(crossed) <= 0.05
    assert np.mean(crossed_one_shot) < 0.02 and max(crossed_one_shot) <= 0.05
    assert min(informed) > 0.5
    again = crossfit_agreement(outputs, "prototype", seed=9)
    assert again == crossfit_agreement(outputs, "prototype", seed=9)  # deterministic
    assert again["judged"] == "2-fold cross-fitted, 5 splits"


def test_class_weights_trust_a_teachers_reliable_classes_and_not_its_guesses():
    """A teacher whose classes 0 and 1 fire for target classes 0 and 1, and whose class 2 or 3 fires at random
    for target classes 2 and 3: classes 0 and 1 earn most of their weight, 2 and 3 (right half the time, where
    chance is a quarter) about none, and a class no labeled image falls in gets 0. Classes 2 and 3 fire for
    exactly half of each of the two target classes, so they carry no label information even by chance."""
    from scd_core.distill.signal import class_weights, crossfit_judgements
    from scd_core.outputs.streaming import TeacherOutputs

    labels = np.repeat(np.arange(4), 12)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        head = (rng.normal(size=(6, 512)) / np.sqrt(512)).astype(np.float32)
        fires = np.where(labels < 2, labels, 2 + np.arange(labels.size) % 2)  # 6 and 6 of each of targets 2, 3
        features = (rng.normal(size=(48, 512)) + 6 * head[fires]).astype(np.float32)
        outputs = TeacherOutputs.from_arrays(3 * features @ head.T, labels, features, num_target_classes=4,
                                             head_weight=head)
        judged = crossfit_judgements(outputs, "prototype", temperature=4.0, seed=seed)
        weights, count = class_weights(outputs, judged)
        assert list(count[:4]) == list(np.bincount(fires, minlength=4)) and list(count[4:]) == [0, 0]
        assert min(weights[:2]) > 0.5 and max(weights[2:4]) < 0.15 and list(weights[4:]) == [0.0, 0.0], weights


def test_the_teacher_term_counts_each_image_by_its_weight():
    import torch

    from scd_core.distill.losses import Batch, make_loss

    torch.manual_seed(0)
    batch = Batch(student_logits=torch.randn(4, 3), labels=torch.tensor([0, 1, -1, -1]),
                  teacher_logits=torch.randn(4, 5), student_features=torch.randn(4, 8),
                  teacher_features=torch.randn(4, 8))
    plan = np.random.default_rng(0).random((5, 3))
    from scd_core.distill.losses import TeacherContext

    context = TeacherContext([f"t{i}" for i in range(5)], ["a", "b", "c"], cost=plan, plan=plan)
    for method in ("scd", "translate", "rkd", "kd"):
        loss = make_loss(method)
        loss.prepare(context if method != "kd" else replace(context, teacher_labels=["c", "a", "b"]),
                     torch.device("cpu"))
        b = batch if method != "kd" else replace(batch, teacher_logits=batch.teacher_logits[:, :3])
        plain = loss.teacher_term(b)
        assert torch.allclose(loss.teacher_term(replace(b, teacher_weight=torch.ones(4))), plain)
        assert float(loss.teacher_term(replace(b, teacher_weight=torch.zeros(4)))) == 0.0
        first = loss.teacher_term(replace(b, teacher_weight=torch.tensor([1.0, 0, 0, 0])))
        if method == "rkd":  # relational: scaled by the weights' batch mean
            assert torch.allclose(first, plain / 4)
        else:  # per image: weights (1, 0, 0, 0) keep the first image's term alone, over 4
            one = Batch(student_logits=b.student_logits[:1], labels=b.labels[:1], teacher_logits=b.teacher_logits[:1])
            assert torch.allclose(first, loss.teacher_term(one) / 4, atol=1e-6)
    # without weights, kd's per-image KL averages to the batchmean KL of Hinton's form (fixed runs unchanged)
    q = torch.softmax(batch.teacher_logits[:, :3] / 4.0, dim=1)
    hinton = torch.nn.functional.kl_div(torch.log_softmax(batch.student_logits / 4.0, dim=1), q,
                                        reduction="batchmean") * 16.0
    assert torch.allclose(_kl_rows(q, batch.student_logits, 4.0).mean(), hinton)


def test_a_useless_teacher_with_many_classes_collects_almost_no_weight():
    """1000 teacher classes, 10 target classes of 5 labeled images, outputs that ignore the labels: a class
    that one or two labeled images fall in can be right by luck and earn up to about 0.2, but such classes
    cover few images, so the mean weight over a fresh pool stays near 0."""
    from scd_core.distill.signal import class_weights, crossfit_judgements
    from scd_core.outputs.streaming import TeacherOutputs

    labels = np.repeat(np.arange(10), 5)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        head = (rng.normal(size=(1000, 64)) / 8).astype(np.float32)
        features = rng.normal(size=(50, 64)).astype(np.float32)
        outputs = TeacherOutputs.from_arrays(8 * features @ head.T, labels, features, num_target_classes=10,
                                             head_weight=head)
        weights, count = class_weights(outputs, crossfit_judgements(outputs, "prototype", temperature=4.0, seed=seed))
        pool_top = (rng.normal(size=(500, 64)).astype(np.float32) @ head.T).argmax(axis=1)
        assert count.sum() == 50 and weights[count == 0].max() == 0.0
        assert weights[pool_top].mean() < 0.01, (seed, weights.max())


def test_the_adaptive_weight_is_near_zero_for_an_untrained_teacher_and_high_for_a_good_one(tmp_path):
    """A good teacher: a real timm student trained with ``ce`` on the colour classes, then used as a teacher;
    an untrained one: the same architecture at random initialisation. A random network can still split the
    images by colour (this one fires its class 2 for most of one colour), which is real information about
    colour classes and earns that class its weight; so the untrained teacher is judged on the same images
    labeled independently of their colour, where nothing it computes can predict the label."""
    from helpers import make_teacher, write_csv, write_image_folder

    from scd_core.data.targets import load_target
    from scd_core.distill.signal import class_weights, crossfit_agreement, crossfit_judgements, train_outputs
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.teachers.repository import spec_from_folder

    classes = {"red": 12, "green": 12, "blue": 12}
    splits = {"train": classes, "val": {c: 3 for c in classes}}
    folder = write_image_folder(tmp_path / "target", classes, size=16, splits=splits)
    target = coloured = load_target(folder)
    rows = [(f"{split}/{colour}/{i:03d}.png", "abc"[i % 3], split)  # every label holds every colour alike
            for split, counts in splits.items() for colour, count in counts.items() for i in range(count)]
    colourless = load_target(write_csv(folder / "colourless.csv", rows, header=("path", "label", "split")))
    trained = distill(target, None, DistillConfig(method="ce", student="test_resnet", epochs=12, batch_size=12,
                                                  image_size=16, device="cpu"), run_dir=tmp_path / "good")
    teachers = {"good": spec_from_folder(trained.student_dir),
                "untrained": spec_from_folder(make_teacher(tmp_path / "untrained", 3, img_size=16, seed=3))}
    judged_on = {"good": target, "untrained": colourless}
    agreement, weights = {}, {}
    for name, spec in teachers.items():
        outputs = train_outputs(spec, judged_on[name], "cpu")
        agreement[name] = crossfit_agreement(outputs, "prototype", temperature=4.0)
        weights[name], _ = class_weights(outputs, crossfit_judgements(outputs, "prototype", temperature=4.0))
    assert max(weights["untrained"]) <= 0.1 and min(weights["good"]) >= 0.5, weights  # per teacher class
    assert agreement["untrained"]["agreement"] <= 0.1, agreement
    assert agreement["good"]["agreement"] >= 0.6, agreement
    assert agreement["good"]["accuracy"] > agreement["good"]["accuracy_lower"] > 1 / 3
    outputs = train_outputs(teachers["untrained"], target, "cpu")  # on the colour labels: one class earns weight
    splits_colour, _ = class_weights(outputs, crossfit_judgements(outputs, "prototype", temperature=4.0))
    assert sorted(splits_colour > 0.3) == [False, False, True], splits_colour

    # no weight earned: the run is exactly ce (same init, same batches)
    config = DistillConfig(method="scd", weighting="adaptive", weight=2.0, student="test_resnet", epochs=1,
                           batch_size=12, image_size=16, device="cpu")
    run = distill(colourless, teachers["untrained"], config, run_dir=tmp_path / "adaptive")
    assert run.teacher_weight["weighting"] == "adaptive" and run.teacher_weight["lambda"] == 0.0
    ce = distill(colourless, None, replace(config, method="ce"), run_dir=tmp_path / "ce")
    assert run.teacher_weight["trained_as"] == "ce"
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in ce.history]
    # every class of the good teacher earned the same weight w, so adaptive must train as fixed lambda = 2 w:
    # it does only if each image's weight reaches the loss (the run records lambda = base x pool mean)
    w = float(weights["good"][0])
    assert np.ptp(weights["good"]) == 0.0
    good = distill(coloured, teachers["good"], config, run_dir=tmp_path / "good-adaptive")
    assert good.teacher_weight["agreement"] == pytest.approx(w)
    assert good.teacher_weight["lambda"] == pytest.approx(2 * w)
    evidence = good.teacher_weight["evidence"]
    assert set(evidence["classes"]) == {"red", "green", "blue"}
    assert sum(c["pool"] for c in evidence["classes"].values()) + evidence["pool_unjudged"] == 36  # every image
    fixed = distill(coloured, teachers["good"], replace(config, weighting="fixed", weight=2 * w),
                    run_dir=tmp_path / "good-fixed")
    assert [h["train_loss"] for h in good.history] == pytest.approx([h["train_loss"] for h in fixed.history],
                                                                    rel=1e-5)
    other = distill(coloured, teachers["good"], replace(config, weighting="fixed"), run_dir=tmp_path / "good-2")
    assert [h["train_loss"] for h in other.history] != pytest.approx([h["train_loss"] for h in good.history],
                                                                     rel=1e-5)


def test_a_tie_has_no_best():
    from scd_core.distill.compare import RunRecord, compare

    runs = [RunRecord(run_id=f"{m}{s}", method=m, teacher=None if m == "ce" else "t", seed=s, status="finished",
                      val_acc=0.5, n_val=20) for m in ("ce", "scd") for s in range(2)]
    assert not any(g.best for g in compare(runs).groups)
