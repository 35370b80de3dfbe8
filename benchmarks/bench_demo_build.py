"""Benchmark: how long building each demo world takes (teacher training included), full and small size.

Each world is built from scratch (seed 0) into a temporary folder, in this process, after the heavy
imports (torch, timm, scikit-learn) have been paid once; their cost is recorded separately. Reported
per build: wall seconds, process CPU seconds (the build pins torch to one thread, so CPU seconds
close to wall seconds mean the machine was not shared), the load average before and after (other
processes on the machine inflate wall time), the target's file count and size, and each teacher's
held-out accuracy on its own task.

Usage::

    python benchmarks/bench_demo_build.py [--world shapes|digits ...] [--size full|small ...] [--out PATH]

Writes ``benchmarks/results/demo_build.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench(world: str, size: str) -> dict:
    """Build ``world`` at ``size`` into a temporary folder and measure it."""
    from scd_core.demo.worlds import build_world

    with tempfile.TemporaryDirectory(prefix="scd-demo-bench-") as tmp:
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), _cpu_seconds()
        w = build_world(world, Path(tmp) / world, size=size, seed=0)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        pngs = list(w.target_dir.rglob("*.png"))
        teacher_bytes = sum(p.stat().st_size for p in w.teachers_dir.rglob("*") if p.is_file())
        return {
            "world": world,
            "size": size,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "load_avg_before": round(load_before, 2),
            "load_avg_after": round(os.getloadavg()[0], 2),
            "image_size": w.manifest["image_size"],
            "target_pngs": len(pngs),
            "target_bytes": sum(p.stat().st_size for p in pngs),
            "teacher_bytes": teacher_bytes,
            "teachers": [
                {k: r[k] for k in ("name", "architecture", "num_classes", "heldout_accuracy", "chance_accuracy",
                                   "heldout_images", "train_images", "epochs", "label_noise", "usefulness",
                                   "seconds")}
                for r in w.manifest["teachers"]
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", action="append", choices=["shapes", "digits"])
    parser.add_argument("--size", action="append", choices=["full", "small"])
    parser.add_argument("--out", default=str(RESULTS / "demo_build.json"))
    args = parser.parse_args()
    worlds = args.world or ["shapes", "digits"]
    sizes = args.size or ["full", "small"]

    t0 = time.perf_counter()
    import sklearn.datasets  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    import_s = time.perf_counter() - t0

    runs = []
    for size in sizes:
        for world in worlds:
            run = bench(world, size)
            runs.append(run)
            print(f"{world} {size}: {run['wall_s']} s wall, {run['cpu_s']} s CPU "
                  f"(load {run['load_avg_before']} -> {run['load_avg_after']})", flush=True)
    result = {"machine": machine(), "import_s": round(import_s, 2), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print("\n| world | size | wall s | CPU s | load before/after | teachers: held-out accuracy (chance) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        accs = ", ".join(f"{t['name']} {t['heldout_accuracy']:.2f} ({t['chance_accuracy']:.2f})"
                         for t in r["teachers"])
        print(f"| {r['world']} | {r['size']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['load_avg_before']}/{r['load_avg_after']} | {accs} |")
    print(f"\nimports (torch, timm, scikit-learn): {import_s:.1f} s; written to {out}")


if __name__ == "__main__":
    main()
