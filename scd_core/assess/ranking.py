"""Ranking teachers for a target set: every metric from one forward pass per teacher.

:func:`rank` scores each teacher with the chosen metrics and returns a table sorted best first by
the first metric. With a ``budget`` below 1, successive halving scores all teachers
on a small stratified subset, keeps the better half, doubles the subset and repeats, so the forward
passes add up to about ``budget`` times those of a full scan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from scd_core.assess.metrics import DEFAULT_METRICS, get_metric
from scd_core.data.targets import TargetItem, TargetSet, load_target
from scd_core.errors import ScdError
from scd_core.outputs.forward import teacher_outputs
from scd_core.teachers.repository import TeacherRepository, TeacherSpec
from scd_core.utils import finite_or_none

Progress = Callable[[float, str], None]


def as_target(target: TargetSet | str | Path) -> TargetSet:
    return target if isinstance(target, TargetSet) else load_target(target)


def as_repository(repo: TeacherRepository | str | Path) -> TeacherRepository:
    return repo if isinstance(repo, TeacherRepository) else TeacherRepository.from_spec(repo)


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


def _sort_best_first(table: pd.DataFrame, metric: str, higher_is_better: bool) -> pd.DataFrame:
    key = table[metric] if higher_is_better else -table[metric]
    order = np.lexsort((table.index.to_numpy(), -key.fillna(-np.inf).to_numpy()))
    return table.iloc[order]


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
    progress: Progress | None = None,
    use_cache: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every teacher (or the named ones) and return them best first by the first metric.

    Returns a DataFrame indexed by teacher name with columns ``num_classes``, ``images`` (labeled
    images the scores came from) and one column per metric. ``df.attrs`` holds ``metrics``
    (``{name: {"higher_is_better", "description"}}``), ``rank_by``, ``target`` and ``timing``.
    """
    target = as_target(target)
    repo = as_repository(repo)
    names = list(metrics or DEFAULT_METRICS)
    if not names:
        raise ScdError("no metrics requested")
    metric_objs = [get_metric(n) for n in names]
    specs = repo.select(teachers)
    if not specs:
        raise ScdError("the teacher repository is empty")
    if budget is not None and not 0 < budget <= 1:
        raise ScdError(f"--budget must be a fraction in (0, 1], got {budget}")
    t0 = time.perf_counter()
    timing: dict[str, float] = {"forward_s": 0.0, "metrics_s": 0.0}
    rows: dict[str, dict] = {}

    def score(spec: TeacherSpec, items: list[TargetItem], done: float, share: float) -> dict:
        def sub_progress(frac: float, msg: str) -> None:
            if progress:
                progress(min(1.0, done + share * frac), msg)

        t = time.perf_counter()
        out = teacher_outputs(spec, target, items, device=device, batch_size=batch_size,
                              temperature=temperature, progress=sub_progress, use_cache=use_cache)
        timing["forward_s"] += time.perf_counter() - t
        t = time.perf_counter()
        row = {"num_classes": spec.num_classes, "images": len(items)}
        row.update({m.name: float(m.score(out)) for m in metric_objs})
        timing["metrics_s"] += time.perf_counter() - t
        return row

    items_all = target.assessment_items
    if budget is None or budget >= 1 or len(specs) < 3:
        for i, spec in enumerate(specs):
            rows[spec.name] = score(spec, items_all, i / len(specs), 1 / len(specs))
            rows[spec.name]["round"] = 0
    else:
        rows = _successive_halving(specs, items_all, budget, metric_objs[0], score, seed)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "teacher"
    first = metric_objs[0]
    if "round" in table and table["round"].nunique() > 1:  # survivors of later rounds rank first
        parts = [_sort_best_first(g, first.name, first.higher_is_better)
                 for _, g in sorted(table.groupby("round"), key=lambda kv: -kv[0])]
        table = pd.concat(parts)
    else:
        table = _sort_best_first(table, first.name, first.higher_is_better)
    table = table[["num_classes", "images", *names] + (["round"] if budget else [])]
    timing["total_s"] = time.perf_counter() - t0
    table.attrs.update(
        metrics={m.name: {"higher_is_better": m.higher_is_better, "description": m.description}
                 for m in metric_objs},
        rank_by=first.name,
        target=target.summary(),
        timing=timing,
        budget=budget,
    )
    if progress:
        progress(1.0, "done")
    return table


def _successive_halving(specs, items_all, budget, first_metric, score, seed) -> dict[str, dict]:
    """Successive halving: each round costs about the same number of forward passes.

    With T teachers and R = ceil(log2 T) rounds, round r scores the surviving T / 2^r teachers on
    n_0 2^r images, n_0 = budget * N / R, so the total is about budget * N * T image passes.
    """
    n_all = len(items_all)
    rounds = max(1, math.ceil(math.log2(len(specs))))
    fraction = budget / rounds
    alive = list(specs)
    rows: dict[str, dict] = {}
    r = 0
    while True:
        items = stratified_prefix(items_all, fraction, seed)
        for i, spec in enumerate(alive):
            rows[spec.name] = score(spec, items, (r + i / len(alive)) / (rounds + 1), 1 / ((rounds + 1) * len(alive)))
            rows[spec.name]["round"] = r
        if len(alive) <= 1 or len(items) >= n_all:
            break
        ordered = sorted(alive, key=lambda s: rows[s.name][first_metric.name],
                         reverse=first_metric.higher_is_better)
        alive = ordered[: max(1, math.ceil(len(alive) / 2))]
        fraction *= 2
        r += 1
    return rows


def ranking_json(table: pd.DataFrame) -> dict:
    """The JSON form of a ranking that the CLI writes (stable keys: target, metrics, teachers, timing)."""
    metric_names = list(table.attrs["metrics"])
    return {
        "target": table.attrs.get("target", {}),
        "metrics": table.attrs["metrics"],
        "rank_by": table.attrs.get("rank_by"),
        "budget": table.attrs.get("budget"),
        "teachers": [
            {"name": name, "num_classes": int(row["num_classes"]), "images": int(row["images"]),
             "scores": {m: finite_or_none(row[m]) for m in metric_names}}
            for name, row in table.iterrows()
        ],
        "timing": table.attrs.get("timing", {}),
    }
