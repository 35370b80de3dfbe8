"""Ranking teachers for a target set: every metric from one forward pass per teacher.

:func:`score_teacher` scores ONE teacher (a pure, picklable module-level function: a worker process
or a remote executor calls the same function), and :func:`rank` calls it for every teacher and
returns a :class:`Ranking`, best first by the first metric. With a ``budget`` below 1, successive
halving scores all teachers on a small stratified subset, keeps the better half, doubles the subset
and repeats, so the forward passes add up to about ``budget`` times those of a full scan.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scd_core.assess.intervals import intervals_overlap, score_with_intervals
from scd_core.assess.metrics import DEFAULT_METRICS, Metric, get_metric
from scd_core.data.targets import TargetItem, TargetSet
from scd_core.errors import ScdError
from scd_core.outputs.forward import teacher_outputs
from scd_core.outputs.streaming import TeacherOutputs
from scd_core.progress import ProgressFn, emit, scaled
from scd_core.runtime.executors import Executor
from scd_core.sources import as_repository, as_target
from scd_core.teachers.repository import TeacherRepository, TeacherSpec
from scd_core.utils import finite_or_none

__all__ = ["MetricInfo", "Ranking", "TeacherScore", "rank", "score_teacher", "stratified_prefix"]


# ------------------------------------------------------------------------------------------------
# Result types
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """A metric's direction and one-line description, as the ranking reports them."""

    name: str
    higher_is_better: bool
    description: str = ""

    @classmethod
    def of(cls, metric: Metric) -> MetricInfo:
        return cls(metric.name, metric.higher_is_better, metric.description)

    def to_json(self) -> dict[str, Any]:
        return {"higher_is_better": self.higher_is_better, "description": self.description}


@dataclass(frozen=True)
class TeacherScore:
    """The scores of one teacher on one set of assessment images.

    ``scores`` maps metric name to value (NaN when a metric could not be computed), ``intervals``
    metric name to a 95% interval ``(low, high)`` (absent when not computed), ``images`` is the
    number of labeled images the scores came from, ``round`` the successive-halving round
    (0 for a full scan) and ``timing`` holds ``forward_s`` and ``metrics_s``.
    """

    name: str
    num_classes: int
    images: int
    scores: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    round: int = 0
    timing: dict[str, float] = field(default_factory=dict)

    def with_round(self, r: int) -> TeacherScore:
        return TeacherScore(self.name, self.num_classes, self.images, self.scores, self.intervals, r, self.timing)


