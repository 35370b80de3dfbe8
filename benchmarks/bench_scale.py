"""Scale benchmark: time and peak memory of the assessment's streaming pass as N and K_t grow.

Each configuration (N images, K_t teacher classes) runs in a fresh subprocess, for a clean peak
(Linux VmHWM, reset after the set-up), and drives the product code end to end: ``scd_core.assess.ranking.rank``
-> ``scd_core.outputs.forward.teacher_outputs`` (the streaming pass: StatsAccumulator on every batch, logits
appended to the on-disk cache entry, cache publication with checksums) -> every default metric
(scd, leep, nce, logme, hscore; LEEP re-reads the logits from disk by chunks).

Only the two things that need real images and weights are replaced, in the subprocess:
``scd_core.outputs.forward.make_loader`` yields batches of synthetic pre-logit features (d dimensions, a
Gaussian cluster per target class, generated per batch from a seed so that nothing of size N x d
exists before the pass), and ``scd_core.outputs.forward.load_teacher`` returns a module whose "backbone" is
the identity and whose classifier is a random ``nn.Linear(d, K_t)``, found by the product's
``linear_head``. So the figures are those of the pass and the metrics with a free backbone: the
part of the cost that grows with K_t.

Memory: the pass keeps per image only the features (d float32), the top-5 classes and probabilities,
and the label; everything else is O(batch x K_t + K_t x K_s), and the N x K_t logits live on disk.
The peak beyond the baseline is fitted as c0 + c1 N per K_t: c1 should be about 4 d + 60 bytes per
image, whatever K_t, where holding the predictions in memory would cost 4 K_t bytes per image.

    python benchmarks/bench_scale.py [--quick] [--threads 1] [--n 1000,5000,...] [--kt 100,1000,21843]

Writes ``benchmarks/results/scale[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS,
    LoadMonitor,
    machine,
    machine_line,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    save,
    save_markdown,
)

FEATURE_DIM = 256
TARGET_CLASSES = 100
BATCH_SIZE = 128
FULL_N = [1000, 5000, 20000, 50000]
FULL_KT = [100, 1000, 21843]
QUICK_N = [500, 2000]
QUICK_KT = [100, 2000]


# ----------------------------------------------------------------------------------------------
# Worker: one configuration in its own process
# ----------------------------------------------------------------------------------------------


class _SyntheticLoader:
    """Batches ``(features as 'images', labels, indices)`` in the order of ``items``, like the
    product's DataLoader over TargetImageDataset; features are drawn per batch from a seed."""

    def __init__(self, items, batch_size: int, means, noise: float = 1.0, seed: int = 0) -> None:
        import torch

        self.labels = torch.tensor([it.label for it in items], dtype=torch.long)
        self.batch_size, self.means, self.noise, self.seed = batch_size, means, noise, seed

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        import torch

        for i, start in enumerate(range(0, len(self.labels), self.batch_size)):
            labels = self.labels[start:start + self.batch_size]
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            x = self.means[labels] + self.noise * torch.randn(len(labels), self.means.shape[1], generator=gen)
            yield x, labels, torch.arange(start, start + len(labels))


