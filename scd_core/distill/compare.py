r"""Comparing distillation runs: per (teacher, method) over seeds, against the teacher-free ``ce``.

Runs are grouped by (teacher, method, weighting) among the *finished* runs that share a setting
(target, student, epochs); cancelled and failed runs stay in the history but never enter a
comparison or "best". For each group the validation accuracy is summarised as mean :math:`\pm`
sample std over its seeds (or folds), with the test accuracy when the target set has a test split.

**The difference from ``ce``** :math:`\Delta = \bar a - \bar a_{ce}` gets a two-sided interval:

- with at least two runs on each side, Welch's t interval over seeds,
  :math:`\Delta \pm t_{\nu, 1-\alpha/2} \sqrt{s_1^2/n_1 + s_2^2/n_2}` with the Welch-Satterthwaite
  :math:`\nu`;
- otherwise (a single seed) the sampling noise of the validation split itself, the normal interval
  of a difference of two proportions measured on :math:`m` images,
  :math:`\Delta \pm z_{1-\alpha/2} \sqrt{(\bar a(1-\bar a) + \bar a_{ce}(1-\bar a_{ce})) / m}`.

A difference whose interval contains 0, or that is smaller than one validation image
(:math:`100/m` points), is labelled *within noise*, and the label says how many validation images
there are and what one image is worth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
from scipy import stats

from scd_core.data.targets import TargetSet
from scd_core.utils import finite_or_none

FINISHED = "finished"
SMALL_VALIDATION = 50  # fewer validation images than this: accuracy moves in steps of >= 2 points
NO_TEST_NOTE = "No test split: test accuracy is not measured (—). Add a test/ folder to report it."


@dataclass(frozen=True)
class RunRecord:
    """One run as the comparison sees it."""

    run_id: str
    method: str
    teacher: str | None
    seed: int
    status: str  # finished, cancelled, failed, queued, running, ...
    val_acc: float | None = None
    test_acc: float | None = None
    n_val: int = 0
    weighting: str = "fixed"
    started: float = 0.0  # epoch seconds
    setting: tuple = ()  # what must match for runs to be compared (target, student, epochs, ...)
    fold: int | None = None  # k-fold index when the run is one fold of a cross-validated comparison
    teacher_weight: dict = field(default_factory=dict)  # the lambda the run used and how it was set


EARLIER_ADAPTIVE = "adaptive, one per teacher"
"""The weighting of a finished run whose adaptive weight used the earlier rule (one weight per teacher, no
``rule`` recorded): compared apart from today's adaptive runs, which weigh each teacher class."""


def run_name(method: str, teacher: str | None, weighting: str = "fixed") -> str:
    """``scd ← teacher`` (``, adaptive λ`` when adaptive), or ``ce (no teacher)``."""
    if not teacher:
        return f"{method} (no teacher)"
    suffix = {"adaptive": ", adaptive λ", EARLIER_ADAPTIVE: ", adaptive λ (one per teacher, earlier rule)"}
    return f"{method} ← {teacher}" + suffix.get(weighting, "")


def _weighting(meta: Mapping, config: Mapping, teacher_weight: Mapping) -> str:
    weighting = str(meta.get("weighting") or config.get("weighting") or "fixed")
    if weighting == "adaptive" and teacher_weight.get("weighting") == "adaptive" and "rule" not in teacher_weight:
        return EARLIER_ADAPTIVE  # recorded before the weight was set per teacher class
    return weighting


def run_label(run: RunRecord) -> str:
    """A label that tells runs apart: name, seed (or fold) and start time."""
    when = datetime.fromtimestamp(run.started).strftime("%H:%M:%S") if run.started else "not started"
    rep = f"fold {run.fold}" if run.fold is not None else f"seed {run.seed}"
    return f"{run_name(run.method, run.teacher, run.weighting)} · {rep} · {when}"