@dataclass(frozen=True)
class Ranking:
    """Teachers best first by ``rank_by`` (survivors of later budget rounds before earlier ones).

    ``metrics`` holds each metric's direction in the order requested, ``target`` the target set's
    summary, ``timing`` the total/forward/metric seconds, ``budget`` the successive-halving budget
    (None for a full scan) and ``near_ties`` the teachers whose ``rank_by`` interval overlaps the
    leader's (a user cannot tell them apart on these images).
    """

    teachers: tuple[TeacherScore, ...]
    metrics: dict[str, MetricInfo]
    rank_by: str
    target: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    budget: float | None = None
    near_ties: tuple[str, ...] = ()
    failures: dict[str, str] = field(default_factory=dict)  # teacher name -> why it could not be scored

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    @property
    def best(self) -> str:
        return self.teachers[0].name

    def __len__(self) -> int:
        return len(self.teachers)

    def get(self, name: str) -> TeacherScore:
        for t in self.teachers:
            if t.name == name:
                return t
        raise ScdError(f"no teacher named {name!r} in this ranking")

    def ordered(self, metric: str | None = None) -> list[TeacherScore]:
        """Teachers best first by ``metric`` (default ``rank_by``): later budget rounds first, NaN last.

        A teacher that survived more rounds was scored on more images, so within a budgeted ranking
        the rounds are kept apart and only teachers of the same round are compared by value.
        """
        metric = metric or self.rank_by
        if metric not in self.metrics:
            raise ScdError(f"metric {metric!r} is not in this ranking; it has {', '.join(self.metrics)}")
        sign = 1.0 if self.metrics[metric].higher_is_better else -1.0

        def key(t: TeacherScore) -> tuple:
            value = t.scores.get(metric, math.nan)
            return (-t.round, -(sign * value) if np.isfinite(value) else math.inf, str(t.name))

        return sorted(self.teachers, key=key)

    def rounds(self) -> dict[int, tuple[int, int]]:
        """Per successive-halving round: (images it scored on, teachers whose last round it was), by round."""
        out: dict[int, tuple[int, int]] = {}
        for t in self.teachers:
            images, count = out.get(t.round, (t.images, 0))
            out[t.round] = (max(images, t.images), count + 1)
        return dict(sorted(out.items()))

    def near_ties_for(self, metric: str | None = None) -> list[str]:
        """Teachers whose 95% interval of ``metric`` overlaps the leader's (by :meth:`ordered`).

        Their difference from the leader is within what another draw of the same number of images
        could produce: the ranking cannot tell them apart.
        """
        metric = metric or self.rank_by
        ordered = self.ordered(metric)
        lead = ordered[0].intervals.get(metric) if ordered else None
        return [t.name for t in ordered[1:] if intervals_overlap(lead, t.intervals.get(metric))]

    def table(self, metric: str | None = None, *, intervals: bool = False) -> pd.DataFrame:
        """Display table indexed by teacher, in :meth:`ordered` order.

        Columns: ``num_classes``, ``images``, one per metric, ``round`` for a budgeted ranking, and with
        ``intervals=True`` a ``<metric> low`` and ``<metric> high`` column per metric.
        """
        rows = []
        for t in self.ordered(metric):
            row: dict[str, Any] = {"teacher": t.name, "num_classes": t.num_classes, "images": t.images}
            row.update({m: t.scores.get(m, math.nan) for m in self.metrics})
            if self.budget is not None:
                row["round"] = t.round
            if intervals:
                for m in self.metrics:
                    low, high = t.intervals.get(m, (math.nan, math.nan))
                    row[f"{m} low"], row[f"{m} high"] = low, high
            rows.append(row)
        return pd.DataFrame(rows).set_index("teacher")

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON form (stable keys): target, metrics, rank_by, budget, teachers, near_ties, timing."""
        return {
            "target": self.target,
            "metrics": {m: info.to_json() for m, info in self.metrics.items()},
            "rank_by": self.rank_by,
            "budget": self.budget,
            "teachers": [
                {"name": t.name, "num_classes": int(t.num_classes), "images": int(t.images),
                 "scores": {m: finite_or_none(t.scores.get(m, math.nan)) for m in self.metrics},
                 "intervals": {m: [finite_or_none(t.intervals[m][0]), finite_or_none(t.intervals[m][1])]
                               for m in self.metrics if m in t.intervals}}
                for t in self.teachers
            ],
            "near_ties": list(self.near_ties),
            "failures": dict(self.failures),
            "timing": dict(self.timing),
        }


# ------------------------------------------------------------------------------------------------
# Scoring one teacher
# ------------------------------------------------------------------------------------------------


def score_teacher(
    target: TargetSet,
    spec: TeacherSpec,
    metrics: Sequence[str],
    *,
    items: Sequence[TargetItem] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    temperature: float = 1.0,
    use_cache: bool = True,
    seed: int = 0,
    intervals: bool = True,
    progress: ProgressFn | None = None,
    model: Any = None,
) -> TeacherScore:
    """Score one teacher with every named metric from one forward pass (cached) over ``items``.

    ``items`` defaults to the target's assessment images (labeled, outside ``test``). Everything it
    takes and returns pickles, so an executor can run it in another process or on another machine.
    With ``intervals`` every score gets a 95% bootstrap interval over the images
    (:mod:`scd_core.assess.intervals`, from the same outputs), its resamples seeded by ``seed``.
    ``model`` is the teacher already loaded (the in-process pipeline loads the next one early).
    """
    items = list(target.assessment_items if items is None else items)
    out, forward_s = _teacher_pass(target, spec, items, device=device, batch_size=batch_size,
                                   temperature=temperature, use_cache=use_cache, progress=progress, model=model)
    return _score_outputs(spec, out, metrics, len(items), forward_s, seed=seed, intervals=intervals)


def _teacher_pass(target: TargetSet, spec: TeacherSpec, items: list[TargetItem], *, device: str, batch_size: int,
                  temperature: float, use_cache: bool, progress: ProgressFn | None, model: Any = None
                  ) -> tuple[TeacherOutputs, float]:
    """The teacher's outputs on ``items`` (one forward pass, or the cache) and the seconds it took."""
    t = time.perf_counter()

    def forward_progress(fraction: float, message: str) -> None:
        emit(progress, message, fraction, "forward", teacher=spec.name)

    out = teacher_outputs(spec, target, items, device=device, batch_size=batch_size, temperature=temperature,
                          progress=forward_progress if progress is not None else None, use_cache=use_cache,
                          model=model)
    return out, time.perf_counter() - t


