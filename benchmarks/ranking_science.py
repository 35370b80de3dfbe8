"""Ranking science: every metric and SCD variant against the suite's ground truth, tuned on the tuning worlds only.

    python benchmarks/ranking_science.py [--truth benchmarks/results/suite_truth.json] [--boot 10000]

Reads the ground truth written by ``bench_suite.py`` (mean test accuracy of the default ``scd`` student
over 3 seeds, per teacher), scores every teacher of every world with the registered metrics and with a
grid of SCD variants (temperature, cost, cost mix, extra evidence), picks each variant family's
setting by its mean weighted tau on the **tuning** worlds, and reports on the **held-out** worlds:

- mean weighted Kendall tau (``scipy.stats.weightedtau``, hyperbolic weights on the top) with a
  bootstrap 95% interval over worlds;
- top-1 hit rate: how often the metric's top teacher has the best student;
- regret: accuracy points lost by distilling from the metric's top teacher instead of the best one.

Writes ``benchmarks/results/ranking_science.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import suite
from bench_suite import suite_root
from common import RESULTS, machine_line

BASELINES = ("scd", "scd_cost", "scd_conditional", "leep", "nce", "logme", "hscore")
TAUS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)


def candidates() -> dict[str, dict[str, object]]:
    """Variant family -> {setting label: metric}. Every setting is tuned on the tuning worlds only."""
    from scd_core.assess.metrics import ScdEvidenceMetric, ScdMetric

    fams: dict[str, dict[str, object]] = {
        "scd (fixed tau, prototype)": {f"tau={t:g}": ScdMetric("prototype", tau=t) for t in TAUS},
        "scd (fixed tau, conditional)": {f"tau={t:g}": ScdMetric("conditional", tau=t) for t in TAUS},
        "scd_fit (tau by max. likelihood)": {
            f"mix={m:g}": ScdEvidenceMetric("scd_fit", mix=m) for m in (1.0, 0.75, 0.5, 0.25, 0.0)},
        "scd_leep (cost + LEEP evidence)": {
            f"mix={m:g}, weight={w:g}": ScdEvidenceMetric("scd_leep", evidence="leep", mix=m, weight=w)
            for m in (1.0, 0.5, 0.0) for w in (0.5, 1.0)},
        "scd_plan (cost + plan-mapped prediction)": {
            f"mix={m:g}, weight={w:g}": ScdEvidenceMetric("scd_plan", evidence="plan", mix=m, weight=w)
            for m in (1.0, 0.5, 0.0) for w in (0.5, 1.0)},
    }
    return fams


def world_scores(name: str, teachers: list[str]) -> dict[str, dict[str, float]]:
    """metric or 'family|setting' -> teacher -> score (higher is better: lower-is-better ones negated)."""
    from scd_core.assess.metrics import METRICS
    from scd_core.outputs.forward import teacher_outputs
    from scd_core.sources import as_repository, as_target

    root = suite_root() / name
    target, repo = as_target(root / "target"), as_repository(root / "teachers")
    outputs = {t: teacher_outputs(repo.get(t), target) for t in teachers}
    out: dict[str, dict[str, float]] = {}
    for m in BASELINES:
        metric = METRICS[m]
        sign = 1.0 if metric.higher_is_better else -1.0
        out[m] = {t: sign * float(metric.score(outputs[t])) for t in teachers}
    for fam, settings in candidates().items():
        for label, metric in settings.items():
            out[f"{fam}|{label}"] = {t: float(metric.score(outputs[t])) for t in teachers}
    return out


def agreement(scores: dict[str, float], acc: dict[str, float]) -> dict[str, float]:
    from scipy import stats

    names = list(acc)
    s = np.array([scores[n] for n in names])
    a = np.array([acc[n] for n in names])
    s = np.where(np.isfinite(s), s, -np.inf)
    top = int(np.argmax(s))
    wt = float(stats.weightedtau(s, a).statistic) if np.ptp(s[np.isfinite(s)]) > 0 else 0.0
    return {"weighted_tau": wt, "top1_hit": float(a[top] >= a.max() - 1e-12),
            "regret_points": float(100 * (a.max() - a[top])), "top": names[top]}


def _interval95(samples: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles of bootstrap samples: a 95% percentile interval."""
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def _top1_and_regret(rows: dict[str, dict[str, float]], worlds: list[str]) -> dict[str, float]:
    """How often the metric's top teacher has the best student, and the accuracy points it loses on average."""
    return {"top1_hit_rate": float(np.mean([rows[w]["top1_hit"] for w in worlds])),
            "regret_points_mean": float(np.mean([rows[w]["regret_points"] for w in worlds]))}


