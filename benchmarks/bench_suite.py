"""Build the ranking-science suite and its ground truth, resumably, in parallel worker processes.

    python benchmarks/bench_suite.py [--workers 2] [--seeds 3] [--only WORLD,...]

1. **Worlds**: every world of :mod:`suite` is built once into ``<workspace>/benchmarks/suite-v<N>/<world>``
   (skipped when already built).
2. **Ground truth**: for every (world, teacher, seed), the test accuracy of the product's default
   student (``scd_core.distill.trainer.distill`` with the default ``DistillConfig``, only the seed
   changes). Each result is cached as one JSON file next to the world, so a killed run resumes where
   it stopped. Tasks run seed-major (every student of seed 0 first), so a partial run still covers
   every world.
3. The collected accuracies go to ``benchmarks/results/suite_truth.json`` with the time taken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import suite
from common import RESULTS, LoadMonitor, machine


def suite_root() -> Path:
    from scd_core.runtime.workspace import subdir

    return subdir("benchmarks") / f"suite-v{suite.SUITE_VERSION}"


def build_one(name: str) -> dict:
    """Build world ``name`` (seed 0) unless it is there; its manifest's build time."""
    from scd_core.demo.common import build_atomically, build_into, is_world, torch_state
    from scd_core.demo.worlds import describe_family

    out = suite_root() / name
    if not is_world(out):
        fam = suite.WORLDS[name]

        def fill(tmp: Path) -> dict:
            with torch_state(1):
                manifest = build_into(fam, "bench", tmp, 0, lambda f, m: None)
            manifest["description"] = describe_family(fam)
            return manifest

        build_atomically(out, fill)
    manifest = json.loads((out / "world.json").read_text())
    return {"world": name, "build_seconds": manifest["build_seconds"],
            "teachers": {t["name"]: t["heldout_accuracy"] for t in manifest["teachers"]}}


