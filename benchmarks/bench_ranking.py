"""Ranking benchmark: is the ranking right, and what does it cost?

Per demo world, in one run:

1. **Ground truth** by the ``validate`` path: a student distilled (product default run, ``scd``
   loss) from every teacher over S seeds; test accuracy (the ``test`` split never influences a
   ranking). Each metric's scores are compared with the mean accuracies: weighted Kendall tau
   (``scipy.stats.weightedtau``, hyperbolic weight on the top), Kendall tau, and top-1 relative
   accuracy (accuracy of the top-scored teacher's student over the best student's).
2. **Cost**: the time to rank the whole zoo with every metric from a cold cache (forward passes
   included) versus the time of distilling once per teacher (seed 0 of the ground truth) - the
   brute force the product replaces.
3. **Budgeted assessment** (successive halving) at a few budgets and subset seeds: its time and how
   often its top-1 teacher equals the full ranking's top-1 (by ``scd``).

    python benchmarks/bench_ranking.py [--quick] [--worlds shapes,digits] [--seeds 3] [--worlds-root DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import worlds
from common import machine_line

METRICS = ("scd", "scd_cost", "scd_conditional", "leep", "nce", "logme", "hscore")
TAUS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # sweep of the contrastive score's temperature
BUDGETS = (0.25, 0.5)
SUBSET_SEEDS = (0, 1, 2, 3, 4)


def tau_sweep(target, repo, accuracy: dict[str, float]) -> dict:
    """Agreement of the contrastive SCD score at each temperature, with both costs (cached outputs)."""
    from scd_core.assess.metrics import ScdMetric
    from scd_core.assess.validate import ranking_agreement
    from scd_core.ot.costs import COSTS
    from scd_core.outputs.forward import teacher_outputs

    names = list(accuracy)
    outputs = {n: teacher_outputs(repo.get(n), target, target.assessment_items) for n in names}
    acc = np.array([accuracy[n] for n in names])
    sweep = {}
    for cost in COSTS:
        for tau in TAUS:
            metric = ScdMetric(cost, tau=tau)
            scores = np.array([metric.score(outputs[n]) for n in names])
            sweep[f"{cost} tau={tau:g}"] = ranking_agreement(scores, acc, True)
    return sweep


def ground_truth(path: str | None, world: str) -> dict | None:
    """A previous run's ground truth for ``world`` (students are the expensive part), or None."""
    if not path:
        return None
    import json

    for r in json.loads(Path(path).read_text())["results"]:
        if r["world"] == world:
            return r
    raise SystemExit(f"no results for world {world!r} in {path}")


def run_world(name: str, size: str, seeds: int, epochs: int | None, root: str | None,
              reuse: str | None = None) -> dict:
    from scd_core.assess.ranking import rank
    from scd_core.assess.validate import ranking_agreement, validate
    from scd_core.distill.trainer import DistillConfig
    from scd_core.sources import as_repository, as_target

    target_dir, teachers_dir = worlds.world_paths(name, size, root)
    target, repo = as_target(target_dir), as_repository(teachers_dir)

    t = time.perf_counter()
    ranking = rank(target, repo, metrics=METRICS, use_cache=False)
    rank_cold_s = time.perf_counter() - t
    rank(target, repo, metrics=METRICS)  # fills the cache (the cold rank above bypassed it)
    t = time.perf_counter()
    rank(target, repo, metrics=METRICS)
    rank_warm_s = time.perf_counter() - t

    stamps: list[tuple[str, int, float]] = []
    last = [time.perf_counter()]

    def progress(event) -> None:  # a ProgressEvent per finished student
        now = time.perf_counter()
        stamps.append((event.data["teacher"] or "-", event.data["seed"], now - last[0]))
        last[0] = now

    # ground truth: what the teacher gives a student through scd with the fixed lambda (the adaptive
    # weight would pull every weak teacher to the same ce accuracy and flatten the ranking's target)
    config = DistillConfig(weighting="fixed") if epochs is None else DistillConfig(epochs=epochs, weighting="fixed")
    previous = ground_truth(reuse, name)
    if previous is None:
        last[0] = time.perf_counter()
        report = validate(target, repo, metrics=METRICS, seeds=seeds, config=config, progress=progress)
        brute_force_s = sum(s for teacher, seed, s in stamps if teacher != "-" and seed == 0)
        config_json = {**config.__dict__, "seeds": seeds}
    else:  # scores re-measured; students (and their measured cost) from the earlier run
        report = {"teachers": previous["teachers"], "baseline_ce": previous.get("baseline_ce")}
        brute_force_s = previous["cost"]["distill_once_per_teacher_s"]
        config_json = {**previous["distill_config"], "reused_from": reuse}

    acc = {r["name"]: r["accuracy_mean"] for r in report["teachers"]}
    names = list(acc)
    agreement = {}
    for m in METRICS:
        hib = ranking.metrics[m].higher_is_better
        scores = np.array([ranking.get(n).scores[m] for n in names])
        agreement[m] = ranking_agreement(scores, np.array([acc[n] for n in names]), hib)

    full_top1 = ranking.best
    budgeted = []
    for budget in BUDGETS:
        tops, secs = [], []
        for s in SUBSET_SEEDS:
            t = time.perf_counter()
            b = rank(target, repo, metrics=["scd"], budget=budget, use_cache=False, seed=s)
            secs.append(time.perf_counter() - t)
            tops.append(b.best)
        agree = float(np.mean([x == full_top1 for x in tops]))
        budgeted.append({"budget": budget, "top1": tops, "agree_with_full": agree,
                         "seconds_mean": float(np.mean(secs))})
    return {
        "world": name, "size": size, "target": target.summary(), "teachers": report["teachers"],
        "baseline_ce": report.get("baseline_ce"), "distill_config": config_json,
        "scores": {t.name: {m: t.scores[m] for m in METRICS} for t in ranking.teachers},
        "agreement": agreement, "tau_sweep": tau_sweep(target, repo, acc),
        "cost": {"rank_cold_s": rank_cold_s, "rank_warm_s": rank_warm_s, "distill_once_per_teacher_s": brute_force_s,
                 "brute_force_over_rank": brute_force_s / rank_cold_s, "teachers": len(names)},
        "budgeted": {"full_top1": full_top1, "runs": budgeted},
    }


