r"""The teacher's signal for a run: its cost / plan context, its cached outputs on the pool, and lambda.

Everything here is computed once before training, from the teacher's outputs on the labeled
``train`` images (never ``val`` or ``test``) and its predictions on the training pool.

**Adaptive teacher weight.** With ``weighting="adaptive"`` each training image's teacher term is
weighted by how reliable the teacher has shown itself, on the labeled train images, *for the class it
predicts for that image*. At the loss's temperature :math:`T`, the ``scd`` term pulls the student toward
the target class of least expected cost, :math:`\hat y(x) = \arg\min_j (p^T_t(x) C)_j`. Every labeled
image is judged out of sample, by a cost fitted on the *other half* of the labeled images (2-fold
stratified cross-fitting, 5 random splits), and grouped by the teacher's own top class
:math:`i(x) = \arg\max_k t_k(x)`. For teacher class :math:`i`, with :math:`n_i` labeled images,
:math:`\mathrm{prec}_{i,-}` is the one-sided 95% Wilson lower bound of how often :math:`\hat y(x)` is
the label (the hits averaged over the splits), and

.. math::
    w_i = \max\Big(0, \frac{\mathrm{prec}_{i,-} - p_{e,i}}{1 - p_{e,i}}\Big), \qquad
    \lambda(x) = \lambda\, w_{i(x)},

a chance-corrected precision (Cohen's kappa; :math:`p_{e,i}` the mean label share :math:`\pi_{\hat y}` of
the class's transported predictions, :math:`1/K_s` for balanced classes) that each teacher class has to
earn with evidence. A class no labeled image fell in gets 0, and a teacher none of whose classes does
better than chance trains as ``ce``. The lambda a run reports is the mean of :math:`\lambda(x)` over the
training pool (the pool mean; batches draw labeled and unlabeled images half and half, so the average
over batches can differ when the two predict different teacher classes).

Many teacher classes, few labeled images: a class that one or two labeled images fall in can earn up to
about 0.2 by luck, but it covers few images. A 1000-class teacher of label-free outputs on 5-10 labeled
images per target class gets a pool mean of at most 0.003 (20 draws; ``tests/test_compare.py``).

Why per teacher class: a teacher can be reliable on some of its classes and not on others (a teacher of
other digits maps one of its classes cleanly onto a target digit and guesses for the rest), and one
weight per teacher has to average the two, so it hands a weak teacher's guesses the same weight as its
good classes. On the digits demo world one weight per teacher left ``scd`` from ``other_digits`` (right
on 30% of the labeled images, chance 17%) 2.2 points under ``ce``; per class none of its classes earns
more than 0.01 and it ends 0.4 above. The price is caution: the worst demo teacher is now shapes
``colour_only`` at -1.1, and the best teachers keep about 0.65 of lambda (see the README's distillation
section, and ``benchmarks/experiments/`` for the rules tried).

Why cross-fitted: the cost (class prototypes, or the joint) is itself fitted to the labeled images, and
fitted to a few dozen it also fits their noise: the class means of pure-noise features classify their own
images better than chance, so in sample a useless teacher earns a weight it would not earn on new images.
Judged out of sample that optimism is gone; averaging over several splits keeps the weights from depending
on which images fell in which half. A cost fitted on half the images is worse than the one the loss uses
(fitted on all of them), and a class's bound rests on its own :math:`n_i` images, so the weights err on
the cautious side (a near-perfect teacher gets about 0.65-0.7 with 8 images per class).
"""

from __future__ import annotations

from collections import Counter
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
    # {"weighting", "base", "agreement", "lambda", ...}; with "adaptive", "agreement" is the pool-mean class
    # weight (lambda / base) and evidence["agreement"] the teacher-wide chance-corrected bound, for reference
    weight: dict = field(default_factory=dict)
    row_weight: torch.Tensor | None = None  # (N_pool,) per-image factor of lambda (adaptive), else None