def record_from_job(job: Mapping) -> RunRecord:
    """A :class:`RunRecord` from a distillation job snapshot (its ``meta`` and its ``result``, if any)."""
    meta, result = job.get("meta") or {}, job.get("result") or {}
    config, teacher_weight = result.get("config") or {}, dict(result.get("teacher_weight") or {})
    return RunRecord(
        run_id=str(job.get("id") or result.get("run_id") or ""), method=str(meta.get("method") or config.get("method")),
        teacher=meta.get("teacher") or result.get("teacher"), seed=int(meta.get("seed", config.get("seed", 0)) or 0),
        status=str(job.get("status") or result.get("status") or ""),
        val_acc=finite_or_none(result.get("val_acc")), test_acc=finite_or_none(result.get("test_acc")),
        n_val=int(meta.get("n_val") or 0),
        weighting=_weighting(meta, config, teacher_weight),
        started=float(job.get("started") or job.get("created") or 0.0),
        setting=tuple(meta.get(k) for k in ("target_fp", "student", "epochs", "folds")), fold=meta.get("fold"),
        teacher_weight=teacher_weight,
    )


def format_lambda(value: float) -> str:
    """A teacher weight for a table: ``0`` only when it is exactly 0 (the run trained as ``ce``)."""
    return "0" if value == 0.0 else ("<0.01" if abs(value) < 0.005 else f"{value:.2f}")


def lambda_cell(lambdas: Sequence[float]) -> str:
    """The teacher weights of a group's runs: one value, or the range over its folds."""
    if not lambdas:
        return "not recorded"
    low, high = min(lambdas), max(lambdas)
    return format_lambda(low) if format_lambda(low) == format_lambda(high) else (
        f"{format_lambda(low)}–{format_lambda(high)}")


def weight_note(teacher_weight: dict) -> str | None:
    """One sentence on how an adaptive run's lambda was set, from the ``teacher_weight`` a run records
    (see :mod:`scd_core.distill.signal`); None for a fixed weight or a run without a teacher."""
    if not teacher_weight or teacher_weight.get("weighting") != "adaptive":
        return None
    evidence = teacher_weight.get("evidence") or {}
    lam, base = float(teacher_weight.get("lambda") or 0.0), float(teacher_weight.get("base") or 0.0)
    if base == 0.0:
        return "λ 0: the teacher weight was set to 0, so the run trained as ce."
    accuracy, n, chance = evidence.get("accuracy"), evidence.get("n"), evidence.get("chance")
    if not n:
        return (f"λ {format_lambda(lam)}: set adaptively; the run did not record its evidence." if evidence == {}
                else "λ 0: there was no labeled train image to judge the teacher by, so the run trained as ce.")
    seen = (f"its transported predictions matched {accuracy:.0%} of {n} labeled train images "
            f"({evidence.get('judged', 'in sample')}" + (f"; chance {chance:.0%})" if chance else ")"))
    classes = evidence.get("classes")
    if classes is not None:  # one weight per teacher class (see scd_core.distill.signal)
        if lam == 0.0:
            return (f"λ 0: {seen}; none of its classes did better than chance with 95% confidence, so the run "
                    "trained as ce.")
        used = sorted(((c.get("weight", 0.0), name) for name, c in classes.items() if c.get("weight", 0.0) > 0),
                      reverse=True)
        top = ", ".join(f"{name} {format_lambda(w)}" for w, name in used[:3]) + (", ..." if len(used) > 3 else "")
        return (f"λ {format_lambda(lam)} (mean over the training images) = {base:g} × mean class weight "
                f"{format_lambda(lam / base)}: {seen}. Each image counts by the teacher class it predicts, weighted "
                f"by how far the 95% lower bound of that class's matches lies above chance; {len(used)} of the "
                f"{len(classes)} teacher classes your labeled images fell in earned weight ({top}).")
    if lam == 0.0:
        return f"λ 0: {seen}, not beyond chance with 95% confidence, so the run trained as ce."
    return (f"λ {format_lambda(lam)} = {base:g} × agreement {format_lambda(lam / base)}: {seen}; the agreement "
            "is how far the 95% lower bound of that share lies above chance, scaled to [0, 1].")


