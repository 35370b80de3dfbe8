"""App path versus command line for the same ``ce`` run, with the Distill page watched and unwatched,
and cancel latency.

    python benchmarks/bench_runtime.py [--repeats 3] [--steps 30]

In a temporary workspace with ``SCD_DEMO_SIZE=small`` (the demo world ``shapes``), the run is a
``test_resnet`` student trained with ``ce`` for about ``--steps`` optimizer steps, measured three ways
(interleaved, ``--repeats`` times each):

- **cli**: ``python -m scd_core distill`` in a fresh process, wall time (imports included);
- **app, unwatched**: queued in the job store and run by the dispatcher's warm worker process, from
  submit to the finished record in the store (no page open);
- **app, watched**: the same, while a Streamlit ``AppTest`` of the Distill page of the run's session
  reruns back to back (harsher than a browser's 1 s polling fragment).

Cancel latency: a long run is cancelled once training has started; the time from the request to the
store saying ``cancelled`` (the worker stopped at its next step, or was ended after the grace).
Writes ``benchmarks/results/runtime.json`` and ``runtime.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, LoadMonitor, machine  # also puts the repository on sys.path

ROOT = Path(__file__).resolve().parents[1]


def _run_config(steps: int, target):
    from scd_core.distill.trainer import DistillConfig

    pool = len([it for it in target.split("train") if it.label >= 0]) + len(target.split("unlabeled"))
    batch = 32
    epochs = max(1, round(steps / math.ceil(pool / batch)))
    return DistillConfig(method="ce", student="test_resnet", epochs=epochs, batch_size=batch, device="cpu",
                         seed=0), epochs * math.ceil(pool / batch)


def _cli(config, out: Path) -> float:
    cmd = [sys.executable, "-m", "scd_core", "distill", "--target", "demo:shapes", "--repo", "demo:shapes",
           "--method", "ce", "--student", config.student, "--epochs", str(config.epochs), "--batch-size",
           str(config.batch_size), "--device", "cpu", "--out", str(out), "--json", str(out.parent / f"{out.name}.json")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def _app(store, dispatcher, session: str, config, out: Path, label: str) -> float:
    from scd_core.runtime.jobs import submit_distill

    t0 = time.perf_counter()
    job_id = submit_distill(store, session, target="demo:shapes", extract_dir=None, teacher=None, config=config,
                            run_dir=out, label=label, meta={"method": "ce", "epochs": config.epochs})
    dispatcher.kick()
    while True:
        job = store.get(job_id, history=False)
        if not job.active:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    if job.status != "finished":
        raise SystemExit(f"app run ended {job.status}: {job.error}")
    return elapsed


class Watcher:
    """An AppTest of the Distill page of one session, rerun back to back in a thread."""

    def __init__(self, session: str) -> None:
        from streamlit.testing.v1 import AppTest

        self.at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        self.at.query_params["s"] = session
        self.at.run()
        self.at.switch_page("pages/distill.py")
        self.at.run()
        self.reruns = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.at.run()
            self.reruns += 1

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def _cancel_latency(store, dispatcher, session: str, target, out: Path) -> float:
    from dataclasses import replace

    from scd_core.runtime.jobs import submit_distill

    config, _ = _run_config(30, target)
    config = replace(config, epochs=500, batch_size=4)
    job_id = submit_distill(store, session, target="demo:shapes", extract_dir=None, teacher=None, config=config,
                            run_dir=out, label="long")
    dispatcher.kick()
    while not store.get(job_id, history=False).message.startswith("epoch"):
        time.sleep(0.02)
    t0 = time.perf_counter()
    store.request_cancel(job_id)
    dispatcher.kick()
    while store.get(job_id, history=False).active:
        time.sleep(0.005)
    latency = time.perf_counter() - t0
    job = store.get(job_id, history=False)
    if job.status != "cancelled":
        raise SystemExit(f"cancelled run ended {job.status}: {job.error}")
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scd-bench-runtime-"))
    os.environ.update({"SCD_WORKSPACE": str(work / "ws"), "SCD_CACHE_DIR": str(work / "cache"),
                       "SCD_DEMO_SIZE": "small", "SCD_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})
    from scd_core.data.targets import load_target
    from scd_core.demo.worlds import ensure_world
    from scd_core.runtime.jobs import default_dispatcher, default_store
    from scd_core.runtime.settings import read_settings

    ensure_world("shapes")
    target = load_target("demo:shapes")
    config, steps = _run_config(args.steps, target)
    store = default_store()
    dispatcher = default_dispatcher()  # as a server starts it: workers are spawned and warmed now
    session = "bench-session-" + os.urandom(8).hex()
    store.create_session(session)
    _app(store, dispatcher, session, config, work / "warm", "warm-up")  # first run: worker imports, caches
    _cli(config, work / "cli-warm")

    monitor = LoadMonitor()
    times: dict[str, list[float]] = {"cli": [], "app_unwatched": [], "app_watched": []}
    reruns = []
    for r in range(args.repeats):
        times["cli"].append(_cli(config, work / f"cli-{r}"))
        times["app_unwatched"].append(_app(store, dispatcher, session, config, work / f"un-{r}", f"unwatched {r}"))
        with Watcher(session) as watcher:
            times["app_watched"].append(_app(store, dispatcher, session, config, work / f"w-{r}", f"watched {r}"))
        reruns.append(watcher.reruns / times["app_watched"][-1])
    cancels = [_cancel_latency(store, dispatcher, session, target, work / f"cancel-{r}") for r in range(args.repeats)]
    load = monitor.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "run": {"method": "ce", "student": config.student, "epochs": config.epochs, "batch_size": config.batch_size,
                "optimizer_steps": steps, "target": "demo:shapes (small)"},
        "settings": read_settings().__dict__, "times_s": times, "median_s": med,
        "ratio_to_cli": {k: med[k] / med["cli"] for k in ("app_unwatched", "app_watched")},
        "watched_page_reruns_per_s": statistics.median(reruns), "cancel_latency_s": cancels,
        "machine": machine(), "load": load,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {k.replace('_', ', ')} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in times[k])} | "
                     f"{med[k] / med['cli']:.2f}x |" for k in times)
    md = f"""# Runtime: app path versus command line

`ce` run of a `{config.student}` student on `demo:shapes` (small), {config.epochs} epochs of batch
{config.batch_size} = {steps} optimizer steps, CPU. {args.repeats} repeats each, interleaved.
App: queued in the job store, run by the dispatcher's warm worker process (settings {read_settings().__dict__});
timed from submit to the finished record. CLI: `python -m scd_core distill` in a fresh process (imports included).
Watched: an AppTest of the run's Distill page rerunning back to back
({statistics.median(reruns):.1f} reruns/s) in the benchmark's process, which is the server.

| where | median s | runs (s) | vs CLI |
|---|---|---|---|
{rows}

Cancel latency (request to `cancelled` in the store, run in training): {', '.join(f'{c:.2f}' for c in cancels)} s
(median {statistics.median(cancels):.2f} s).

{load['note']} Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPUs, {result['machine']['date']}.
"""
    (RESULTS / "runtime.md").write_text(md)
    print(md)
    dispatcher.shutdown()


if __name__ == "__main__":
    main()