def markdown(results: list[dict], info: dict, share: dict) -> str:
    lines = ["# Ranking benchmark", "", machine_line(info) + " " + share["note"], ""]
    for r in results:
        cfg = r["distill_config"]
        lines += [f"## {r['world']} ({r['size']})", "",
                  f"Ground truth: `{cfg['method']}` students ({cfg['student']}, {cfg['epochs']} epochs), "
                  f"mean test accuracy over {cfg['seeds']} seeds"
                  + (f" (students from the earlier run in `{cfg['reused_from']}`; scores, ranking cost and "
                     "budgeted runs re-measured)" if cfg.get("reused_from") else "") + ".", "",
                  "| teacher | accuracy | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for row in sorted(r["teachers"], key=lambda x: -x["accuracy_mean"]):
            sc = r["scores"][row["name"]]
            lines.append(f"| `{row['name']}` | {100 * row['accuracy_mean']:.1f} +- {100 * row['accuracy_std']:.1f} | "
                         + " | ".join(f"{sc[m]:.3f}" for m in METRICS) + " |")
        if r.get("baseline_ce"):
            lines.append(f"| (`ce`, no teacher) | {100 * r['baseline_ce']['accuracy_mean']:.1f} | "
                         + " | ".join("" for _ in METRICS) + " |")

        def fmt(x):
            return "n/a" if x is None else f"{x:.3f}"

        lines += ["", "| metric | weighted tau | Kendall tau | top-1 relative accuracy |", "|---|---|---|---|"]
        for m, a in r["agreement"].items():
            lines.append(f"| `{m}` | {fmt(a['weighted_tau'])} | {fmt(a['kendall_tau'])} | "
                         f"{fmt(a['top1_relative_accuracy'])} |")
        lines += ["", "Contrastive `scd` at other temperatures (weighted tau / Kendall tau / top-1):", "",
                  "| cost, tau | weighted tau | Kendall tau | top-1 relative accuracy |", "|---|---|---|---|"]
        for k, a in r["tau_sweep"].items():
            lines.append(f"| {k} | {fmt(a['weighted_tau'])} | {fmt(a['kendall_tau'])} | "
                         f"{fmt(a['top1_relative_accuracy'])} |")
        c = r["cost"]
        lines += ["", f"Cost: ranking {c['teachers']} teachers with all metrics from a cold cache took "
                      f"{c['rank_cold_s']:.1f} s ({c['rank_warm_s']:.2f} s cached); distilling once per teacher "
                      f"took {c['distill_once_per_teacher_s']:.0f} s: **{c['brute_force_over_rank']:.0f}x** cheaper.",
                  "", "| budget | mean time (s) | top-1 agrees with full ranking |", "|---|---|---|"]
        for b in r["budgeted"]["runs"]:
            lines.append(f"| {b['budget']} | {b['seconds_mean']:.1f} | {100 * b['agree_with_full']:.0f}% "
                         f"({len(b['top1'])} subset seeds) |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    worlds.main(__doc__, "ranking", run_world, markdown, reuse_option=True)
