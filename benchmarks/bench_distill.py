"""Distillation benchmark: every teacher of each demo world, every method, mean of 3 seeds.

For each world, a student (the product's default: ``resnet10t``, default epochs and settings) is
trained with ``ce`` (no teacher) and, from every teacher, with ``scd``, ``translate``, ``rkd`` and
``kd`` (only where the label spaces match). The figure is the test accuracy (the ``test`` split never
influences training or ranking), mean and standard deviation over seeds 0..S-1.

The claims checked: ``scd`` from the best teacher beats ``ce`` by at least 3 points, and is at least
as good as ``rkd`` from that teacher.

    python benchmarks/bench_distill.py [--quick] [--worlds shapes,digits] [--seeds 3] [--worlds-root DIR]
"""

from __future__ import annotations

import time

import numpy as np
import worlds
from common import machine_line

METHODS = ("scd", "translate", "rkd", "kd")


def run_world(name: str, size: str, seeds: int, epochs: int | None, root: str | None) -> dict:
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.errors import ScdError
    from scd_core.sources import as_repository, as_target

    target_dir, teachers_dir = worlds.world_paths(name, size, root)
    target, repo = as_target(target_dir), as_repository(teachers_dir)
    base = DistillConfig() if epochs is None else DistillConfig(epochs=epochs)

    def runs(teacher, method: str) -> dict | None:
        accs, secs = [], []
        for seed in range(seeds):
            cfg = DistillConfig(**{**base.__dict__, "method": method, "seed": seed})
            t = time.perf_counter()
            try:
                res = distill(target, teacher, cfg)
            except ScdError as exc:  # kd across label spaces: refused by design
                return {"refused": str(exc)}
            secs.append(time.perf_counter() - t)
            accs.append(res.test_acc)
        print(f"  {name} {teacher.name if teacher else '-':>18} {method:>9}: "
              f"{100 * np.mean(accs):5.1f} +- {100 * np.std(accs):4.1f}", flush=True)
        return {"accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                "seconds_per_run": float(np.mean(secs))}

    ce = runs(None, "ce")
    teachers = {}
    for spec in repo.specs:
        teachers[spec.name] = {m: runs(spec, m) for m in METHODS}
    best = max(teachers, key=lambda t: teachers[t]["scd"]["mean"])
    claims = {
        "best_teacher_by_scd": best,
        "scd_minus_ce_points": 100 * (teachers[best]["scd"]["mean"] - ce["mean"]),
        "scd_minus_rkd_points": 100 * (teachers[best]["scd"]["mean"] - teachers[best]["rkd"]["mean"]),
    }
    claims["scd_beats_ce_by_3"] = claims["scd_minus_ce_points"] >= 3.0
    claims["scd_at_least_rkd"] = claims["scd_minus_rkd_points"] >= 0.0
    return {"world": name, "size": size, "config": {**base.__dict__, "seeds": seeds},
            "target": target.summary(), "ce": ce, "teachers": teachers, "claims": claims}


def markdown(results: list[dict], info: dict, share: dict) -> str:
    lines = ["# Distillation benchmark", "",
             "Test accuracy (%) of a `resnet10t` student trained from scratch, mean +- std over seeds; "
             "`kd` only where the teacher's label space equals the target's.", "",
             machine_line(info) + " " + share["note"], ""]
    for r in results:
        cfg = r["config"]
        lines += [f"## {r['world']} ({r['size']}; {cfg['epochs']} epochs, {cfg['seeds']} seeds, "
                  f"T={cfg['temperature']}, lambda={cfg['weight']}, eps={cfg['eps']}, cost={cfg['cost']})", "",
                  f"`ce` (no teacher): **{100 * r['ce']['mean']:.1f} +- {100 * r['ce']['std']:.1f}**", "",
                  "| teacher | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        for name, row in sorted(r["teachers"].items(), key=lambda kv: -kv[1]["scd"]["mean"]):
            cells = [f"{100 * row[m]['mean']:.1f} +- {100 * row[m]['std']:.1f}" if row[m] and "mean" in row[m]
                     else "refused" for m in METHODS]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        c = r["claims"]
        lines += ["", f"Best teacher by `scd`: `{c['best_teacher_by_scd']}`; scd - ce = "
                      f"{c['scd_minus_ce_points']:+.1f} points ({'met' if c['scd_beats_ce_by_3'] else 'NOT met'}: "
                      f">= 3); scd - rkd = {c['scd_minus_rkd_points']:+.1f} points "
                      f"({'met' if c['scd_at_least_rkd'] else 'NOT met'}: >= 0).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    worlds.main(__doc__, "distill", run_world, markdown)