def matching_baseline(run: RunRecord, runs: Sequence[RunRecord]) -> RunRecord | None:
    """The latest finished ``ce`` run with the same setting and seed (fold) as ``run``."""
    matches = [r for r in runs if r.method == "ce" and r.status == FINISHED and r.val_acc is not None
               and r.setting == run.setting and r.seed == run.seed and r.fold == run.fold]
    return max(matches, key=lambda r: r.started) if matches else None


@dataclass
class Difference:
    """``mean - ce mean`` in accuracy (fraction), its interval and whether it is within noise."""

    value: float
    low: float
    high: float
    source: str  # "seeds" (Welch t over runs) or "validation split" (binomial sampling noise)
    within_noise: bool
    label: str


@dataclass
class GroupSummary:
    """One (teacher, method, weighting) over its finished runs."""

    name: str
    method: str
    teacher: str | None
    weighting: str
    n: int
    val_mean: float
    val_std: float | None  # sample std (ddof=1); None for a single run
    test_mean: float | None
    test_std: float | None
    runs: list[str] = field(default_factory=list)  # run labels
    lambdas: list[float] = field(default_factory=list)  # teacher weight used, one per distinct value
    weight_note: str | None = None  # how an adaptive lambda was set (one run's; folds may differ)
    class_weights: list[dict] = field(default_factory=list)  # the weight per teacher class (one run's)
    vs_ce: Difference | None = None
    best: bool = False


@dataclass
class Comparison:
    groups: list[GroupSummary]
    excluded: list[RunRecord]  # cancelled, failed or unfinished runs: in the history, not compared
    n_val: int
    one_image_points: float | None  # what one validation image is worth, in accuracy points
    warnings: list[str] = field(default_factory=list)
    test_note: str | None = None
    confidence: float = 0.95

    @property
    def baseline(self) -> GroupSummary | None:
        return next((g for g in self.groups if g.method == "ce"), None)


def _std(x: np.ndarray) -> float | None:
    return float(np.std(x, ddof=1)) if x.size >= 2 else None