def _score_outputs(spec: TeacherSpec, out: TeacherOutputs, metrics: Sequence[str], images: int, forward_s: float,
                   *, seed: int, intervals: bool) -> TeacherScore:
    """Every named metric (and its interval) from the teacher's outputs: no forward pass."""
    metric_objs = [get_metric(n) for n in metrics]
    t = time.perf_counter()
    if intervals:
        scores, bounds = score_with_intervals(out, metric_objs, seed=seed)
    else:
        scores, bounds = {m.name: float(m.score(out)) for m in metric_objs}, {}
    metrics_s = time.perf_counter() - t
    return TeacherScore(name=spec.name, num_classes=spec.num_classes, images=images, scores=scores,
                        intervals=bounds, timing={"forward_s": forward_s, "metrics_s": metrics_s})


def _blas_threads_beside_torch(device: Any) -> contextlib.AbstractContextManager:
    """On a CPU, the metrics' BLAS gets the cores torch's forward pass leaves (at least one).

    OpenBLAS threads spin while they wait; a scoring thread with a full BLAS pool beside a forward
    pass that already holds the cores slowed both down threefold (measured on 2 cores).
    """
    if getattr(device, "type", "cpu") != "cpu":
        return contextlib.nullcontext()
    import torch
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, (os.cpu_count() or 1) - torch.get_num_threads()), user_api="blas")


