"""Tests of scd_core.assess.metrics: hand-worked cases, reference transcriptions and directions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf, ledoit_wolf_shrinkage

from scd_core.assess.metrics import (
    DEFAULT_METRICS,
    METRICS,
    LeepMetric,
    Metric,
    ScdMetric,
    _spectrum,
    contrastive_score_from_chunks,
    get_metric,
    hscore,
    hscore_plain,
    joint_from_probs,
    ledoit_wolf_shrinkage_from_spectrum,
    leep_from_probs,
    logme_evidences,
    logme_score,
    mean_label_cost,
    nce_from_hard_joint,
    nce_from_labels,
    score_all,
)
from scd_core.errors import ScdError
from scd_core.ot.costs import conditional_cost, prototype_cost
from scd_core.outputs.streaming import TeacherOutputs, softmax_np

# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _f16_exact(x: np.ndarray) -> np.ndarray:
    """Values representable in float16, so that stored float16 logits equal the float32 ones."""
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def _labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Labels with every class present (first k forced), then shuffled."""
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    return rng.permutation(y)


def _teacher(rng: np.random.Generator, labels: np.ndarray, k_t: int, d: int,
             informative: bool) -> TeacherOutputs:
    """A linear teacher: features phi, head W (k_t x d), logits = 3 phi W^T.

    Informative: phi_n = W[perm(y_n)] + noise, so the head's class perm(y) wins and the class means
    align with the head rows. Random: phi and W independent of the labels.
    """
    n, k_s = labels.shape[0], int(labels.max()) + 1
    w = rng.normal(size=(k_t, d)) / np.sqrt(d)
    if informative:
        perm = rng.permutation(k_t)[:k_s]
        phi = w[perm[labels]] + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d)
    else:
        phi = rng.normal(size=(n, d)) / np.sqrt(d)
    logits = 3.0 * phi @ w.T * np.sqrt(d) / 2.0
    return TeacherOutputs.from_arrays(_f16_exact(logits), labels, phi.astype(np.float32),
                                      num_target_classes=k_s, head_weight=w)


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------


def test_registry_contents_and_directions():
    assert set(DEFAULT_METRICS) <= set(METRICS)
    assert set(METRICS) == {"scd", "scd_cost", "scd_conditional", "leep", "nce", "logme", "hscore",
                            "scd_fit", "scd_leep", "scd_plan"}
    for name, metric in METRICS.items():
        assert isinstance(metric, Metric)
        assert metric.name == name
        assert metric.description and "\n" not in metric.description
        assert set(metric.info()) == {"higher_is_better", "needs_features", "description"}
    assert METRICS["scd"].higher_is_better  # contrastive log-likelihood
    assert not METRICS["scd_cost"].higher_is_better and not METRICS["scd_conditional"].higher_is_better
    assert all(METRICS[m].higher_is_better for m in ("leep", "nce", "logme", "hscore"))
    assert METRICS["logme"].needs_features and METRICS["hscore"].needs_features
    assert not any(METRICS[m].needs_features for m in ("scd", "leep", "nce"))
    assert METRICS["scd_cost"].better(0.1, 0.2) and METRICS["scd"].better(-0.1, -0.2)


def test_unknown_metric_raises_scd_error_listing_names():
    with pytest.raises(ScdError, match=r"valid metrics: .*leep"):
        get_metric("accuracy")
    outputs = _teacher(np.random.default_rng(0), _labels(np.random.default_rng(0), 20, 3), 5, 4, True)
    with pytest.raises(ScdError, match="unknown metric"):
        score_all(outputs, ["nce", "bogus"])
    with pytest.raises(ScdError):
        ScdMetric(cost="euclid")


def test_score_all_order_and_values():
    rng = np.random.default_rng(1)
    outputs = _teacher(rng, _labels(rng, 40, 4), 6, 8, True)
    scores = score_all(outputs, ["nce", "scd", "leep"])
    assert list(scores) == ["nce", "scd", "leep"]
    for name, value in scores.items():
        assert value == pytest.approx(get_metric(name).score(outputs))
        assert isinstance(value, float)


# ----------------------------------------------------------------------------------------------------
# NCE
# ----------------------------------------------------------------------------------------------------


