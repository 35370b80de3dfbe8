"""Benchmark: batched torch Sinkhorn (scd_core.ot.transport.sinkhorn) against POT on the same problems.

Headline: a batch of 256 problems of 1000 x 100 (K_t x K_s) sharing one random cost scaled
to [0, 1], eps = 0.05, target "at least 20x faster than a loop of ot.sinkhorn2 at the same accuracy".
Every row is timed in one run, on the same problems, with the same tolerance ``tol = 1e-9`` and
iteration cap for every solver:

* ours, float64 (the accuracy-matched comparison) and float32 (reported with its own accuracy);
* a Python loop of ``ot.sinkhorn2`` (numpy, float64), one problem at a time;
* POT's batched solver ``ot.batch.solve_batch(M[B, K_t, K_s], reg, a, b, method="sinkhorn")`` (POT
  0.9.7; numpy on the CPU, torch on CUDA). It takes one cost per problem (the shared cost is passed
  as a broadcast view) and iterates on B x K_t x K_s elementwise products instead of matrix products,
  so it is skipped where its estimated time is over ``--pot-batch-budget`` seconds.

The stopping rules differ in the norm, not in the threshold: ours stops when max_b ||P_b^T 1 - b_b||_1
< tol (L1, worst problem; checked at predicted iterations), ``ot.sinkhorn2`` when the L2 norm of the
same column-marginal error of its own problem is < tol (checked every 10 iterations), ``solve_batch``
when max_b of the L2 norm of the row-marginal error is < tol (every 10 iterations). L1 >= L2, so ours
is the strictest. Accuracy is measured, not assumed: each solver's costs are compared with a
reference solve (ours, float64, tol 1e-12) and with each other (max absolute cost difference).

FLOP rate: an iteration is two matrix products of 2 B K_t K_s flops each ((B x K_s) @ (K_s x K_t) and
(B x K_t) @ (K_t x K_s)); the achieved rate is 4 B K_t K_s x iterations / time. The ceiling is the rate
of those two plain torch products alone, same shapes, device and dtype (best of 30). The float64
solve runs its first iterations in float32 (precision ladder), so its ceiling is the time the two
phases' products alone would take at their own rates; the phase split is recorded by wrapping the
solver's inner loop in an extra, untimed call.

Usage::

    python benchmarks/bench_sinkhorn.py [--quick] [--device auto|cpu|cuda] [--threads N] [--out PATH]

Times are the best of several repeats (5 for ours, 3 for the POT loop unless one takes over 3 s, 1
for solve_batch), the usual choice on a shared machine; medians are in the JSON too. Writes
``benchmarks/results/sinkhorn_<device>[_quick].json`` and ``.md``. On a shared CPU use
``--threads 1``: with 2 threads on 2 busy cores every BLAS barrier waits for a preempted thread.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, LoadMonitor, machine, machine_line, save_markdown

import scd_core.ot.transport as transport
from scd_core.device import describe_device, resolve_device
from scd_core.ot.transport import sinkhorn

TOL = 1e-9
REF_TOL = 1e-12
MAX_ITER = 10_000

HEADLINE = (256, 1000, 100, 0.05)
# One factor at a time around the headline: batch size, teacher classes (up to an ImageNet-21k head
# with a small batch), target classes, eps.
FULL_SIZES = [
    HEADLINE,
    (16, 1000, 100, 0.05),
    (64, 1000, 100, 0.05),
    (256, 100, 100, 0.05),
    (256, 100, 10, 0.05),
    (256, 1000, 10, 0.05),
    (256, 1000, 100, 0.1),
    (256, 1000, 100, 0.01),
    (64, 1000, 10, 0.01),
    (16, 21843, 100, 0.05),
    (16, 21843, 10, 0.05),
]
QUICK_SIZES = [(32, 200, 20, 0.05), (16, 100, 10, 0.1), (8, 2000, 10, 0.01)]


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


def phase_iterations(at: torch.Tensor, bt: torch.Tensor, Ct: torch.Tensor, eps: float) -> dict[str, int]:
    """Iterations done per working dtype in one solve (float32 warm-up vs float64), by wrapping the
    solver's scaling loop; ``log`` counts log-domain iterations."""
    counts: dict[str, int] = {}
    inner = transport._scaling_loop

    def counting(a, b, K, u, v, progress, max_iter, tol, stop_on_stall=False):
        n0 = progress.n
        try:
            return inner(a, b, K, u, v, progress, max_iter, tol, stop_on_stall)
        finally:
            key = str(K.dtype).replace("torch.", "")
            counts[key] = counts.get(key, 0) + progress.n - n0

    transport._scaling_loop = counting
    try:
        res = sinkhorn(at, bt, Ct, eps, max_iter=MAX_ITER, tol=TOL)
    finally:
        transport._scaling_loop = inner
    if res.log_domain:
        counts = {"log": res.n_iter}
    return counts


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
        "phases": phase_iterations(at, bt, Ct, eps),
        "marginal_error": res.marginal_error,
        "log_domain": res.log_domain,
        "cost": res.cost.double().cpu().numpy(),
    }