def _score_pipelined(target: TargetSet, specs: Sequence[TeacherSpec], names: Sequence[str],
                     items: Sequence[TargetItem], options: dict[str, Any],
                     progress: ProgressFn | None) -> list[TeacherScore]:
    """:func:`score_teacher` for every spec in this process, as a three-stage pipeline.

    While teacher i runs its forward pass (this thread), teacher i + 1 is built and its weights read
    (a loader thread) and teacher i - 1 is scored (a scoring thread), so that model loading and the
    metrics hide behind the forward pass instead of adding to it: on a GPU the device never waits
    for the disk or the metrics, on a CPU they use a core the forward pass leaves. Results and errors
    come back in teacher order; the first error stops the ranking, as a plain loop would. Progress
    is reported from this thread only.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scd_core.device import resolve_device
    from scd_core.outputs.forward import outputs_cached
    from scd_core.teachers.repository import load_teacher

    items = list(items)
    device = resolve_device(options["device"])
    items_fp = target.items_fingerprint(items)

    def load(spec: TeacherSpec) -> Any:
        # a cached teacher needs no model; the pass finds its outputs without one
        if options["use_cache"] and outputs_cached(spec, items_fp, options["temperature"]):
            return None
        return load_teacher(spec, device)

    pass_options = {k: options[k] for k in ("device", "batch_size", "temperature", "use_cache")}
    with _blas_threads_beside_torch(device), ThreadPoolExecutor(1, thread_name_prefix="scd-load") as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="scd-score") as scorer:
        upcoming = loader.submit(load, specs[0])
        scored = []
        for i, spec in enumerate(specs):
            model = upcoming.result()
            if i + 1 < len(specs):
                upcoming = loader.submit(load, specs[i + 1])
            out, forward_s = _teacher_pass(target, spec, items, progress=scaled(progress, i / len(specs),
                                                                              (i + 1) / len(specs)),
                                           model=model, **pass_options)
            del model  # one model in memory at a time besides the one loading
            scored.append(scorer.submit(_score_outputs, spec, out, names, len(items), forward_s,
                                        seed=options["seed"], intervals=options["intervals"]))
        return [future.result() for future in scored]


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def stratified_prefix(items: Sequence[TargetItem], fraction: float, seed: int = 0,
                      min_per_class: int = 2) -> list[TargetItem]:
    """A seeded stratified subset holding ``fraction`` of each class (at least ``min_per_class``).

    Subsets for growing fractions are nested (each is a prefix of one per-class permutation), so
    successive-halving rounds reuse the images already seen.
    """
    if fraction >= 1:
        return list(items)
    labels = np.array([it.label for it in items])
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(items), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keep[idx[: max(min_per_class, math.ceil(fraction * idx.size))]] = True
    return [it for it, k in zip(items, keep) if k]


def rank(
    target: TargetSet | str | Path,
    repo: TeacherRepository | str | Path,
    *,
    teachers: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    budget: float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    temperature: float = 1.0,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    seed: int = 0,
    intervals: bool = True,
    executor: Executor | None = None,
) -> Ranking:
    """Score every teacher (or the named ones) and return them best first by the first metric.

    With ``intervals`` (the default) every score carries a 95% bootstrap interval over the images,
    and the teachers whose first-metric interval overlaps the leader's are reported as near ties.
    A budgeted ranking stops halving early once the leader's interval separates from every other
    surviving teacher's.

    With an ``executor`` each teacher's assessment is one task (:func:`score_teacher` in a worker
    process or on a Ray cluster); the scores come back to this process and equal the in-process
    ones. A teacher whose task failed (after one retry when its worker died) is left out and listed
    in ``Ranking.failures`` by name; the others are ranked. Without an executor, everything runs
    here and the first error stops the ranking.
    """
    target = as_target(target)
    repo = as_repository(repo)
    names = list(metrics or DEFAULT_METRICS)
    if not names:
        raise ScdError("no metrics requested")
    infos = {m.name: MetricInfo.of(m) for m in (get_metric(n) for n in names)}
    specs = repo.select(teachers)
    if not specs:
        raise ScdError("the teacher repository is empty")
    if budget is not None and not 0 < budget <= 1:
        raise ScdError(f"--budget must be a fraction in (0, 1], got {budget}")
    t0 = time.perf_counter()
    options = dict(device=device, batch_size=batch_size, temperature=temperature, use_cache=use_cache, seed=seed,
                   intervals=intervals)
    items_all = target.assessment_items
    failures: dict[str, str] = {}
    if budget is None or budget >= 1 or len(specs) < 3:
        scored = _score_all(target, specs, names, items_all, options, progress, executor, failures)
    else:
        scored = _successive_halving(target, specs, items_all, names, infos[names[0]], budget, progress, options,
                                     executor, failures)
    if not scored:
        raise ScdError("no teacher could be scored: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    timing = {"forward_s": sum(s.timing.get("forward_s", 0.0) for s in scored),
              "metrics_s": sum(s.timing.get("metrics_s", 0.0) for s in scored),
              "total_s": time.perf_counter() - t0}
    unordered = Ranking(teachers=tuple(scored), metrics=infos, rank_by=names[0], budget=budget)
    result = Ranking(teachers=tuple(unordered.ordered()), metrics=infos, rank_by=names[0], target=target.summary(),
                     timing=timing, budget=budget, near_ties=tuple(unordered.near_ties_for()), failures=failures)
    emit(progress, "done", 1.0, "done")
    return result


def _successive_halving(target: TargetSet, specs: Sequence[TeacherSpec], items_all: Sequence[TargetItem],
                        names: Sequence[str], first: MetricInfo, budget: float, progress: ProgressFn | None,
                        options: dict[str, Any], executor: Executor | None = None,
                        failures: dict[str, str] | None = None) -> list[TeacherScore]:
    """Successive halving: each round costs about the same number of forward passes.

    With T teachers and R = ceil(log2 T) rounds, round r scores the surviving T / 2^r teachers on
    n_0 2^r images, n_0 = budget * N / R, so the total is about budget * N * T image passes. It stops
    early when the leader's 95% interval no longer overlaps any other survivor's.
    """
    n_all = len(items_all)
    rounds = max(1, math.ceil(math.log2(len(specs))))
    fraction = budget / rounds
    alive = list(specs)
    latest: dict[str, TeacherScore] = {}
    r = 0
    sign = 1.0 if first.higher_is_better else -1.0
    while True:
        items = stratified_prefix(items_all, fraction, options["seed"])
        sub = scaled(progress, r / (rounds + 1), (r + 1) / (rounds + 1))
        for score in _score_all(target, alive, names, items, options, sub, executor, failures):
            latest[score.name] = score.with_round(r)
        alive = [s for s in alive if s.name in latest]
        if len(alive) <= 1 or len(items) >= n_all:
            break

        def key(spec: TeacherSpec) -> float:
            value = latest[spec.name].scores[first.name]
            return -sign * value if np.isfinite(value) else math.inf

        alive = sorted(alive, key=key)
        lead = latest[alive[0].name].intervals.get(first.name)
        if lead is not None and not any(intervals_overlap(lead, latest[s.name].intervals.get(first.name))
                                        for s in alive[1:]):
            break  # the leader's interval is clear of every other survivor's: more images would not change it
        alive = alive[: max(1, math.ceil(len(alive) / 2))]
        fraction *= 2
        r += 1
    return [latest[s.name] for s in specs if s.name in latest]


def _score_all(target: TargetSet, specs: Sequence[TeacherSpec], names: Sequence[str], items: Sequence[TargetItem],
               options: dict[str, Any], progress: ProgressFn | None, executor: Executor | None,
               failures: dict[str, str] | None) -> list[TeacherScore]:
    """:func:`score_teacher` for every spec: here, one after the other, or one task each on ``executor``."""
    if executor is None:
        return _score_pipelined(target, specs, names, items, options, progress)
    from scd_core.outputs.forward import prepare_shared_decode

    items = list(items)
    # Decode once here, not in every task at the same time (a local cluster shares this cache).
    prepare_shared_decode(target, specs, items)
    task = functools.partial(_score_task, target, tuple(names), items, options)

    def report(done: int, total: int, outcome) -> None:
        state = "scored" if outcome.ok else f"failed ({outcome.error})"
        emit(progress, f"{outcome.name}: {state}", done / total, "teacher", teacher=outcome.name, ok=outcome.ok)

    outcomes = executor.map(task, list(specs), names=[s.name for s in specs], progress=report)
    for outcome in outcomes:
        if not outcome.ok and failures is not None:
            failures[outcome.name] = outcome.error or "failed"
    return [o.value for o in outcomes if o.ok]


def _score_task(target: TargetSet, names: tuple[str, ...], items: list[TargetItem], options: dict[str, Any],
                spec: TeacherSpec) -> TeacherScore:
    """One executor task: a teacher's scores (module level, so that workers can unpickle it)."""
    return score_teacher(target, spec, names, items=items, **options)