def summarise(rows: dict[str, dict[str, float]], worlds: list[str], boot: int, rng: np.random.Generator) -> dict:
    """One metric over ``worlds``: mean weighted tau with a bootstrap interval over worlds, top-1 hits, regret."""
    wt = np.array([rows[w]["weighted_tau"] for w in worlds])
    idx = rng.integers(0, len(worlds), (boot, len(worlds)))
    return {"weighted_tau_mean": float(wt.mean()), "weighted_tau_ci95": _interval95(wt[idx].mean(axis=1)),
            **_top1_and_regret(rows, worlds), "per_world": {w: round(rows[w]["weighted_tau"], 3) for w in worlds}}


def seed_ceiling(truth: dict, worlds: list[str]) -> float:
    """Mean weighted tau of one seed's accuracies against the other seeds' mean: the ground truth's own noise."""
    from scipy import stats

    vals = []
    for w in worlds:
        t = truth["worlds"][w]["teachers"]
        acc = np.array([t[n]["accuracies"] for n in t])  # (teachers, seeds)
        for k in range(acc.shape[1] if acc.shape[1] > 1 else 0):
            rest = np.delete(acc, k, axis=1).mean(axis=1)
            if np.ptp(acc[:, k]) > 0 and np.ptp(rest) > 0:
                vals.append(float(stats.weightedtau(acc[:, k], rest).statistic))
    return float(np.mean(vals)) if vals else float("nan")