def reference_costs(a, b, C, eps, device) -> np.ndarray:
    """Costs of a tighter float64 solve (tol 1e-12), the yardstick of every solver's accuracy."""
    args = (torch.tensor(x, dtype=torch.float64, device=device) for x in (a, b, C))
    return sinkhorn(*args, eps, max_iter=20 * MAX_ITER, tol=REF_TOL).cost.cpu().numpy()


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


def pot_batch_estimate_s(batch, k_t, k_s, n_iter, device) -> float:
    """Rough solve_batch time: ~16 ns per element of B x K_t x K_s per iteration with numpy on one
    CPU thread (measured on the headline size: 12 s for 30 iterations), far less on a GPU."""
    per_element = 1.6e-8 if device.type == "cpu" else 3e-10
    return per_element * batch * k_t * k_s * max(n_iter, 10)


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


def matmul_rates(batch, k_t, k_s, dtype, device, repeats=30) -> dict[str, float]:
    """GFLOP/s of plain torch matrix products of one iteration's shapes and dtype (best of ``repeats``
    after a warm-up, like the solver times): both products of an iteration together (the ceiling),
    and (B x K_t) @ (K_t x K_s) alone."""
    K = torch.rand(k_t, k_s, dtype=dtype, device=device)
    u = torch.rand(batch, k_t, dtype=dtype, device=device)
    v = torch.rand(batch, k_s, dtype=dtype, device=device)
    row, col = torch.empty_like(u), torch.empty_like(v)
    pair, single = [], []
    for i in range(repeats + 5):
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(v, K.T, out=row)
        _sync(device)
        t1 = time.perf_counter()
        torch.matmul(u, K, out=col)
        _sync(device)
        t2 = time.perf_counter()
        if i >= 5:
            pair.append(t2 - t0)
            single.append(t2 - t1)
    flops = 2 * batch * k_t * k_s
    return {"pair": 2 * flops / min(pair) / 1e9, "uK": flops / min(single) / 1e9}


