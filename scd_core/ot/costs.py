"""Cost matrices between a teacher label space (``K_t`` rows) and a target label space (``K_s`` columns).

One interface, :func:`cost_matrix` ``(outputs, name, **options)``, computes a named cost from a
teacher's outputs on the target set; :data:`COSTS` is the registry of named costs (each with a
one-line description) that the metrics, the plans, the distillation loss, the CLI's ``--cost``
choices and the app's choices all read. A new cost is one :func:`register_cost` call.

The array-level constructions behind the named costs take numpy arrays or torch tensors of any
floating dtype (float16 and bfloat16 included), compute in ``float64`` and return numpy ``float64``
arrays with values in :math:`[0, 1]`, so that an entropic regularisation ``eps`` can be chosen
relative to a known cost scale (see :mod:`scd_core.ot.transport`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from scd_core.errors import ScdError
from scd_core.utils import as_float64

if TYPE_CHECKING:
    from scd_core.outputs.streaming import TeacherOutputs

__all__ = ["COSTS", "DEFAULT_COST", "Cost", "conditional_cost", "cost_matrix", "get_cost", "prototype_cost",
           "register_cost", "rescale_unit"]


def prototype_cost(
    head_weight: np.ndarray,
    class_feature_sums: np.ndarray,
    class_counts: np.ndarray,
    feature_mean: np.ndarray,
) -> np.ndarray:
    r"""Cosine cost between the teacher's head vectors and centred target class prototypes.

    .. math::
        \mu_j = \frac{1}{n_j} \sum_{n: y_n = j} \phi(x_n) - \bar\phi, \qquad
        \mathbf{C}_{ij} = \frac{1 - \cos(\mathbf{w}_i, \mu_j)}{2} \in [0, 1]

    where :math:`\mathbf{w}_i` is row :math:`i` of the teacher's linear head, :math:`n_j` the number of
    target examples of class :math:`j` and :math:`\bar\phi` the mean feature over the whole target set
    (centring removes the direction shared by all classes, which would otherwise dominate the cosine).

    Degenerate cases use :math:`\cos := 0`, i.e. the neutral cost :math:`1/2`: a zero head row gives a
    row of 0.5, and a class with no examples (:math:`n_j = 0`) or a prototype equal to the mean gives a
    column of 0.5. Such a column neither attracts nor repels any teacher class.

    Parameters
    ----------
    head_weight : array-like, shape (K_t, d)
        Teacher classifier weights :math:`\mathbf{W}` (bias ignored).
    class_feature_sums : array-like, shape (K_s, d)
        :math:`\sum_{n: y_n = j} \phi(x_n)` for each target class.
    class_counts : array-like, shape (K_s,)
        :math:`n_j`, non-negative.
    feature_mean : array-like, shape (d,)
        :math:`\bar\phi`.

    Returns
    -------
    C : ndarray, shape (K_t, K_s), float64, values in [0, 1]
    """
    w = as_float64(head_weight, name="head_weight", ndim=2, finite=True)
    sums = as_float64(class_feature_sums, name="class_feature_sums", ndim=2, finite=True)
    counts = as_float64(class_counts, name="class_counts", ndim=1, finite=True)
    mean = as_float64(feature_mean, name="feature_mean", ndim=1, finite=True)
    d = w.shape[1]
    if sums.shape[1] != d or mean.shape[0] != d:
        raise ValueError(
            f"feature dimensions differ: head_weight {w.shape}, class_feature_sums {sums.shape}, "
            f"feature_mean {mean.shape}"
        )
    if counts.shape[0] != sums.shape[0]:
        raise ValueError(f"class_counts has {counts.shape[0]} entries for {sums.shape[0]} classes")
    if np.any(counts < 0):
        raise ValueError("class_counts must be non-negative")

    present = counts > 0
    class_mean = np.zeros_like(sums)
    class_mean[present] = sums[present] / counts[present, None]
    mu = np.where(present[:, None], class_mean - mean, 0.0)
    w_norm = np.linalg.norm(w, axis=1)
    mu_norm = np.linalg.norm(mu, axis=1)
    # A prototype that equals the mean up to rounding has no direction: compare its norm with the
    # rounding error of the subtraction rather than with zero.
    rounding = 64 * np.finfo(np.float64).eps * (np.linalg.norm(class_mean, axis=1) + np.linalg.norm(mean))
    w_ok = w_norm > 0
    mu_ok = present & (mu_norm > rounding)
    w_unit = np.where(w_ok[:, None], w / np.where(w_ok, w_norm, 1.0)[:, None], 0.0)
    mu_unit = np.where(mu_ok[:, None], mu / np.where(mu_ok, mu_norm, 1.0)[:, None], 0.0)
    cos = w_unit @ mu_unit.T
    return np.clip((1.0 - cos) / 2.0, 0.0, 1.0)


def conditional_cost(joint: np.ndarray, smoothing: float = 1e-3) -> np.ndarray:
    r"""Cost from the teacher-class / target-class soft joint: normalised surprisal of :math:`j` given :math:`i`.

    .. math::
        P(j \mid i) = \frac{\mathbf{J}_{ij} + \alpha}{\sum_{j'} \mathbf{J}_{ij'} + \alpha K_s}, \qquad
        \mathbf{C}_{ij} = \operatorname{clip}\Big(\frac{-\log P(j \mid i)}{\log K_s}, 0, 1\Big)

    with :math:`\mathbf{J} = \frac{1}{N} \sum_n p(x_n) e_{y_n}^\top` and the additive smoothing
    :math:`\alpha = \text{smoothing} \cdot \operatorname{mean}(\mathbf{J})
    = \text{smoothing} \cdot \frac{\sum_{ij} \mathbf{J}_{ij}}{K_t K_s}`. Tying :math:`\alpha` to the
    mean entry makes the cost scale-free: :math:`\mathbf{J}` and :math:`c \mathbf{J}` (e.g. sums instead
    of means) give the same cost. Dividing by :math:`\log K_s` maps the uniform conditional to cost 1,
    so the cost is comparable across target sets of different sizes; the clip only caps rows that are
    less informative than uniform on some entries.

    Edge cases: ``K_s == 1`` gives zeros (a single target class costs nothing); a teacher class with
    no mass (a zero row, or an all-zero joint) gets the uniform conditional, i.e. a row of ones.

    Parameters
    ----------
    joint : array-like, shape (K_t, K_s)
        Non-negative soft joint, normally summing to 1 (any positive total is accepted).
    smoothing : float, default 1e-3
        Relative additive smoothing, ``>= 0``. With 0, entries with :math:`\mathbf{J}_{ij} = 0` get cost 1.

    Returns
    -------
    C : ndarray, shape (K_t, K_s), float64, values in [0, 1]
    """
    J = as_float64(joint, name="joint", ndim=2, finite=True)
    if np.any(J < 0):
        raise ValueError("joint must be non-negative")
    if not smoothing >= 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    k_t, k_s = J.shape
    if k_s == 1:
        return np.zeros((k_t, 1))
    alpha = smoothing * float(J.mean()) if J.size else 0.0
    row = J.sum(axis=1, keepdims=True)
    denom = row + alpha * k_s
    empty = (denom <= 0)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = (J + alpha) / denom
        cond[empty] = 1.0 / k_s  # no evidence about this teacher class: uniform conditional
        cost = -np.log(cond) / np.log(k_s)  # log(0) -> +inf surprisal, clipped to 1 below
    return np.clip(cost, 0.0, 1.0)


def rescale_unit(cost: np.ndarray) -> np.ndarray:
    r"""Min-max rescaling :math:`\tilde C = (C - \min C) / (\max C - \min C)` to [0, 1] (zeros if C is constant).

    The exact plan is unchanged by this affine map; it calibrates an entropic ``eps`` or a Gibbs
    temperature to the cost's spread, whatever the cost construction.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.size == 0:
        return c.copy()
    spread = float(c.max() - c.min())
    return (c - c.min()) / spread if spread > 0 else np.zeros_like(c)


