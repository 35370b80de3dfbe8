r"""Distillation objectives behind one interface: ``ce``, ``kd``, ``rkd``, ``scd`` and ``translate``.

Every loss is a :class:`DistillLoss`: it is prepared once from the teacher's outputs on the target
set (cost matrix, plan, label correspondence) and then called per batch on a :class:`Batch` holding
student logits and features, teacher logits and features, and labels (-1 for unlabeled images,
which only the teacher terms use). It returns the total loss and its named parts.

With :math:`p^T_t(x) = \mathrm{softmax}(t(x)/T)` over the teacher's :math:`K_t` classes and
:math:`p^T_s(x)` over the student's :math:`K_s` target classes:

- ``ce``:        :math:`\mathrm{CE}(s(x), y)` on labeled images.
- ``kd``:        CE + :math:`\lambda T^2 \mathrm{KL}(p^T_t \| p^T_s)` (Hinton); same label space only.
- ``rkd``:       CE + :math:`\lambda (\ell_{dist} + 2 \ell_{angle})` on feature relations (Park et al.).
- ``scd``:       CE + :math:`\lambda\, \mathrm{OT}_\varepsilon(p^T_t, p^T_s; C)`, a batched entropic OT
  between the two predictions with the teacher-to-target cost :math:`C`; its gradient with respect
  to :math:`p^T_s` is the Sinkhorn dual potential :math:`g` (no backpropagation through iterations).
- ``translate``: CE + :math:`\lambda T^2 \mathrm{KL}(p^T_t R \| p^T_s)`, :math:`R` the row-normalised
  dataset plan :math:`G` (teacher classes carried into the target label space).

With the adaptive teacher weight (:mod:`scd_core.distill.signal`) :math:`\lambda` becomes per image,
:math:`\lambda(x) = \lambda w(x)`: the per-image terms are averaged with the weights ``Batch.teacher_weight``
(``rkd``, relational, is scaled by their batch mean), and the logged teacher term is that weighted mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scd_core.distill.config import DistillConfig
from scd_core.errors import ScdError
from scd_core.ot.costs import rescale_unit
from scd_core.ot.transport import sinkhorn


@dataclass
class Batch:
    """One training batch as the losses see it."""

    student_logits: torch.Tensor  # (B, K_s)
    labels: torch.Tensor  # (B,), -1 where unlabeled
    teacher_logits: torch.Tensor | None = None  # (B, K_t), no grad
    student_features: torch.Tensor | None = None  # (B, d_s)
    teacher_features: torch.Tensor | None = None  # (B, d_t), no grad
    teacher_weight: torch.Tensor | None = None  # (B,) per-image factor of lambda (adaptive weighting), no grad


def _rows_mean(rows: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean of per-image teacher terms over the batch, each weighted by ``batch.teacher_weight`` if given."""
    return rows.mean() if batch.teacher_weight is None else (rows * batch.teacher_weight).mean()


@dataclass
class TeacherContext:
    """What a loss may need about the teacher, computed once before training."""

    teacher_labels: list[str]
    target_labels: list[str]
    cost: np.ndarray | None = None  # (K_t, K_s) in [0, 1]
    plan: np.ndarray | None = None  # (K_t, K_s) dataset-level plan G


def _ce(batch: Batch) -> torch.Tensor:
    labeled = batch.labels >= 0
    if not bool(labeled.any()):
        return batch.student_logits.sum() * 0.0
    return F.cross_entropy(batch.student_logits[labeled], batch.labels[labeled])