def test_nce_perfect_mapping_is_zero():
    rng = np.random.default_rng(2)
    y = _labels(rng, 50, 4)
    perm = rng.permutation(7)
    assert nce_from_labels(perm[y], y) == pytest.approx(0.0, abs=1e-12)
    # Several teacher classes per target class is still deterministic.
    z = np.where(rng.random(50) < 0.5, y, y + 4)
    assert nce_from_labels(z, y) == pytest.approx(0.0, abs=1e-12)


def test_nce_independent_is_minus_entropy():
    pz = np.array([0.2, 0.5, 0.3])
    py = np.array([0.1, 0.6, 0.1, 0.2])
    h_y = -np.sum(py * np.log(py))
    assert nce_from_hard_joint(np.outer(pz, py)) == pytest.approx(-h_y, rel=1e-12)
    # A hand-worked case: Z = 0 -> Y in {0, 1} equally, Z = 1 -> Y = 1; P(Z=0) = 1/2.
    h = np.array([[0.25, 0.25], [0.0, 0.5]])
    assert nce_from_hard_joint(h) == pytest.approx(-0.5 * np.log(2.0))


def test_nce_matches_direct_transcription_and_outputs():
    rng = np.random.default_rng(3)
    n, k_t, k_s = 60, 5, 3
    y = _labels(rng, n, k_s)
    logits = _f16_exact(rng.normal(size=(n, k_t)) * 2)
    z = logits.argmax(1)
    # Direct: -H(Y|Z) = sum_z p(z) sum_y p(y|z) log p(y|z) over observed pairs.
    ref = 0.0
    for zz in np.unique(z):
        pz = np.mean(z == zz)
        pyz = np.bincount(y[z == zz], minlength=k_s) / np.sum(z == zz)
        pyz = pyz[pyz > 0]
        ref += pz * np.sum(pyz * np.log(pyz))
    assert nce_from_labels(z, y) == pytest.approx(ref, rel=1e-12)
    outputs = TeacherOutputs.from_arrays(logits, y, num_target_classes=k_s)
    assert get_metric("nce").score(outputs) == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# LEEP
# ----------------------------------------------------------------------------------------------------


