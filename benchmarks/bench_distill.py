"""Distillation benchmark: every teacher of each demo world, ``ce`` and the teacher methods, over seeds.

For each world, a student (the product's default: ``resnet10t``, default epochs and settings) is
trained with ``ce`` (no teacher) and, from every teacher, with each method of ``--methods`` (``kd``
only where the label spaces match) under each teacher weighting of ``--weightings`` (``fixed``
lambda, or ``adaptive``: each image's lambda times the cross-fitted weight, on the labeled train images, of
the teacher class it predicts; see :mod:`scd_core.distill.signal`).
The figure is the test accuracy (the ``test`` split never influences training or ranking), mean and
standard deviation over seeds 0..S-1.

Every finished run is appended to ``results/distill_runs.jsonl``; a rerun with the same settings
takes those runs from there (so a long benchmark on a shared machine can be resumed), and
``--reuse FILE`` takes per-seed accuracies of fixed-weight cells from an earlier results file.

The claims checked: ``scd`` (default weighting) from the best teacher beats ``ce`` by at least 3
points; with adaptive weighting every teacher's ``scd`` is at least ``ce`` - 2 points.

    python benchmarks/bench_distill.py [--quick] [--worlds shapes,digits] [--seeds 3] [--worlds-root DIR]
        [--methods scd,translate,rkd,kd] [--weightings fixed,adaptive] [--adaptive-methods scd]
        [--reuse results/distill.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import worlds
from common import RESULTS, machine_line, paired_interval

OPTIONS = argparse.Namespace(methods=("scd", "translate", "rkd", "kd"), weightings=("fixed", "adaptive"), reuse=None,
                             adaptive_methods=("scd",))
RUNS_LOG = RESULTS / "distill_runs.jsonl"


def _logged_runs() -> dict[tuple, dict]:
    if not RUNS_LOG.is_file():
        return {}
    rows = [json.loads(line) for line in RUNS_LOG.read_text().splitlines() if line.strip()]
    return {tuple(r["key"]): r for r in rows}


def _reused(world: str) -> dict[tuple, list[float]]:
    """(teacher, method) -> per-seed accuracies of fixed-weight cells in an earlier results file."""
    if not OPTIONS.reuse:
        return {}
    earlier = next((r for r in json.loads(Path(OPTIONS.reuse).read_text())["results"] if r["world"] == world), None)
    if earlier is None:
        return {}
    cells = {("-", "ce"): earlier["ce"]["accuracies"]}
    for teacher, row in earlier["teachers"].items():
        cells.update({(teacher, m): cell["accuracies"] for m, cell in row.items() if cell and "accuracies" in cell})
    return cells


def run_world(name: str, size: str, seeds: int, epochs: int | None, root: str | None) -> dict:
    from dataclasses import asdict, replace

    from scd_core.distill.signal import ADAPTIVE_RULE
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.errors import ScdError
    from scd_core.sources import as_repository, as_target

    target_dir, teachers_dir = worlds.world_paths(name, size, root)
    target, repo = as_target(target_dir), as_repository(teachers_dir)
    base = DistillConfig() if epochs is None else DistillConfig(epochs=epochs)
    logged, reused = _logged_runs(), _reused(name)

    def runs(teacher, method: str, weighting: str = "fixed") -> dict | None:
        accs, secs, weights, sources = [], [], [], set()
        tname = teacher.name if teacher else "-"
        for seed in range(seeds):
            cfg = replace(base, method=method, seed=seed, weighting=weighting)
            rule = weighting if weighting == "fixed" else f"{weighting}: {ADAPTIVE_RULE}"  # a new rule is a new run
            key = [name, size, tname, method, rule, seed, cfg.epochs]
            if weighting == "fixed" and len(reused.get((tname, method), [])) > seed:
                accs.append(reused[(tname, method)][seed])
                sources.add("earlier results file")
                continue
            if tuple(key) in logged:
                rec = logged[tuple(key)]
                sources.add("runs log")
            else:
                t = time.perf_counter()
                try:
                    res = distill(target, teacher, cfg)
                except ScdError as exc:  # kd across label spaces: refused by design
                    return {"refused": str(exc)}
                rec = {"key": key, "test_acc": res.test_acc, "seconds": time.perf_counter() - t,
                       "teacher_weight": res.teacher_weight}
                RESULTS.mkdir(parents=True, exist_ok=True)
                with RUNS_LOG.open("a") as fh:
                    fh.write(json.dumps(rec, default=str) + "\n")
                sources.add("measured now")
            accs.append(rec["test_acc"])
            secs.append(rec["seconds"])
            weights.append((rec.get("teacher_weight") or {}).get("lambda"))
        print(f"  {name} {tname:>18} {method:>9} {weighting:>8}: {100 * np.mean(accs):5.1f} +- "
              f"{100 * np.std(accs):4.1f}", flush=True)
        return {"accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                "seconds_per_run": float(np.mean(secs)) if secs else None,
                "lambdas": weights, "sources": sorted(sources)}

    ce = runs(None, "ce")
    teachers = {}
    for spec in repo.specs:
        row = {}
        for m in OPTIONS.methods:
            for w in OPTIONS.weightings:
                if w == "fixed" or m in OPTIONS.adaptive_methods:
                    row[m if w == "fixed" else f"{m} adaptive"] = runs(spec, m, w)
        teachers[spec.name] = row
    default = "scd" if base.weighting == "fixed" else "scd adaptive"
    best = max(teachers, key=lambda t: teachers[t][default]["mean"])
    claims = {"best_teacher_by_scd": best,
              "scd_minus_ce_points": 100 * (teachers[best][default]["mean"] - ce["mean"])}
    claims["scd_beats_ce_by_3"] = claims["scd_minus_ce_points"] >= 3.0
    if "scd adaptive" in teachers[best]:
        worst = min(teachers, key=lambda t: teachers[t]["scd adaptive"]["mean"])
        best_adaptive = max(teachers, key=lambda t: teachers[t]["scd adaptive"]["mean"])
        claims.update(
            worst_teacher_adaptive=worst,
            worst_adaptive_minus_ce_points=100 * (teachers[worst]["scd adaptive"]["mean"] - ce["mean"]),
            best_teacher_adaptive=best_adaptive,
            best_adaptive_minus_ce_points=100 * (teachers[best_adaptive]["scd adaptive"]["mean"] - ce["mean"]),
        )
    return {"world": name, "size": size, "config": {**asdict(base), "seeds": seeds},
            "target": target.summary(), "ce": ce, "teachers": teachers, "claims": claims}


def markdown(results: list[dict], info: dict, share: dict) -> str:
    lines = ["# Distillation benchmark", "",
             "Test accuracy (%) of a `resnet10t` student trained from scratch, mean +- std over seeds; "
             "`kd` only where the teacher's label space equals the target's. `adaptive`: each image's lambda "
             "times the cross-fitted weight, on the labeled train images, of the teacher class it predicts "
             "(the mean lambda over the training images is listed below each table).", "",
             machine_line(info) + " " + share["note"], ""]
    for r in results:
        cfg = r["config"]
        columns = list(next(iter(r["teachers"].values())))
        lines += [f"## {r['world']} ({r['size']}; {cfg['epochs']} epochs, {cfg['seeds']} seeds, "
                  f"T={cfg['temperature']}, lambda={cfg['weight']}, eps={cfg['eps']}, cost={cfg['cost']})", "",
                  f"`ce` (no teacher): **{100 * r['ce']['mean']:.1f} +- {100 * r['ce']['std']:.1f}**", "",
                  "| teacher | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        first = columns[0]
        for name, row in sorted(r["teachers"].items(), key=lambda kv: -kv[1][first]["mean"]):
            cells = [f"{100 * row[m]['mean']:.1f} +- {100 * row[m]['std']:.1f}" if row[m] and "mean" in row[m]
                     else "refused" for m in columns]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        c = r["claims"]
        lines += ["", f"Best teacher by `scd`: `{c['best_teacher_by_scd']}`; scd - ce = "
                      f"{c['scd_minus_ce_points']:+.1f} points ({'met' if c['scd_beats_ce_by_3'] else 'NOT met'}: "
                      f">= 3)."]
        if "worst_teacher_adaptive" in c:
            worst = r["teachers"][c["worst_teacher_adaptive"]]["scd adaptive"]["accuracies"]
            paired = ", ".join(f"{100 * (a - b):+.1f}" for a, b in zip(worst, r["ce"]["accuracies"]))
            test_images = int(r["target"]["splits"].get("test", 0))
            low, high = paired_interval(worst, r["ce"]["accuracies"])
            lines.append(f"Adaptive: worst teacher `{c['worst_teacher_adaptive']}` at "
                         f"{c['worst_adaptive_minus_ce_points']:+.1f} points from ce (target >= -2; per seed "
                         f"{paired}; paired 95% interval [{100 * low:+.1f}, {100 * high:+.1f}], "
                         f"{test_images} test images); best `{c['best_teacher_adaptive']}` at "
                         f"{c['best_adaptive_minus_ce_points']:+.1f}.")
            used = {t: [lam for lam in row["scd adaptive"].get("lambdas") or [] if lam is not None]
                    for t, row in r["teachers"].items() if row.get("scd adaptive")}
            used = {t: (min(lams), max(lams)) for t, lams in used.items() if lams}
            if used:
                lines.append("Adaptive lambda used (over the seeds): " + ", ".join(
                    f"`{t}` {low:.2f}" + (f"-{high:.2f}" if f"{high:.2f}" != f"{low:.2f}" else "")
                    for t, (low, high) in sorted(used.items(), key=lambda kv: -kv[1][0])) + ".")
        sources = sorted({s for row in r["teachers"].values() for cell in row.values() if cell
                          for s in cell.get("sources", [])})
        lines += [f"Sources of the cells: {', '.join(sources) or 'measured now'}"
                  + (" (earlier results file: the fixed-weight cells of an earlier run with the same settings, "
                     "trained before the trainer was split into modules; runs log and measured now: the current "
                     "trainer, as are `ce` and every adaptive cell here)." if "earlier results file" in sources
                     else "."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--methods", default=",".join(OPTIONS.methods))
    extra.add_argument("--weightings", default=",".join(OPTIONS.weightings))
    extra.add_argument("--reuse", help="earlier results JSON whose fixed-weight per-seed accuracies are reused")
    extra.add_argument("--adaptive-methods", default=",".join(OPTIONS.adaptive_methods),
                       help="methods also run with the non-fixed weightings (the others: fixed only)")
    known, rest = extra.parse_known_args()
    OPTIONS.methods = tuple(m for m in known.methods.split(",") if m)
    OPTIONS.weightings = tuple(w for w in known.weightings.split(",") if w)
    OPTIONS.reuse = known.reuse
    OPTIONS.adaptive_methods = tuple(m for m in known.adaptive_methods.split(",") if m)
    sys.argv = [sys.argv[0], *rest]
    worlds.main(__doc__, "distill", run_world, markdown)
