"""Benchmark: batched torch Sinkhorn (scd_core.transport.sinkhorn) against POT on the same problems.

Main figure: a batch of 256 problems of 1000 x 100 (K_t x K_s) sharing one random cost scaled to
[0, 1], eps = 0.05, the same tolerance for every solver. Timed in the same run:

* ours, float64 (the accuracy-matched comparison) and float32;
* a Python loop of ``ot.sinkhorn2`` (numpy, float64), one problem at a time;
* POT's batched solver ``ot.batch.solve_batch(M[B, n, m], reg, a, b, method="sinkhorn")``
  (numpy on the CPU, torch on CUDA), which does not share the cost across the batch.

Also several (B, K_t, K_s, eps) sizes (a smaller eps needs more iterations, where over-relaxation
helps), and the achieved FLOP rate of our iterations (2 matrix products of 2 B K_t K_s flops each per
iteration) against a plain torch matmul of the same shapes.

Usage::

    python benchmarks/bench_sinkhorn.py [--quick] [--device auto|cpu|cuda] [--out PATH] [--threads N]

Times are the best of several repeats (5 for ours, 3 for the POT loop unless it takes over 3 s), the
usual choice on a shared machine; medians are in the JSON too. Writes
``benchmarks/results/sinkhorn_<device>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scd_core.device import describe_device, resolve_device  # noqa: E402
from scd_core.transport import sinkhorn  # noqa: E402

TOL = 1e-9
MAX_ITER = 10_000


def make_problem(batch: int, k_t: int, k_s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random cost scaled to [0, 1] and Dirichlet(1) histograms, float64."""
    rng = np.random.default_rng(seed)
    C = rng.random((k_t, k_s))
    C = (C - C.min()) / (C.max() - C.min())
    a = rng.dirichlet(np.ones(k_t), size=batch)
    b = rng.dirichlet(np.ones(k_s), size=batch)
    return a, b, C


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(a, b, C, eps, dtype, device, repeats) -> dict:
    at = torch.tensor(a, dtype=dtype, device=device)
    bt = torch.tensor(b, dtype=dtype, device=device)
    Ct = torch.tensor(C, dtype=dtype, device=device)
    res = sinkhorn(at, bt, Ct, eps, max_iter=MAX_ITER, tol=TOL)  # warm-up (BLAS threads, CUDA kernels)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        res = sinkhorn(at, bt, Ct, eps, max_iter=MAX_ITER, tol=TOL)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "time_s": min(times),
        "time_median_s": statistics.median(times),
        "n_iter": res.n_iter,
        "marginal_error": res.marginal_error,
        "log_domain": res.log_domain,
        "cost": res.cost.double().cpu().numpy(),
    }


def time_pot_loop(a, b, C, eps, repeats) -> dict:
    ot.sinkhorn2(a[0], b[0], C, eps, numItermax=MAX_ITER, stopThr=TOL)  # warm-up
    times, costs, iters = [], None, None
    for _ in range(repeats):
        if times and times[0] > 3.0:  # a long loop: one timing is enough
            break
        t0 = time.perf_counter()
        out = [ot.sinkhorn2(a[i], b[i], C, eps, numItermax=MAX_ITER, stopThr=TOL, log=True) for i in range(len(a))]
        times.append(time.perf_counter() - t0)
        costs = np.array([float(c) for c, _ in out])
        iters = [int(log["niter"]) for _, log in out]
    return {
        "time_s": min(times),
        "time_median_s": statistics.median(times),
        "n_iter_max": max(iters),
        "n_iter_mean": float(np.mean(iters)),
        "cost": costs,
    }


