r"""The teacher's signal for a run: its cost / plan context, its cached outputs on the pool, and lambda.

Everything here is computed once before training, from the teacher's outputs on the labeled
``train`` images (never ``val`` or ``test``) and its predictions on the training pool.

**Adaptive teacher weight.** With ``weighting="adaptive"`` the teacher term's lambda is scaled by the
teacher's *label agreement* :math:`a \in [0, 1]`, measured on the labeled train images before
training. At the loss's temperature :math:`T`, the ``scd`` term pulls the student toward the target
class of least expected cost, :math:`\hat y(x) = \arg\min_j (p^T_t(x) C)_j`. With :math:`n` labeled
images, :math:`\mathrm{acc}_-` is the one-sided 95% Wilson lower bound of how often :math:`\hat y(x)`
is the label, each image judged by a cost fitted on the *other* labeled images (2-fold stratified
cross-fitting, the hits averaged over 5 random splits), and

.. math::
    a = \max\Big(0, \frac{\mathrm{acc}_- - 1/K_s}{1 - 1/K_s}\Big),

a chance-corrected accuracy (Cohen's kappa against a uniform guess) that a teacher has to earn with
evidence: a teacher whose transported predictions are no better than chance on the labeled images
gets :math:`\lambda = 0` (the run becomes ``ce``), one that predicts the labels keeps most of its weight.

Why cross-fitted: the cost (class prototypes, or the joint) is itself fitted to the labeled images, and
fitted to a few dozen it also fits their noise: the class means of pure-noise features classify their own
images better than chance, so in sample a useless teacher earns a weight it would not earn on new images
(an untrained teacher reached :math:`a = 0.21` on a 24-image suite world and cost its student 3.7 points).
Judged out of sample that optimism is gone; averaging over several splits keeps :math:`a` from depending
on which images fell in which half. A cost fitted on half the images is a little worse than the one the
loss uses (fitted on all of them), so the estimate errs on the cautious side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scd_core.data.targets import TargetSet
from scd_core.distill.config import DistillConfig
from scd_core.distill.data import TrainData
from scd_core.distill.losses import DistillLoss, TeacherContext
from scd_core.ot.costs import cost_matrix
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.progress import ProgressFn, emit
from scd_core.teachers.repository import TeacherSpec


@dataclass
class TeacherSignal:
    """Teacher logits (and features) on the training pool, on the device, and the weight used."""

    logits: torch.Tensor  # (N_pool, K_t) float32
    features: torch.Tensor | None  # (N_pool, d_t) when the loss needs features
    weight: dict = field(default_factory=dict)  # {"weighting", "base", "agreement", "lambda"}


AGREEMENT_Z = 1.645  # one-sided 95% bound


def wilson_lower(hits: int, n: int, z: float = AGREEMENT_Z) -> float:
    r"""Wilson score lower bound of a proportion :math:`\hat p = \mathrm{hits}/n`:
    :math:`(\hat p + z^2/2n - z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}) / (1 + z^2/n)`."""
    if n <= 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, (centre - spread) / (1 + z * z / n)))


def _transported_hits(outputs: TeacherOutputs, cost: np.ndarray, temperature: float,
                      rows: np.ndarray | None = None) -> int:
    r"""How many of ``rows`` (default: all) have :math:`\arg\min_j (p^T_t(x) C)_j` equal to their label."""
    index = np.arange(outputs.num_samples) if rows is None else np.asarray(rows)
    c = np.asarray(cost, dtype=np.float64)
    hits = 0
    for start in range(0, index.size, 4096):
        part = index[start:start + 4096]
        z = np.asarray(outputs.logits[part], dtype=np.float64) / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        hits += int(((p @ c).argmin(axis=1) == outputs.labels[part]).sum())
    return hits


def _agreement(hits: float, n: int, k: int, judged: str) -> dict:
    lower = wilson_lower(hits, n)
    return {"accuracy": hits / n, "accuracy_lower": lower, "n": n, "chance": 1.0 / k, "judged": judged,
            "agreement": float(max(0.0, (lower - 1.0 / k) / (1.0 - 1.0 / k)))}


def label_agreement(outputs: TeacherOutputs, cost: np.ndarray, temperature: float = 1.0) -> dict:
    r"""How far the teacher's transported predictions agree with the labels, every labeled image judged
    by the same, given ``cost`` (in sample when the cost was fitted on these images).

    Returns ``accuracy`` (of :math:`\arg\min_j (p^T_t(x) C)_j`), its Wilson lower bound
    ``accuracy_lower``, ``n`` and the chance-corrected ``agreement`` in [0, 1] computed from the bound.
    """
    k, n = outputs.num_target_classes, outputs.num_samples
    if n == 0 or k < 2:
        return {"accuracy": float("nan"), "accuracy_lower": 0.0, "n": n, "chance": 1.0 / max(k, 1),
                "judged": "in sample", "agreement": 0.0}
    return _agreement(_transported_hits(outputs, cost, temperature), n, k, "in sample")


def crossfit_agreement(outputs: TeacherOutputs, cost_name: str, temperature: float = 1.0, folds: int = 2,
                       repeats: int = 5, seed: int = 0) -> dict:
    r""":func:`label_agreement` out of sample (see the module docstring): the labeled images are split
    into ``folds`` stratified folds, the cost ``cost_name`` is fitted on the other folds and judges each
    fold; the hits are averaged over ``repeats`` random splits and go into one Wilson bound over the
    ``n`` images. Deterministic for a given ``seed``. With fewer images in some class than ``folds`` a
    split cannot hold every class on both sides, and the in-sample agreement is returned instead.
    """
    k, n = outputs.num_target_classes, outputs.num_samples
    if n == 0 or k < 2 or int(outputs.class_counts.min()) < folds:
        return label_agreement(outputs, cost_matrix(outputs, cost_name), temperature)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(outputs.labels == c) for c in range(k)]
    logits = np.asarray(outputs.logits, dtype=np.float32)
    features = np.asarray(outputs.features, dtype=np.float32)
    total = 0
    for _ in range(repeats):
        fold = np.empty(n, dtype=np.int64)
        for members in by_class:  # stratified: every class on both sides of every split
            fold[rng.permutation(members)] = np.arange(members.size) % folds
        for f in range(folds):
            fit = np.flatnonzero(fold != f)
            fitted = TeacherOutputs.from_arrays(
                logits[fit], outputs.labels[fit], features[fit], num_target_classes=k,
                head_weight=outputs.head_weight, temperature=outputs.temperature)
            total += _transported_hits(outputs, cost_matrix(fitted, cost_name), temperature,
                                       np.flatnonzero(fold == f))
    return _agreement(total / repeats, n, k, f"{folds}-fold cross-fitted, {repeats} splits")


def teacher_context(spec: TeacherSpec, target: TargetSet, device: str, cost: str = "prototype",
                    with_plan: bool = False, outputs: TeacherOutputs | None = None) -> TeacherContext:
    """Cost (and, when asked, the exact dataset plan) of the teacher from its outputs on the labeled
    train images (never val/test). The plan is an exact OT solve over K_t x K_s: only ``translate``
    needs it, so it is not paid for by the other methods."""
    from scd_core.ot.transport import exact_plan

    outputs = outputs if outputs is not None else train_outputs(spec, target, device)
    c = cost_matrix(outputs, cost)
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
        agreement = crossfit_agreement(outputs, cfg.cost, cfg.temperature)
        loss_fn.weight = loss_fn.weight * agreement["agreement"]
        weight.update(agreement=agreement["agreement"], evidence=agreement, **{"lambda": loss_fn.weight})
    t_logits, t_feats = teacher_predictions(spec, data.pool, device=device)
    return TeacherSignal(
        logits=torch.from_numpy(t_logits.astype(np.float32)).to(device),
        features=torch.from_numpy(t_feats).to(device) if loss_fn.needs_features else None,
        weight=weight,
    )
