"""The distillation bounds on the ranking-science suite: ``scd`` with the default (adaptive) teacher weight
against ``ce`` without a teacher, for every teacher of every suite world, resumably.

    python benchmarks/bench_suite_bounds.py [--workers 1] [--seeds 1] [--null N] [--only WORLD,...] [--collect]

The claim checked (issue "distillation you can trust"): with the default weighting every teacher's
``scd`` student is at least ``ce`` - 2 points. Each student is cached as one JSON file next to its
world (``students/bounds/``), tasks run seed-major, and ``--collect`` writes
``results/suite_bounds.{json,md}`` from what is cached; the fixed-weight ``scd`` students of the
ground truth (:mod:`bench_suite`) are shown beside them where they exist. ``--null N`` adds ``ce`` students at
``N`` other seeds per world: ``ce`` against ``ce`` scored as a teacher is shows how often the pointwise check fails
by seed noise alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import suite
from bench_suite import build_one, suite_root
from common import RESULTS, machine, paired_interval, save_markdown

BOUND_POINTS = 2.0
# ce students at seeds NULL_SEED_BASE + j are the noise-only comparison: ce against ce at other seeds, the same
# check applied to two samples of one distribution (how often the pointwise bound fails with no teacher at all)
NULL_SEED_BASE = 1000
# the adaptive rule's tag in cache names, so that a new rule trains new students (a KeyError here: name the new rule)
RULE_TAGS = {"per teacher class, cross-fitted": "adaptive-class"}


def _cache(world: str, teacher: str | None, seed: int) -> Path:
    from scd_core.distill.signal import ADAPTIVE_RULE

    name = f"ce-seed{seed}" if teacher is None else f"{teacher}-{RULE_TAGS[ADAPTIVE_RULE]}-seed{seed}"
    return suite_root() / world / "students" / "bounds" / f"{name}.json"


def student(task: tuple[str, str | None, int]) -> dict:
    """Test accuracy of the default student (adaptive ``scd``; ``ce`` when ``teacher`` is None), cached."""
    world, teacher, seed = task
    cache = _cache(world, teacher, seed)
    if cache.is_file():
        return json.loads(cache.read_text())
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.sources import as_repository, as_target

    root = suite_root() / world
    target, repo = as_target(root / "target"), as_repository(root / "teachers")
    config = DistillConfig(seed=seed) if teacher else DistillConfig(seed=seed, method="ce")
    run_dir = Path(tempfile.mkdtemp(prefix="suite-bounds-"))
    t0 = time.perf_counter()
    try:
        res = distill(target, repo.get(teacher) if teacher else None, config, run_dir=run_dir / "run")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    out = {"world": world, "teacher": teacher, "seed": seed, "accuracy": res.test_acc,
           "lambda": (res.teacher_weight or {}).get("lambda"), "seconds": round(time.perf_counter() - t0, 2)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(cache)
    return out


def null_pairs(ce_runs: list[float], null_runs: list[float], seeds: int, most: int) -> list[dict]:
    """Noise-only pairs: ce at seeds ``0..seeds-1`` against the k-th block of ``seeds`` other ce seeds, scored as a
    teacher would be (mean difference and its paired interval), for as many full blocks as there are, at most
    ``most``."""
    import numpy as np

    blocks = [null_runs[k * seeds:(k + 1) * seeds] for k in range(min(most, len(null_runs) // seeds))]
    return [{"minus_ce_points": 100 * float(np.mean(b) - np.mean(ce_runs)),
             "interval_points": [100 * x for x in paired_interval(b, ce_runs)]} for b in blocks]


def collect(names: list[str], seeds: int) -> dict:
    """Per world: ce, every teacher's adaptive scd (and the ground truth's fixed scd), from the cache only."""
    import numpy as np

    worlds: dict[str, dict] = {}
    for name in names:
        root = suite_root() / name
        if not (root / "world.json").is_file():
            continue
        teachers = [t["name"] for t in json.loads((root / "world.json").read_text())["teachers"]]
        runs = {t: [json.loads(f.read_text()) for s in range(seeds) if (f := _cache(name, t, s)).is_file()]
                for t in [None, *teachers]}
        common = min(len(v) for v in runs.values())
        if common == 0:
            continue
        ce_runs = [r["accuracy"] for r in runs[None][:common]]
        ce = float(np.mean(ce_runs))
        rows = {}
        for t in teachers:
            per_seed = [r["accuracy"] for r in runs[t][:common]]
            adaptive = float(np.mean(per_seed))
            fixed = [json.loads(f.read_text())["accuracy"] for s in range(common)
                     if (f := root / "students" / f"{t}-seed{s}.json").is_file()]
            fixed_mean = float(np.mean(fixed)) if len(fixed) == common else None
            rows[t] = {"adaptive": adaptive, "lambda": float(np.mean([r["lambda"] or 0.0 for r in runs[t][:common]])),
                       "fixed": fixed_mean, "adaptive_minus_ce_points": 100 * (adaptive - ce),
                       "interval_points": [100 * x for x in paired_interval(per_seed, ce_runs)],
                       "fixed_minus_ce_points": None if fixed_mean is None else 100 * (fixed_mean - ce)}
        null_runs = []
        for j in range(len(teachers) * seeds):
            if not (f := _cache(name, None, NULL_SEED_BASE + j)).is_file():
                break
            null_runs.append(json.loads(f.read_text())["accuracy"])
        worst = min(rows, key=lambda t: rows[t]["adaptive_minus_ce_points"])
        best = max(rows, key=lambda t: rows[t]["adaptive"])
        worlds[name] = {"seeds": common, "ce": ce, "teachers": rows, "worst": worst,
                        "worst_minus_ce_points": rows[worst]["adaptive_minus_ce_points"], "best": best,
                        "best_minus_ce_points": rows[best]["adaptive_minus_ce_points"],
                        "bound_met": rows[worst]["adaptive_minus_ce_points"] >= -BOUND_POINTS,
                        "null": null_pairs(ce_runs, null_runs, common, len(teachers)),
                        "seconds": round(sum(r["seconds"] for v in runs.values() for r in v[:common]), 1)}
    pairs = [r for w in worlds.values() for r in w["teachers"].values()]
    fixed = [r["fixed_minus_ce_points"] for r in pairs if r["fixed_minus_ce_points"] is not None]
    summary = {"pairs": len(pairs),
               "adaptive_below_bound": sum(r["adaptive_minus_ce_points"] < -BOUND_POINTS for r in pairs),
               "adaptive_surely_below_bound": sum(r["interval_points"][1] < -BOUND_POINTS for r in pairs),
               "fixed_below_bound": sum(v < -BOUND_POINTS for v in fixed), "fixed_pairs": len(fixed),
               "adaptive_worst": min((r["adaptive_minus_ce_points"] for r in pairs), default=None),
               "fixed_worst": min(fixed, default=None),
               "adaptive_mean": float(np.mean([r["adaptive_minus_ce_points"] for r in pairs])) if pairs else None,
               "fixed_mean": float(np.mean(fixed)) if fixed else None}
    # the same counts over the pairs a teacher could move at all (weight > 0: weight 0 trains exactly as ce)
    moved = [r for r in pairs if r["lambda"] > 0]
    summary.update({"weighted_pairs": len(moved),
                    "weighted_below_bound": sum(r["adaptive_minus_ce_points"] < -BOUND_POINTS for r in moved),
                    "weighted_mean": float(np.mean([r["adaptive_minus_ce_points"] for r in moved])) if moved else None})
    nulls = [n for w in worlds.values() for n in w["null"]]
    summary.update({"null_pairs": len(nulls),
                    "null_below_bound": sum(n["minus_ce_points"] < -BOUND_POINTS for n in nulls),
                    "null_surely_below_bound": sum(n["interval_points"][1] < -BOUND_POINTS for n in nulls),
                    "null_worst": min((n["minus_ce_points"] for n in nulls), default=None)})
    return {"machine": machine(), "suite_version": suite.SUITE_VERSION, "seeds_requested": seeds,
            "bound_points": BOUND_POINTS, "worlds": worlds, "summary": summary,
            "bound_met_everywhere": bool(worlds) and all(w["bound_met"] for w in worlds.values())}


def markdown(r: dict) -> str:
    worlds = r["worlds"]
    met = sum(w["bound_met"] for w in worlds.values())
    lines = ["# Distillation bounds on the ranking-science suite", "",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cpu_count']} CPUs), {r['machine']['date']}. "
             "Test accuracy (%) of the default student (`DistillConfig()`: resnet10t, 15 epochs, adaptive teacher "
             f"weight) per suite world, mean over the seeds shown. Claim: every teacher's `scd` >= `ce` - "
             f"{BOUND_POINTS:g} points. Made by `python benchmarks/bench_suite_bounds.py --workers 2 --seeds "
             f"{r['seeds_requested']} --null 24` (`--collect` rewrites it from the cached students).", "",
             f"**Bound met in {met} of {len(worlds)} worlds.**", ""]
    sm = r.get("summary") or {}
    if sm.get("pairs"):
        lines += [f"Over all {sm['pairs']} (world, teacher) pairs: adaptive `scd` below `ce` - {BOUND_POINTS:g} "
                  f"points in {sm['adaptive_below_bound']} (worst {sm['adaptive_worst']:+.1f}), mean difference "
                  f"from `ce` {sm['adaptive_mean']:+.1f} points; below it beyond noise (the whole 95% interval "
                  f"over seeds, paired by seed, under -{BOUND_POINTS:g}) in {sm['adaptive_surely_below_bound']}; "
                  + ("the fixed teacher weight (the ground truth's "
                     f"students, same seeds) below the bound in {sm['fixed_below_bound']} of {sm['fixed_pairs']} "
                     f"(worst {sm['fixed_worst']:+.1f}), mean {sm['fixed_mean']:+.1f}. " if sm["fixed_pairs"] else
                     "the fixed teacher weight's students (the ground truth: 3 seeds) are not there for these seeds. ")
                  + "Test sets hold 36-108 images, so one image is worth 0.9-2.8 points.", ""]
        if sm.get("weighted_pairs"):
            lines += [f"A teacher whose every class weighs 0 trains exactly as `ce` (difference +0.0 [+0.0, +0.0]). "
                      f"Over the {sm['weighted_pairs']} pairs with some weight: below the bound in "
                      f"{sm['weighted_below_bound']}, mean difference {sm['weighted_mean']:+.1f} points.", ""]
        if sm.get("null_pairs"):
            lines += [f"**Noise alone.** `ce` against `ce` trained at other seeds ({sm['null_pairs']} comparisons, "
                      "the same seed count, scored as a teacher is) falls below the bound in "
                      f"{sm['null_below_bound']} of {sm['null_pairs']} (worst {sm['null_worst']:+.1f}; beyond "
                      f"noise in {sm['null_surely_below_bound']}): how often the pointwise check fails with no "
                      "teacher at all, for these worlds and seeds.", ""]
    lines += [
             "| world | seeds | `ce` | worst teacher: adaptive `scd` - `ce` "
             "| best teacher: adaptive `scd` - `ce` | met |",
             "|---|---:|---:|---|---|---|"]
    for name, w in worlds.items():
        lines.append(f"| `{name}` | {w['seeds']} | {100 * w['ce']:.1f} | "
                     f"`{w['worst']}` {w['worst_minus_ce_points']:+.1f} | `{w['best']}` "
                     f"{w['best_minus_ce_points']:+.1f} | {'yes' if w['bound_met'] else 'no'} |")
    lines += ["", "## Every teacher", "", "| world | teacher | lambda used | adaptive `scd` "
              "| fixed `scd` (ground truth) | adaptive - `ce` [95% interval] |", "|---|---|---:|---:|---:|---:|"]
    for name, w in worlds.items():
        for t, row in w["teachers"].items():
            fixed = "–" if row["fixed"] is None else f"{100 * row['fixed']:.1f}"
            lines.append(f"| `{name}` | `{t}` | {row['lambda']:.2f} | {100 * row['adaptive']:.1f} | {fixed} | "
                         f"{row['adaptive_minus_ce_points']:+.1f} [{row['interval_points'][0]:+.1f}, "
                         f"{row['interval_points'][1]:+.1f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from scd_core.runtime.executors import LocalExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--only", help="comma-separated world names (default: all)")
    ap.add_argument("--collect", action="store_true", help="train nothing: write the tables from the cache")
    ap.add_argument("--null", type=int, default=0, metavar="N",
                    help=f"also train ce at N other seeds per world ({NULL_SEED_BASE}..): the noise-only comparison")
    ap.add_argument("--output", help="results name (default: suite_bounds for 3 seeds, else suite_bounds_<k>seeds)")
    args = ap.parse_args()
    output = args.output or ("suite_bounds" if args.seeds == 3 else f"suite_bounds_{args.seeds}seeds")
    names = [n.strip() for n in args.only.split(",")] if args.only else list(suite.WORLDS)
    if not args.collect:
        with LocalExecutor(workers=args.workers, torch_threads=1) as ex:
            built = [o.value["world"] for o in ex.map(build_one, names, names=names) if o.ok]
            teachers = {w: [None, *json.loads((suite_root() / w / "world.json").read_text())["teachers"]]
                        for w in built}
            tasks = [(w, t if t is None else t["name"], s) for s in range(args.seeds) for w in built
                     for t in teachers[w]]
            t1 = time.perf_counter()

            def progress(done: int, total: int, outcome) -> None:
                if done % 10 == 0 or not outcome.ok:
                    print(f"{done}/{total} students ({time.perf_counter() - t1:.0f} s)"
                          + ("" if outcome.ok else f" FAILED {outcome.name}: {outcome.error}"), flush=True)

            tasks += [(w, None, NULL_SEED_BASE + j) for j in range(args.null) for w in built]
            ex.map(student, tasks, names=[f"{w}/{t or 'ce'}/seed{s}" for w, t, s in tasks], progress=progress)
    result = collect(names, args.seeds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{output}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(save_markdown(output, markdown(result)))


if __name__ == "__main__":
    main()