def untuned_everywhere(rows: dict[str, dict[str, dict]], worlds: list[str], boot: int) -> dict:
    """The metrics whose setting was not chosen on the suite (the baselines; ``scd``'s tau = 0.5 was chosen
    on the two demo worlds, which are not in it), judged on every suite world: mean weighted tau with a
    bootstrap interval over worlds, and each one's paired difference from ``scd`` (the same resampled
    worlds for both), so that "better than scd" means an interval above 0."""
    rng = np.random.default_rng(2)
    idx = rng.integers(0, len(worlds), (boot, len(worlds)))
    wt = {k: np.array([rows[k][w]["weighted_tau"] for w in worlds]) for k in BASELINES}
    out = {}
    for k in BASELINES:
        means, diff = wt[k][idx].mean(axis=1), (wt[k] - wt["scd"])[idx].mean(axis=1)
        out[k] = {"weighted_tau_mean": float(wt[k].mean()), "weighted_tau_ci95": _interval95(means),
                  "minus_scd": float((wt[k] - wt["scd"]).mean()), "minus_scd_ci95": _interval95(diff),
                  **_top1_and_regret(rows[k], worlds)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", default=str(RESULTS / "suite_truth.json"))
    ap.add_argument("--boot", type=int, default=10000)
    ap.add_argument("--tuning-only", action="store_true",
                    help="score and choose on the tuning worlds only; do not look at the held-out worlds")
    args = ap.parse_args()
    truth = json.loads(Path(args.truth).read_text())
    started = time.perf_counter()
    acc = {w: {t: v["accuracy_mean"] for t, v in d["teachers"].items()} for w, d in truth["worlds"].items()}
    tuning = [w for w in suite.TUNING if w in acc]
    held = [] if args.tuning_only else [w for w in suite.HELD_OUT if w in acc]
    acc = {w: acc[w] for w in tuning + held}
    per_world = {w: world_scores(w, list(acc[w])) for w in acc}
    keys = list(next(iter(per_world.values())))
    rows = {k: {w: agreement(per_world[w][k], acc[w]) for w in acc} for k in keys}
    rng = np.random.default_rng(0)
    tune = {k: summarise(rows[k], tuning, args.boot, rng) for k in keys}
    # choose each family's setting on the tuning worlds only
    chosen: dict[str, str] = {}
    for fam in candidates():
        best = max((k for k in keys if k.startswith(fam + "|")), key=lambda k: tune[k]["weighted_tau_mean"])
        chosen[fam] = best
    final = list(BASELINES) + [chosen[f] for f in candidates()]
    best_tuning = max(final, key=lambda k: tune[k]["weighted_tau_mean"])
    rng = np.random.default_rng(1)
    held_table = {k: summarise(rows[k], held, args.boot, rng) for k in final} if held else {}
    everywhere = untuned_everywhere(rows, tuning + held, args.boot) if held else {}
    payload = {
        "all_worlds_untuned": everywhere,
        "tuning_worlds": tuning, "held_out_worlds": held, "chosen_on_tuning": chosen,
        "best_on_tuning": best_tuning, "tuning": {k: tune[k] for k in keys}, "held_out": held_table,
        "seed_ceiling_held_out": seed_ceiling(truth, held), "seed_ceiling_tuning": seed_ceiling(truth, tuning),
        "scores": per_world, "accuracy": acc, "top_teacher": {k: {w: rows[k][w]["top"] for w in acc} for k in final},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not held:
        for k in sorted(keys, key=lambda k: -tune[k]["weighted_tau_mean"]):
            r = tune[k]
            print(f"{r['weighted_tau_mean']:.3f}  top1 {r['top1_hit_rate']:.2f}  "
                  f"regret {r['regret_points_mean']:.1f}  {k}")
        print("chosen:", json.dumps(chosen, indent=1), "\nbest on tuning:", best_tuning)
        return
    (RESULTS / "ranking_science.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "ranking_science.md").write_text(markdown(payload, truth) + "\n")
    print(markdown(payload, truth))


def markdown(p: dict, truth: dict) -> str:
    held, tuning = p["held_out_worlds"], p["tuning_worlds"]
    ht = p["held_out"]
    order = sorted(ht, key=lambda k: -ht[k]["weighted_tau_mean"])
    share = truth.get("note", "")
    seeds_text = ", ".join(f"{w} {d['seeds']}" for w, d in truth["worlds"].items())
    lines = [
        f"# Ranking science: {len(tuning) + len(held)} worlds with ground truth, settings chosen on {len(tuning)} "
        f"tuning worlds, judged on {len(held)} held out", "",
        machine_line(truth["machine"]) + " " + share, "",
        f"Ground truth: test accuracy of the default `scd` student (`DistillConfig()` with the fixed teacher "
        f"weight), mean of {truth['seeds']} "
        f"seed(s) per world (seeds per world: {seeds_text}), "
        f"for each of 8 teachers in each world. Building the {len(suite.WORLDS)} worlds took "
        f"{truth['build_s_sum']:.0f} s and the "
        f"students {truth['student_s_sum']:.0f} s of worker time (sum over tasks); "
        "`python benchmarks/bench_suite.py` builds and resumes both, `--collect` writes the "
        "table from what is cached. Scores and this table: `python benchmarks/ranking_science.py`.", "",
        f"Held-out worlds ({len(held)}): " + ", ".join(f"`{w}`" for w in held) + ". Tuning worlds "
        f"({len(tuning)}): " + ", ".join(f"`{w}`" for w in tuning) + ".", "",
        "## Held-out worlds", "",
        "| metric (setting chosen on tuning worlds) | mean weighted tau [95% CI over worlds] | top-1 hit rate "
        "| mean regret (accuracy points) | tuning-world mean weighted tau |",
        "|---|---|---|---|---|",
    ]
    for k in order:
        r = ht[k]
        lo, hi = r["weighted_tau_ci95"]
        lines.append(f"| `{k}` | {r['weighted_tau_mean']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{100 * r['top1_hit_rate']:.0f}% | {r['regret_points_mean']:.1f} | "
                     f"{p['tuning'][k]['weighted_tau_mean']:.3f} |")
    every = p.get("all_worlds_untuned") or {}
    if every:
        lines += ["", f"## All {len(tuning) + len(held)} worlds: the metrics with no setting chosen on the suite", "",
                  "The baselines have no setting, and `scd`'s tau = 0.5 was chosen on the two demo worlds, which "
                  "are not in the suite, so every suite world is unseen for these. Paired difference: the metric's "
                  "weighted tau minus `scd`'s on the same worlds, bootstrap 95% interval over worlds.", "",
                  "| metric | mean weighted tau [95% CI] | minus `scd` [95% CI] | top-1 hit rate | mean regret |",
                  "|---|---|---|---|---|"]
        for k, r in sorted(every.items(), key=lambda kv: -kv[1]["weighted_tau_mean"]):
            lo, hi = r["weighted_tau_ci95"]
            dlo, dhi = r["minus_scd_ci95"]
            diff = "–" if k == "scd" else f"{r['minus_scd']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
            lines.append(f"| `{k}` | {r['weighted_tau_mean']:.3f} [{lo:.3f}, {hi:.3f}] | {diff} | "
                         f"{100 * r['top1_hit_rate']:.0f}% | {r['regret_points_mean']:.1f} |")
    lines += ["", f"Noise of the ground truth itself: one seed's accuracies against the mean of the other "
                  f"seeds reach a mean weighted tau of {p['seed_ceiling_held_out']:.3f} on the held-out worlds "
                  f"({p['seed_ceiling_tuning']:.3f} on the tuning worlds; nan where a world has one seed).", "",
              "### Per held-out world (weighted tau)", "",
              "| metric | " + " | ".join(f"`{w}`" for w in held) + " |", "|---|" + "---|" * len(held)]
    for k in order:
        lines.append(f"| `{k}` | " + " | ".join(f"{ht[k]['per_world'][w]:.2f}" for w in held) + " |")
    lines += ["", "## Tuning worlds: every setting tried", "",
              "| metric / setting | mean weighted tau | top-1 hit rate | mean regret |", "|---|---|---|---|"]
    for k, r in sorted(p["tuning"].items(), key=lambda kv: -kv[1]["weighted_tau_mean"]):
        lines.append(f"| `{k}` | {r['weighted_tau_mean']:.3f} | {100 * r['top1_hit_rate']:.0f}% | "
                     f"{r['regret_points_mean']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