def _kl_rows(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Per-image :math:`T^2 \mathrm{KL}(q \| p^T_s)`, shape (B,)."""
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_ps, target_probs, reduction="none").sum(dim=1) * temperature**2


class DistillLoss(ABC):
    """One distillation objective; subclasses set ``name`` and ``needs_teacher``."""

    name: str = ""
    needs_teacher: bool = True
    needs_features: bool = False
    needs_plan: bool = False  # the dataset transport plan in TeacherContext (an exact OT solve)

    def __init__(self, weight: float = 1.0, temperature: float = 4.0) -> None:
        self.weight = float(weight)
        self.temperature = float(temperature)

    @classmethod
    def options(cls, config: DistillConfig) -> dict:
        """This loss's keyword options, read from a run's config."""
        return {"weight": config.weight, "temperature": config.temperature}

    @classmethod
    def refusal(cls, teacher_labels: list[str], target_labels: list[str]) -> str | None:
        """Why this loss cannot use a teacher with ``teacher_labels`` on ``target_labels`` (None: it can).

        The one rule, checked by :meth:`prepare` before training and by the app before a run is queued."""
        return None

    def prepare(self, context: TeacherContext | None, device: torch.device) -> None:  # noqa: B027
        """Check compatibility with the teacher and precompute what the loss needs."""

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ce = _ce(batch)
        if not self.needs_teacher:
            return ce, {"ce": float(ce.detach())}
        distill = self.teacher_term(batch)
        total = ce + self.weight * distill
        return total, {"ce": float(ce.detach()), self.name: float(distill.detach())}

    @abstractmethod
    def teacher_term(self, batch: Batch) -> torch.Tensor:
        """The teacher-driven term, averaged over every image of the batch (labeled or not), each image
        weighted by ``batch.teacher_weight`` when it is given."""


class CrossEntropyLoss(DistillLoss):
    """``ce``: labels only, the no-teacher baseline."""

    name = "ce"
    needs_teacher = False

    @classmethod
    def options(cls, config: DistillConfig) -> dict:
        return {}

    def teacher_term(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - never called
        return batch.student_logits.sum() * 0.0


class KDLoss(DistillLoss):
    """``kd`` (Hinton et al. 2015): KL to the teacher's softened prediction; needs equal label spaces.

    Teacher classes are matched to target classes by name (case-insensitive), so a teacher whose
    labels are the target's in another order works; any other teacher is refused.
    """

    name = "kd"

    @classmethod
    def refusal(cls, teacher_labels: list[str], target_labels: list[str]) -> str | None:
        teacher = sorted(n.casefold() for n in teacher_labels)
        target = sorted(n.casefold() for n in target_labels)
        if teacher == target:
            return None
        return (f"method 'kd' needs the teacher's label space to equal the target's "
                f"(teacher has {len(teacher)} classes, target {len(target)}); use scd, translate or rkd")

    def prepare(self, context: TeacherContext | None, device: torch.device) -> None:
        assert context is not None
        why = self.refusal(context.teacher_labels, context.target_labels)
        if why is not None:
            raise ScdError(why)
        teacher = [n.casefold() for n in context.teacher_labels]
        target = [n.casefold() for n in context.target_labels]
        self.index = torch.tensor([teacher.index(n) for n in target], device=device)

    def teacher_term(self, batch: Batch) -> torch.Tensor:
        t = batch.teacher_logits.index_select(1, self.index)
        return _rows_mean(_kl_rows(F.softmax(t / self.temperature, dim=1), batch.student_logits, self.temperature),
                          batch)


class RKDLoss(DistillLoss):
    """``rkd`` (Park et al. 2019): match pairwise distances (weight 1) and angles (weight 2).

    Distances are normalised by their batch mean; angles are cosines between difference vectors
    of every triplet, computed as one batched matrix product per anchor set. The term is relational, not
    per image, so per-image teacher weights scale it by their batch mean.
    """

    name = "rkd"
    needs_features = True

    def teacher_term(self, batch: Batch) -> torch.Tensor:
        s, t = batch.student_features, batch.teacher_features.float()
        term = self.distance_loss(s, t) + 2.0 * self.angle_loss(s, t)
        return term if batch.teacher_weight is None else term * batch.teacher_weight.mean()

    @staticmethod
    def _pdist(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        mean = d[d > 0].mean() if bool((d > 0).any()) else d.new_tensor(1.0)
        return d / mean

    def distance_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(self._pdist(s), self._pdist(t))

    @staticmethod
    def _angles(x: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # (B, B, d)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    def angle_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(self._angles(s), self._angles(t))


class _OTDivergence(torch.autograd.Function):
    r"""Entropic OT value per row, differentiable in ``b`` through the dual potential ``g``.

    The value is POT's entropic objective at the optimum,
    :math:`W_\varepsilon(a, b) = \langle P, C \rangle + \varepsilon \sum P \log P
    = \langle f, a \rangle + \langle g, b \rangle` (strong duality), and by the envelope theorem
    :math:`\partial W_\varepsilon / \partial b = g` up to a constant, which vanishes on the simplex.
    So the backward pass is one multiply: no backpropagation through the Sinkhorn iterations.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int,
                tol: float):
        result = sinkhorn(a.detach(), b.detach(), cost, eps, max_iter=max_iter, tol=tol)
        f, g = result.f.to(b.dtype), result.g.to(b.dtype)
        ctx.save_for_backward(g)
        return (f * a.detach()).sum(1) + (g * b.detach()).sum(1)

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor):
        (g,) = ctx.saved_tensors
        return None, grad_value[:, None] * g, None, None, None, None


MIN_TRAIN_EPS = 0.01
"""Smallest entropic regularisation the ``scd`` loss accepts (relative to a [0, 1] cost)."""