def _synthetic_model(k_t: int, d: int, seed: int):
    import torch
    from torch import nn

    class LinearTeacher(nn.Module):
        """Identity backbone and a linear classifier, with timm's three entry points."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(d, k_t)

        def forward_features(self, x):
            return x

        def forward_head(self, x, pre_logits: bool = False):
            return x if pre_logits else self.fc(x)

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    torch.manual_seed(seed)
    model = LinearTeacher().eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 1 / d ** 0.5)
        model.fc.bias.zero_()
    return model


def _target(n: int, k_s: int, tag: str):
    """A TargetSet of n labeled train items (no files: the loader is synthetic), classes round-robin."""
    from scd_core.data.targets import TargetItem, TargetSet

    items = [TargetItem(path=Path(f"/synthetic/{tag}/{i}"), rel=f"{i % k_s}/{i}.png", label=i % k_s, split="train",
                        sha256=f"{tag}-{i}") for i in range(n)]
    return TargetSet(name=f"synthetic-{tag}", root=Path("/synthetic"), class_names=[f"c{j}" for j in range(k_s)],
                     items=items, source="synthetic", split_given=True)


def worker(n: int, k_t: int, d: int, k_s: int, batch_size: int, threads: int, out: Path,
           leep_chunk: str = "default") -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="scd-scale-"))
    os.environ["SCD_CACHE_DIR"] = str(work / "cache")
    import shutil

    import scd_core.outputs.forward as forward
    from scd_core.assess.metrics import METRICS
    from scd_core.assess.ranking import rank
    from scd_core.teachers.repository import TeacherRepository, TeacherSpec

    if leep_chunk != "default":  # what-if: LEEP's read-back chunk (the product passes 4096 rows)
        METRICS["leep"].chunk_size = None if leep_chunk == "auto" else int(leep_chunk)

    try:
        model = _synthetic_model(k_t, d, seed=1)
        gen = torch.Generator().manual_seed(2)
        means = 3.0 * torch.randn(k_s, d, generator=gen) / d ** 0.5  # class centres, |mu| ~ 3
        spec = TeacherSpec(
            name=f"linear{k_t}", source="folder", location=str(work), architecture="synthetic_linear",
            num_classes=k_t, label_names=tuple(f"t{i}" for i in range(k_t)),
            pretrained_cfg={"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
                            "interpolation": "bilinear"},
            fingerprint=f"synthetic-linear-{k_t}-{d}",
        )
        repo = TeacherRepository([spec])
        forward.load_teacher = lambda spec, device="cpu": model
        forward.make_loader = lambda items, transform, device, bs, num_workers=None: _SyntheticLoader(
            items, bs, means)

        # Warm-up on a small target (other items: no cache hit): imports, BLAS buffers, allocator pools.
        rank(_target(min(n, 2 * batch_size), k_s, "warmup"), repo, device="cpu", batch_size=batch_size)
        target = _target(n, k_s, "main")
        baseline = rss_bytes()
        reset_peak_rss()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        pass_peak = [0]
        import scd_core.assess.ranking as assess

        def teacher_outputs_peak(*a, **k):  # the pass, with the cache entry published; then the metrics
            try:
                return forward.teacher_outputs(*a, **k)
            finally:
                pass_peak[0] = peak_rss_bytes()

        assess.teacher_outputs = teacher_outputs_peak
        ranking = rank(target, repo, device="cpu", batch_size=batch_size)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        peak = peak_rss_bytes()
        timing = ranking.timing
        result = {
            "N": n, "K_t": k_t, "d": d, "K_s": k_s, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "rank_s": wall, "cpu_s": cpu, "forward_s": timing["forward_s"], "metrics_s": timing["metrics_s"],
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "peak_beyond_baseline_bytes": peak - baseline,
            "pass_peak_beyond_baseline_bytes": pass_peak[0] - baseline, "leep_chunk": leep_chunk,
            "features_bytes": n * d * 4, "n_x_kt_float32_bytes": n * k_t * 4,
            "logits_file_bytes": n * k_t * 2,
            "scores": dict(ranking.teachers[0].scores),
        }
        out.write_text(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _run_once(n: int, k_t: int, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--worker", str(n), str(k_t), "--d", str(args.d), "--ks", str(args.ks),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads or 0), "--worker-out", str(out),
           "--leep-chunk", args.leep_chunk]
    env = dict(os.environ)
    if args.threads:  # numpy's BLAS too (the metrics), not only torch: idle BLAS threads spin on a busy machine
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    try:
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def run_config(n: int, k_t: int, args) -> dict:
    """``args.repeats`` fresh subprocesses: times are the best run's (like the other benchmarks on a
    shared machine); peaks are given as the lowest and the highest of the runs, because a single
    run's VmHWM occasionally includes a transient allocation spike."""
    runs = [_run_once(n, k_t, args) for _ in range(max(1, args.repeats))]
    best = dict(min(runs, key=lambda r: r["cpu_s"]))
    for key in ("peak_beyond_baseline_bytes", "pass_peak_beyond_baseline_bytes"):
        best[key] = min(r[key] for r in runs)
        best[key.replace("_bytes", "_max_bytes")] = max(r[key] for r in runs)
    best["runs"] = [{k: r[k] for k in ("rank_s", "cpu_s", "peak_beyond_baseline_bytes",
                                       "pass_peak_beyond_baseline_bytes")} for r in runs]
    return best


