"""Experiment, second stage: the per-teacher-class weight of ``adaptive_per_class.py`` on the suite.

    python benchmarks/experiments/adaptive_per_class_suite.py [--split TUNING|HELD_OUT] [--workers 2]

Trains the default student with the per-class weight for every teacher of the split's worlds, 3 seeds,
cached next to each world in ``students/bounds-per-class/`` (``ce`` comes from the product rule's cache,
``students/bounds/ce-seed*.json``: it has no teacher). A teacher whose every class weight is 0 trains as
``ce`` seed for seed, so its result is that ``ce`` run. Compares with the product rule's measured runs
(``results/suite_bounds.json``) and writes ``results/distill_adaptive_per_class_suite.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

import adaptive_per_class  # noqa: E402
import suite  # noqa: E402
from bench_suite import suite_root  # noqa: E402
from common import RESULTS, paired_interval  # noqa: E402

SEEDS = 3
BOUND = -2.0


def _cache(world: str, teacher: str, seed: int) -> Path:
    return suite_root() / world / "students" / "bounds-per-class" / f"{teacher}-seed{seed}.json"


def _ce(world: str, seed: int) -> dict:
    return json.loads((suite_root() / world / "students" / "bounds" / f"ce-seed{seed}.json").read_text())


def _init() -> None:
    import torch

    torch.set_num_threads(1)
    adaptive_per_class.install()


def student(task: tuple[str, str, int]) -> dict:
    world, teacher, seed = task
    cache = _cache(world, teacher, seed)
    if cache.is_file():
        return json.loads(cache.read_text())
    from scd_core.distill.signal import train_outputs
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.sources import as_repository, as_target

    root = suite_root() / world
    target, repo = as_target(root / "target"), as_repository(root / "teachers")
    spec, config = repo.get(teacher), DistillConfig(seed=seed)
    t0 = time.perf_counter()
    weights = adaptive_per_class.class_weights(train_outputs(spec, target, "cpu"), config.cost, config.temperature)
    if weights.max() == 0:
        out = {**_ce(world, seed), "teacher": teacher, "lambda": 0.0, "trained_as": "ce"}
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="suite-per-class-"))
        try:
            res = distill(target, spec, config, run_dir=run_dir / "run")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        out = {"world": world, "teacher": teacher, "seed": seed, "accuracy": res.test_acc,
               "lambda": res.teacher_weight.get("lambda"), "seconds": round(time.perf_counter() - t0, 2)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.with_suffix(".tmp").write_text(json.dumps(out))
    cache.with_suffix(".tmp").replace(cache)
    return out


def compare(names: tuple[str, ...]) -> dict:
    product = json.loads((RESULTS / "suite_bounds.json").read_text())["worlds"]
    rows = []
    for w in names:
        ce = [_ce(w, s)["accuracy"] for s in range(SEEDS)]
        for t, row in product[w]["teachers"].items():
            accs = [json.loads(_cache(w, t, s).read_text())["accuracy"] for s in range(SEEDS)]
            lam = float(np.mean([json.loads(_cache(w, t, s).read_text())["lambda"] or 0.0 for s in range(SEEDS)]))
            diff = 100 * (np.mean(accs) - np.mean(ce))
            rows.append({"world": w, "teacher": t, "per_class_minus_ce": float(diff), "per_class_lambda": lam,
                         "product_minus_ce": row["adaptive_minus_ce_points"], "product_lambda": row["lambda"],
                         "interval": [100 * x for x in paired_interval(accs, ce)]})

    def summary(key: str) -> dict:
        gains = [r[key] for r in rows]
        return {"pairs": len(gains), "mean_gain": float(np.mean(gains)),
                "below_bound": int(sum(g < BOUND for g in gains)), "worst": float(min(gains))}

    return {"rows": rows, "per_class": summary("per_class_minus_ce"), "product": summary("product_minus_ce")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("TUNING", "HELD_OUT"), default="TUNING")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    names = getattr(suite, args.split)
    tasks = [(w, t["name"], s) for s in range(SEEDS) for w in names
             for t in json.loads((suite_root() / w / "world.json").read_text())["teachers"]]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("fork"), initializer=_init) as pool:
        for i, _ in enumerate(pool.map(student, tasks), 1):
            if i % 20 == 0:
                print(f"{i}/{len(tasks)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = compare(names)
    out = RESULTS / "distill_adaptive_per_class_suite.json"
    saved = json.loads(out.read_text()) if out.is_file() else {}
    saved[args.split] = result
    out.write_text(json.dumps(saved, indent=1) + "\n")
    lines = ["# Experiment: the per-teacher-class weight on the suite", "",
             "`scd` test accuracy minus `ce` (points, 3 seeds, the default student), per-class weight against the "
             "product's one weight per teacher (`benchmarks/experiments/adaptive_per_class_suite.py`).", "",
             "| split | rule | pairs | mean gain | pairs < ce-2 | worst |", "|---|---|---|---|---|---|"]
    for split, res in saved.items():
        for rule in ("product", "per_class"):
            s = res[rule]
            lines.append(f"| {split} | {rule} | {s['pairs']} | {s['mean_gain']:+.2f} | {s['below_bound']} | "
                         f"{s['worst']:+.1f} |")
    lines += ["", "| split | world | teacher | lambda (product / per class) | product - ce | per class - ce "
              "[95% interval] |", "|---|---|---|---|---|---|"]
    for split, res in saved.items():
        for r in res["rows"]:
            lines.append(f"| {split} | `{r['world']}` | `{r['teacher']}` | {r['product_lambda']:.2f} / "
                         f"{r['per_class_lambda']:.2f} | {r['product_minus_ce']:+.1f} | {r['per_class_minus_ce']:+.1f} "
                         f"[{r['interval'][0]:+.1f}, {r['interval'][1]:+.1f}] |")
    (RESULTS / "distill_adaptive_per_class_suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10]))


if __name__ == "__main__":
    main()
