"""Checking a ranking against ground truth: distill from each teacher and correlate.

For each teacher (or the top K by the first metric) and each seed, a student is distilled with the
chosen method; its accuracy (test split when there is one, else val) is the ground truth. For each
metric, the agreement between score (oriented so that higher means better) and mean accuracy is
reported as weighted Kendall tau (``scipy.stats.weightedtau``, hyperbolic weights on the top),
Kendall tau, Pearson r, and the top-1 relative accuracy acc(top-scored) / max acc.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from scd_core.assess.ranking import rank
from scd_core.data.targets import TargetSet
from scd_core.distill.trainer import DistillConfig, distill
from scd_core.progress import ProgressFn, emit, scaled
from scd_core.runtime.executors import Executor
from scd_core.sources import as_repository, as_target
from scd_core.teachers.repository import TeacherRepository, TeacherSpec
from scd_core.utils import finite_or_none

RANK_SHARE = 0.05  # of the progress bar: the ranking's forward passes, next to a student per teacher and seed


def ranking_agreement(scores: np.ndarray, accuracy: np.ndarray, higher_is_better: bool) -> dict[str, float | None]:
    """Weighted tau, Kendall tau, Pearson r and top-1 relative accuracy of one metric."""
    s = np.asarray(scores, dtype=float) * (1.0 if higher_is_better else -1.0)
    acc = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(s) & np.isfinite(acc)
    s, acc = s[ok], acc[ok]
    if s.size < 2:
        return {"weighted_tau": None, "kendall_tau": None, "pearson": None, "top1_relative_accuracy": None}

    constant = np.ptp(s) == 0 or np.ptp(acc) == 0
    return {
        "weighted_tau": None if constant else finite_or_none(stats.weightedtau(s, acc).statistic),
        "kendall_tau": None if constant else finite_or_none(stats.kendalltau(s, acc).statistic),
        "pearson": None if constant else finite_or_none(stats.pearsonr(s, acc).statistic),
        "top1_relative_accuracy": finite_or_none(acc[int(np.argmax(s))] / acc.max()) if acc.max() > 0 else None,
    }


def validate(
    target: TargetSet | str | Path,
    repo: TeacherRepository | str | Path,
    *,
    metrics: Sequence[str] | None = None,
    top: int | None = None,
    seeds: int = 3,
    config: DistillConfig | None = None,
    include_baseline: bool = True,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    executor: Executor | None = None,
) -> dict:
    """Distill from each teacher over ``seeds`` seeds and score the ranking of every metric.

    With an ``executor`` the ranking fans out like :func:`~scd_core.assess.ranking.rank`'s and every
    student (teacher x seed, and the baseline's seeds) is one task; a student whose task failed is
    left out of its teacher's mean and listed in ``failures`` as ``"<teacher> seed <s>"``.
    """
    target, repo = as_target(target), as_repository(repo)
    base = config or DistillConfig(device=device)
    ranking = rank(target, repo, metrics=metrics, device=device, executor=executor,
                   progress=scaled(progress, 0.0, RANK_SHARE))
    names = ranking.names[:top] if top else ranking.names
    split = "test" if target.split("test") else "val"
    jobs = [(name, base.method, seed) for name in names for seed in range(seeds)]
    if include_baseline:
        jobs += [(None, "ce", seed) for seed in range(seeds)]
    accuracies: dict[str | None, list[float]] = {name: [] for name in [*names, None]}
    failures: dict[str, str] = {}

    done = [0]

    def record(name: str | None, method: str, seed: int, accuracy: float) -> None:
        accuracies[name].append(accuracy)
        done[0] += 1
        emit(progress, f"student {done[0]}/{len(jobs)}: {name or 'no teacher'} {method} seed {seed}: "
             f"{accuracy:.1%}", RANK_SHARE + (1.0 - RANK_SHARE) * done[0] / len(jobs), "run", teacher=name,
             method=method, seed=seed, accuracy=accuracy)

    if executor is None:
        for name, method, seed in jobs:
            if cancel is not None and cancel.is_set():
                break
            teacher = repo.get(name) if name else None
            res = distill(target, teacher, replace(base, method=method, seed=seed), cancel=cancel)
            record(name, method, seed, res.test_acc if split == "test" else res.val_acc)
    else:
        task = functools.partial(_student_task, target, base, split)
        items = [(repo.get(name) if name else None, method, seed) for name, method, seed in jobs]
        labels = [f"{name or 'baseline'} seed {seed}" for name, _, seed in jobs]
        for (name, method, seed), label, outcome in zip(
                jobs, labels, executor.map(task, items, names=labels)):
            if outcome.ok:
                record(name, method, seed, outcome.value)
            else:
                failures[label] = outcome.error or "failed"

    rows = []
    for name in names:
        accs = accuracies[name]
        scores = ranking.get(name).scores
        rows.append({"name": name, "scores": {m: finite_or_none(scores[m]) for m in ranking.metrics},
                     "accuracies": accs, "accuracy_mean": float(np.mean(accs)) if accs else None,
                     "accuracy_std": float(np.std(accs)) if accs else None})
    acc = np.array([r["accuracy_mean"] if r["accuracy_mean"] is not None else np.nan for r in rows])
    agreement = {
        m: ranking_agreement(np.array([r["scores"][m] if r["scores"][m] is not None else np.nan for r in rows]),
                             acc, info.higher_is_better)
        for m, info in ranking.metrics.items()
    }
    result = {
        "target": target.summary(),
        "method": base.method,
        "student": base.student,
        "epochs": base.epochs,
        "seeds": seeds,
        "accuracy_split": split,
        "teachers": rows,
        "metrics": agreement,
    }
    if include_baseline:
        ce = accuracies[None]
        result["baseline_ce"] = {"accuracies": ce, "accuracy_mean": float(np.mean(ce)) if ce else None}
    if failures or ranking.failures:
        result["failures"] = {**ranking.failures, **failures}
    return result


def _student_task(target: TargetSet, base: DistillConfig, split: str,
                  job: tuple[TeacherSpec | None, str, int]) -> float:
    """One executor task: distill one student (``teacher`` None: the plain cross-entropy baseline)."""
    teacher, method, seed = job
    res = distill(target, teacher, replace(base, method=method, seed=seed))
    return res.test_acc if split == "test" else res.val_acc
