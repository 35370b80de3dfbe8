"""Label-space cost matrices: hand-worked cases, edge cases and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scd_core.ot.costs import conditional_cost, prototype_cost


def test_prototype_cost_hand_worked():
    # Class means (1, 0) and (0, 3) around a zero mean; head rows e1 and (1, 1).
    w = np.array([[1.0, 0.0], [1.0, 1.0]])
    sums = np.array([[2.0, 0.0], [0.0, 3.0]])
    counts = np.array([2, 1])
    C = prototype_cost(w, sums, counts, np.zeros(2))
    c45 = (1 - 1 / math.sqrt(2)) / 2
    np.testing.assert_allclose(C, [[0.0, 0.5], [c45, c45]], atol=1e-12)
    assert C.dtype == np.float64


def test_prototype_cost_centres_on_the_feature_mean():
    # Both class means point the same way; only after centring do they become opposite.
    w = np.array([[1.0, 0.0], [-1.0, 0.0]])
    sums = np.array([[3.0, 1.0], [1.0, 1.0]])
    mean = np.array([2.0, 1.0])
    C = prototype_cost(w, sums, np.array([1, 1]), mean)
    np.testing.assert_allclose(C, [[0.0, 1.0], [1.0, 0.0]], atol=1e-12)


def test_prototype_cost_degenerate_rows_and_columns_are_neutral():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 5))
    w[2] = 0.0  # a dead head row
    sums = rng.normal(size=(3, 5))
    counts = np.array([3, 0, 2])  # class 1 has no examples
    mean = sums[2] / 2  # class 2's prototype equals the mean
    C = prototype_cost(w, sums, counts, mean)
    assert np.all(np.isfinite(C)) and C.min() >= 0 and C.max() <= 1
    np.testing.assert_allclose(C[2], 0.5)
    np.testing.assert_allclose(C[:, 1], 0.5)
    np.testing.assert_allclose(C[:, 2], 0.5)


def test_prototype_cost_is_scale_invariant_and_bounded():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(30, 8))
    sums = rng.normal(size=(6, 8)) * 10
    counts = rng.integers(1, 20, size=6)
    mean = rng.normal(size=8)
    C = prototype_cost(w, sums, counts, mean)
    assert C.shape == (30, 6) and C.min() >= 0 and C.max() <= 1
    np.testing.assert_allclose(prototype_cost(3 * w, 2 * sums, counts, 2 * mean), C, atol=1e-12)


def test_prototype_cost_rejects_bad_shapes():
    with pytest.raises(ValueError):
        prototype_cost(np.ones((2, 3)), np.ones((2, 4)), np.ones(2), np.ones(3))
    with pytest.raises(ValueError):
        prototype_cost(np.ones((2, 3)), np.ones((2, 3)), np.array([1, -1]), np.ones(3))


def test_conditional_cost_hand_worked_without_smoothing():
    J = np.array([[0.3, 0.1], [0.0, 0.6]])
    C = conditional_cost(J, smoothing=0.0)
    # P(.|0) = (0.75, 0.25): -log2(0.75) = 0.415, -log2(0.25) = 2 -> clipped to 1; P(1|1) = 1 -> 0.
    np.testing.assert_allclose(C, [[-math.log2(0.75), 1.0], [1.0, 0.0]], atol=1e-12)


def test_conditional_cost_smoothing_formula():
    J = np.array([[0.2, 0.1, 0.0], [0.0, 0.3, 0.4]])
    s = 0.5
    alpha = s * J.mean()
    cond = (J + alpha) / (J.sum(1, keepdims=True) + 3 * alpha)
    expected = np.clip(-np.log(cond) / math.log(3), 0, 1)
    np.testing.assert_allclose(conditional_cost(J, smoothing=s), expected, atol=1e-12)


def test_conditional_cost_is_scale_free_and_bounded():
    rng = np.random.default_rng(2)
    J = rng.random((12, 5)) ** 4
    J /= J.sum()
    C = conditional_cost(J)
    assert C.shape == (12, 5) and np.all(np.isfinite(C)) and C.min() >= 0 and C.max() <= 1
    np.testing.assert_allclose(conditional_cost(J * 250.0), C, atol=1e-12)


def test_conditional_cost_edge_cases():
    np.testing.assert_array_equal(conditional_cost(np.array([[0.4], [0.6]])), np.zeros((2, 1)))
    J = np.array([[0.5, 0.5], [0.0, 0.0]])
    C = conditional_cost(J, smoothing=0.0)
    np.testing.assert_allclose(C[1], 1.0)  # no evidence about teacher class 1: uniform conditional
    np.testing.assert_allclose(conditional_cost(np.zeros((3, 4))), 1.0)
    with pytest.raises(ValueError):
        conditional_cost(np.array([[0.5, -0.1], [0.3, 0.3]]))
    with pytest.raises(ValueError):
        conditional_cost(np.ones((2, 2)), smoothing=-1.0)


def test_cost_registry_is_the_one_interface():
    from scd_core.assess.metrics import ScdMetric
    from scd_core.cli.main import build_parser
    from scd_core.errors import ScdError
    from scd_core.ot import costs
    from scd_core.outputs.streaming import TeacherOutputs

    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    outputs = TeacherOutputs.from_arrays(rng.normal(size=(12, 4)).astype(np.float16), labels, num_target_classes=3,
                                         features=rng.normal(size=(12, 5)).astype(np.float32),
                                         head_weight=rng.normal(size=(4, 5)))
    assert next(iter(costs.COSTS)) == costs.DEFAULT_COST == "prototype"
    assert all(c.description for c in costs.COSTS.values())
    np.testing.assert_allclose(costs.cost_matrix(outputs, "conditional"), conditional_cost(outputs.joint))
    sums = outputs.class_feature_sums
    np.testing.assert_allclose(costs.cost_matrix(outputs),
                               prototype_cost(outputs.head_weight, sums, outputs.class_counts, sums.sum(0) / 12))
    with pytest.raises(ScdError, match="unknown cost 'euclid'; valid costs: prototype, conditional"):
        costs.cost_matrix(outputs, "euclid")
    plan = build_parser()._subparsers._group_actions[0].choices["plan"]
    assert next(a for a in plan._actions if a.dest == "cost").choices == list(costs.COSTS)
    # a newly registered cost is usable by name everywhere, e.g. by the scd metric
    try:
        costs.register_cost("uniform", "Every pair costs the same.")(lambda out, **_: np.full(out.joint.shape, 0.5))
        assert ScdMetric("uniform", form="cost").score(outputs) == pytest.approx(0.5)
    finally:
        costs.COSTS.pop("uniform", None)
