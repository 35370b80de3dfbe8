r"""The teacher's signal for a run: its cost / plan context, its cached outputs on the pool, and lambda.

Everything here is computed once before training, from the teacher's outputs on the labeled
``train`` images (never ``val`` or ``test``) and its predictions on the training pool.

**Adaptive teacher weight.** With ``weighting="adaptive"`` the teacher term's lambda is scaled by the
teacher's *label agreement* :math:`a \in [0, 1]`, measured on the labeled train images before
training. The ``scd`` term pulls the student toward the target class of least expected cost,
:math:`\hat y(x) = \arg\min_j (p_t(x) C)_j`; the agreement is how much more often than chance that
class is the label, :math:`a = \max(0, (\mathrm{acc} - 1/K_s) / (1 - 1/K_s))` (Cohen's kappa against
a uniform guess). A teacher whose transported predictions say nothing about the labels gets
:math:`\lambda \approx 0` (the run becomes ``ce``); one that predicts them keeps its full weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scd_core.data.targets import TargetSet
from scd_core.distill.config import DistillConfig
from scd_core.distill.data import TrainData
from scd_core.distill.losses import DistillLoss, TeacherContext
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.progress import ProgressFn, emit
from scd_core.teachers.repository import TeacherSpec


@dataclass
class TeacherSignal:
    """Teacher logits (and features) on the training pool, on the device, and the weight used."""

    logits: torch.Tensor  # (N_pool, K_t) float32
    features: torch.Tensor | None  # (N_pool, d_t) when the loss needs features
    weight: dict = field(default_factory=dict)  # {"weighting", "base", "agreement", "lambda"}


def _cost(outputs: TeacherOutputs, cost: str) -> np.ndarray:
    from scd_core.assess.metrics import ScdMetric

    return ScdMetric(cost).cost_matrix(outputs)


def label_agreement(outputs: TeacherOutputs, cost: np.ndarray) -> float:
    r"""Chance-corrected accuracy of the least-cost target class :math:`\arg\min_j (p_t(x) C)_j` on the
    labeled images of ``outputs`` (see the module docstring); 0 when no better than a uniform guess."""
    k = outputs.num_target_classes
    if outputs.num_samples == 0 or k < 2:
        return 0.0
    c = np.asarray(cost, dtype=np.float64)
    hits = 0
    for rows, p in outputs.iter_probabilities():
        hits += int(((p.astype(np.float64) @ c).argmin(axis=1) == outputs.labels[rows]).sum())
    acc = hits / outputs.num_samples
    return float(max(0.0, (acc - 1.0 / k) / (1.0 - 1.0 / k)))


def teacher_context(spec: TeacherSpec, target: TargetSet, device: str, cost: str = "prototype",
                    with_plan: bool = False, outputs: TeacherOutputs | None = None) -> TeacherContext:
    """Cost (and, when asked, the exact dataset plan) of the teacher from its outputs on the labeled
    train images (never val/test). The plan is an exact OT solve over K_t x K_s: only ``translate``
    needs it, so it is not paid for by the other methods."""
    from scd_core.ot.transport import exact_plan

    outputs = outputs if outputs is not None else train_outputs(spec, target, device)
    c = _cost(outputs, cost)
    plan = exact_plan(outputs.joint.sum(axis=1), outputs.joint.sum(axis=0), c) if with_plan else None
    return TeacherContext(teacher_labels=list(spec.label_names), target_labels=list(target.class_names),
                          cost=c, plan=plan)


def train_outputs(spec: TeacherSpec, target: TargetSet, device: str | torch.device) -> TeacherOutputs:
    """The teacher's outputs on the labeled train images (cached on disk by the forward pass)."""
    from scd_core.outputs.forward import teacher_outputs

    train = [it for it in target.split("train") if it.label >= 0]
    return teacher_outputs(spec, target, train, device=device)


def teacher_signal(spec: TeacherSpec, target: TargetSet, data: TrainData, loss_fn: DistillLoss, cfg: DistillConfig,
                   device: torch.device, progress: ProgressFn | None = None) -> TeacherSignal:
    """Prepare ``loss_fn`` from the teacher's context, set its weight, and load the teacher's outputs."""
    from scd_core.outputs.forward import teacher_predictions

    emit(progress, f"teacher {spec.name} on {len(data.pool)} images", None, "preparing")
    outputs = train_outputs(spec, target, cfg.device)
    context = teacher_context(spec, target, cfg.device, cfg.cost, with_plan=loss_fn.needs_plan, outputs=outputs)
    loss_fn.prepare(context, device)
    weight = {"weighting": cfg.weighting, "base": loss_fn.weight, "agreement": None, "lambda": loss_fn.weight}
    if cfg.weighting == "adaptive":
        agreement = label_agreement(outputs, context.cost)
        loss_fn.weight = loss_fn.weight * agreement
        weight.update(agreement=agreement, **{"lambda": loss_fn.weight})
    t_logits, t_feats = teacher_predictions(spec, data.pool, device=device)
    return TeacherSignal(
        logits=torch.from_numpy(t_logits.astype(np.float32)).to(device),
        features=torch.from_numpy(t_feats).to(device) if loss_fn.needs_features else None,
        weight=weight,
    )