def time_pot_batch(a, b, C, eps, device) -> dict | None:
    try:
        from ot.batch import solve_batch
    except ImportError:
        return None
    if device.type == "cuda":
        M = torch.tensor(C, device=device).expand(len(a), *C.shape)
        args = (torch.tensor(a, device=device), torch.tensor(b, device=device))
    else:
        M, args = np.broadcast_to(C, (len(a), *C.shape)), (a, b)
    _sync(device)
    t0 = time.perf_counter()
    # POT's batched Sinkhorn allocates its initial scalings with the default device: set it.
    with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
        res = solve_batch(M, eps, *args, max_iter=MAX_ITER, tol=TOL, method="sinkhorn")
    _sync(device)
    elapsed = time.perf_counter() - t0
    value = res.value_linear
    value = value.double().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64)
    return {"time_s": elapsed, "n_iter": int(res.log["n_iter"]), "cost": value}


def matmul_rate(batch, k_t, k_s, dtype, device, repeats=30) -> float:
    """GFLOP/s of the two plain matrix products of one Sinkhorn iteration, same shapes and dtype
    (median over ``repeats`` timed iterations after a warm-up)."""
    K = torch.rand(k_t, k_s, dtype=dtype, device=device)
    u = torch.rand(batch, k_t, dtype=dtype, device=device)
    v = torch.rand(batch, k_s, dtype=dtype, device=device)
    row, col = torch.empty_like(u), torch.empty_like(v)
    times = []
    for i in range(repeats + 10):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(v, K.T, out=row)
        torch.matmul(u, K, out=col)
        _sync(device)
        if i >= 10:
            times.append(time.perf_counter() - t0)
    return 4 * batch * k_t * k_s / statistics.median(times) / 1e9


def run_size(batch, k_t, k_s, eps, device, repeats, pot_repeats, with_pot_batch) -> dict:
    a, b, C = make_problem(batch, k_t, k_s)
    ours64 = time_ours(a, b, C, eps, torch.float64, device, repeats)
    ours32 = time_ours(a, b, C, eps, torch.float32, device, repeats)
    loop = time_pot_loop(a, b, C, eps, pot_repeats)
    flops_per_iter = 4 * batch * k_t * k_s
    row = {
        "B": batch,
        "K_t": k_t,
        "K_s": k_s,
        "eps": eps,
        "tol": TOL,
        "ours_f64_s": ours64["time_s"],
        "ours_f64_median_s": ours64["time_median_s"],
        "ours_f64_iter": ours64["n_iter"],
        "ours_f64_marginal_error": ours64["marginal_error"],
        "ours_f64_log_domain": ours64["log_domain"],
        "ours_f32_s": ours32["time_s"],
        "ours_f32_iter": ours32["n_iter"],
        "pot_loop_s": loop["time_s"],
        "pot_loop_median_s": loop["time_median_s"],
        "pot_loop_iter_max": loop["n_iter_max"],
        "pot_loop_iter_mean": loop["n_iter_mean"],
        "speedup_f64": loop["time_s"] / ours64["time_s"],
        "speedup_f32": loop["time_s"] / ours32["time_s"],
        "max_abs_diff_f64_vs_pot": float(np.abs(ours64["cost"] - loop["cost"]).max()),
        "max_abs_diff_f32_vs_pot": float(np.abs(ours32["cost"] - loop["cost"]).max()),
        # Iteration FLOP rate (2 products of 2 B K_t K_s flops each); the float64 run includes its
        # float32 warm-up iterations, so its rate is an average over both precisions.
        "ours_f64_gflops": flops_per_iter * ours64["n_iter"] / ours64["time_s"] / 1e9,
        "ours_f32_gflops": flops_per_iter * ours32["n_iter"] / ours32["time_s"] / 1e9,
        "matmul_f64_gflops": matmul_rate(batch, k_t, k_s, torch.float64, device),
        "matmul_f32_gflops": matmul_rate(batch, k_t, k_s, torch.float32, device),
    }
    if with_pot_batch:
        pb = time_pot_batch(a, b, C, eps, device)
        if pb is not None:
            row["pot_batch_s"] = pb["time_s"]
            row["pot_batch_iter"] = pb["n_iter"]
            row["speedup_vs_pot_batch"] = pb["time_s"] / ours64["time_s"]
            row["max_abs_diff_f64_vs_pot_batch"] = float(np.abs(ours64["cost"] - pb["cost"]).max())
    return row


