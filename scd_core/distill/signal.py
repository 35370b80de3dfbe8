r"""The teacher's signal for a run: its cost / plan context, its cached outputs on the pool, and lambda.

Everything here is computed once before training, from the teacher's outputs on the labeled
``train`` images (never ``val`` or ``test``) and its predictions on the training pool.

**Adaptive teacher weight.** With ``weighting="adaptive"`` the teacher term's lambda is scaled by the
teacher's *label agreement* :math:`a \in [0, 1]`, measured on the labeled train images before
training. At the loss's temperature :math:`T`, the ``scd`` term pulls the student toward the target
class of least expected cost, :math:`\hat y(x) = \arg\min_j (p^T_t(x) C)_j`. With :math:`n` labeled
images, :math:`\mathrm{acc}_-` is the one-sided 95% Wilson lower bound of how often :math:`\hat y(x)`
is the label, each image judged by a cost fitted on the *other half* of the labeled images (2-fold
stratified cross-fitting, the hits averaged over 5 random splits), and

.. math::
    a = \max\Big(0, \frac{\mathrm{acc}_- - p_e}{1 - p_e}\Big), \qquad
    p_e = \sum_j q_j \pi_j,

a chance-corrected accuracy (Cohen's kappa, :math:`q_j` the share of images predicted as class
:math:`j`, :math:`\pi_j` the share labeled :math:`j`; :math:`p_e = 1/K_s` for balanced classes) that a
teacher has to earn with evidence: a teacher whose transported predictions are no better than chance
on the labeled images gets :math:`\lambda = 0` (the run becomes ``ce``), one that predicts the labels
keeps most of its weight.

Why cross-fitted: the cost (class prototypes, or the joint) is itself fitted to the labeled images, and
fitted to a few dozen it also fits their noise: the class means of pure-noise features classify their own
images better than chance, so in sample a useless teacher earns a weight it would not earn on new images
(an untrained teacher reached :math:`a = 0.21` on a 24-image suite world and cost its student 3.7 points).
Judged out of sample that optimism is gone; averaging over several splits keeps :math:`a` from depending
on which images fell in which half. A cost fitted on half the images is worse than the one the loss uses
(fitted on all of them), by much when a class has only a few labeled images, so the estimate errs on the
cautious side: on the suite's 3-10 images per class the mean gain over ``ce`` fell from 3.2 to 2.8 points.
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


def wilson_lower(hits: float, n: int, z: float = AGREEMENT_Z) -> float:
    r"""Wilson score lower bound of a proportion :math:`\hat p = \mathrm{hits}/n`:
    :math:`(\hat p + z^2/2n - z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}) / (1 + z^2/n)`."""
    if n <= 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, (centre - spread) / (1 + z * z / n)))


def _transported_hits(outputs: TeacherOutputs, costs: np.ndarray, judge: np.ndarray,
                      temperature: float) -> tuple[int, np.ndarray]:
    r"""How many images have :math:`\hat y(x) = \arg\min_j (p^T_t(x) C_{f(x)})_j` equal to their label,
    and how many are predicted as each target class, where ``costs`` is (F, K_t, K_s) and ``judge`` (N,)
    gives each image's cost :math:`f(x)`. One streamed pass over the logits; the softmax is computed
    once per row, whatever F."""
    f, k_t, k_s = costs.shape
    stacked = np.ascontiguousarray(np.asarray(costs, dtype=np.float64).transpose(1, 0, 2).reshape(k_t, f * k_s))
    n, step, hits = outputs.num_samples, outputs.chunk_rows, 0  # float64 here: about 128 MB a chunk
    predicted = np.zeros(k_s, dtype=np.int64)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        z = outputs.logit_rows(rows).astype(np.float64) / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        guess = (p @ stacked).reshape(-1, f, k_s)[np.arange(z.shape[0]), judge[rows]].argmin(axis=1)
        hits += int((guess == outputs.labels[rows]).sum())
        predicted += np.bincount(guess, minlength=k_s)
    return hits, predicted


def _agreement(hits: float, predicted: np.ndarray, outputs: TeacherOutputs, judged: str) -> dict:
    n = outputs.num_samples
    # Cohen's chance agreement: what predictions made independently of the labels, as often per class
    # as these were, would match; 1/K_s when the classes are balanced
    balanced = np.unique(outputs.class_counts).size == 1
    chance = 1.0 / outputs.num_target_classes if balanced else float(
        np.dot(predicted / max(predicted.sum(), 1e-12), outputs.class_counts / n))
    lower = wilson_lower(hits, n)
    agreement = max(0.0, (lower - chance) / (1.0 - chance)) if chance < 1.0 else 0.0
    return {"accuracy": hits / n, "accuracy_lower": lower, "n": n, "chance": chance, "judged": judged,
            "agreement": float(agreement)}


def label_agreement(outputs: TeacherOutputs, cost: np.ndarray, temperature: float = 1.0) -> dict:
    r"""How far the teacher's transported predictions agree with the labels, every labeled image judged
    by the same, given ``cost`` (in sample when the cost was fitted on these images).

    Returns ``accuracy`` (of :math:`\arg\min_j (p^T_t(x) C)_j`), its Wilson lower bound
    ``accuracy_lower``, ``n``, ``chance`` (:math:`1/K_s`) and the chance-corrected ``agreement`` in
    [0, 1] computed from the bound.
    """
    k, n = outputs.num_target_classes, outputs.num_samples
    if n == 0 or k < 2:
        return {"accuracy": float("nan"), "accuracy_lower": 0.0, "n": n, "chance": 1.0 / max(k, 1),
                "judged": "in sample", "agreement": 0.0}
    hits, predicted = _transported_hits(outputs, np.asarray(cost)[None], np.zeros(n, dtype=np.int64), temperature)
    return _agreement(hits, predicted, outputs, "in sample")


def _stratified_folds(labels: np.ndarray, num_classes: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold per image, dealt round-robin through each class in random order (so every class with at
    least ``folds`` images is in every fold; a rarer class is simply absent from some)."""
    fold = np.empty(labels.shape[0], dtype=np.int64)
    for c in range(num_classes):  # once per split, not per sample: K_s small permutations
        members = np.flatnonzero(labels == c)
        fold[rng.permutation(members)] = np.arange(members.size) % folds
    return fold