def test_leep_perfect_teacher_is_zero_even_with_empty_teacher_classes():
    rng = np.random.default_rng(4)
    y = _labels(rng, 30, 3)
    k_t = 6  # teacher classes 3..5 never predicted: empty rows of J must not give NaN
    probs = np.zeros((30, k_t))
    probs[np.arange(30), (y + 1) % 3] = 1.0
    assert leep_from_probs(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_leep_uninformative_teacher_is_log_label_prior():
    rng = np.random.default_rng(5)
    y = _labels(rng, 40, 4)
    probs = np.tile(rng.dirichlet(np.ones(5)), (40, 1))  # same prediction for every image
    prior = np.bincount(y) / 40
    assert leep_from_probs(probs, y) == pytest.approx(np.mean(np.log(prior[y])), rel=1e-10)


def test_leep_chunked_equals_direct_formula():
    rng = np.random.default_rng(6)
    n, k_t, k_s = 101, 7, 4
    y = _labels(rng, n, k_s)
    logits = _f16_exact(rng.normal(size=(n, k_t)) * 2)
    outputs = TeacherOutputs.from_arrays(logits, y, num_target_classes=k_s)
    probs = softmax_np(logits).astype(np.float64)
    # Direct formula, written out: P(y|z) = J / J.sum(1), LEEP = mean_n log sum_z p(z|x_n) P(y_n|z).
    joint = probs.T @ np.eye(k_s)[y] / n
    p_y_given_z = joint / joint.sum(1, keepdims=True)
    direct = np.mean(np.log(np.sum(probs * p_y_given_z[:, y].T, axis=1)))
    assert leep_from_probs(probs, y) == pytest.approx(direct, rel=1e-12)
    # streamed chunks are float32 products (inputs are float16 logits): agreement to float32 precision
    for chunk in (1, 7, 64, 4096):
        assert LeepMetric(chunk_size=chunk).score(outputs) == pytest.approx(direct, rel=1e-6)
    assert np.allclose(joint_from_probs(probs, y, k_s), outputs.joint, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# SCD
# ----------------------------------------------------------------------------------------------------


def test_scd_equals_explicit_sum_over_images():
    rng = np.random.default_rng(7)
    n, k_t, k_s = 50, 6, 4
    y = _labels(rng, n, k_s)
    logits = _f16_exact(rng.normal(size=(n, k_t)) * 2)
    outputs = TeacherOutputs.from_arrays(logits, y, num_target_classes=k_s)
    cost = rng.random((k_t, k_s))
    probs = softmax_np(logits).astype(np.float64)
    explicit = np.mean(np.sum(probs * cost[:, y].T, axis=1))  # (1/N) sum_n sum_i p_i(x_n) C_{i,y_n}
    # J is accumulated from float32 probabilities: equal up to float32 rounding of p.
    assert mean_label_cost(outputs.joint, cost) == pytest.approx(explicit, rel=1e-6)
    assert mean_label_cost(joint_from_probs(probs, y, k_s), cost) == pytest.approx(explicit, rel=1e-12)
    with pytest.raises(ValueError):
        mean_label_cost(outputs.joint, cost[:, :2])


def test_scd_metric_costs_and_fallback():
    rng = np.random.default_rng(8)
    outputs = _teacher(rng, _labels(rng, 60, 4), 6, 10, True)
    sums = outputs.class_feature_sums
    c_proto = prototype_cost(outputs.head_weight, sums, outputs.class_counts, sums.sum(0) / 60)
    assert get_metric("scd_cost").score(outputs) == pytest.approx(float(np.sum(outputs.joint * c_proto)))
    c_cond = conditional_cost(outputs.joint, smoothing=1e-3)
    assert get_metric("scd_conditional").score(outputs) == pytest.approx(float(np.sum(outputs.joint * c_cond)))
    outputs.head_weight = None  # non-linear head: the prototype metric falls back to the conditional cost
    assert get_metric("scd_cost").score(outputs) == pytest.approx(get_metric("scd_conditional").score(outputs))


def test_scd_contrast_worked_by_hand():
    # two teacher classes, two target classes; cost already spans [0, 1]
    cost = np.array([[0.0, 1.0], [1.0, 0.0]])
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    labels = np.array([0, 1, 1])
    tau = 0.5
    # D = p C: [[0, 1], [.5, .5], [.1, .9]]; log-likelihood of each label under softmax(-D / tau)
    d = probs @ cost
    ll = [-d[n, y] / tau - np.log(np.exp(-d[n] / tau).sum()) for n, y in enumerate(labels)]
    expected = float(np.mean(ll))
    assert expected == pytest.approx(np.mean([-np.log1p(np.exp(-2.0)), -np.log(2.0), -1.6 - np.log1p(np.exp(-1.6))]))
    assert contrastive_score_from_chunks(cost, [(probs[:2], labels[:2]), (probs[2:], labels[2:])], tau) == \
        pytest.approx(expected, rel=1e-12)
    # invariant to an affine rescaling of the cost (min-max normalised), and -log K_s for a constant prediction
    assert contrastive_score_from_chunks(3 * cost + 2, [(probs, labels)], tau) == pytest.approx(expected, rel=1e-12)
    flat = np.full((4, 2), 0.5)
    assert contrastive_score_from_chunks(cost, [(flat, np.array([0, 1, 0, 1]))], tau) == pytest.approx(-np.log(2.0))
    with pytest.raises(ValueError):
        contrastive_score_from_chunks(cost, [(probs, labels)], tau=0.0)


def test_scd_contrast_prefers_the_discriminative_teacher_that_mean_cost_misses():
    """A teacher whose classes are cheap to send everywhere wins on <J, C> but not on the contrastive score."""
    labels = np.array([0, 1] * 20)
    probs = np.tile([[1.0, 0.0]], (40, 1))  # one teacher class for every image
    cheap_everywhere = np.array([[0.0, 0.02], [1.0, 1.0]])  # class 0 costs ~0 to both target classes
    sharp = np.array([[0.0, 1.0], [1.0, 0.0]])
    sharp_probs = np.where(labels[:, None] == np.arange(2)[None, :], 0.9, 0.1)  # tells the classes apart
    j_cheap = joint_from_probs(probs, labels, 2)
    j_sharp = joint_from_probs(sharp_probs, labels, 2)
    assert mean_label_cost(j_cheap, cheap_everywhere) < mean_label_cost(j_sharp, sharp)  # mean cost is fooled
    assert contrastive_score_from_chunks(sharp, [(sharp_probs, labels)]) > \
        contrastive_score_from_chunks(cheap_everywhere, [(probs, labels)])


# ----------------------------------------------------------------------------------------------------
# LogME
# ----------------------------------------------------------------------------------------------------


def _reference_logme(f: np.ndarray, y: np.ndarray, pad_sigma: bool = True) -> float:
    """Non-vectorised transcription of thuml/LogME ``LogME._fit_fixed_point`` (classification).

    ``pad_sigma`` adds the zero eigenvalues of F^T F to the log-determinant (thuml/LogME PR #24);
    without it this is the published code, which differs only when rank(F) < d.
    """
    f = f.astype(np.float64)
    n, d = f.shape
    if n > d:  # the reference's truncated_svd
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        k = int(np.sum(s > 1e-10))
        s, vh = s[:k].reshape(-1, 1), vh[:k]
        u = (f @ vh.T) / s.reshape(1, -1)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
        s = s.reshape(-1, 1)
    sigma = s**2
    sigma_ev = sigma
    if pad_sigma:
        sigma_ev = np.zeros((d, 1))
        sigma_ev[: sigma.shape[0]] = sigma
    evidences = []
    for c in range(int(y.max()) + 1):
        y_ = (y == c).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta)
                    - 0.5 * np.sum(np.log(alpha + beta * sigma_ev))
                    - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize(("n", "d", "k"), [(200, 30, 4), (120, 8, 3), (25, 80, 3), (12, 12, 2)])
def test_logme_matches_reference_fixed_point(n, d, k):
    rng = np.random.default_rng(n * 1000 + d)
    y = _labels(rng, n, k)
    f = rng.normal(size=(n, d)) + 0.5 + 0.8 * np.eye(k, d)[y]
    ours = logme_score(f.astype(np.float32), y)
    ref = _reference_logme(f.astype(np.float32), y)
    assert np.isfinite(ours)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)
    if n > d:  # full rank: identical to the published code without the padding fix
        assert ours == pytest.approx(_reference_logme(f.astype(np.float32), y, pad_sigma=False), rel=1e-6)