def markdown(rows: list[dict]) -> str:
    head = (
        "| B | K_t | K_s | eps | ours f64 (s) | it | ours f32 (s) | POT loop (s) | it max | speedup f64 | speedup f32 "
        "| max diff f64 | POT batch (s) | GFLOP/s f64 (matmul) | GFLOP/s f32 (matmul) |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        pb = f"{r['pot_batch_s']:.3f}" if "pot_batch_s" in r else "-"
        lines.append(
            f"| {r['B']} | {r['K_t']} | {r['K_s']} | {r['eps']} | {r['ours_f64_s']:.4f} | {r['ours_f64_iter']} "
            f"| {r['ours_f32_s']:.4f} | {r['pot_loop_s']:.3f} | {r['pot_loop_iter_max']} | {r['speedup_f64']:.1f}x "
            f"| {r['speedup_f32']:.1f}x | {r['max_abs_diff_f64_vs_pot']:.1e} | {pb} "
            f"| {r['ours_f64_gflops']:.0f} ({r['matmul_f64_gflops']:.0f}) "
            f"| {r['ours_f32_gflops']:.0f} ({r['matmul_f32_gflops']:.0f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke test)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); 1 on a busy machine"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    if args.quick:
        main_size = (32, 200, 20, 0.05)
        sizes = [(16, 100, 10, 0.05)]
        repeats, pot_repeats = 2, 1
    else:
        main_size = (256, 1000, 100, 0.05)
        sizes = [
            (64, 1000, 100, 0.05),
            (1024, 1000, 100, 0.05),
            (256, 1000, 100, 0.02),
            (256, 1000, 100, 0.01),
            (256, 1000, 10, 0.05),
            (256, 100, 100, 0.05),
            (64, 10000, 100, 0.05),
        ]
        repeats, pot_repeats = 5, 3

    rows = [run_size(*main_size, device, repeats, pot_repeats, with_pot_batch=True)]
    for size in sizes:
        rows.append(run_size(*size, device, repeats, pot_repeats, with_pot_batch=False))

    report = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "pot": ot.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        # Other processes on the machine distort CPU timings (BLAS threads wait for each other).
        "load_average_1min": os.getloadavg()[0],
        "quick": args.quick,
        "tol": TOL,
        "main": rows[0],
        "sizes": rows,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"sinkhorn_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    m = rows[0]
    print(f"# Sinkhorn benchmark on {report['device']} (torch {torch.__version__}, POT {ot.__version__})\n")
    print(
        f"Main: B={m['B']} problems of {m['K_t']} x {m['K_s']}, eps={m['eps']}, tol={TOL}: ours float64 "
        f"{m['ours_f64_s'] * 1e3:.1f} ms ({m['ours_f64_iter']} it), float32 {m['ours_f32_s'] * 1e3:.1f} ms; "
        f"loop of ot.sinkhorn2 {m['pot_loop_s'] * 1e3:.0f} ms -> speedup {m['speedup_f64']:.1f}x (float64), "
        f"{m['speedup_f32']:.1f}x (float32); max |cost diff| float64 {m['max_abs_diff_f64_vs_pot']:.1e}, "
        f"float32 {m['max_abs_diff_f32_vs_pot']:.1e}"
    )
    if "pot_batch_s" in m:
        print(
            f"ot.batch.solve_batch (method='sinkhorn'): {m['pot_batch_s'] * 1e3:.0f} ms ({m['pot_batch_iter']} it) "
            f"-> ours float64 is {m['speedup_vs_pot_batch']:.0f}x faster; max |cost diff| "
            f"{m['max_abs_diff_f64_vs_pot_batch']:.1e}"
        )
    print()
    print(markdown(rows))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
