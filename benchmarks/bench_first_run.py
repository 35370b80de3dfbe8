"""A new user's first run on the Distill page, end to end, as the app runs it.

    python benchmarks/bench_first_run.py [--worlds shapes,digits]

For each full demo world (built beforehand, as the app does on first launch): the Ranking page's
default ranking from a cold output cache, then the Distill page's defaults (the ranking's top teacher,
methods ``scd`` and ``ce``, the default epochs and weighting, and the default seed count for the
estimated run time) queued in a fresh job store and run by the app's dispatcher with the app's
default runtime settings (worker count and torch threads). Measured: the ranking's time, the time
from submitting the runs to the last one finishing, and what the page then shows: the teacher's gain
over ``ce`` with its 95% interval and verdict. Writes ``results/first_run.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import RESULTS, LoadMonitor, machine, machine_line, save_markdown


def first_run(world: str, work: Path) -> dict:
    from scd_core.assess.ranking import rank
    from scd_core.demo.worlds import ensure_world
    from scd_core.distill.compare import compare, default_seed_count, estimate_run_seconds, job_record
    from scd_core.distill.config import DistillConfig
    from scd_core.runtime.jobs import Dispatcher, JobStore, submit_distill
    from scd_core.sources import as_repository, as_target

    ensure_world(world, size="full")
    target, repo = as_target(f"demo:{world}"), as_repository(f"demo:{world}")
    t0 = time.perf_counter()
    ranking = rank(target, repo, device="cpu", use_cache=False)
    rank_s = time.perf_counter() - t0
    teacher = ranking.names[0]
    pool = len(target.split("train")) + len(target.split("unlabeled"))
    base = DistillConfig(device="cpu")
    estimate = estimate_run_seconds([], pool, base.epochs)
    seeds = default_seed_count(estimate.seconds, 2)
    store = JobStore(work / f"{world}.sqlite")
    dispatcher = Dispatcher(store).start()
    monitor = LoadMonitor()
    try:
        t0 = time.perf_counter()
        ids = []
        for seed in range(seeds):
            for method, spec in (("scd", repo.get(teacher)), ("ce", None)):
                config = DistillConfig(method=method, seed=seed, device="cpu")
                meta = {"teacher": spec.name if spec else None, "method": method, "seed": seed,
                        "weighting": config.weighting, "target_fp": target.fingerprint, "student": config.student,
                        "epochs": config.epochs, "n_val": len(target.split("val"))}
                ids.append(submit_distill(store, "bench", target=f"demo:{world}", extract_dir=None, teacher=spec,
                                          config=config, run_dir=work / "runs" / f"{world}-{method}-{seed}",
                                          label=f"{method} seed {seed}", meta=meta))
        dispatcher.kick()
        while any(store.get(i, history=False).active for i in ids):
            time.sleep(0.2)
        runs_s = time.perf_counter() - t0
    finally:
        dispatcher.shutdown()
    load = monitor.stop()
    jobs = [store.get(i, history=False) for i in ids]
    failed = [f"{j.label}: {j.status} {j.error}" for j in jobs if j.status != "finished"]
    comparison = compare([job_record(j) for j in jobs], has_test=bool(target.split("test")))
    scd = next(g for g in comparison.groups if g.method == "scd")
    ce = comparison.baseline
    runtime = dispatcher.config
    return {"world": world, "teacher": teacher, "rank_s": round(rank_s, 1), "seeds": seeds, "runs": len(ids),
            "estimate_per_run_s": round(estimate.seconds, 1), "runs_s": round(runs_s, 1),
            "total_s": round(rank_s + runs_s, 1), "workers": runtime.workers, "torch_threads": runtime.torch_threads,
            "run_seconds": [round(j.elapsed, 1) for j in jobs], "failed": failed, "load": load,
            "scd_val": [scd.val_mean, scd.val_std], "ce_val": [ce.val_mean, ce.val_std],
            "scd_test": [scd.test_mean, scd.test_std], "ce_test": [ce.test_mean, ce.test_std],
            "gain_val": [scd.vs_ce.value, scd.vs_ce.low, scd.vs_ce.high], "verdict": scd.vs_ce.label,
            "n_val": comparison.n_val}


def markdown(r: dict) -> str:
    lines = ["# A new user's first run on the Distill page", "", machine_line(r["machine"]), "",
             "Each world: the Ranking page's default ranking from a cold output cache, then the Distill page's "
             "defaults (the top teacher, `scd` and `ce`, default epochs and adaptive weight, the default seed count) "
             "run by the app's dispatcher with the default runtime settings, from submit to the last run finished.",
             "", "| world | top teacher | ranking s | runs (seeds) | workers x torch threads | runs s | total | "
             "`scd` val | `ce` val | gain [95% interval] | `scd` test | `ce` test | verdict | others' CPU use |",
             "|---|---|---:|---|---|---:|---:|---|---|---|---|---|---|---|"]
    for w in r["worlds"]:
        def pct(pair):
            return "–" if pair[0] is None else f"{100 * pair[0]:.1f}" + (
                f" ± {100 * pair[1]:.1f}" if pair[1] is not None else "")
        g = w["gain_val"]
        lines.append(f"| {w['world']} | `{w['teacher']}` | {w['rank_s']:.1f} | {w['runs']} ({w['seeds']}) | "
                     f"{w['workers']} x {w['torch_threads']} | {w['runs_s']:.0f} | **{w['total_s'] / 60:.1f} min** | "
                     f"{pct(w['scd_val'])} | {pct(w['ce_val'])} | {100 * g[0]:+.1f} [{100 * g[1]:+.1f}, "
                     f"{100 * g[2]:+.1f}] | {pct(w['scd_test'])} | {pct(w['ce_test'])} | {w['verdict']} | "
                     f"{100 * w['load']['others_busy_during']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", default="shapes,digits")
    args = ap.parse_args()
    os.environ.setdefault("SCD_DEVICE", "cpu")
    work = Path(tempfile.mkdtemp(prefix="scd-first-run-"))
    os.environ["SCD_CACHE_DIR"] = str(work / "cache")  # a cold output cache, as for a new user
    result = {"machine": machine(), "worlds": []}
    for world in args.worlds.split(","):
        result["worlds"].append(first_run(world.strip(), work))
        w = result["worlds"][-1]
        print(f"{w['world']}: rank {w['rank_s']} s, {w['runs']} runs {w['runs_s']} s, gain {w['gain_val']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "first_run.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(save_markdown("first_run", markdown(result)))


if __name__ == "__main__":
    main()