def fit(rows: list[dict]) -> dict:
    """Per K_t: least squares time = a + b N on the worker's CPU seconds (one thread, so CPU time is
    the wall time of an idle machine; wall time on a shared machine mostly measures the other jobs)
    and on wall seconds; the linearity ratio; and the memory growth per image between the two
    largest N (below a few thousand images the metrics' read-back chunk, up to 4096 rows x K_t, is
    not full yet, so the small-N slope includes it)."""
    out = {}
    for k_t in sorted({r["K_t"] for r in rows}):
        rs = sorted((r for r in rows if r["K_t"] == k_t), key=lambda r: r["N"])
        n = np.array([r["N"] for r in rs], dtype=float)
        cpu = np.array([r["cpu_s"] for r in rs])
        wall = np.array([r["rank_s"] for r in rs])
        peak = np.array([r["peak_beyond_baseline_bytes"] for r in rs], dtype=float)
        entry: dict = {"N": n.astype(int).tolist()}
        if len(rs) >= 2:
            b, a = np.polyfit(n, cpu, 1)
            resid = cpu - (a + b * n)
            c1 = (peak[-1] - peak[-2]) / (n[-1] - n[-2])
            entry.update({
                "cpu_per_1k_s": 1000 * b, "cpu_intercept_s": a,
                "cpu_r2": float(1 - np.sum(resid ** 2) / max(np.sum((cpu - cpu.mean()) ** 2), 1e-30)),
                "wall_per_1k_s": 1000 * np.polyfit(n, wall, 1)[0],
                # CPU time per image at the largest N over that at the smallest: 1 = exactly linear
                "per_image_ratio_largest_vs_smallest": (cpu[-1] / n[-1]) / (cpu[0] / n[0]),
                "peak_bytes_per_image": c1, "peak_intercept_bytes": peak[-1] - c1 * n[-1],
                "peak_growth_largest_vs_smallest": peak[-1] / max(peak[0], 1.0),
                "n_growth_largest_vs_smallest": n[-1] / n[0],
                "n_x_kt_bytes_per_image": 4 * k_t,
            })
        out[str(k_t)] = entry
    return out


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def _range(r: dict, key: str) -> str:
    """'low' or 'low - high' MiB over the repeats of a configuration."""
    lo, hi = r.get(f"{key}_bytes", float("nan")), r.get(f"{key}_max_bytes")
    return _mib(lo) if hi is None or _mib(hi) == _mib(lo) else f"{_mib(lo)} - {_mib(hi)}"