def run_size(batch, k_t, k_s, eps, device, repeats, pot_repeats, pot_batch_budget_s) -> dict:
    a, b, C = make_problem(batch, k_t, k_s)
    ref = reference_costs(a, b, C, eps, device)
    ours64 = time_ours(a, b, C, eps, torch.float64, device, repeats)
    ours32 = time_ours(a, b, C, eps, torch.float32, device, repeats)
    loop = time_pot_loop(a, b, C, eps, pot_repeats)
    flops_per_iter = 4 * batch * k_t * k_s
    rate64 = matmul_rates(batch, k_t, k_s, torch.float64, device)
    rate32 = matmul_rates(batch, k_t, k_s, torch.float32, device)

    def ceiling_s(phases: dict[str, int]) -> float | None:
        """Time the iterations' matrix products alone would take at the plain-matmul rates."""
        if "log" in phases:
            return None  # logsumexp iterations: no matrix products to count
        rates = {"float64": rate64["pair"], "float32": rate32["pair"]}
        return sum(n * flops_per_iter / (rates[k] * 1e9) for k, n in phases.items())

    row = {
        "B": batch, "K_t": k_t, "K_s": k_s, "eps": eps, "tol": TOL,
        "ours_f64_s": ours64["time_s"], "ours_f64_median_s": ours64["time_median_s"],
        "ours_f64_iter": ours64["n_iter"], "ours_f64_phases": ours64["phases"],
        "ours_f64_marginal_error": ours64["marginal_error"], "ours_f64_log_domain": ours64["log_domain"],
        "ours_f32_s": ours32["time_s"], "ours_f32_median_s": ours32["time_median_s"],
        "ours_f32_iter": ours32["n_iter"], "ours_f32_phases": ours32["phases"],
        "ours_f32_marginal_error": ours32["marginal_error"],
        "pot_loop_s": loop["time_s"], "pot_loop_median_s": loop["time_median_s"],
        "pot_loop_iter_max": loop["n_iter_max"], "pot_loop_iter_mean": loop["n_iter_mean"],
        "speedup_f64": loop["time_s"] / ours64["time_s"],
        "speedup_f32": loop["time_s"] / ours32["time_s"],
        "max_abs_diff_f64_vs_pot": float(np.abs(ours64["cost"] - loop["cost"]).max()),
        "max_abs_diff_f32_vs_pot": float(np.abs(ours32["cost"] - loop["cost"]).max()),
        "err_vs_ref_f64": float(np.abs(ours64["cost"] - ref).max()),
        "err_vs_ref_f32": float(np.abs(ours32["cost"] - ref).max()),
        "err_vs_ref_pot_loop": float(np.abs(loop["cost"] - ref).max()),
        # Iteration FLOP rate: 2 products of 2 B K_t K_s flops each per iteration.
        "ours_f64_gflops": flops_per_iter * ours64["n_iter"] / ours64["time_s"] / 1e9,
        "ours_f32_gflops": flops_per_iter * ours32["n_iter"] / ours32["time_s"] / 1e9,
        "matmul_f64_gflops": rate64["pair"], "matmul_f32_gflops": rate32["pair"],
        "matmul_uK_f64_gflops": rate64["uK"], "matmul_uK_f32_gflops": rate32["uK"],
    }
    for tag, res in (("f64", ours64), ("f32", ours32)):
        ceil = ceiling_s(res["phases"])
        row[f"ours_{tag}_ceiling_fraction"] = None if ceil is None else ceil / res["time_s"]
    estimate = pot_batch_estimate_s(batch, k_t, k_s, loop["n_iter_max"], device)
    row["pot_batch_estimate_s"] = estimate
    pb = time_pot_batch(a, b, C, eps, device) if estimate <= pot_batch_budget_s else None
    if pb is not None:
        row["pot_batch_s"] = pb["time_s"]
        row["pot_batch_iter"] = pb["n_iter"]
        row["speedup_vs_pot_batch"] = pb["time_s"] / ours64["time_s"]
        row["max_abs_diff_f64_vs_pot_batch"] = float(np.abs(ours64["cost"] - pb["cost"]).max())
        row["err_vs_ref_pot_batch"] = float(np.abs(pb["cost"] - ref).max())
    else:
        row["pot_batch_skipped"] = f"estimated {estimate:.0f} s > budget {pot_batch_budget_s:.0f} s"
    return row


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def markdown(report: dict) -> str:
    rows, m = report["sizes"], report["main"]
    dev = report["device"]
    lines = [
        f"# Batched Sinkhorn vs POT ({dev})",
        "",
        machine_line(report["machine"]),
        report["load"]["note"] + (" Timings are best-of-N; medians are in the JSON." if report["load"]["shared"]
                                  else ""),
        f"torch {report['machine']['torch']}, POT {report['pot']}, numpy {report['numpy']}; "
        f"generated by `python benchmarks/bench_sinkhorn.py{' --quick' if report['quick'] else ''}"
        f" --device {report['device_type']} --threads {report['machine']['torch_threads']}`.",
        "",
        f"Same problems, same tolerance for every solver: tol = {TOL:g} on the marginal error (ours: L1, worst "
        "problem of the batch; `ot.sinkhorn2`: L2 per problem; `ot.batch.solve_batch`: L2, worst problem), "
        f"max {MAX_ITER} iterations. Random cost in [0, 1] shared by the batch, Dirichlet histograms. "
        f"Accuracy: max |cost - reference| over the batch, reference = ours float64 at tol {REF_TOL:g}.",
        "",
        "## Headline" + (" (quick mode: a small stand-in size, not the issue's)" if report["quick"] else ""),
        "",
        f"B = {m['B']} problems of {m['K_t']} x {m['K_s']}, eps = {m['eps']} (target: >= 20x a loop of "
        "`ot.sinkhorn2` at the same accuracy):",
        "",
        "| solver | time (ms) | iterations | speedup vs POT loop | max abs error vs reference |",
        "|---|---|---|---|---|",
        f"| ours, float64 | {m['ours_f64_s'] * 1e3:.1f} | {m['ours_f64_iter']} | **{m['speedup_f64']:.1f}x** "
        f"| {m['err_vs_ref_f64']:.1e} |",
        f"| ours, float32 | {m['ours_f32_s'] * 1e3:.1f} | {m['ours_f32_iter']} | **{m['speedup_f32']:.1f}x** "
        f"| {m['err_vs_ref_f32']:.1e} |",
        f"| loop of `ot.sinkhorn2` (float64) | {m['pot_loop_s'] * 1e3:.0f} | {m['pot_loop_iter_max']} (max), "
        f"{m['pot_loop_iter_mean']:.1f} (mean) | 1x | {m['err_vs_ref_pot_loop']:.1e} |",
    ]
    if "pot_batch_s" in m:
        lines.append(
            f"| `ot.batch.solve_batch` (float64) | {m['pot_batch_s'] * 1e3:.0f} | {m['pot_batch_iter']} "
            f"| {m['pot_loop_s'] / m['pot_batch_s']:.2f}x | {m['err_vs_ref_pot_batch']:.1e} |")
    f64_ok = m["speedup_f64"] >= 20
    lines += [
        "",
        f"Float64 is {'above' if f64_ok else 'below'} the 20x target on this machine ({m['speedup_f64']:.1f}x); "
        f"float32 is {m['speedup_f32']:.1f}x, with errors of float32 size "
        f"({m['err_vs_ref_f32']:.0e} vs {m['err_vs_ref_pot_loop']:.0e} for POT), so it is not the same accuracy. "
        f"Max |ours float64 - POT loop| = {m['max_abs_diff_f64_vs_pot']:.1e}.",
        "",
        "## All sizes",
        "",
        "Times in ms (best of N). Speedups are POT time / ours float64 time (float32 in brackets). "
        "FLOP rate: GFLOP/s of our iterations (4 B K_t K_s per iteration), and the fraction of the ceiling "
        "(the same iterations' two matrix products alone, as plain torch matmuls of those shapes; the float64 "
        "solve counts its float32 warm-up iterations at the float32 rate). `f64*`: float32 inputs iterated in "
        "float64 because eps is below the float32 kernel's range.",
        "",
        "| B | K_t | K_s | eps | ours f64 | it | ours f32 | it | POT loop | it max | x loop | POT batch | x batch "
        "| diff f64 vs POT | err f64 / f32 / POT | GFLOP/s f64 (ceiling) | GFLOP/s f32 (ceiling) |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        pb = f"{r['pot_batch_s'] * 1e3:.0f}" if "pot_batch_s" in r else "skipped"
        xb = f"{r['speedup_vs_pot_batch']:.0f}x" if "pot_batch_s" in r else "-"
        f32_work = "f64*" if "float64" in r["ours_f32_phases"] else ""
        lines.append(
            f"| {r['B']} | {r['K_t']} | {r['K_s']} | {r['eps']} | {r['ours_f64_s'] * 1e3:.1f} | {r['ours_f64_iter']} "
            f"| {r['ours_f32_s'] * 1e3:.1f}{' ' + f32_work if f32_work else ''} | {r['ours_f32_iter']} "
            f"| {r['pot_loop_s'] * 1e3:.0f} | {r['pot_loop_iter_max']} "
            f"| {r['speedup_f64']:.1f}x ({r['speedup_f32']:.1f}x) | {pb} | {xb} "
            f"| {r['max_abs_diff_f64_vs_pot']:.0e} "
            f"| {r['err_vs_ref_f64']:.0e} / {r['err_vs_ref_f32']:.0e} / {r['err_vs_ref_pot_loop']:.0e} "
            f"| {r['ours_f64_gflops']:.1f} ({_pct(r['ours_f64_ceiling_fraction'])}) "
            f"| {r['ours_f32_gflops']:.1f} ({_pct(r['ours_f32_ceiling_fraction'])}) |"
        )
    skipped = [r for r in rows if "pot_batch_skipped" in r]
    if skipped:
        lines += ["", "POT batch skipped where its estimated time exceeded the budget: "
                  + "; ".join(f"{r['B']}x{r['K_t']}x{r['K_s']} eps {r['eps']} ({r['pot_batch_skipped']})"
                              for r in skipped) + "."]
    lines += ["", "Matmul ceilings (GFLOP/s, both products of an iteration / (B x K_t) @ (K_t x K_s) alone): "
              + "; ".join(f"{r['B']}x{r['K_t']}x{r['K_s']}: f64 {r['matmul_f64_gflops']:.0f}/"
                          f"{r['matmul_uK_f64_gflops']:.0f}, f32 {r['matmul_f32_gflops']:.0f}/"
                          f"{r['matmul_uK_f32_gflops']:.0f}"
                          for r in rows if r["eps"] == rows[0]["eps"]) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and numpy-BLAS CPU threads (default: the libraries' choice); 1 on a busy machine")
    parser.add_argument("--pot-batch-budget", type=float, default=15.0,
                        help="skip ot.batch.solve_batch where its estimated time is above this (seconds)")
    parser.add_argument("--headline-only", action="store_true", help="only the 256 x (1000 x 100) row")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        with contextlib.suppress(ImportError):  # numpy's BLAS (the POT loop) gets the same thread count
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=args.threads, user_api="blas")
    device = resolve_device(args.device)
    load = LoadMonitor()

    if args.quick:
        sizes, repeats, pot_repeats = QUICK_SIZES, 2, 1
    else:
        sizes, repeats, pot_repeats = FULL_SIZES, 5, 3
    if args.headline_only:
        sizes = sizes[:1]
    rows = []
    for size in sizes:
        t = time.perf_counter()
        rows.append(run_size(*size, device, repeats, pot_repeats, args.pot_batch_budget))
        r = rows[-1]
        print(f"B={r['B']} {r['K_t']}x{r['K_s']} eps={r['eps']}: ours f64 {r['ours_f64_s'] * 1e3:.1f} ms, "
              f"f32 {r['ours_f32_s'] * 1e3:.1f} ms, POT loop {r['pot_loop_s'] * 1e3:.0f} ms -> "
              f"{r['speedup_f64']:.1f}x / {r['speedup_f32']:.1f}x ({time.perf_counter() - t:.0f} s)", flush=True)

    report = {
        "machine": machine(),
        "load": load.stop(),
        "device": describe_device(device),
        "device_type": device.type,
        "pot": ot.__version__,
        "numpy": np.__version__,
        "quick": args.quick,
        "tol": TOL,
        "reference_tol": REF_TOL,
        "main": rows[0],
        "sizes": rows,
    }
    name = f"sinkhorn_{device.type}" + ("_quick" if args.quick else "")
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dumps(report))
    md = markdown(report)
    md_path = save_markdown(name, md) if args.out is None else out.with_suffix(".md")
    if args.out is not None:
        md_path.write_text(md + "\n")
    print()
    print(md)
    print(f"\nwritten {out} and {md_path}")
    return 0


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