def crossfit_agreement(outputs: TeacherOutputs, cost_name: str, temperature: float = 1.0, folds: int = 2,
                       repeats: int = 5, seed: int = 0) -> dict:
    r""":func:`label_agreement` out of sample (see the module docstring): the labeled images are split
    into ``folds`` stratified folds, the cost ``cost_name`` is fitted on the other folds and judges each
    fold; the hits are averaged over ``repeats`` random splits and go into one Wilson bound over the
    ``n`` images. Deterministic for a given ``seed``.

    A class with fewer images than ``folds`` is missing from some fitted part; the cost then gives it
    its neutral column (see :func:`~scd_core.ot.costs.prototype_cost`), so its images are judged
    without the optimism of having fitted them. Only with fewer than ``folds`` images in all is the
    agreement taken in sample. Memory: a fitted part holds its rows' logits; the judging is streamed.
    """
    k, n = outputs.num_target_classes, outputs.num_samples
    if n < folds or k < 2:
        return label_agreement(outputs, cost_matrix(outputs, cost_name), temperature)
    rng = np.random.default_rng(seed)
    total, predicted = 0, np.zeros(k, dtype=np.int64)
    for _ in range(repeats):
        fold = _stratified_folds(outputs.labels, k, folds, rng)
        costs = []
        for f in range(folds):
            fit = np.flatnonzero(fold != f)
            fitted = TeacherOutputs.from_arrays(
                np.asarray(outputs.logits[fit]), outputs.labels[fit], np.asarray(outputs.features[fit]),
                num_target_classes=k, head_weight=outputs.head_weight, temperature=outputs.temperature)
            costs.append(cost_matrix(fitted, cost_name))
        hits, guesses = _transported_hits(outputs, np.stack(costs), fold, temperature)
        total, predicted = total + hits, predicted + guesses
    return _agreement(total / repeats, predicted, outputs, f"{folds}-fold cross-fitted, {repeats} splits")


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