def markdown(report: dict, what_if: dict | None = None) -> str:
    rows, fits = report["rows"], report["fits"]
    cfg = report["config"]
    m = report["machine"]
    lines = [
        "# Assessment streaming pass: time and peak memory vs N and K_t",
        "",
        machine_line(m),
        report["load"]["note"] + (" Wall times are pessimistic; CPU times are the robust figure."
                                  if report["load"]["shared"] else ""),
        f"Generated by `python benchmarks/bench_scale.py{' --quick' if report['quick'] else ''} --threads "
        f"{cfg['threads']}`: `rank` with every default metric, synthetic features (d = {cfg['d']}) "
        f"through a linear {cfg['d']} -> K_t head, K_s = {cfg['K_s']}, batch {cfg['batch_size']}, one subprocess "
        f"per run, {cfg.get('repeats', 1)} run(s) per row (times: the best; peaks: lowest - highest), torch and "
        "BLAS on one thread. Peaks are VmHWM beyond the RSS after set-up and a warm-up rank: during the streaming "
        "pass (forward, accumulators, logits to disk, cache entry published), and over the whole assessment "
        "(pass + metrics).",
        "",
        "| K_t | N | wall (s) | CPU (s) | pass (s) | metrics (s) | CPU ms / image | peak in pass (MiB) "
        "| peak overall (MiB) | features N x d (MiB) | N x K_t float32 would be (MiB) | logits on disk (MiB) |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            f"| {r['K_t']:,} | {r['N']:,} | {r['rank_s']:.2f} | {r['cpu_s']:.2f} | {r['forward_s']:.2f} "
            f"| {r['metrics_s']:.2f} | {1e3 * r['cpu_s'] / r['N']:.3f} "
            f"| {_range(r, 'pass_peak_beyond_baseline')} | {_range(r, 'peak_beyond_baseline')} "
            f"| {_mib(r['features_bytes'])} | {_mib(r['n_x_kt_float32_bytes'])} | {_mib(r['logits_file_bytes'])} |")
    lines += ["", "Per K_t: CPU time fitted as a + b N (least squares); memory growth per image is the difference "
              "of the (lowest) overall peaks at the two largest N, divided by their difference.", "",
              "| K_t | CPU s per 1k images | a (s) | R^2 | CPU/image at largest N / at smallest N "
              "| wall s per 1k images | peak growth (bytes/image) | N x K_t float32 (bytes/image) "
              "| peak at largest N / at smallest N (N ratio) |",
              "|" + "---|" * 9]
    for k_t, f in fits.items():
        if "cpu_per_1k_s" not in f:
            continue
        lines.append(
            f"| {int(k_t):,} | {f['cpu_per_1k_s']:.3f} | {f['cpu_intercept_s']:.2f} | {f['cpu_r2']:.4f} "
            f"| {f['per_image_ratio_largest_vs_smallest']:.2f} | {f['wall_per_1k_s']:.3f} "
            f"| {f['peak_bytes_per_image']:,.0f} | {f['n_x_kt_bytes_per_image']:,} "
            f"| {f['peak_growth_largest_vs_smallest']:.2f}x ({f['n_growth_largest_vs_smallest']:.0f}x) |")
    lines += ["", report["summary"]]
    if what_if and what_if.get("rows"):
        lines += ["", "## What if LEEP read its logits back in smaller chunks", "",
                  "The largest term of the overall peak at 21,843 classes is LEEP's read-back: `LeepMetric` asks "
                  "`TeacherOutputs.iter_probabilities` for chunks of 4096 rows, which overrides that method's own "
                  "default of about 16 M values (768 rows at 21,843 classes); a 4096-row chunk is 4096 x K_t float16 "
                  "read + float32 probabilities, and the previous chunk's probabilities are still referenced while "
                  "the next is built. Same benchmark with the chunk left to `iter_probabilities` "
                  f"(`--leep-chunk auto`, `{what_if.get('name', '')}.json`; the LEEP values are identical):", "",
                  "| K_t | N | peak overall, product setting (MiB) | peak overall, auto chunk (MiB, one run) "
                  "| metrics time, product / auto (wall s) |",
                  "|---|---|---|---|---|"]
        base = {(r["K_t"], r["N"]): r for r in rows}
        for r in what_if["rows"]:
            b = base.get((r["K_t"], r["N"]))
            if b is None:
                continue
            same = abs(b["scores"]["leep"] - r["scores"]["leep"]) <= 1e-6 * max(1.0, abs(b["scores"]["leep"]))
            lines.append(f"| {r['K_t']:,} | {r['N']:,} | {_range(b, 'peak_beyond_baseline')} "
                         f"| {_mib(r['peak_beyond_baseline_bytes'])} | {b['metrics_s']:.2f} / {r['metrics_s']:.2f}"
                         f"{'' if same else ' (LEEP differs!)'} |")
    return "\n".join(lines)