AGREEMENT_Z = 1.645  # one-sided 95% bound
ADAPTIVE_RULE = "per teacher class, cross-fitted"  # recorded with each adaptive run (and keyed by benchmarks)


def wilson_lower(hits: float | np.ndarray, n: int | np.ndarray, z: float = AGREEMENT_Z) -> float | np.ndarray:
    r"""Wilson score lower bound of a proportion :math:`\hat p = \mathrm{hits}/n`:
    :math:`(\hat p + z^2/2n - z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}) / (1 + z^2/n)`, 0 where n = 0;
    elementwise on arrays (a float for scalars)."""
    hits, n = np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64)
    m = np.maximum(n, 1.0)
    p = hits / m
    centre = p + z * z / (2 * m)
    spread = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    lower = np.where(n > 0, np.maximum(0.0, (centre - spread) / (1 + z * z / m)), 0.0)
    return float(lower) if lower.ndim == 0 else lower


def _transported_guesses(outputs: TeacherOutputs, costs: np.ndarray, judge: np.ndarray,
                         temperature: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Each image's transported predictions :math:`\hat y_r(x) = \arg\min_j (p^T_t(x) C_{r, f_r(x)})_j`, one
    per judging :math:`r`, and the teacher's own top class :math:`\arg\max_k t_k(x)`, where ``costs`` is
    (R, F, K_t, K_s) and ``judge`` (R, N) gives each image's cost :math:`f_r(x)` in judging :math:`r`.
    One streamed pass over the logits: the softmax is computed once per row, whatever R and F."""
    repeats, f, k_t, k_s = costs.shape
    stacked = np.ascontiguousarray(np.asarray(costs, dtype=np.float64).transpose(0, 2, 1, 3).reshape(
        repeats, k_t, f * k_s))
    n, step = outputs.num_samples, outputs.chunk_rows  # float64 here: about 128 MB a chunk
    guess, top = np.empty((repeats, n), dtype=np.int64), np.empty(n, dtype=np.int64)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        logits = outputs.logit_rows(rows).astype(np.float64)
        z = logits / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        within = np.arange(z.shape[0])
        for r in range(repeats):  # R small products per chunk: memory as for one judging
            guess[r, rows] = (p @ stacked[r]).reshape(-1, f, k_s)[within, judge[r, rows]].argmin(axis=1)
        top[rows] = logits.argmax(axis=1)
    return guess, top


@dataclass
class Judgements:
    """Transported predictions of the labeled images, ``guesses`` (R, N) over R judgings (splits), the
    teacher's top class per image ``top`` (N,), and how they were judged."""

    guesses: np.ndarray
    top: np.ndarray
    judged: str


def _chance(guesses: np.ndarray, outputs: TeacherOutputs) -> float:
    """Cohen's chance agreement: what predictions made independently of the labels, as often per class as
    these were, would match; 1/K_s when the classes are balanced."""
    if np.unique(outputs.class_counts).size == 1:
        return 1.0 / outputs.num_target_classes
    predicted = np.bincount(guesses.ravel(), minlength=outputs.num_target_classes)
    return float(np.dot(predicted / max(predicted.sum(), 1), outputs.class_counts / outputs.num_samples))


def _kappa_lower(hits: float | np.ndarray, n: int | np.ndarray, chance: float | np.ndarray) -> float | np.ndarray:
    r"""The chance-corrected Wilson lower bound, :math:`\max(0, (\mathrm{acc}_- - p_e) / (1 - p_e))`, 0 where
    :math:`n = 0` or :math:`p_e = 1`; elementwise on arrays."""
    chance = np.asarray(chance, dtype=np.float64)
    room = np.where(chance < 1.0, 1.0 - chance, 1.0)
    kappa = np.where(chance < 1.0, np.maximum(0.0, (wilson_lower(hits, n) - chance) / room), 0.0)
    return float(kappa) if kappa.ndim == 0 else kappa


def _agreement(j: Judgements, outputs: TeacherOutputs) -> dict:
    k, n = outputs.num_target_classes, outputs.num_samples
    if n == 0 or k < 2:
        return {"accuracy": float("nan"), "accuracy_lower": 0.0, "n": n, "chance": 1.0 / max(k, 1),
                "judged": j.judged, "agreement": 0.0}
    hits = float((j.guesses == outputs.labels[None, :]).sum()) / j.guesses.shape[0]
    chance = _chance(j.guesses, outputs)
    return {"accuracy": hits / n, "accuracy_lower": wilson_lower(hits, n), "n": n, "chance": chance,
            "judged": j.judged, "agreement": _kappa_lower(hits, n, chance)}


def _in_sample(outputs: TeacherOutputs, cost: np.ndarray, temperature: float) -> Judgements:
    guess, top = _transported_guesses(outputs, np.asarray(cost)[None, None],
                                      np.zeros((1, outputs.num_samples), dtype=np.int64), temperature)
    return Judgements(guess, top, "in sample")


def label_agreement(outputs: TeacherOutputs, cost: np.ndarray, temperature: float = 1.0) -> dict:
    r"""How far the teacher's transported predictions agree with the labels, every labeled image judged
    by the same, given ``cost`` (in sample when the cost was fitted on these images).

    Returns ``accuracy`` (of :math:`\arg\min_j (p^T_t(x) C)_j`), its Wilson lower bound
    ``accuracy_lower``, ``n``, ``chance`` (:math:`1/K_s` for balanced classes) and the chance-corrected
    ``agreement`` in [0, 1] computed from the bound.
    """
    return _agreement(_in_sample(outputs, cost, temperature), outputs)


def _stratified_folds(labels: np.ndarray, num_classes: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold per image, dealt round-robin through each class in random order (so every class with at
    least ``folds`` images is in every fold; a rarer class is simply absent from some)."""
    fold = np.empty(labels.shape[0], dtype=np.int64)
    for c in range(num_classes):  # once per split, not per sample: K_s small permutations
        members = np.flatnonzero(labels == c)
        fold[rng.permutation(members)] = np.arange(members.size) % folds
    return fold


def crossfit_judgements(outputs: TeacherOutputs, cost_name: str, temperature: float = 1.0, folds: int = 2,
                        repeats: int = 5, seed: int = 0) -> Judgements:
    r"""Every labeled image's transported prediction out of sample (see the module docstring): the images
    are split into ``folds`` stratified folds, the cost ``cost_name`` is fitted on the other folds and
    judges each fold, over ``repeats`` random splits. Deterministic for a given ``seed``.

    A class with fewer images than ``folds`` is missing from some fitted part; the cost then gives it
    its neutral column (see :func:`~scd_core.ot.costs.prototype_cost`), so its images are judged
    without the optimism of having fitted them. Only with fewer than ``folds`` images in all are they
    judged in sample. Memory: a fitted part holds its rows' logits; the judging is streamed.
    """
    k, n = outputs.num_target_classes, outputs.num_samples
    if n == 0:
        return Judgements(np.zeros((1, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), "no labeled image")
    if n < folds or k < 2:
        return _in_sample(outputs, cost_matrix(outputs, cost_name), temperature)
    rng = np.random.default_rng(seed)
    splits = np.stack([_stratified_folds(outputs.labels, k, folds, rng) for _ in range(repeats)])  # (R, N)
    costs = np.stack([[cost_matrix(_fitted_part(outputs, np.flatnonzero(fold != f)), cost_name) for f in range(folds)]
                      for fold in splits])  # (R, F, K_t, K_s): each fold judged by the cost fitted on the others
    guesses, top = _transported_guesses(outputs, costs, splits, temperature)
    return Judgements(guesses, top, f"{folds}-fold cross-fitted, {repeats} splits")


def _fitted_part(outputs: TeacherOutputs, rows: np.ndarray) -> TeacherOutputs:
    """The outputs of ``rows`` only, to fit a cost on."""
    return TeacherOutputs.from_arrays(
        np.asarray(outputs.logits[rows]), outputs.labels[rows], np.asarray(outputs.features[rows]),
        num_target_classes=outputs.num_target_classes, head_weight=outputs.head_weight,
        temperature=outputs.temperature)


def crossfit_agreement(outputs: TeacherOutputs, cost_name: str, temperature: float = 1.0, folds: int = 2,
                       repeats: int = 5, seed: int = 0) -> dict:
    r""":func:`label_agreement` out of sample: the hits of :func:`crossfit_judgements`, averaged over the
    splits, go into one Wilson bound over the ``n`` images."""
    return _agreement(crossfit_judgements(outputs, cost_name, temperature, folds, repeats, seed), outputs)


def class_weights(outputs: TeacherOutputs, j: Judgements) -> tuple[np.ndarray, np.ndarray]:
    r"""Per teacher class :math:`i`, the weight :math:`w_i` of the module docstring and the number of
    labeled images :math:`n_i` the teacher calls :math:`i`. Chance for class :math:`i` is the mean label
    share :math:`\pi_{\hat y}` of its images' transported predictions (:math:`1/K_s` when balanced)."""
    k_t, n = outputs.num_teacher_classes, outputs.num_samples
    if n == 0 or outputs.num_target_classes < 2:
        return np.zeros(k_t), np.zeros(k_t, dtype=np.int64)
    hits = np.bincount(j.top, weights=(j.guesses == outputs.labels[None, :]).mean(axis=0), minlength=k_t)
    count = np.bincount(j.top, minlength=k_t)
    share = outputs.class_counts / n  # pi_j, the label shares
    chance = np.bincount(j.top, weights=share[j.guesses].mean(axis=0), minlength=k_t) / np.maximum(count, 1)
    return _kappa_lower(hits, count, chance), count


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
    base = loss_fn.weight
    weight = {"weighting": cfg.weighting, "base": base, "agreement": None, "lambda": base}
    t_logits, t_feats = teacher_predictions(spec, data.pool, device=device)
    logits = torch.from_numpy(t_logits.astype(np.float32)).to(device)
    row_weight = None
    if cfg.weighting == "adaptive":
        judgements = crossfit_judgements(outputs, cfg.cost, cfg.temperature)
        per_class, count = class_weights(outputs, judgements)
        predicted = logits.argmax(dim=1)  # the teacher class of each training image
        row_weight = torch.as_tensor(per_class, dtype=torch.float32, device=device)[predicted]
        mean = float(row_weight.mean()) if row_weight.numel() else 0.0
        if mean == 0.0:
            loss_fn.weight = 0.0  # no teacher class earned weight: the run trains as ce
        names = list(spec.label_names)
        repeated = {name for name, times in Counter(names).items() if times > 1}  # ImageNet repeats a few
        pool = torch.bincount(predicted, minlength=len(names)).cpu().numpy()
        # the classes that labeled images fell in, by name (with the index where a name repeats), with how many
        # labeled images judged each and how many training images each one weighs
        evidence = {**_agreement(judgements, outputs), "pool_unjudged": int(pool[count == 0].sum()),
                    "classes": {(f"{names[i]} #{i}" if names[i] in repeated else names[i]):
                                {"weight": float(per_class[i]), "n": int(count[i]), "pool": int(pool[i])}
                                for i in np.flatnonzero(count)}}
        weight.update(rule=ADAPTIVE_RULE, agreement=mean, evidence=evidence, **{"lambda": base * mean})
    return TeacherSignal(
        logits=logits,
        features=torch.from_numpy(t_feats).to(device) if loss_fn.needs_features else None,
        weight=weight, row_weight=row_weight,
    )