def student(task: tuple[str, str, int]) -> dict:
    """Test accuracy of the default student of ``teacher`` on ``world`` for ``seed`` (cached on disk)."""
    name, teacher, seed = task
    cache = suite_root() / name / "students" / f"{teacher}-seed{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.sources import as_repository, as_target

    root = suite_root() / name
    target, repo = as_target(root / "target"), as_repository(root / "teachers")
    run_dir = Path(tempfile.mkdtemp(prefix="suite-student-"))
    t0 = time.perf_counter()
    try:
        # fixed lambda: the ground truth measures the teacher, not the adaptive weight's rescue of a bad one
        res = distill(target, repo.get(teacher), DistillConfig(seed=seed, weighting="fixed"), run_dir=run_dir / "run")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # the exported student is not needed
    out = {"world": name, "teacher": teacher, "seed": seed, "accuracy": res.test_acc,
           "seconds": round(time.perf_counter() - t0, 2), "steps": res.timing.get("steps")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(cache)
    return out


def main() -> None:
    import numpy as np

    from scd_core.runtime.executors import LocalExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", help="comma-separated world names (default: all)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: write the table from the students cached so far (a partial run)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(suite.WORLDS)
    if args.collect:
        return collect(names, args.seeds)
    load = LoadMonitor()
    started = time.perf_counter()
    with LocalExecutor(workers=args.workers, torch_threads=1) as ex:
        built = ex.map(build_one, names, names=names)
        for o in built:
            print(("built " if o.ok else "FAILED ") + o.name + ("" if o.ok else f": {o.error}"), flush=True)
        build_s = time.perf_counter() - started
        tasks = [(w, t, s) for s in range(args.seeds) for w in names if built[names.index(w)].ok
                 for t in built[names.index(w)].value["teachers"]]
        t1 = time.perf_counter()

        def progress(done: int, total: int, outcome) -> None:
            if done % 10 == 0 or not outcome.ok:
                print(f"{done}/{total} students ({time.perf_counter() - t1:.0f} s)"
                      + ("" if outcome.ok else f" FAILED {outcome.name}: {outcome.error}"), flush=True)

        outcomes = ex.map(student, tasks, names=[f"{w}/{t}/seed{s}" for w, t, s in tasks], progress=progress)
    truth_s = time.perf_counter() - t1
    worlds: dict[str, dict] = {}
    for o in outcomes:
        if not o.ok:
            continue
        r = o.value
        w = worlds.setdefault(r["world"], {"teachers": {}})
        w["teachers"].setdefault(r["teacher"], {"accuracies": [], "seconds": []})
        w["teachers"][r["teacher"]]["accuracies"].append(r["accuracy"])
        w["teachers"][r["teacher"]]["seconds"].append(r["seconds"])
    for w in worlds.values():
        for t in w["teachers"].values():
            t["accuracy_mean"] = float(np.mean(t["accuracies"]))
            t["accuracy_std"] = float(np.std(t["accuracies"]))
    payload = {
        "machine": machine(), "cpu_share": load.stop(), "suite_version": suite.SUITE_VERSION,
        "tuning": list(suite.TUNING), "held_out": list(suite.HELD_OUT), "seeds": args.seeds,
        "workers": args.workers, "distill_config": "DistillConfig() defaults with weighting='fixed', seed 0..seeds-1",
        "build_s": round(build_s, 1), "ground_truth_s": round(truth_s, 1),
        "student_cpu_s": round(sum(o.value["seconds"] for o in outcomes if o.ok), 1),
        "failures": [f"{o.name}: {o.error}" for o in outcomes if not o.ok],
        "builds": {o.name: o.value for o in built if o.ok}, "worlds": worlds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "suite_truth.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}: build {build_s:.0f} s, ground truth {truth_s:.0f} s", flush=True)


def collect(names: list[str], seeds: int) -> None:
    """The ground-truth table from the cached students only; per world, the seeds every teacher has."""
    import numpy as np

    worlds: dict[str, dict] = {}
    total_s = 0.0
    for name in names:
        root = suite_root() / name
        if not (root / "world.json").is_file():
            continue
        teachers = [t["name"] for t in json.loads((root / "world.json").read_text())["teachers"]]
        found = {t: [json.loads(f.read_text()) for s in range(seeds)
                     if (f := root / "students" / f"{t}-seed{s}.json").is_file()] for t in teachers}
        common = min(len(v) for v in found.values())
        # only seeds that every teacher has, in order (a partial run stops mid-seed)
        while common and not all(v[common - 1]["seed"] == common - 1 for v in found.values()):
            common -= 1
        if common == 0:
            continue
        w = worlds[name] = {"seeds": common, "teachers": {}}
        for t, runs in found.items():
            accs = [r["accuracy"] for r in runs[:common]]
            total_s += sum(r["seconds"] for r in runs[:common])
            w["teachers"][t] = {"accuracies": accs, "seconds": [r["seconds"] for r in runs[:common]],
                                "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs))}
    builds = {n: json.loads((suite_root() / n / "world.json").read_text())["build_seconds"]
              for n in names if (suite_root() / n / "world.json").is_file()}
    payload = {
        "machine": machine(), "suite_version": suite.SUITE_VERSION, "tuning": list(suite.TUNING),
        "held_out": list(suite.HELD_OUT), "seeds_requested": seeds,
        "seeds": min((w["seeds"] for w in worlds.values()), default=0),
        "distill_config": "DistillConfig() defaults with weighting='fixed', seed 0..seeds-1",
        "collected_from_cache": True,
        "build_s_sum": round(sum(builds.values()), 1), "student_s_sum": round(total_s, 1), "worlds": worlds,
    }
    out = RESULTS / "suite_truth.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}: {len(worlds)} worlds, seeds per world {[w['seeds'] for w in worlds.values()]}")


if __name__ == "__main__":
    main()