def summarise(rows: list[dict], fits: dict, d: int) -> str:
    parts = []
    big = max(rows, key=lambda r: r["N"] * r["K_t"])
    parts.append(
        f"Largest run: N = {big['N']:,}, K_t = {big['K_t']:,}: peak {_range(big, 'peak_beyond_baseline')} MiB "
        f"beyond baseline over the whole assessment ({_range(big, 'pass_peak_beyond_baseline')} MiB during the "
        "streaming pass)"
        + f", where the predictions as N x K_t float32 would take {_mib(big['n_x_kt_float32_bytes'])} MiB "
        f"({big['n_x_kt_float32_bytes'] / max(big['peak_beyond_baseline_bytes'], 1):.1f}x the overall peak).")
    per_image = [f["peak_bytes_per_image"] for f in fits.values() if "peak_bytes_per_image" in f]
    ratios = [f["per_image_ratio_largest_vs_smallest"] for f in fits.values() if "cpu_per_1k_s" in f]
    if per_image:
        parts.append(
            f"Between the two largest N the peak grows by {min(per_image):,.0f} to {max(per_image):,.0f} bytes per "
            f"image depending on K_t (the features kept for the feature metrics are {4 * d:,} bytes per image), "
            "not by 4 K_t: the rest is a constant that depends on K_t only (batch x K_t temporaries, K_t x K_s "
            "joints, the metrics' read-back chunks), reached once N exceeds a chunk.")
    if ratios:
        parts.append(
            f"CPU time per image at the largest N over that at the smallest: "
            f"{min(ratios):.2f}-{max(ratios):.2f} across K_t (1 = exactly linear; below 1, fixed costs amortised).")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small N and K_t (smoke test)")
    parser.add_argument("--n", default=None, help="comma-separated N values")
    parser.add_argument("--kt", default=None, help="comma-separated K_t values")
    parser.add_argument("--d", type=int, default=FEATURE_DIM)
    parser.add_argument("--ks", type=int, default=TARGET_CLASSES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads per worker (0: the libraries' choice)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="subprocesses per configuration (default 2, 1 with --quick)")
    parser.add_argument("--max-cells", type=float, default=1.2e9, help="skip configurations with N x K_t above this")
    parser.add_argument("--leep-chunk", default="default",
                        help="what-if: LEEP read-back chunk rows ('auto': TeacherOutputs' 16M-value chunk; "
                             "default: the product's setting)")
    parser.add_argument("--name", default=None, help="results name (default scale or scale_quick)")
    parser.add_argument("--render", action="store_true", help="only re-render the markdown from the saved JSON")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("N", "K_T"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.d, args.ks, args.batch_size, args.threads, args.worker_out,
               args.leep_chunk)
        return 0

    name = args.name or ("scale" + ("_quick" if args.quick else ""))
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.render:
        return render(name)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the workers' setting, recorded by machine()
    ns = [int(x) for x in args.n.split(",")] if args.n else (QUICK_N if args.quick else FULL_N)
    kts = [int(x) for x in args.kt.split(",")] if args.kt else (QUICK_KT if args.quick else FULL_KT)
    load = LoadMonitor()
    rows, skipped = [], []
    for k_t in kts:
        for n in ns:
            if n * k_t > args.max_cells:
                skipped.append({"N": n, "K_t": k_t})
                continue
            r = run_config(n, k_t, args)
            rows.append(r)
            print(f"K_t={k_t:>6} N={n:>6}: rank {r['rank_s']:7.2f} s (pass {r['forward_s']:.2f}, metrics "
                  f"{r['metrics_s']:.2f}), peak +{_mib(r['peak_beyond_baseline_bytes'])} MiB "
                  f"(N x K_t f32 {_mib(r['n_x_kt_float32_bytes'])} MiB)", flush=True)
    fits = fit(rows)
    report = {
        "machine": machine(),
        "load": load.stop(),
        "quick": args.quick,
        "config": {"d": args.d, "K_s": args.ks, "batch_size": args.batch_size, "threads": args.threads,
                   "leep_chunk": args.leep_chunk, "repeats": args.repeats},
        "rows": rows,
        "skipped": skipped,
        "fits": fits,
        "summary": summarise(rows, fits, args.d),
    }
    path = save(name, {k: v for k, v in report.items() if k != "machine"})
    print(f"written {path}")
    return render(name)


def render(name: str) -> int:
    """Write ``<name>.md`` from ``<name>.json`` (and the ``<name>_leep_auto.json`` what-if, if present)."""
    report = json.loads((RESULTS / f"{name}.json").read_text())
    what_if_path = RESULTS / f"{name}_leep_auto.json"
    what_if = None
    if what_if_path.exists() and what_if_path.name != f"{name}.json":
        what_if = {**json.loads(what_if_path.read_text()), "name": what_if_path.stem}
    md = markdown(report, what_if)
    md_path = save_markdown(name, md)
    print()
    print(md)
    print(f"\nwritten {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