def difference(a: Sequence[float], b: Sequence[float], n_val: int, confidence: float = 0.95) -> Difference:
    """``mean(a) - mean(b)`` with its interval (see the module docstring) and its noise label."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if x.size >= 2 and y.size >= 2:
        vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
        se = math.sqrt(vx + vy)
        if se > 0:
            nu = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
            half = float(stats.t.ppf(0.5 + confidence / 2, nu)) * se
        else:
            half = 0.0
        source = "seeds"
    else:
        m = max(int(n_val), 1)
        pa, pb = float(x.mean()), float(y.mean())
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / m)
        source = "validation split"
    low, high = diff - half, diff + half
    one = 1.0 / n_val if n_val > 0 else 0.0
    within = (low <= 0.0 <= high) or abs(diff) < one
    image_text = (f"{n_val} validation images, one image = {100 * one:.1f} points" if n_val
                  else "validation size unknown")
    label = (f"within noise ({image_text})" if within
             else f"{'better' if diff > 0 else 'worse'} than ce beyond noise ({image_text})")
    return Difference(diff, low, high, source, within, label)


def class_weight_rows(teacher_weight: dict) -> list[dict]:
    """The weight per teacher class an adaptive run recorded, one row per class that labeled images fell in,
    highest weight first: the class, the labeled images that judged it, the training images it weighs and
    its weight. Empty for a fixed weight or a run recorded before the weight was set per class."""
    classes = ((teacher_weight or {}).get("evidence") or {}).get("classes") or {}
    rows = [{"teacher class": name, "labeled images": int(c.get("n", 0)), "training images": c.get("pool"),
             "weight": float(c.get("weight", 0.0))} for name, c in classes.items()]
    return sorted(rows, key=lambda r: (-r["weight"], -r["labeled images"], r["teacher class"]))


def _group_weight_note(members: Sequence[RunRecord], lambdas: Sequence[float]) -> str | None:
    """The weight note of a group (``members`` fold by fold): its runs share one lambda over seeds; k-fold
    runs each fit their own."""
    notes = {r.fold: note for r in members if (note := weight_note(r.teacher_weight))}
    if not notes:
        return None
    first_fold, first = next(iter(notes.items()))
    if len(set(notes.values())) == 1:
        return first
    where = f"fold {first_fold + 1}" if first_fold is not None else "one run"
    return (f"λ {lambda_cell(lambdas)} over {len(notes)} folds, each measured on its own train part; "
            f"{where}: {first}")


def compare(runs: Iterable[RunRecord], *, n_val: int | None = None, confidence: float = 0.95,
            has_test: bool | None = None) -> Comparison:
    """Group the finished runs, summarise them over seeds and compare each group with ``ce``.

    All runs should share one setting (filter with :attr:`RunRecord.setting` first). ``n_val`` defaults
    to the runs' own validation size; ``has_test`` to whether any run reports a test accuracy.
    """
    runs = list(runs)
    done = [r for r in runs if r.status == FINISHED and r.val_acc is not None]
    excluded = [r for r in runs if r not in done]
    n_val = int(n_val if n_val is not None else max((r.n_val for r in done), default=0))
    groups: dict[tuple, list[RunRecord]] = {}
    for r in done:
        groups.setdefault((r.teacher, r.method, r.weighting if r.method != "ce" else "fixed"), []).append(r)
    summaries = []
    for (teacher, method, weighting), members in groups.items():
        val = np.array([r.val_acc for r in members])
        test = np.array([r.test_acc for r in members if r.test_acc is not None])
        lambdas = sorted({float(r.teacher_weight["lambda"]) for r in members
                          if r.teacher_weight.get("lambda") is not None})
        by_fold = sorted(members, key=lambda r: (r.fold is None, r.fold or 0))  # a fold's weight stands for all
        summaries.append(GroupSummary(
            name=run_name(method, teacher, weighting), method=method, teacher=teacher, weighting=weighting,
            n=len(members), val_mean=float(val.mean()), val_std=_std(val),
            test_mean=float(test.mean()) if test.size else None, test_std=_std(test),
            runs=[run_label(r) for r in sorted(members, key=lambda r: r.started)],
            lambdas=lambdas, weight_note=_group_weight_note(by_fold, lambdas),
            class_weights=next((rows for r in by_fold if (rows := class_weight_rows(r.teacher_weight))), []),
        ))
    ce = next((g for g in summaries if g.method == "ce"), None)
    if ce is not None:
        ce_vals = [r.val_acc for r in groups[(None, "ce", "fixed")]] if (None, "ce", "fixed") in groups else []
        for g in summaries:
            if g is not ce and ce_vals:
                vals = [r.val_acc for r in groups[(g.teacher, g.method, g.weighting)]]
                g.vs_ce = difference(vals, ce_vals, n_val, confidence)
    if summaries:
        top = max(g.val_mean for g in summaries)
        leaders = [g for g in summaries if g.val_mean == top]
        if len(leaders) == 1:  # a tie has no best
            leaders[0].best = True
    summaries.sort(key=lambda g: (g.method != "ce", -g.val_mean))
    warnings = []
    if 0 < n_val < SMALL_VALIDATION:
        warnings.append(
            f"The validation split has only {n_val} images: one image is worth {100 / n_val:.1f} accuracy points, "
            f"so differences of a few points are noise. Run several seeds, or compare with k-fold "
            f"cross-validation, before drawing a conclusion.")
    if summaries and max((g.n for g in summaries), default=0) < 2:
        warnings.append("Single-seed runs: the intervals only cover the validation split's sampling noise, "
                        "not the run-to-run variation. Run 3 seeds for intervals over seeds.")
    has_test = has_test if has_test is not None else any(r.test_acc is not None for r in done)
    return Comparison(groups=summaries, excluded=excluded, n_val=n_val,
                      one_image_points=100.0 / n_val if n_val else None, warnings=warnings,
                      test_note=None if has_test else NO_TEST_NOTE, confidence=confidence)


def kfold_targets(target: TargetSet, k: int, seed: int = 0) -> list[TargetSet]:
    """``k`` copies of ``target`` whose labeled train + val images are re-split into k stratified folds:
    copy ``i`` validates on fold ``i`` and trains on the others (test and unlabeled images unchanged)."""
    from scd_core.errors import ScdError

    labeled = [it for it in target.items if it.split in ("train", "val") and it.label >= 0]
    per_class = np.bincount([it.label for it in labeled], minlength=target.num_classes)
    smallest = int(per_class.min()) if per_class.size else 0
    if k < 2 or smallest < k:
        raise ScdError(f"{k}-fold cross-validation needs k >= 2 and at least {k} labeled images in every class "
                       f"(the smallest class has {smallest})")
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    for c in range(target.num_classes):
        members = [it.rel for it in labeled if it.label == c]
        rng.shuffle(members)
        fold_of.update({rel: i % k for i, rel in enumerate(members)})
    folds = []
    for i in range(k):
        items = [replace(it, split=("val" if fold_of[it.rel] == i else "train")) if it.rel in fold_of else it
                 for it in target.items]
        folds.append(replace(target, items=items, name=f"{target.name} (fold {i + 1}/{k})"))
    return folds


# About 24 CPU-seconds for the default 15-epoch run over the shapes demo's 348-image pool on this project's
# 2-core benchmark machine (benchmarks/results/distill.md): the fallback before a session has timed runs.
DEFAULT_SECONDS_PER_IMAGE_EPOCH = 0.0045
SHORT_ENOUGH_FOR_SEEDS_S = 180.0  # default to 3 seeds when all of them fit in about three minutes


@dataclass(frozen=True)
class RunEstimate:
    """How long one run should take, and how the figure was obtained."""

    seconds: float
    basis: str  # "this session's runs" or "the benchmark machine"

    @property
    def seconds_text(self) -> str:
        """The seconds for a caption: whole from 10 s up, one decimal below."""
        return f"{self.seconds:.0f}" if self.seconds >= 10 else f"{self.seconds:.1f}"


def estimate_run_seconds(past: Iterable[tuple[float, int, int]], images: int, epochs: int) -> RunEstimate:
    """Seconds for one run over ``images`` training images for ``epochs`` epochs.

    ``past`` holds ``(seconds, images, epochs)`` of finished runs; their median seconds per image-epoch
    is used when there is one, otherwise :data:`DEFAULT_SECONDS_PER_IMAGE_EPOCH`.
    """
    rates = [s / (n * e) for s, n, e in past if s > 0 and n > 0 and e > 0]
    if rates:
        return RunEstimate(float(np.median(rates)) * images * epochs, "this session's runs")
    return RunEstimate(DEFAULT_SECONDS_PER_IMAGE_EPOCH * images * epochs, "the benchmark machine (2 CPU cores)")


def default_seed_count(per_run_s: float, runs: int) -> int:
    """3 seeds when ``runs`` runs of 3 seeds each take at most :data:`SHORT_ENOUGH_FOR_SEEDS_S`, else 1."""
    return 3 if per_run_s * runs * 3 <= SHORT_ENOUGH_FOR_SEEDS_S else 1


def job_record(job) -> RunRecord:
    """:func:`record_from_job` for a job-store snapshot (an object with id, meta, result, status, times)."""
    status = getattr(job.status, "value", job.status)
    return record_from_job({"id": job.id, "meta": job.meta, "result": job.result, "status": status,
                            "started": job.started, "created": job.created})
