"""Teacher-assessment metrics behind one interface: ``Metric.score(outputs) -> float``.

Every metric reads a :class:`~scd_core.outputs.streaming.TeacherOutputs` (one teacher on one labeled target
set of N images, K_s target classes, K_t teacher classes, features of dimension d) and returns one
number. ``higher_is_better`` gives the direction; :data:`METRICS` is the registry used by the CLI and
the app (``scd``, ``scd_cost``, ``scd_conditional``, ``leep``, ``nce``, ``logme``, ``hscore``).

The array-level functions (:func:`mean_label_cost`, :func:`leep_from_probs`, :func:`nce_from_hard_joint`,
:func:`logme_score`, :func:`hscore`, :func:`hscore_plain`) hold the math and are what the metric classes
call; they are public for tests and benchmarks. Feature metrics work in float64 on the eigenvalues of
the smaller of the two Gram matrices F^T F (d x d) and F F^T (N x N), accumulated in chunks, so neither
an N x d float64 copy nor a d x d inverse is needed and the cost is O(N d min(N, d)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scd_core.errors import ScdError
from scd_core.ot.costs import DEFAULT_COST, cost_matrix, get_cost, rescale_unit
from scd_core.outputs.streaming import TeacherOutputs

_CHUNK_ROWS = 8192
_CHUNK_COLS = 2048


# ----------------------------------------------------------------------------------------------------
# Array-level functions
# ----------------------------------------------------------------------------------------------------


def mean_label_cost(joint: np.ndarray, cost: np.ndarray) -> float:
    """The mean label cost <J, C> = sum_ij J_ij C_ij (``scd_cost``; lower is better).

    With J = (1/N) sum_n p(x_n) e_{y_n}^T this equals (1/N) sum_n sum_i p_i(x_n) C_{i, y_n}, the mean
    optimal-transport cost from each teacher prediction p(x_n) to the Dirac mass on its label y_n (the
    only coupling between a distribution and a Dirac is p e_y^T, so OT(p, e_y; C) = sum_i p_i C_iy).
    """
    joint = np.asarray(joint, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    if joint.shape != cost.shape:
        raise ValueError(f"joint {joint.shape} and cost {cost.shape} must have the same shape")
    return float(np.sum(joint * cost))


SCD_TAU = 0.5
"""Default Gibbs temperature of :func:`contrastive_score_from_chunks`, in units of the cost's range (README)."""


def contrastive_score_from_chunks(cost: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                             tau: float = SCD_TAU) -> float:
    r"""Contrastive SCD: how much cheaper it is to transport each prediction to its own label (higher is better).

    With :math:`\tilde C` the cost rescaled to [0, 1] (min-max), the OT cost from the teacher's
    prediction to the Dirac mass on target class j is :math:`D_{nj} = OT(p(x_n), e_j; \tilde C)
    = (p(x_n)^\top \tilde C)_j`. The score is the mean log-likelihood of the true label under the
    Gibbs distribution of these costs,

    .. math::
        \mathrm{SCD} = \frac{1}{N} \sum_n \log \frac{\exp(-D_{n y_n} / \tau)}{\sum_j \exp(-D_{nj} / \tau)}
        \in (-\infty, 0].

    The plain mean cost :math:`\langle J, C\rangle = \frac{1}{N}\sum_n D_{n y_n}` (:func:`mean_label_cost`)
    only looks at the label's own cost, so a teacher whose classes are cheap to send anywhere scores
    well without telling the classes apart; the partition function compares each label's cost with
    the cost of every other label. An uninformative teacher scores about :math:`-\log K_s`.
    Chunks are ``(probs (B, K_t), labels (B,))``; one (B, K_s) block is held at a time.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    c = rescale_unit(cost)
    total, count = 0.0, 0
    for probs, labels in chunks:
        labels = np.asarray(labels, dtype=np.int64)
        probs = np.asarray(probs)
        z = -(probs @ c.astype(probs.dtype, copy=False)).astype(np.float64) / tau  # (B, K_s)
        z -= z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        total += float((z[np.arange(labels.shape[0]), labels] - log_norm).sum())
        count += labels.shape[0]
    if count == 0:
        raise ScdError("SCD needs at least one labeled image")
    return total / count


def contrastive_log_likelihoods(cost: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                                tau: float = SCD_TAU) -> np.ndarray:
    r"""Per-image terms of :func:`contrastive_score_from_chunks`, shape (B,), float64.

    :math:`\log \operatorname{softmax}_j(-D_{nj} / \tau)_{y_n}` with :math:`D = p \tilde C` and
    :math:`\tilde C` the min-max rescaled cost; their mean over the images is the ``scd`` score.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    c = rescale_unit(cost)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs)
    z = -(probs @ c.astype(probs.dtype, copy=False)).astype(np.float64) / tau  # (B, K_s)
    z -= z.max(axis=1, keepdims=True)
    return z[np.arange(labels.shape[0]), labels] - np.log(np.exp(z).sum(axis=1))