def test_logme_rank_deficient_features_match_padded_reference():
    rng = np.random.default_rng(9)
    y = _labels(rng, 100, 3)
    f = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 20))  # rank 5 < d = 20 < N
    assert logme_score(f, y) == pytest.approx(_reference_logme(f, y), rel=1e-6)


def test_logme_prefers_separable_features_and_handles_n_below_d():
    rng = np.random.default_rng(10)
    for n, d in ((150, 20), (20, 200)):
        y = _labels(rng, n, 4)
        random = rng.normal(size=(n, d))
        separable = random * 0.3 + 2.0 * np.eye(4, d)[y]
        s_sep, s_rand = logme_score(separable, y), logme_score(random, y)
        assert np.isfinite(s_sep) and np.isfinite(s_rand)
        assert s_sep > s_rand


def test_logme_degenerate_inputs_are_finite():
    y = np.array([0, 1, 1, 2, 0, 2])
    assert np.isfinite(logme_score(np.zeros((6, 3)), y))  # no feature signal at all
    ev = logme_evidences(np.random.default_rng(0).normal(size=(6, 4)), y, num_classes=5)
    assert ev.shape == (5,)
    # Absent classes 3 and 4 are excluded from the mean.
    assert logme_score(np.random.default_rng(0).normal(size=(6, 4)), y, 5) == pytest.approx(ev[:3].mean())


# ----------------------------------------------------------------------------------------------------
# H-score
# ----------------------------------------------------------------------------------------------------


def _hscore_definition(f: np.ndarray, y: np.ndarray) -> float:
    """tr(pinv(cov(f)) cov(E[f|y])), written out per class (Bao et al. 2019)."""
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    return float(np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False)))


