"""Teacher outputs (streaming pass, cache), ranking, successive halving and transport plans."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_teacher, write_image_folder

from scd_core import ScdError
from scd_core.assess.ranking import rank, stratified_prefix
from scd_core.data.images import load_rgb
from scd_core.data.targets import load_target
from scd_core.ot.plans import plan_from_outputs, transport_plan
from scd_core.outputs.forward import eval_transform, teacher_outputs
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.teachers.repository import TeacherRepository, load_teacher

CLASSES = {"red": 6, "green": 6, "blue": 6, "white": 6}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess")
    target = write_image_folder(root / "target", CLASSES, size=16, seed=1)
    for i, k in enumerate([3, 4, 7, 9, 12]):
        make_teacher(root / "repo" / f"teacher_{k}", k, img_size=16, seed=i, description=f"{k} classes")
    return load_target(target), TeacherRepository.from_folder(root / "repo")


def _direct_outputs(spec, target):
    """Reference: run the model on every image at once, without the streaming code."""
    model = load_teacher(spec)
    transform, _ = eval_transform(spec)
    items = target.assessment_items
    x = torch.stack([transform(load_rgb(it.path)) for it in items])
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(pre)
    labels = np.array([it.label for it in items])
    return TeacherOutputs.from_arrays(logits.numpy(), labels, pre.numpy(), num_target_classes=target.num_classes)


def test_streaming_pass_matches_direct_computation(world, fresh_cache):
    target, repo = world
    spec = repo.get("teacher_7")
    out = teacher_outputs(spec, target, batch_size=5, device="cpu")  # several batches, ragged last one
    ref = _direct_outputs(spec, target)
    np.testing.assert_allclose(out.joint, ref.joint, atol=1e-5)
    np.testing.assert_allclose(out.hard_joint, ref.hard_joint, atol=1e-12)
    np.testing.assert_allclose(out.class_feature_sums, ref.class_feature_sums, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.features, ref.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.top_classes[:, 0], ref.top_classes[:, 0])
    assert out.joint.shape == (7, 4) and abs(out.joint.sum() - 1) < 1e-6
    assert out.head_weight.shape == (7, out.feature_dim)
    assert len(out.image_ids) == out.num_samples == len(target.assessment_items)


def test_outputs_are_cached_and_invalidated_by_content(world, fresh_cache, tmp_path):
    target, repo = world
    spec = repo.get("teacher_4")
    cold = teacher_outputs(spec, target, device="cpu")
    warm = teacher_outputs(spec, target, device="cpu")
    assert not cold.timing.get("cached") and warm.timing.get("cached")
    np.testing.assert_array_equal(np.asarray(cold.logits), np.asarray(warm.logits))
    np.testing.assert_array_equal(cold.joint, warm.joint)

    # A changed image changes the target fingerprint: a new entry, not the old one.
    copy = write_image_folder(tmp_path / "t2", CLASSES, size=16, seed=1)
    first = sorted((copy / "red").iterdir())[0]
    from helpers import write_image

    write_image(first, 16, seed=999)
    changed = teacher_outputs(spec, load_target(copy), device="cpu")
    assert not changed.timing.get("cached")


def test_corrupted_cache_entry_is_recomputed(world, fresh_cache):
    target, repo = world
    spec = repo.get("teacher_3")
    first = teacher_outputs(spec, target, device="cpu")
    stats = first.source_dir / "stats.npz"
    data = bytearray(stats.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stats.write_bytes(bytes(data))
    again = teacher_outputs(spec, target, device="cpu")
    assert not again.timing.get("cached")
    np.testing.assert_allclose(again.joint, first.joint)


def test_rank_table_is_sorted_best_first_with_directions(world):
    target, repo = world
    ranking = rank(target, repo, metrics=["leep", "scd", "nce"], device="cpu")
    table = ranking.table()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["num_classes", "images", "leep", "scd", "nce"]
    assert table["leep"].is_monotonic_decreasing  # leep: higher is better, ranked first
    assert set(table.index) == set(repo.names)
    by_scd = rank(target, repo, metrics=["scd"], device="cpu").table()
    assert by_scd["scd"].is_monotonic_decreasing  # scd (contrastive log-likelihood): higher is better
    payload = ranking.to_json()
    assert set(payload) >= {"target", "metrics", "teachers", "timing"}
    assert payload["metrics"]["scd"]["higher_is_better"] is True
    assert payload["metrics"]["leep"]["higher_is_better"] is True
    first = payload["teachers"][0]
    assert set(first) >= {"name", "num_classes", "scores"} and set(first["scores"]) == {"leep", "scd", "nce"}


def test_rank_subset_and_errors(world):
    target, repo = world
    table = rank(target, repo, teachers=["teacher_9", "teacher_3"], metrics=["nce"], device="cpu").table()
    assert set(table.index) == {"teacher_9", "teacher_3"}
    with pytest.raises(ScdError, match="unknown metric"):
        rank(target, repo, metrics=["accuracy"], device="cpu")
    with pytest.raises(ScdError, match="no teacher named"):
        rank(target, repo, teachers=["missing"], device="cpu")
    with pytest.raises(ScdError, match="budget"):
        rank(target, repo, budget=1.5, device="cpu")


def test_pipelined_rank_equals_one_teacher_at_a_time_and_loads_each_model_once(world, fresh_cache, monkeypatch):
    """The in-process pipeline (load next, forward current, score previous) changes no score or order;
    it builds each uncached teacher once and none whose outputs are cached."""
    import scd_core.teachers.repository as repository
    from scd_core.assess.ranking import score_teacher

    target, repo = world
    loads: list[str] = []
    real_load = repository.load_teacher
    monkeypatch.setattr(repository, "load_teacher", lambda spec, device="cpu": loads.append(spec.name)
                        or real_load(spec, device))
    ranking = rank(target, repo, metrics=["scd", "leep", "logme"], device="cpu")
    assert sorted(loads) == sorted(repo.names)  # one build per teacher, none twice
    for spec in repo.specs:
        alone = score_teacher(target, spec, ["scd", "leep", "logme"], device="cpu", use_cache=False)
        piped = next(t for t in ranking.teachers if t.name == spec.name)
        assert piped.scores == pytest.approx(alone.scores, abs=1e-9)
        assert piped.intervals == pytest.approx(alone.intervals, abs=1e-9)
    loads.clear()
    again = rank(target, repo, metrics=["scd", "leep", "logme"], device="cpu")
    assert loads == [] and again.names == ranking.names  # cached outputs: no model built at all


def test_pipelined_rank_stops_at_the_first_broken_teacher_by_name(world, tmp_path):
    """A teacher whose weights do not load stops the in-process ranking with its own name."""
    import shutil

    from scd_core.errors import TeacherError

    target, repo = world
    for name in ("teacher_3", "teacher_4"):
        shutil.copytree(repo.get(name).location, tmp_path / name)
    weights = next((tmp_path / "teacher_4").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated file
    with pytest.raises((TeacherError, ScdError), match="teacher_4"):
        rank(target, TeacherRepository.from_folder(tmp_path), metrics=["scd"], device="cpu", use_cache=False)


def test_successive_halving_spends_less_and_keeps_the_winner_on_more_images(world):
    target, repo = world
    full = rank(target, repo, metrics=["scd"], device="cpu").table()
    halved = rank(target, repo, metrics=["scd"], budget=0.4, device="cpu").table()
    assert set(halved.index) == set(full.index)
    n = len(target.assessment_items)
    assert halved["images"].sum() < full["images"].sum()
    assert halved["images"].iloc[0] == halved["images"].max()  # the winner was seen on the most images
    assert halved["images"].min() < n
    assert (halved["round"].diff().dropna() <= 0).all()  # later rounds first


def test_stratified_prefix_is_nested_and_keeps_every_class(world):
    target, _ = world
    items = target.assessment_items
    small, large = stratified_prefix(items, 0.2, seed=3), stratified_prefix(items, 0.5, seed=3)
    assert set(small) <= set(large)
    assert {it.label for it in small} == set(range(target.num_classes))
    assert all(sum(it.label == c for it in small) >= 2 for c in range(target.num_classes))


def test_transport_plan_kinds_and_marginals(world, tmp_path):
    target, repo = world
    plan = transport_plan(target, repo, "teacher_9", "plan", device="cpu")
    out = teacher_outputs(repo.get("teacher_9"), target, device="cpu")
    assert plan.rows == list(repo.get("teacher_9").label_names) and plan.cols == target.class_names
    np.testing.assert_allclose(plan.matrix.sum(1), out.joint.sum(1), atol=1e-9)
    np.testing.assert_allclose(plan.matrix.sum(0), out.joint.sum(0), atol=1e-9)
    joint = transport_plan(target, repo, "teacher_9", "joint", device="cpu")
    np.testing.assert_allclose(joint.matrix, out.joint)
    cost = plan_from_outputs(out, "cost")
    assert cost.matrix.min() >= 0 and cost.matrix.max() <= 1
    # the exact plan is optimal: no cheaper coupling than the independent one
    indep = np.outer(out.joint.sum(1), out.joint.sum(0))
    assert (plan.matrix * cost.matrix).sum() <= (indep * cost.matrix).sum() + 1e-12
    entropic = plan_from_outputs(out, "plan", eps=0.05)
    np.testing.assert_allclose(entropic.matrix.sum(0), out.joint.sum(0), atol=1e-6)
    plan.to_csv(tmp_path / "plan.csv")
    frame = pd.read_csv(tmp_path / "plan.csv", index_col=0)
    assert list(frame.columns) == target.class_names and list(frame.index) == plan.rows
    top = plan.top_rows(3)
    assert len(top.rows) == 3 and top.matrix.sum() <= plan.matrix.sum()
    with pytest.raises(ScdError, match="kind"):
        transport_plan(target, repo, "teacher_9", "heatmap", device="cpu")


def test_cache_evicts_least_recently_used_entries(world, fresh_cache, monkeypatch):
    from scd_core.outputs import cache

    target, repo = world
    first = teacher_outputs(repo.get("teacher_3"), target, device="cpu")
    size_one = cache.cache_size_bytes()
    monkeypatch.setenv("SCD_CACHE_MAX_BYTES", str(int(size_one * 1.5)))
    teacher_outputs(repo.get("teacher_4"), target, device="cpu")  # publishing evicts the older entry
    assert not first.source_dir.exists()
    assert cache.cache_size_bytes() <= size_one * 1.5 + 1