def label_costs(cost: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image OT cost to the label, (p(x_n)^T C)_{y_n}, shape (B,); their mean is :func:`mean_label_cost`."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs)
    c = np.asarray(cost, dtype=np.float64)
    return np.einsum("nk,kn->n", probs.astype(np.float64), c[:, labels])


#: temperatures searched when the Gibbs temperature is fitted (units of the [0, 1] cost's range)
FIT_TAUS: tuple[float, ...] = tuple(float(t) for t in np.geomspace(0.02, 5.0, 25))


def gibbs_loglik_from_chunks(chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                             taus: Sequence[float]) -> np.ndarray:
    r"""Mean log-likelihood of the labels under :math:`\mathrm{softmax}_j(-D_{nj} / \tau + E_{nj})`, per :math:`\tau`.

    Chunks are ``(D (B, K_s), E (B, K_s), labels (B,))``: OT costs from each prediction to every target
    class and an extra log-evidence term (zeros for the pure cost score). Returns one mean per tau,
    shape (len(taus),), computed in one pass over the chunks.
    """
    taus = np.asarray(taus, dtype=np.float64)
    if not np.all(taus > 0):
        raise ValueError("every tau must be > 0")
    total, count = np.zeros(len(taus)), 0
    for d, extra, labels in chunks:
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.arange(labels.shape[0])
        z = -np.asarray(d, dtype=np.float64)[None] / taus[:, None, None] + np.asarray(extra, np.float64)[None]
        z -= z.max(axis=2, keepdims=True)  # (T, B, K_s)
        log_norm = np.log(np.exp(z).sum(axis=2))
        total += (z[:, rows, labels] - log_norm).sum(axis=1)
        count += labels.shape[0]
    if count == 0:
        raise ScdError("SCD needs at least one labeled image")
    return total / count


def plan_conditional(joint: np.ndarray, cost: np.ndarray) -> np.ndarray:
    r"""Row-normalised exact OT plan :math:`M_{ij} = P_{ij} / a_i` between the teacher and target marginals.

    :math:`\mathbf{P} = \arg\min_{P \in U(a, b)} \langle P, C\rangle` with :math:`a = J \mathbf{1}` (mean
    teacher prediction) and :math:`b = J^\top \mathbf{1}` (target label frequencies); :math:`p(x)^\top M`
    is the teacher's prediction carried onto the target classes by the plan. Rows without mass get the
    target marginal.
    """
    from scd_core.ot.transport import exact_plan

    joint = np.asarray(joint, dtype=np.float64)
    a, b = joint.sum(axis=1), joint.sum(axis=0)
    keep = a > 0
    plan = np.zeros_like(joint)
    plan[keep] = exact_plan(a[keep], b, np.asarray(cost, dtype=np.float64)[keep])
    rows = plan.sum(axis=1, keepdims=True)
    return np.where(rows > 0, plan / np.maximum(rows, 1e-300), b / b.sum())


def _conditional_from_joint(joint: np.ndarray) -> np.ndarray:
    """P(y | z) = J_zy / sum_y' J_zy' (K_t x K_s); rows of J without mass get P(y | z) = 0.

    A row of J has zero mass only when p(z | x_n) = 0 for every image, so the value chosen for that
    row never contributes to LEEP's sum_z p(z | x) P(y | z); 0 avoids the 0/0 = NaN of the reference.
    """
    joint = np.asarray(joint, dtype=np.float64)
    mass = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, mass, out=np.zeros_like(joint), where=mass > 0)