def _hscore_regularised_definition(f: np.ndarray, y: np.ndarray) -> float:
    """tr(pinv(Sigma_LW) (1 - a) cov(E[f|y])) with sklearn's Ledoit-Wolf (Ibrahim et al. 2021)."""
    f = f - f.mean(axis=0)
    cov, a = ledoit_wolf(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-15) @ ((1 - a) * np.cov(g, rowvar=False))))


@pytest.mark.parametrize(("n", "d"), [(200, 10), (60, 30)])
def test_hscore_plain_matches_definition(n, d):
    rng = np.random.default_rng(n + d)
    y = _labels(rng, n, 4)
    f = rng.normal(size=(n, d)) + np.eye(4, d)[y] + 1.0
    assert hscore_plain(f, y) == pytest.approx(_hscore_definition(f, y), rel=1e-8)


def test_hscore_plain_is_degenerate_below_d():
    """With N <= d the plain score is K_s - 1 for any features: the reason for the shrunk default."""
    rng = np.random.default_rng(11)
    y = _labels(rng, 15, 3)
    random = rng.normal(size=(15, 40))
    separable = random * 0.1 + np.eye(3, 40)[y]
    assert hscore_plain(random, y) == pytest.approx(2.0, rel=1e-6)
    assert hscore_plain(separable, y) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(("n", "d"), [(300, 12), (40, 25), (18, 90)])
def test_hscore_regularised_matches_sklearn_ledoit_wolf(n, d):
    rng = np.random.default_rng(2 * n + d)
    y = _labels(rng, n, 3)
    f = (rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, d) + 0.7 * np.eye(3, d)[y] + 2.0).astype(np.float32)
    spec = _spectrum(f, y, 3, center=True)
    a = ledoit_wolf_shrinkage_from_spectrum(spec.eig, spec.row_sq, n, d)
    assert a == pytest.approx(ledoit_wolf_shrinkage(f.astype(np.float64)), rel=1e-8, abs=1e-12)
    assert hscore(f, y) == pytest.approx(_hscore_regularised_definition(f.astype(np.float64), y), rel=1e-6)


def test_hscore_regularised_orders_features_below_d():
    rng = np.random.default_rng(12)
    for n, d in ((20, 200), (200, 20)):
        y = _labels(rng, n, 4)
        random = rng.normal(size=(n, d))
        separable = random * 0.5 + np.eye(4, d)[y]
        s_sep, s_rand = hscore(separable, y), hscore(random, y)
        assert np.isfinite(s_sep) and np.isfinite(s_rand)
        assert s_sep > s_rand
    with pytest.raises(ScdError):
        hscore(np.ones((1, 3)), np.array([0]))
    assert hscore(np.zeros((5, 3)), np.array([0, 1, 0, 1, 1])) == 0.0


# ----------------------------------------------------------------------------------------------------
# Directions and ranges
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize(("n", "d"), [(120, 16), (24, 64)])
def test_informative_teacher_beats_random_teacher(name, n, d):
    rng = np.random.default_rng(13)
    y = _labels(rng, n, 4)
    good = _teacher(rng, y, 8, d, informative=True)
    bad = _teacher(rng, y, 8, d, informative=False)
    metric = get_metric(name)
    s_good, s_bad = metric.score(good), metric.score(bad)
    assert np.isfinite(s_good) and np.isfinite(s_bad)
    assert metric.better(s_good, s_bad), (name, s_good, s_bad)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(1, 6), st.integers(8, 40))
def test_ranges_on_random_teachers(seed, k_s, k_t, n):
    rng = np.random.default_rng(seed)
    y = _labels(rng, n, k_s)
    logits = rng.normal(size=(n, k_t)) * rng.uniform(0.1, 10.0)
    outputs = TeacherOutputs.from_arrays(logits, y, rng.normal(size=(n, 5)), num_target_classes=k_s)
    scores = score_all(outputs, sorted(METRICS))
    assert all(np.isfinite(v) for v in scores.values())
    h_y = -np.sum(np.bincount(y) / n * np.log(np.bincount(y) / n))
    assert -h_y - 1e-9 <= scores["nce"] <= 1e-12
    assert scores["leep"] <= 1e-9
    assert 0.0 <= scores["scd_conditional"] <= 1.0 and 0.0 <= scores["scd_cost"] <= 1.0
    assert scores["scd"] <= 1e-12  # a log-likelihood
