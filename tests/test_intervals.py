"""Bootstrap intervals of the scores: width and coverage on a known-variance case, the vectorised
NCE resampling against a direct recount, the JSON keys, near ties and early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scd_core.assess.ranking as ranking_module
from scd_core.assess.intervals import (
    bootstrap_counts,
    half_samples,
    intervals_overlap,
    mean_interval,
    score_with_intervals,
)
from scd_core.assess.metrics import Metric, get_metric, nce_from_labels
from scd_core.assess.ranking import MetricInfo, Ranking, TeacherScore, rank
from scd_core.outputs.streaming import TeacherOutputs


class _MeanOfValues(Metric):
    """A metric that is the mean of given per-image values (known variance)."""

    name = "mean_values"
    mean_over_images = True

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def score(self, outputs: TeacherOutputs) -> float:
        return float(self.values.mean())

    def per_image(self, outputs: TeacherOutputs) -> np.ndarray:
        return self.values


def _outputs(n: int, k_t: int = 5, k_s: int = 3, seed: int = 0) -> TeacherOutputs:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k_s
    logits = (rng.normal(size=(n, k_t)) * 2).astype(np.float16)
    return TeacherOutputs.from_arrays(logits, labels, rng.normal(size=(n, 8)).astype(np.float32),
                                      num_target_classes=k_s, head_weight=rng.normal(size=(k_t, 8)))


def test_interval_width_matches_the_known_standard_error():
    n, sd = 400, 2.0
    values = np.random.default_rng(1).normal(3.0, sd, size=n)
    scores, intervals = score_with_intervals(_outputs(n), [_MeanOfValues(values)])
    low, high = intervals["mean_values"]
    expected = 2 * 1.96 * values.std(ddof=1) / np.sqrt(n)
    assert scores["mean_values"] == pytest.approx(values.mean())
    assert low < values.mean() < high
    assert high - low == pytest.approx(expected, rel=0.1)
    assert 2 * 1.96 * sd / np.sqrt(n) == pytest.approx(expected, rel=0.1)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    n, trials = 200, 300
    hits = 0
    for t in range(trials):
        low, high = mean_interval(rng.exponential(1.0, size=n), resamples=500, seed=t)
        hits += low <= 1.0 <= high
    assert 0.90 <= hits / trials <= 0.985


def test_bootstrap_is_seeded_and_rows_draw_n_images():
    counts = bootstrap_counts(50, 20, seed=3)
    assert counts.shape == (20, 50) and np.all(counts.sum(axis=1) == 50)
    np.testing.assert_array_equal(counts, bootstrap_counts(50, 20, seed=3))
    assert not np.array_equal(counts, bootstrap_counts(50, 20, seed=4))
    halves = half_samples(11, 4, seed=0)
    assert halves.shape == (4, 5) and all(len(set(h)) == 5 for h in halves)


def test_nce_resampling_equals_a_direct_recount():
    outputs = _outputs(60, k_t=7, k_s=4, seed=5)
    counts = bootstrap_counts(60, 6, seed=0)
    fast = get_metric("nce").resample(outputs, counts)
    z = outputs.top_classes[:, 0]
    for b, row in enumerate(counts.astype(np.int64)):
        idx = np.repeat(np.arange(60), row)
        assert fast[b] == pytest.approx(nce_from_labels(z[idx], outputs.labels[idx]), abs=1e-12)


def test_every_default_metric_gets_an_interval_around_its_score():
    outputs = _outputs(80, seed=6)
    names = ["scd", "scd_cost", "leep", "nce", "logme", "hscore"]
    scores, intervals = score_with_intervals(outputs, [get_metric(n) for n in names])
    for name in names:
        low, high = intervals[name]
        assert low <= scores[name] <= high, name
        assert scores[name] == pytest.approx(get_metric(name).score(outputs), rel=1e-6, abs=1e-9)


def test_near_ties_are_the_overlapping_intervals():
    assert intervals_overlap((0.0, 1.0), (1.0, 2.0)) and not intervals_overlap((0.0, 1.0), (1.1, 2.0))
    assert not intervals_overlap((0.0, 1.0), None) and not intervals_overlap((0.0, np.nan), (0.0, 1.0))
    teachers = (TeacherScore("a", 3, 10, {"s": 0.9}, {"s": (0.8, 1.0)}),
                TeacherScore("b", 3, 10, {"s": 0.75}, {"s": (0.6, 0.85)}),
                TeacherScore("c", 3, 10, {"s": 0.2}, {"s": (0.1, 0.3)}))
    ranking = Ranking(teachers, {"s": MetricInfo("s", True)}, rank_by="s")
    assert ranking.near_ties_for("s") == ["b"]
    payload = ranking.to_json()
    assert payload["teachers"][0]["intervals"] == {"s": [0.8, 1.0]}


def test_budgeted_ranking_stops_once_the_leader_is_clear(monkeypatch):
    """Successive halving stops after the first round when the leader's interval is clear of all others."""
    calls: list[tuple[str, int]] = []

    def fake_score_all(target, specs, names, items, options, progress, executor, failures):
        scores = []
        for spec in specs:
            calls.append((spec.name, len(items)))
            value = {"t0": 0.9}.get(spec.name, 0.1)
            scores.append(TeacherScore(spec.name, spec.num_classes, len(items), {"s": value},
                                       {"s": (value - 0.05, value + 0.05)}))
        return scores

    class _Spec:
        def __init__(self, name):
            self.name, self.num_classes = name, 2

    class _Item:
        def __init__(self, label):
            self.label = label

    specs = [_Spec(f"t{i}") for i in range(8)]
    items = [_Item(i % 2) for i in range(200)]
    monkeypatch.setattr(ranking_module, "_score_all", fake_score_all)
    scored = ranking_module._successive_halving(None, specs, items, ["s"], MetricInfo("s", True), 0.5, None,
                                                {"seed": 0})
    assert len(calls) == 8 and {s.round for s in scored} == {0}  # one round, then the leader was clear


def test_rank_json_has_intervals_and_near_ties_on_the_shapes_budgeted_example():
    """demo:shapes (small): with a quarter of the images, superset and near_identical are a near tie."""
    ranking = rank("demo:shapes", "demo:shapes", metrics=["scd", "leep"], budget=0.25, device="cpu")
    payload = json.loads(json.dumps(ranking.to_json(), allow_nan=False))
    assert isinstance(payload["near_ties"], list)
    for teacher in payload["teachers"]:
        assert set(teacher["intervals"]) == {"scd", "leep"}
        for metric, (low, high) in teacher["intervals"].items():
            assert low <= teacher["scores"][metric] <= high
    assert {ranking.best, *ranking.near_ties} >= {"superset", "near_identical"}
    assert set(ranking.near_ties) == set(ranking.near_ties_for("scd"))
