"""SCD variants: fitted Gibbs temperature, extra evidence (LEEP, plan-mapped prediction), cost mix."""

from __future__ import annotations

import numpy as np
import pytest

from scd_core.assess.metrics import (
    FIT_TAUS,
    METRICS,
    ScdEvidenceMetric,
    ScdMetric,
    gibbs_loglik_from_chunks,
    leep_from_probs,
    plan_conditional,
)
from scd_core.errors import ScdError
from scd_core.outputs.streaming import TeacherOutputs, softmax_np


def _outputs(seed: int, n: int = 90, k_t: int = 5, k_s: int = 3, signal: float = 4.0,
             head: bool = True) -> TeacherOutputs:
    """A teacher whose class i < k_s predicts target class i with strength ``signal`` (0: no information)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k_s
    logits = rng.normal(size=(n, k_t))
    logits[np.arange(n), labels] += signal
    feats = rng.normal(size=(n, 8))
    feats[np.arange(n), labels] += signal
    weight = np.zeros((k_t, 8))
    weight[np.arange(k_t), np.arange(k_t)] = 1.0  # head row i reads feature i
    return TeacherOutputs.from_arrays(logits, labels, feats, num_target_classes=k_s,
                                      head_weight=weight if head else None)


def test_fixed_tau_equals_the_registered_contrastive_score():
    out = _outputs(0)
    for tau in (0.1, 0.5, 2.0):
        assert ScdEvidenceMetric("x", tau=tau).score(out) == pytest.approx(ScdMetric("prototype", tau=tau).score(out))


def test_fitted_tau_is_the_best_of_the_grid():
    out = _outputs(1)
    fitted = ScdEvidenceMetric("x")
    score, tau = fitted.fit(out)
    assert tau in FIT_TAUS
    grid = [ScdEvidenceMetric("x", tau=t).score(out) for t in FIT_TAUS]
    assert score == pytest.approx(max(grid)) and score >= ScdMetric("prototype").score(out) - 1e-12


def test_informative_teacher_beats_an_uninformative_one_which_scores_about_minus_log_k():
    k_s = 4
    good, noise = _outputs(2, k_s=k_s, signal=5.0), _outputs(3, k_s=k_s, signal=0.0)
    for name in ("scd_fit", "scd_leep", "scd_plan"):
        metric = METRICS[name]
        assert metric.score(good) > metric.score(noise), name
    # no information: the best Gibbs model is nearly uniform, log-likelihood close to -log K_s from below
    assert -np.log(k_s) - 0.1 < ScdEvidenceMetric("x").score(noise) <= -np.log(k_s) + 0.05


def test_leep_evidence_alone_at_a_high_temperature_is_leep():
    out = _outputs(4, signal=2.0)
    probs = softmax_np(np.asarray(out.logits, dtype=np.float64))
    leep = leep_from_probs(probs, out.labels, 3)
    # the cost term vanishes as tau grows: the score tends to LEEP (its expected prediction sums to 1)
    high = ScdEvidenceMetric("x", evidence="leep", tau=1e6).score(out)
    assert high == pytest.approx(leep, abs=1e-4)


def test_gibbs_loglik_matches_a_direct_computation():
    rng = np.random.default_rng(5)
    d, e, y = rng.random((7, 3)), rng.normal(size=(7, 3)), rng.integers(0, 3, 7)
    taus = [0.1, 1.0]
    got = gibbs_loglik_from_chunks([(d[:4], e[:4], y[:4]), (d[4:], e[4:], y[4:])], taus)
    for tau, value in zip(taus, got):
        z = -d / tau + e
        ref = np.mean(z[np.arange(7), y] - np.log(np.exp(z).sum(1)))
        assert value == pytest.approx(ref)


def test_plan_conditional_is_row_stochastic_and_follows_a_cheap_diagonal():
    joint = np.array([[0.3, 0.05], [0.05, 0.3], [0.2, 0.1]])
    cost = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8]])
    m = plan_conditional(joint, cost)
    assert np.allclose(m.sum(axis=1), 1.0) and (m >= 0).all()
    assert m[0, 0] > m[0, 1] and m[1, 1] > m[1, 0]
    empty = plan_conditional(np.vstack([joint, np.zeros((1, 2))]), np.vstack([cost, [[0.5, 0.5]]]))
    assert np.allclose(empty[-1], joint.sum(0) / joint.sum())  # a class without mass: the target marginal


def test_cost_mix_and_bad_settings():
    out = _outputs(6, head=True)
    pure_proto = ScdEvidenceMetric("x", mix=1.0).cost_matrix(out)
    pure_cond = ScdEvidenceMetric("x", mix=0.0).cost_matrix(out)
    half = ScdEvidenceMetric("x", mix=0.5).cost_matrix(out)
    assert not np.allclose(pure_proto, pure_cond)
    assert np.allclose(half, 0.5 * pure_proto + 0.5 * pure_cond)
    with pytest.raises(ScdError, match="evidence"):
        ScdEvidenceMetric("x", evidence="magic")
    with pytest.raises(ScdError, match="mix"):
        ScdEvidenceMetric("x", mix=1.5)
    with pytest.raises(ScdError, match="cost"):
        ScdEvidenceMetric("x", cost="euclid")