def leep_from_chunks(joint: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """LEEP from the soft joint J and a stream of ``(probs (B, K_t), labels (B,))`` chunks.

    LEEP = (1/N) sum_n log( sum_z p(z | x_n) P(y_n | z) ), P(y | z) = J_zy / sum_y J_zy. Only one chunk
    of predictions is held at a time. The expected empirical prediction is floored at the smallest
    positive float64 so that an underflow gives a very low, finite score instead of -inf.
    """
    cond = _conditional_from_joint(joint)  # (K_t, K_s)
    total, count = 0.0, 0
    tiny = np.finfo(np.float64).tiny
    for probs, labels in chunks:
        labels = np.asarray(labels, dtype=np.int64)
        # sum_z p(z|x_n) P(y|z) for every y as one (B, K_t) x (K_t, K_s) product in the chunk's dtype
        # (no B x K_t float64 copy), then pick each image's own label.
        probs = np.asarray(probs)
        eep = (probs @ cond.astype(probs.dtype, copy=False))[np.arange(labels.shape[0]), labels]
        eep = eep.astype(np.float64)
        total += float(np.log(np.maximum(eep, tiny)).sum())
        count += labels.shape[0]
    if count == 0:
        raise ScdError("LEEP needs at least one labeled image")
    return total / count


def leep_log_eeps(cond: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image LEEP terms log sum_z p(z | x_n) P(y_n | z), shape (B,), floored at the smallest float64."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs)
    eep = (probs @ cond.astype(probs.dtype, copy=False))[np.arange(labels.shape[0]), labels].astype(np.float64)
    return np.log(np.maximum(eep, np.finfo(np.float64).tiny))


def joint_from_probs(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Soft joint J = (1/N) sum_n p(x_n) e_{y_n}^T, shape (K_t, K_s), float64."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    joint = np.zeros((probs.shape[1], num_classes))
    np.add.at(joint.T, labels, probs)
    return joint / max(labels.shape[0], 1)


def leep_from_probs(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LEEP (Nguyen et al., ICML 2020) of in-memory predictions ``probs`` (N, K_t) and labels (N,).

    Direct formula: J = (1/N) P^T Y, P(y | z) = J / J.sum(1), LEEP = mean_n log (P P(y|z))_{n, y_n}.
    Higher is better; the maximum 0 = log 1 is reached by a teacher whose argmax determines the label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k_s = int(num_classes if num_classes is not None else labels.max() + 1)
    joint = joint_from_probs(probs, labels, k_s)
    return leep_from_chunks(joint, [(probs, labels)])


def nce_from_hard_joint(hard_joint: np.ndarray) -> float:
    """NCE (Tran et al., ICCV 2019) = -H(Y | Z) from the hard joint H_zy = P(Z = z, Y = y).

    -H(Y | Z) = sum_{z, y} H_zy log( H_zy / sum_y' H_zy' ), with 0 log 0 = 0 (Z the teacher argmax).
    Higher is better: 0 when Z determines Y, -H(Y) when Z and Y are independent.
    """
    h = np.asarray(hard_joint, dtype=np.float64)
    h = h / h.sum()
    pz = h.sum(axis=1, keepdims=True)
    ratio = np.divide(h, pz, out=np.ones_like(h), where=h > 0)
    return float(np.sum(h * np.log(ratio)))


def nce_from_labels(teacher_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE from hard teacher predictions z_n and target labels y_n (convenience for tests)."""
    z = np.asarray(teacher_labels, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    h = np.zeros((int(z.max()) + 1, int(y.max()) + 1))
    np.add.at(h, (z, y), 1.0)
    return nce_from_hard_joint(h)


@dataclass
class _Spectrum:
    """Non-zero spectrum of a feature matrix F (N x d, optionally centred) and its class projections.

    ``eig`` (k,) are the non-zero eigenvalues s_i = sigma_i^2 of F^T F (equivalently F F^T), ``uy``
    (k, C) = U^T Y with U the matching left singular vectors and Y the one-hot labels, ``row_sq``
    (N,) = ||f_n||^2. Eigenvalues below max(N, d) * eps * s_max are treated as 0 (numerical rank).
    """

    eig: np.ndarray
    uy: np.ndarray
    counts: np.ndarray
    row_sq: np.ndarray
    n: int
    d: int


def _onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.zeros((labels.shape[0], num_classes))
    y[np.arange(labels.shape[0]), labels] = 1.0
    return y


def _spectrum(features: np.ndarray, labels: np.ndarray, num_classes: int, center: bool) -> _Spectrum:
    """Eigen-decompose the smaller Gram matrix of F in float64, in chunks.

    N > d: G = F^T F (d x d) = V diag(s) V^T, and U^T Y = diag(s)^{-1/2} V^T (F^T Y) (the "truncated
    SVD" of the LogME reference). N <= d: G = F F^T (N x N) = U diag(s) U^T directly.
    """
    f = np.asarray(features)
    labels = np.asarray(labels, dtype=np.int64)
    n, d = f.shape
    mean = f.mean(axis=0, dtype=np.float64) if center else np.zeros(d)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if n > d:
        gram = np.zeros((d, d))
        fty = np.zeros((d, num_classes))
        row_sq = np.empty(n)
        for start in range(0, n, _CHUNK_ROWS):
            rows = slice(start, min(start + _CHUNK_ROWS, n))
            block = f[rows].astype(np.float64) - mean
            gram += block.T @ block
            fty += block.T @ _onehot(labels[rows], num_classes)
            row_sq[rows] = np.einsum("ij,ij->i", block, block)
        eig, vecs = np.linalg.eigh(gram)
        keep = eig > max(eig.max(initial=0.0), 0.0) * max(n, d) * np.finfo(np.float64).eps
        eig, vecs = eig[keep], vecs[:, keep]
        uy = (vecs.T @ fty) / np.sqrt(eig)[:, None]
    else:
        gram = np.zeros((n, n))
        for start in range(0, d, _CHUNK_COLS):
            cols = slice(start, min(start + _CHUNK_COLS, d))
            block = f[:, cols].astype(np.float64) - mean[cols]
            gram += block @ block.T
        row_sq = np.diag(gram).copy()
        eig, vecs = np.linalg.eigh(gram)
        keep = eig > max(eig.max(initial=0.0), 0.0) * max(n, d) * np.finfo(np.float64).eps
        eig, vecs = eig[keep], vecs[:, keep]
        uy = vecs.T @ _onehot(labels, num_classes)
    return _Spectrum(eig=eig, uy=uy, counts=counts, row_sq=row_sq, n=n, d=d)


def _logme_fixed_point(eig: np.ndarray, x2: np.ndarray, res_x2: np.ndarray, n: int,
                       max_iter: int = 11, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-point evidence maximisation of LogME for C targets at once (``_fit_fixed_point``).

    Inputs: s = ``eig`` (k,), x2 = (U^T y)^2 (k, C), res_x2 = ||y||^2 - ||U^T y||^2 (C,). Starting from
    alpha = beta = 1, with t = alpha / beta, each step sets
        gamma = sum_i s_i / (s_i + t),  m2 = sum_i s_i x2_i / (t + s_i)^2  (= ||m||^2),
        res2 = sum_i x2_i / (1 + s_i / t)^2 + res_x2  (= ||y - F m||^2),
        alpha = gamma / (m2 + 1e-5),  beta = (N - gamma) / (res2 + 1e-5),
    and a target stops (keeping that step's values) once |alpha/beta - t| / t <= ``tol``, at most
    ``max_iter`` steps. Returns per-target (alpha, beta, m2, res2) as the reference's final state.
    """
    c = x2.shape[1]
    s = eig[:, None]
    alpha, beta = np.ones(c), np.ones(c)
    m2, res2 = np.zeros(c), res_x2.copy()
    active = np.ones(c, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        t = alpha / beta
        gamma = (s / (s + t)).sum(axis=0)
        m2_new = (s * x2 / (t + s) ** 2).sum(axis=0)
        res2_new = (x2 / (1.0 + s / t) ** 2).sum(axis=0) + res_x2
        alpha_new = gamma / (m2_new + 1e-5)
        beta_new = (n - gamma) / (res2_new + 1e-5)
        converged = np.abs(alpha_new / beta_new - t) / t <= tol
        alpha = np.where(active, alpha_new, alpha)
        beta = np.where(active, beta_new, beta)
        m2 = np.where(active, m2_new, m2)
        res2 = np.where(active, res2_new, res2)
        active &= ~converged
    return alpha, beta, m2, res2


def logme_evidences(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-class LogME evidence / N (You et al., ICML 2021; JMLR 2022), float64, shape (C,).

    For class c, y = 1[labels == c] is regressed on F (N x d) with prior w ~ N(0, alpha^-1 I_d) and
    noise N(0, beta^-1); alpha, beta maximise the evidence by :func:`_logme_fixed_point` and
        L = d/2 log alpha + N/2 log beta - 1/2 log det(alpha I_d + beta F^T F)
            - beta/2 ||y - F m||^2 - alpha/2 ||m||^2 - N/2 log 2 pi,
    with log det(alpha I_d + beta F^T F) = sum_{i<=k} log(alpha + beta s_i) + (d - k) log alpha over the
    k non-zero eigenvalues s_i. The reference code drops the (d - k) log alpha term, which is wrong
    when k < d (always when N < d; thuml/LogME issue #23, fix in PR #24); it is included here, so
    L = k/2 log alpha + ... . Features are used as given (no centring), as in the reference.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k_s = int(num_classes if num_classes is not None else labels.max() + 1)
    spec = _spectrum(features, labels, k_s, center=False)
    n, k = spec.n, spec.eig.shape[0]
    x2 = spec.uy**2
    res_x2 = spec.counts - x2.sum(axis=0)  # ||y_c||^2 = n_c for a 0/1 column
    log2pi = n / 2.0 * np.log(2.0 * np.pi)
    if k == 0:  # all features zero: y ~ N(0, beta^-1 I), beta maximised in closed form
        beta = n / (res_x2 + 1e-5)
        return (n / 2.0 * np.log(beta) - beta / 2.0 * res_x2 - log2pi) / n
    alpha, beta, m2, res2 = _logme_fixed_point(spec.eig, x2, res_x2, n)
    evidence = (k / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta)
                - 0.5 * np.log(alpha[None, :] + beta[None, :] * spec.eig[:, None]).sum(axis=0)
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - log2pi)
    return evidence / n


def logme_score(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME = mean over the target classes present in ``labels`` of evidence / N (higher is better).

    Absent classes (an all-zero column) are skipped: their "evidence" of fitting y = 0 is unbounded.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k_s = int(num_classes if num_classes is not None else labels.max() + 1)
    ev = logme_evidences(features, labels, k_s)
    present = np.bincount(labels, minlength=k_s) > 0
    return float(ev[present].mean())


def ledoit_wolf_shrinkage_from_spectrum(eig: np.ndarray, row_sq: np.ndarray, n: int, d: int) -> float:
    """Ledoit-Wolf shrinkage a of centred features, as ``sklearn.covariance.ledoit_wolf_shrinkage``.

    With S = F_c^T F_c / N, mu = tr(S) / d, b = (1/(N^2 d)) sum_n ||f_n||^4 - ||S||_F^2 / (N d) and
    delta = (||S||_F^2 - d mu^2) / d: a = min(b, delta) / delta (0 when d = 1 or b = 0). Both
    ||S||_F^2 = sum_i s_i^2 / N^2 and tr(S) = sum_i s_i / N come from the Gram spectrum.
    """
    if d == 1:
        return 0.0
    frob = float(np.sum(eig**2)) / n**2
    mu = float(np.sum(eig)) / n / d
    b = (float(np.sum(row_sq**2)) / n - frob) / (d * n)
    delta = (frob - d * mu**2) / d
    b = min(b, delta)
    return 0.0 if b <= 0 else b / delta


def hscore(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Regularised H-score (Ibrahim et al., NeurIPS 2021) with Ledoit-Wolf shrinkage; higher is better.

    H_a = tr( Sigma_a^+ (1 - a) cov(E[f | y]) ), Sigma_a = (1 - a) S + a mu I the Ledoit-Wolf estimate
    of the feature covariance (S = F_c^T F_c / N, F_c centred, mu = tr(S)/d, a from
    :func:`ledoit_wolf_shrinkage_from_spectrum`), cov(E[f | y]) = sum_c n_c m_c m_c^T / (N - 1) with
    m_c the centred class means (np.cov of the per-sample class means, as tllib's
    ``regularized_h_score``). The plain H-score inverts S itself, which is singular when N <= d: its
    pseudo-inverse then whitens every sampled direction equally and the score saturates near
    K_s - 1 whatever the features, so few-label target sets need the shrunk estimate.
    Each m_c lies in the row space of F_c, so in the eigenbasis of S
        H_a = (1 - a)/(N - 1) sum_i [ s_i / ((1 - a) s_i / N + a mu) ] sum_c (u_i^T y_c)^2 / n_c,
    with s_i the non-zero eigenvalues of F_c^T F_c; no d x d inverse is formed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k_s = int(num_classes if num_classes is not None else labels.max() + 1)
    n = labels.shape[0]
    if n < 2:
        raise ScdError("H-score needs at least 2 labeled images")
    spec = _spectrum(features, labels, k_s, center=True)
    if spec.eig.size == 0:
        return 0.0
    a = ledoit_wolf_shrinkage_from_spectrum(spec.eig, spec.row_sq, n, spec.d)
    mu = float(np.sum(spec.eig)) / n / spec.d
    present = spec.counts > 0
    between = (spec.uy[:, present] ** 2 / spec.counts[present]).sum(axis=1)  # (k,)
    weights = spec.eig / ((1.0 - a) * spec.eig / n + a * mu)
    return float((1.0 - a) * np.sum(weights * between) / (n - 1))


def hscore_plain(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score (Bao et al., ICIP 2019): tr( pinv(cov(f)) cov(E[f | y]) ), higher is better.

    cov is ``np.cov`` (1/(N-1)); E[f | y] replaces each feature by its class mean; pinv uses
    rcond = 1e-15 as the reference. Forms a d x d pseudo-inverse: O(d^3). Degenerate when N <= d.
    """
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    y = _onehot(labels, int(labels.max()) + 1)
    counts = y.sum(axis=0)
    means = np.divide(y.T @ f, counts[:, None], out=np.zeros((y.shape[1], f.shape[1])),
                      where=counts[:, None] > 0)
    g = means[labels]
    covf = np.atleast_2d(np.cov(f, rowvar=False))
    covg = np.atleast_2d(np.cov(g, rowvar=False))
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg))


# ----------------------------------------------------------------------------------------------------
# Metric interface and registry
# ----------------------------------------------------------------------------------------------------


class Metric(ABC):
    """A teacher-assessment score computed from :class:`TeacherOutputs`.

    ``name`` is the registry key, ``higher_is_better`` the direction, ``needs_features`` whether
    ``outputs.features`` is read (feature metrics cost O(N d min(N, d))), ``description`` one line.
    """

    name: str = ""
    higher_is_better: bool = True
    needs_features: bool = False
    description: str = ""
    mean_over_images: bool = False
    """True when the score is exactly the mean of :meth:`per_image` (then one pass gives both)."""

    @abstractmethod
    def score(self, outputs: TeacherOutputs) -> float:
        """The metric of one teacher on one target set."""

    def per_image(self, outputs: TeacherOutputs) -> np.ndarray | None:
        """Per-image contributions (N,) whose mean over the images is (or approximates) the score.

        None for metrics that are not a mean over images. The teacher-level statistics a metric
        uses (the cost, P(y | z)) are held fixed, so resampling these values measures how the
        score varies with the choice of images given those statistics.
        """
        return None

    def resample(self, outputs: TeacherOutputs, counts: np.ndarray) -> np.ndarray:
        """Scores (B,) under bootstrap resamples of the images: ``counts`` (B, N), each row summing to N.

        Metrics with :meth:`per_image` values reweight them (one (B, N) x (N,) product); the others
        override this.
        """
        values = self.per_image(outputs)
        if values is None:
            raise NotImplementedError(f"{self.name} has no bootstrap")
        return counts @ values / counts.sum(axis=1)

    def score_rows(self, outputs: TeacherOutputs, index: np.ndarray) -> float:
        """The score on the images ``index`` only (feature metrics, for half-sample intervals)."""
        raise NotImplementedError(f"{self.name} cannot be scored on a subset of rows")

    def info(self) -> dict[str, Any]:
        """JSON-ready description: ``{"higher_is_better", "needs_features", "description"}``."""
        return {"higher_is_better": self.higher_is_better, "needs_features": self.needs_features,
                "description": self.description}

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is strictly better than score ``b`` under this metric's direction."""
        return a > b if self.higher_is_better else a < b

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ScdMetric(Metric):
    """SCD teacher assessment from the teacher-to-target cost C, in one of two forms.

    ``form="contrast"`` (the default ``scd``, higher is better): :func:`contrastive_score_from_chunks`, the
    mean log-likelihood of each label under a Gibbs distribution of the OT costs from the prediction
    to every target class (a second, streamed pass over the stored logits, like LEEP).
    ``form="cost"`` (``scd_cost``, lower is better): the plain form of the score, the mean OT cost from
    each prediction to its label, <J, C> (:func:`mean_label_cost`), from the joint alone.

    ``cost`` names a cost of the registry :data:`scd_core.ot.costs.COSTS` (``prototype``: cosine between
    head rows and centred target class means, the conditional cost for non-linear heads;
    ``conditional``: C_ij = clip(-log P(j | i) / log K_s)).
    Why the default is the contrastive prototype form: benchmarks/results/ranking.md and the README.
    """

    needs_features = False  # uses class_feature_sums only

    def __init__(self, cost: str = DEFAULT_COST, form: str = "contrast", name: str | None = None,
                 smoothing: float = 1e-3, tau: float = SCD_TAU, chunk_size: int | None = None) -> None:
        registered = get_cost(cost)  # an unknown cost name raises ScdError listing the registered ones
        if form not in ("contrast", "cost"):
            raise ScdError(f"unknown SCD form {form!r}; valid: contrast, cost")
        self.cost, self.form = cost, form
        self.smoothing, self.tau, self.chunk_size = smoothing, tau, chunk_size
        self.higher_is_better = form == "contrast"
        self.mean_over_images = form == "contrast"
        default = "scd" + ("" if cost == DEFAULT_COST else f"_{cost}") + ("" if form == "contrast" else "_cost")
        self.name = name or default
        cost_text = f"{cost} cost ({registered.description.rstrip('.')})"
        self.description = (
            f"Mean log-likelihood of the label under exp(-OT(p, e_y) / {tau:g}), {cost_text}; higher is better."
            if form == "contrast" else
            f"Mean OT cost from each teacher prediction to its label, <J, C>, {cost_text}; lower is better."
        )

    def score(self, outputs: TeacherOutputs) -> float:
        cost = cost_matrix(outputs, self.cost, smoothing=self.smoothing)
        if self.form == "cost":
            return mean_label_cost(outputs.joint, cost)
        chunks = ((p, outputs.labels[rows]) for rows, p in outputs.iter_probabilities(self.chunk_size))
        return contrastive_score_from_chunks(cost, chunks, self.tau)

    def per_image(self, outputs: TeacherOutputs) -> np.ndarray:
        cost = cost_matrix(outputs, self.cost, smoothing=self.smoothing)
        parts = [contrastive_log_likelihoods(cost, p, outputs.labels[rows], self.tau) if self.form == "contrast"
                 else label_costs(cost, p, outputs.labels[rows])
                 for rows, p in outputs.iter_probabilities(self.chunk_size)]
        return np.concatenate(parts) if parts else np.zeros(0)


class LeepMetric(Metric):
    """LEEP (Nguyen et al., ICML 2020): (1/N) sum_n log sum_z p(z|x_n) P(y_n|z); higher is better.

    P(y | z) = J / J.sum(1) from the soft joint; the predictions are streamed chunk by chunk from
    ``outputs.iter_probabilities`` (a second pass over the stored logits).
    """

    name = "leep"
    higher_is_better = True
    needs_features = False
    description = "Log expected empirical prediction, mean log sum_z p(z|x) P(y|z) (Nguyen et al. 2020)."

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = chunk_size  # None: iter_probabilities' default, about 64 MB whatever K_t

    mean_over_images = True

    def score(self, outputs: TeacherOutputs) -> float:
        chunks = ((p, outputs.labels[rows]) for rows, p in outputs.iter_probabilities(self.chunk_size))
        return leep_from_chunks(outputs.joint, chunks)

    def per_image(self, outputs: TeacherOutputs) -> np.ndarray:
        cond = _conditional_from_joint(outputs.joint)
        parts = [leep_log_eeps(cond, p, outputs.labels[rows])
                 for rows, p in outputs.iter_probabilities(self.chunk_size)]
        return np.concatenate(parts) if parts else np.zeros(0)


class NceMetric(Metric):
    """NCE (Tran et al., ICCV 2019): -H(Y | Z), Z = teacher argmax, from ``hard_joint``; higher is better."""

    name = "nce"
    higher_is_better = True
    needs_features = False
    description = "Negative conditional entropy -H(Y|Z) of labels given the teacher's argmax (Tran et al. 2019)."

    def score(self, outputs: TeacherOutputs) -> float:
        return nce_from_hard_joint(outputs.hard_joint)

    def resample(self, outputs: TeacherOutputs, counts: np.ndarray) -> np.ndarray:
        """-H(Y | Z) of every resample at once: the hard joint of resample b is counts_b summed per (z, y)."""
        z = np.asarray(outputs.top_classes[:, 0], dtype=np.int64)
        pair = z * outputs.num_target_classes + np.asarray(outputs.labels, dtype=np.int64)
        pairs, inverse = np.unique(pair, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        h = np.add.reduceat(counts[:, order].astype(np.float64), starts, axis=1)  # (B, P) pair counts
        h /= h.sum(axis=1, keepdims=True)
        z_of_pair, z_index = np.unique(pairs // outputs.num_target_classes, return_inverse=True)
        pz = np.zeros((h.shape[0], z_of_pair.size))
        np.add.at(pz.T, z_index, h.T)
        ratio = np.divide(h, pz[:, z_index], out=np.ones_like(h), where=h > 0)
        return np.sum(h * np.log(ratio), axis=1)


class LogmeMetric(Metric):
    """LogME (You et al., ICML 2021): mean per-class log evidence / N of a Bayesian linear model on the
    teacher's features; higher is better. See :func:`logme_evidences`."""

    name = "logme"
    higher_is_better = True
    needs_features = True
    description = "Log marginal evidence of a Bayesian linear model on the features, per class (You et al. 2021)."

    def score(self, outputs: TeacherOutputs) -> float:
        return logme_score(outputs.features, outputs.labels, outputs.num_target_classes)

    def score_rows(self, outputs: TeacherOutputs, index: np.ndarray) -> float:
        return logme_score(outputs.features[index], outputs.labels[index], outputs.num_target_classes)


class HscoreMetric(Metric):
    """Regularised H-score (Bao et al. 2019; Ledoit-Wolf shrinkage of Ibrahim et al. 2021); higher is
    better. The shrunk covariance keeps the score meaningful when N <= d. See :func:`hscore`."""

    name = "hscore"
    higher_is_better = True
    needs_features = True
    description = ("H-score tr(cov(f)^-1 cov(E[f|y])) with Ledoit-Wolf shrinkage (Bao et al. 2019; "
                   "Ibrahim et al. 2021).")

    def score(self, outputs: TeacherOutputs) -> float:
        return hscore(outputs.features, outputs.labels, outputs.num_target_classes)

    def score_rows(self, outputs: TeacherOutputs, index: np.ndarray) -> float:
        return hscore(outputs.features[index], outputs.labels[index], outputs.num_target_classes)


class ScdEvidenceMetric(Metric):
    r"""Contrastive SCD with the temperature fitted on the target set, optionally with a second evidence.

    With :math:`D_{nj} = (p(x_n)^\top \tilde C)_j` the OT cost from each prediction to target class j
    (:math:`\tilde C` in [0, 1]), the score is

    .. math::
        \max_{\tau \in \mathcal T} \frac{1}{N} \sum_n \log \mathrm{softmax}_j\big(-D_{nj}/\tau
        + \lambda \log q_{nj}\big)_{y_n},

    the likelihood of the labels under a Gibbs model of the costs, with the temperature chosen by
    maximum likelihood from the grid :data:`FIT_TAUS` (a fixed ``tau`` skips the search). The optional
    evidence :math:`q_n` is the teacher's prediction carried onto the target classes:
    ``evidence="leep"`` by the empirical conditional :math:`P(y \mid z)` of LEEP, ``evidence="plan"``
    by the row-normalised exact OT plan (:func:`plan_conditional`). With :math:`\lambda = 0` it is the
    plain contrastive score with a data-chosen temperature. Higher is better; an uninformative teacher
    scores about :math:`-\log K_s`.
    """

    higher_is_better = True
    needs_features = False

    def __init__(self, name: str, cost: str = "prototype", evidence: str = "none", weight: float = 1.0,
                 tau: float | None = None, mix: float = 1.0, chunk_size: int | None = None) -> None:
        if evidence not in ("none", "leep", "plan"):
            raise ScdError(f"unknown SCD evidence {evidence!r}; valid: none, leep, plan")
        if not 0.0 <= mix <= 1.0:
            raise ScdError(f"SCD cost mix must be in [0, 1], got {mix}")
        self.name, self.cost, self.evidence, self.weight, self.tau = name, cost, evidence, weight, tau
        self.mix, self.chunk_size = mix, chunk_size
        get_cost(cost)  # an unknown cost name raises ScdError listing the registered ones
        self.mean_over_images = True  # at the fitted temperature the score is the mean of per_image
        temp = "fitted by maximum likelihood" if tau is None else f"{tau:g}"
        extra = {"none": "", "leep": " plus LEEP's log-likelihood", "plan": " plus the plan-mapped prediction"}
        self.description = (f"Label log-likelihood under exp(-OT(p, e_y) / tau), tau {temp}{extra[evidence]}; "
                            "higher is better.")

    def cost_matrix(self, outputs: TeacherOutputs) -> np.ndarray:
        """The [0, 1] cost: the chosen cost, or ``mix`` of it and (1 - mix) of the conditional cost."""
        c = rescale_unit(cost_matrix(outputs, self.cost))
        if self.mix < 1.0:
            c = self.mix * c + (1.0 - self.mix) * rescale_unit(cost_matrix(outputs, "conditional"))
        return c

    def _evidence_chunks(self, outputs: TeacherOutputs, c: np.ndarray):
        cond = None
        if self.evidence == "leep":
            cond = _conditional_from_joint(outputs.joint)
        elif self.evidence == "plan":
            cond = plan_conditional(outputs.joint, c)
        tiny = np.finfo(np.float64).tiny
        for rows, p in outputs.iter_probabilities(self.chunk_size):
            p64 = p.astype(np.float64)
            extra = (np.zeros((p.shape[0], c.shape[1])) if cond is None
                     else self.weight * np.log(np.maximum(p64 @ cond, tiny)))
            yield p64 @ c, extra, outputs.labels[rows]

    def fit(self, outputs: TeacherOutputs) -> tuple[float, float]:
        """(score, tau): the best mean log-likelihood and the temperature that reaches it."""
        c = self.cost_matrix(outputs)
        taus = FIT_TAUS if self.tau is None else (self.tau,)
        ll = gibbs_loglik_from_chunks(self._evidence_chunks(outputs, c), taus)
        best = int(np.argmax(ll))
        return float(ll[best]), float(taus[best])

    def score(self, outputs: TeacherOutputs) -> float:
        return self.fit(outputs)[0]

    def per_image(self, outputs: TeacherOutputs) -> np.ndarray:
        """Per-image label log-likelihoods at the fitted temperature (held fixed, like the cost)."""
        _, tau = self.fit(outputs)
        parts = []
        for d, extra, labels in self._evidence_chunks(outputs, self.cost_matrix(outputs)):
            z = -d / tau + extra
            z -= z.max(axis=1, keepdims=True)
            parts.append(z[np.arange(labels.shape[0]), labels] - np.log(np.exp(z).sum(axis=1)))
        return np.concatenate(parts) if parts else np.zeros(0)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (ScdMetric("prototype"), ScdMetric("prototype", form="cost"),
              ScdMetric("conditional", form="cost", name="scd_conditional"),
              LeepMetric(), NceMetric(), LogmeMetric(), HscoreMetric(),
              # settings chosen on the tuning worlds of benchmarks/ranking_science.py
              ScdEvidenceMetric("scd_fit", mix=0.0), ScdEvidenceMetric("scd_leep", evidence="leep", mix=0.5),
              ScdEvidenceMetric("scd_plan", evidence="plan", mix=0.5, weight=0.5))
}
"""Registry of metrics by name: scd, scd_cost, scd_conditional (mean cost), leep, nce, logme, hscore, and the
SCD variants scd_fit (fitted temperature), scd_leep (plus LEEP evidence), scd_plan (plus the plan-mapped
prediction)."""

DEFAULT_METRICS: tuple[str, ...] = ("scd", "leep", "nce", "logme", "hscore")


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``; raises :class:`ScdError` listing the valid names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ScdError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}") from None


def score_all(outputs: TeacherOutputs, names: Sequence[str]) -> dict[str, float]:
    """Scores of one teacher under each named metric, in the order given (names checked first)."""
    metrics = [get_metric(name) for name in names]
    return {m.name: float(m.score(outputs)) for m in metrics}


__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "HscoreMetric",
    "LeepMetric",
    "LogmeMetric",
    "Metric",
    "NceMetric",
    "ScdEvidenceMetric",
    "ScdMetric",
    "contrastive_log_likelihoods",
    "contrastive_score_from_chunks",
    "get_metric",
    "hscore",
    "hscore_plain",
    "joint_from_probs",
    "label_costs",
    "ledoit_wolf_shrinkage_from_spectrum",
    "leep_from_chunks",
    "leep_from_probs",
    "leep_log_eeps",
    "logme_evidences",
    "logme_score",
    "mean_label_cost",
    "nce_from_hard_joint",
    "nce_from_labels",
    "score_all",
]
