"""GPU check (issue 6): everything that needs a CUDA device, in one short script (< 5 minutes).

Steps, each timed and recorded even when another fails:

1. ``pytest -m gpu``: the tests marked ``gpu`` (skipped on machines without CUDA).
2. The Sinkhorn benchmark (``benchmarks/bench_sinkhorn.py --device cuda``), full sizes unless
   ``--sinkhorn quick`` (about a minute, mostly the POT loops on the CPU).
3. Builds the ``shapes`` demo zoo (``--size full`` by default: about 60 s on one CPU core; ``small``
   when time is short, but then an epoch is a single step).
4. Assessment: ``scd_core.assess.ranking.rank`` of the zoo on cuda and on cpu, without the output cache
   (one untimed cuda warm-up first), and whether both devices give the same ranking and scores.
5. Throughput (``bench_throughput.device_check``): a zoo of 6 random-weight timm teachers (resnet18,
   resnet50, convnext_tiny, efficientnet_b0, vit_small, resnet18) on generated PNGs: ``rank`` with the
   shared decode against the raw forward (bf16, channels_last) on cuda, and the same rank through a
   local Ray instance (tasks get the GPU), whose scores must equal the in-process ones to 1e-6.
6. Distillation: one epoch of ``scd_core.distill.trainer.distill`` (``DistillConfig(epochs=1)``, method
   ``scd`` from the best-ranked teacher) on cuda and on cpu.

A step that would start after ``--budget`` seconds (default 270) is skipped and listed as such.

Writes ``gpu_check.json`` and ``gpu_check.md`` (and ``sinkhorn_cuda.json``/``.md``) to ``--results``
(default ``benchmarks/results``), with ``torch.cuda.get_device_name()``.

Exit codes: 0 when every step passed, 1 when a step failed (see the report), and 0 with the message
"no CUDA GPU available" when there is no CUDA device (nothing is run or written; ``--require-gpu``
makes that exit 3 instead). ``--dry-run-cpu`` runs every step with "cpu" in place of "cuda" (small
sizes, results under a temporary folder unless ``--results`` is given) to test this script on a
machine without a GPU.

    python benchmarks/gpu_check.py [--size small|full] [--sinkhorn full|quick|skip] [--results DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

NO_GPU_EXIT = 3  # with --require-gpu


def _step(report: dict, name: str, fn, *args) -> object:
    """Run one step, recording its duration and outcome; a failure does not stop the others."""
    t0 = time.perf_counter()
    entry: dict = {"ok": False}
    report["steps"][name] = entry
    print(f"== {name}", flush=True)
    try:
        result = fn(*args)
        if isinstance(result, dict):
            entry.update(result)
            entry["ok"] = bool(result.get("ok", True))
        else:
            entry["ok"] = True
        return result
    except Exception as exc:  # record and go on
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc(limit=8)
        print(entry["traceback"], file=sys.stderr)
        return None
    finally:
        entry["seconds"] = time.perf_counter() - t0
        print(f"   {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']:.1f} s", flush=True)


def run_pytest(dry: bool) -> dict:
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "tests"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if xml.exists():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                for key in counts:
                    counts[key] += int(suite.get(key, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = (f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
               f"{counts['skipped']} skipped")
    # exit code 5: no tests collected; on a CPU dry run every gpu test is skipped
    ok = proc.returncode == 0 or (dry and proc.returncode == 5)
    if not dry:
        ok = ok and passed > 0 and counts["skipped"] == 0  # on a GPU machine nothing may be skipped
    return {"ok": ok, "returncode": proc.returncode, "summary": summary, **counts,
            "output_tail": proc.stdout[-3000:] if not ok else ""}


def build_zoo(size: str, work: Path) -> dict:
    from scd_core.demo.worlds import build_world

    world = build_world("shapes", work / "shapes", size=size, seed=0)
    return {"world": world.name, "size": size, "root": str(world.root), "teachers": list(world.teachers)}


def _timed_rank(target, repo, device: str) -> tuple[float, object]:
    from scd_core.assess.ranking import rank

    _sync(device)
    t0 = time.perf_counter()
    ranking = rank(target, repo, device=device, use_cache=False)
    _sync(device)
    return time.perf_counter() - t0, ranking


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def assess(world_root: Path, gpu: str) -> dict:
    import numpy as np

    from scd_core.data.targets import load_target
    from scd_core.demo.worlds import open_world
    from scd_core.teachers.repository import TeacherRepository

    world = open_world(world_root)
    target = load_target(world.target_dir)
    repo = TeacherRepository.from_folder(world.teachers_dir)
    if gpu != "cpu":
        _timed_rank(target, repo, gpu)  # warm-up: CUDA context, cuDNN autotuning, first-call allocations
    t_gpu, gpu_ranking = _timed_rank(target, repo, gpu)
    t_cpu, cpu_ranking = _timed_rank(target, repo, "cpu")
    on_gpu, on_cpu = gpu_ranking.table(), cpu_ranking.table()
    metrics = [m for m in on_cpu.columns if m not in ("num_classes", "images", "round")]
    diff = {m: float(np.nanmax(np.abs(on_gpu.loc[on_cpu.index, m].to_numpy() - on_cpu[m].to_numpy())))
            for m in metrics}
    return {
        "teachers": len(repo), "images": int(on_cpu["images"].iloc[0]),
        "gpu_s": t_gpu, "cpu_s": t_cpu, "speedup": t_cpu / t_gpu,
        "gpu_timing": gpu_ranking.timing, "cpu_timing": cpu_ranking.timing,
        "same_ranking": list(on_gpu.index) == list(on_cpu.index),
        "ranking_cpu": list(on_cpu.index), "ranking_gpu": list(on_gpu.index),
        "max_abs_score_diff": diff, "best_teacher": on_cpu.index[0],
    }


def distill_epoch(world_root: Path, teacher: str, gpu: str, work: Path) -> dict:
    from scd_core.data.targets import load_target
    from scd_core.demo.worlds import open_world
    from scd_core.distill.trainer import DistillConfig, distill
    from scd_core.teachers.repository import TeacherRepository

    world = open_world(world_root)
    target = load_target(world.target_dir)
    spec = TeacherRepository.from_folder(world.teachers_dir).get(teacher)
    out: dict = {"teacher": teacher, "method": "scd"}
    if gpu != "cpu":  # warm-up on the GPU (CUDA context, cuDNN), then one timed epoch per device
        distill(target, spec, DistillConfig(method="scd", epochs=1, device=gpu), run_dir=work / "warmup")
    for label, device in (("gpu", gpu), ("cpu", "cpu")):
        t0 = time.perf_counter()
        res = distill(target, spec, DistillConfig(method="scd", epochs=1, device=device), run_dir=work / label)
        out[f"{label}_s"] = time.perf_counter() - t0
        out[f"{label}_timing"] = res.timing
        out[f"{label}_val_acc"] = res.val_acc
    out["speedup"] = out["cpu_s"] / out["gpu_s"]
    out["train_speedup"] = out["cpu_timing"]["train_s"] / max(out["gpu_timing"]["train_s"], 1e-9)
    return out


def sinkhorn_bench(mode: str, device: str, results: Path) -> dict:
    import json

    import bench_sinkhorn

    out = results / f"sinkhorn_{device}{'_quick' if mode == 'quick' else ''}.json"
    argv = ["--device", device, "--out", str(out)] + (["--quick"] if mode == "quick" else [])
    if device == "cpu":
        argv += ["--threads", "1"]
    rc = bench_sinkhorn.main(argv)
    main = json.loads(out.read_text())["main"]
    keys = ("B", "K_t", "K_s", "eps", "ours_f64_s", "ours_f32_s", "pot_loop_s", "pot_batch_s", "speedup_f64",
            "speedup_f32", "speedup_vs_pot_batch", "err_vs_ref_f64", "err_vs_ref_f32", "ours_f64_ceiling_fraction",
            "ours_f32_ceiling_fraction")
    return {"ok": rc == 0, "json": str(out), "main": {k: main.get(k) for k in keys}}


def markdown(report: dict) -> str:
    s = report["steps"]
    lines = [f"# GPU check: {report['gpu_name']}", "", report["machine_line"],
             f"Generated by `python benchmarks/gpu_check.py {' '.join(report['argv'])}` in {report['total_s']:.0f} s; "
             f"every step {'passed' if report['ok'] else 'did NOT pass (see below)'}.", "",
             "| step | ok | seconds | result |", "|---|---|---|---|"]

    def row(name: str, text: str) -> None:
        e = s.get(name)
        if e is None:
            return
        detail = text if e["ok"] else e.get("error", e.get("summary", "failed"))
        lines.append(f"| {name} | {'yes' if e['ok'] else '**no**'} | {e['seconds']:.1f} | {detail} |")

    p = s.get("pytest -m gpu", {})
    row("pytest -m gpu", f"`{p.get('summary', '')}`")
    z = s.get("demo zoo build", {})
    row("demo zoo build", f"shapes ({z.get('size')}), {len(z.get('teachers', []))} teachers")
    a = s.get("assessment", {})
    if a.get("ok"):
        diff = ", ".join(f"{k} {v:.1e}" for k, v in a["max_abs_score_diff"].items())
        row("assessment", f"rank of {a['teachers']} teachers on {a['images']} images: {report['device']} "
            f"{a['gpu_s']:.2f} s, cpu {a['cpu_s']:.2f} s ({a['speedup']:.1f}x); same ranking: "
            f"{'yes' if a['same_ranking'] else 'no'}; max abs score difference: {diff}")
    else:
        row("assessment", "")
    d = s.get("distillation epoch", {})
    if d.get("ok"):
        row("distillation epoch", f"scd from {d['teacher']}, 1 epoch: {report['device']} {d['gpu_s']:.1f} s "
            f"(train {d['gpu_timing']['train_s']:.1f} s), cpu {d['cpu_s']:.1f} s (train "
            f"{d['cpu_timing']['train_s']:.1f} s): {d['speedup']:.1f}x overall, {d['train_speedup']:.1f}x training")
    else:
        row("distillation epoch", "")
    k = s.get("sinkhorn benchmark", {})
    if k.get("ok"):
        m = k["main"]
        pb = f", POT batch {m['pot_batch_s'] * 1e3:.0f} ms" if m.get("pot_batch_s") else ""
        row("sinkhorn benchmark", f"{m['B']} x ({m['K_t']} x {m['K_s']}), eps {m['eps']}: ours f64 "
            f"{m['ours_f64_s'] * 1e3:.2f} ms ({m['speedup_f64']:.0f}x the POT loop on the CPU), f32 "
            f"{m['ours_f32_s'] * 1e3:.2f} ms ({m['speedup_f32']:.0f}x){pb}; full table in "
            f"`{Path(k['json']).with_suffix('.md').name}`")
    else:
        row("sinkhorn benchmark", "")
    t = s.get("throughput and ray", {})
    if t.get("ok"):
        row("throughput and ray", f"{t['teachers']} teachers x {t['images']} images at {t['size']} px, batch "
            f"{t['batch_size']}: raw forward {t['raw_images_per_s']:.0f}, rank {t['rank_images_per_s']:.0f} images x "
            f"teachers/s (**{t['rank_over_raw']:.2f}x**, target 0.9x); through Ray {t['ray_images_per_s']:.0f}, "
            f"max score difference {t['ray_max_abs_score_diff']:.1e}, same order: {t['ray_same_order']}")
    else:
        row("throughput and ray", "")
    skipped = report.get("skipped", [])
    if skipped:
        lines += ["", "Skipped (time budget): " + ", ".join(skipped) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=None, choices=["small", "full"],
                        help="demo zoo size: full (default; ~60 s to build on one CPU core, a 348-image epoch) "
                             "or small (default of --dry-run-cpu)")
    parser.add_argument("--sinkhorn", default=None, choices=["full", "quick", "skip"],
                        help="Sinkhorn benchmark sizes (default full; quick with --dry-run-cpu)")
    parser.add_argument("--throughput", default="run", choices=["run", "skip"],
                        help="the shared-decode rank vs raw forward and the Ray path (step 5)")
    parser.add_argument("--results", type=Path, default=None, help="output folder (default benchmarks/results)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; later steps are skipped past it")
    parser.add_argument("--require-gpu", action="store_true", help=f"exit {NO_GPU_EXIT} when there is no GPU")
    parser.add_argument("--dry-run-cpu", action="store_true", help="run every step on the CPU (tests the script)")
    args = parser.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    import torch

    if not torch.cuda.is_available() and not args.dry_run_cpu:
        print("no CUDA GPU available (torch.cuda.is_available() is False): nothing to check, nothing written.")
        return NO_GPU_EXIT if args.require_gpu else 0

    from common import RESULTS, machine, machine_line, save_markdown

    t_start = time.perf_counter()
    dry = args.dry_run_cpu
    args.size = args.size or ("small" if dry else "full")
    args.sinkhorn = args.sinkhorn or ("quick" if dry else "full")
    device = "cpu" if dry else "cuda"
    results = args.results or (Path(tempfile.mkdtemp(prefix="gpu-check-dry-")) if dry else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scd-gpu-check-"))
    os.environ["SCD_CACHE_DIR"] = str(work / "cache")
    os.environ["SCD_WORKSPACE"] = str(work / "workspace")
    info = machine()
    report: dict = {
        "machine": info, "machine_line": machine_line(info), "device": device, "dry_run_cpu": dry,
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run on the CPU)",
        "argv": raw_argv, "steps": {}, "skipped": [],
    }

    def within_budget(name: str) -> bool:
        if time.perf_counter() - t_start < args.budget:
            return True
        report["skipped"].append(name)
        return False

    _step(report, "pytest -m gpu", run_pytest, dry)
    if args.sinkhorn != "skip" and within_budget("sinkhorn benchmark"):
        _step(report, "sinkhorn benchmark", sinkhorn_bench, args.sinkhorn, device, results)
    zoo = _step(report, "demo zoo build", build_zoo, args.size, work) if within_budget("demo zoo build") else None
    if zoo:
        root = Path(zoo["root"])
        ranked = _step(report, "assessment", assess, root, device) if within_budget("assessment") else None
        teacher = ranked["best_teacher"] if ranked else zoo["teachers"][0]
        if within_budget("distillation epoch"):
            _step(report, "distillation epoch", distill_epoch, root, teacher, device, work / "runs")
    if args.throughput != "skip" and within_budget("throughput and ray"):
        import bench_throughput

        images, size, batch = (60, 32, 16) if dry else (2000, 224, 128)
        _step(report, "throughput and ray", bench_throughput.device_check, device, images, size, batch,
              work / "throughput")

    report["total_s"] = time.perf_counter() - t_start
    report["ok"] = all(e["ok"] for e in report["steps"].values())
    import json

    (results / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = markdown(report)
    if results == RESULTS:
        save_markdown("gpu_check", md)
    else:
        (results / "gpu_check.md").write_text(md + "\n")
    print()
    print(md)
    print(f"\nwritten {results / 'gpu_check.json'} and {results / 'gpu_check.md'}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