def ot_divergence(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.05,
                  max_iter: int = 200, tol: float = 1e-4) -> torch.Tensor:
    """Entropic OT value between the rows of ``a`` (B, K_t) and ``b`` (B, K_s), differentiable in b."""
    return _OTDivergence.apply(a, b, cost, eps, max_iter, tol)


class SCDLoss(DistillLoss):
    r"""``scd``: CE + lambda * OT_eps(p_t^T, p_s^T; C) with the teacher-to-target cost C.

    The cost is rescaled to [0, 1] (min-max) so that ``eps`` is relative to its spread; the exact
    plan is unchanged by this affine rescaling, only the entropic smoothing is calibrated by it.

    As in Hinton's KD, the term is multiplied by :math:`T^2`: the gradient reaching the student's
    logits through the softmax at temperature T is scaled by 1/T, and the potential's spread by
    about 1/T again, so without the factor the teacher's signal fades as T grows (on the demo worlds
    lambda = 1 without it gained about 4 points over ``ce``; with it, 15-20; see the README).
    """

    name = "scd"

    def __init__(self, weight: float = 1.0, temperature: float = 4.0, eps: float = 0.05,
                 max_iter: int = 200) -> None:
        super().__init__(weight, temperature)
        if not MIN_TRAIN_EPS <= float(eps) <= 10.0:
            # below this, each step's Sinkhorn needs thousands of (log-domain) iterations to converge
            raise ScdError(f"scd eps must be in [{MIN_TRAIN_EPS}, 10] (relative to the cost range), got {eps}")
        self.eps, self.max_iter = float(eps), int(max_iter)

    @classmethod
    def options(cls, config: DistillConfig) -> dict:
        return {**super().options(config), "eps": config.eps}

    def prepare(self, context: TeacherContext | None, device: torch.device) -> None:
        if context is None or context.cost is None:
            raise ScdError("method 'scd' needs the teacher-to-target cost matrix")
        self.cost = torch.as_tensor(rescale_unit(context.cost), dtype=torch.float32, device=device)

    def teacher_term(self, batch: Batch) -> torch.Tensor:
        pt = F.softmax(batch.teacher_logits.float() / self.temperature, dim=1)
        ps = F.softmax(batch.student_logits.float() / self.temperature, dim=1)
        return _rows_mean(ot_divergence(pt, ps, self.cost, self.eps, self.max_iter), batch) * self.temperature**2


class TranslateLoss(DistillLoss):
    """``translate``: KD against p_t^T R, R the row-normalised dataset plan (teacher -> target)."""

    name = "translate"
    needs_plan = True

    def prepare(self, context: TeacherContext | None, device: torch.device) -> None:
        if context is None or context.plan is None:
            raise ScdError("method 'translate' needs the teacher's transport plan")
        g = np.asarray(context.plan, dtype=np.float64)
        rows = g.sum(axis=1, keepdims=True)
        uniform = np.full_like(g, 1.0 / g.shape[1])
        r = np.where(rows > 0, g / np.where(rows > 0, rows, 1.0), uniform)  # massless rows: uniform
        self.translation = torch.as_tensor(r, dtype=torch.float32, device=device)

    def teacher_term(self, batch: Batch) -> torch.Tensor:
        pt = F.softmax(batch.teacher_logits.float() / self.temperature, dim=1)
        return _rows_mean(_kl_rows(pt @ self.translation, batch.student_logits, self.temperature), batch)


LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls for cls in (CrossEntropyLoss, KDLoss, RKDLoss, SCDLoss, TranslateLoss)
}
METHODS = tuple(LOSSES)


def method_refusal(method: str, teacher_labels: list[str], target_labels: list[str]) -> str | None:
    """Why ``method`` cannot distill a teacher with ``teacher_labels`` into ``target_labels`` (None: it can).

    The same rule the loss applies when a run starts (:meth:`DistillLoss.refusal`), so a caller can refuse
    the run before queueing it."""
    if method not in LOSSES:
        return f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
    return LOSSES[method].refusal(list(teacher_labels), list(target_labels))


def make_loss(method: str, **kwargs) -> DistillLoss:
    """The loss for ``method`` (ce, kd, rkd, scd, translate) with its keyword options."""
    try:
        cls = LOSSES[method]
    except KeyError:
        raise ScdError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None
    return cls(**kwargs)


def loss_from_config(config: DistillConfig) -> DistillLoss:
    """The loss for ``config.method``, each loss taking its own options from ``config``."""
    cls = LOSSES.get(config.method)
    if cls is None:
        return make_loss(config.method)  # raises the ScdError listing the methods
    return cls(**cls.options(config))