# ------------------------------------------------------------------------------------------------
# Registry of named costs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """A named teacher-to-target cost: ``compute(outputs, **options) -> (K_t, K_s)`` float64 in [0, 1]."""

    name: str
    description: str
    compute: Callable[..., np.ndarray]

    def __call__(self, outputs: TeacherOutputs, **options: Any) -> np.ndarray:
        return self.compute(outputs, **options)


COSTS: dict[str, Cost] = {}
"""Registry of named costs, in registration order (the default first, so lists of choices start with it)."""

DEFAULT_COST = "prototype"


def register_cost(name: str, description: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator registering ``compute(outputs, **options)`` as the cost ``name``."""

    def add(compute: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in COSTS:
            raise ValueError(f"cost {name!r} is already registered")
        COSTS[name] = Cost(name, description, compute)
        return compute

    return add


def get_cost(name: str) -> Cost:
    """The registered cost ``name``; an unknown name raises :class:`ScdError` listing the valid ones."""
    try:
        return COSTS[name]
    except KeyError:
        raise ScdError(f"unknown cost {name!r}; valid costs: {', '.join(COSTS)}") from None


def cost_matrix(outputs: TeacherOutputs, name: str = DEFAULT_COST, **options: Any) -> np.ndarray:
    """The cost ``name`` (K_t x K_s, float64, values in [0, 1]) of a teacher from its outputs on the target."""
    return get_cost(name)(outputs, **options)


@register_cost("prototype", "(1 - cos(head row, centred target class mean)) / 2; conditional for non-linear heads.")
def _prototype(outputs: TeacherOutputs, smoothing: float = 1e-3) -> np.ndarray:
    # A teacher without a linear head has no class vectors to compare: the joint still relates the spaces.
    if outputs.head_weight is None:
        return conditional_cost(outputs.joint, smoothing=smoothing)
    sums = np.asarray(outputs.class_feature_sums, dtype=np.float64)
    feature_mean = sums.sum(axis=0) / max(outputs.num_samples, 1)
    return prototype_cost(outputs.head_weight, sums, outputs.class_counts, feature_mean)


@register_cost("conditional", "Surprisal -log P(target class | teacher class) / log K_s from the soft joint.")
def _conditional(outputs: TeacherOutputs, smoothing: float = 1e-3) -> np.ndarray:
    return conditional_cost(outputs.joint, smoothing=smoothing)
