"""Batched Sinkhorn and exact OT, checked against POT on random problems."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scd_core.ot.transport import SinkhornResult, entropic_plan, exact_cost, exact_plan, sinkhorn


def _problem(seed: int, batch: int = 4, k_t: int = 20, k_s: int = 7, alpha: float = 1.0):
    rng = np.random.default_rng(seed)
    C = rng.random((k_t, k_s))
    a = rng.dirichlet(np.full(k_t, alpha), size=batch)
    b = rng.dirichlet(np.full(k_s, alpha), size=batch)
    return a, b, C


_POT_CACHE: dict[tuple, np.ndarray] = {}


def _pot_costs(a, b, C, eps, method="sinkhorn"):
    """POT's costs, one problem at a time (cached: the log-domain reference is slow at small eps)."""
    key = (a.tobytes(), b.tobytes(), C.tobytes(), eps, method)
    if key not in _POT_CACHE:
        _POT_CACHE[key] = np.array(
            [ot.sinkhorn2(a[i], b[i], C, eps, method=method, numItermax=100_000, stopThr=1e-12) for i in range(len(a))]
        )
    return _POT_CACHE[key]


def _entropic_objective(plan: np.ndarray, C: np.ndarray, eps: float) -> float:
    """<P, C> + eps * sum P log P: the objective whose gradient in b is the potential g."""
    from scipy.special import xlogy

    return float((plan * C).sum() + eps * xlogy(plan, plan).sum())


@pytest.mark.parametrize(
    ("eps", "log_domain", "method"),
    [
        (0.2, None, "sinkhorn"),
        (0.05, False, "sinkhorn"),
        (0.05, True, "sinkhorn"),
        (0.01, None, "sinkhorn_log"),
        (0.01, True, "sinkhorn_log"),
    ],
)
def test_cost_matches_pot_sinkhorn2(eps, log_domain, method):
    a, b, C = _problem(0)
    res = sinkhorn(a, b, C, eps, max_iter=100_000, tol=1e-12, log_domain=log_domain)
    assert isinstance(res, SinkhornResult)
    assert res.cost.shape == (4,) and res.cost.dtype == torch.float64
    assert res.log_domain == bool(log_domain)
    assert res.marginal_error < 1e-12
    np.testing.assert_allclose(res.cost.numpy(), _pot_costs(a, b, C, eps, method), atol=1e-9)


@pytest.mark.parametrize("log_domain", [False, True])
def test_plan_marginals_potentials_and_cost_agree(log_domain):
    a, b, C = _problem(1, batch=3, k_t=15, k_s=6)
    eps = 0.05
    res = sinkhorn(torch.from_numpy(a), torch.from_numpy(b), C, eps, tol=1e-12, log_domain=log_domain, return_plan=True)
    P = res.plan.numpy()
    assert P.shape == (3, 15, 6)
    np.testing.assert_allclose(P.sum(axis=2), a, atol=1e-12)
    np.testing.assert_allclose(P.sum(axis=1), b, atol=1e-11)
    np.testing.assert_allclose((P * C).sum(axis=(1, 2)), res.cost.numpy(), atol=1e-12)
    # The plan is the Gibbs kernel of the returned (centred) potentials.
    f, g = res.f.numpy(), res.g.numpy()
    np.testing.assert_allclose(np.exp((f[:, :, None] + g[:, None, :] - C) / eps), P, rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(g.mean(axis=1), 0.0, atol=1e-12)
    ref = np.stack([ot.sinkhorn(a[i], b[i], C, eps, stopThr=1e-13, numItermax=100_000) for i in range(3)])
    np.testing.assert_allclose(P, ref, atol=1e-10)


def test_exact_path_matches_emd2():
    a, b, C = _problem(2, batch=3, k_t=40, k_s=9)
    for i in range(3):
        assert abs(exact_cost(a[i], b[i], C) - ot.emd2(a[i], b[i], C)) < 1e-8
        G = exact_plan(a[i], b[i], C)
        np.testing.assert_allclose(G.sum(axis=1), a[i], atol=1e-12)
        np.testing.assert_allclose(G.sum(axis=0), b[i], atol=1e-12)
        assert abs((G * C).sum() - exact_cost(a[i], b[i], C)) < 1e-12
    # Unnormalised and float32 inputs are renormalised to equal mass in float64.
    a32 = (3 * a[0]).astype(np.float32)
    assert abs(exact_cost(a32, b[0], C) - ot.emd2(a32 / a32.sum(dtype=np.float64), b[0], C)) < 1e-8


def test_dual_potential_is_the_gradient_in_b_and_a():
    a, b, C = _problem(3, batch=1, k_t=10, k_s=5)
    a, b = a[0], b[0]
    eps = 0.1
    res = sinkhorn(a, b, C, eps, tol=1e-14, max_iter=100_000)
    g, f = res.g[0].numpy(), res.f[0].numpy()
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(3):
        # Directions on the tangent space of the simplex (sum zero), where the constant drops out.
        d = rng.normal(size=5)
        d -= d.mean()
        w_plus = _entropic_objective(entropic_plan(a, b + h * d, C, eps, tol=1e-14), C, eps)
        w_minus = _entropic_objective(entropic_plan(a, b - h * d, C, eps, tol=1e-14), C, eps)
        assert abs((w_plus - w_minus) / (2 * h) - g @ d) < 1e-6
        d = rng.normal(size=10)
        d -= d.mean()
        w_plus = _entropic_objective(entropic_plan(a + h * d, b, C, eps, tol=1e-14), C, eps)
        w_minus = _entropic_objective(entropic_plan(a - h * d, b, C, eps, tol=1e-14), C, eps)
        assert abs((w_plus - w_minus) / (2 * h) - f @ d) < 1e-6


@pytest.mark.parametrize("log_domain", [False, True])
def test_zero_mass_entries_are_finite(log_domain):
    a, b, C = _problem(4, batch=2, k_t=12, k_s=6)
    a[:, [0, 5]] = 0.0
    b[:, 2] = 0.0
    a /= a.sum(axis=1, keepdims=True)
    b /= b.sum(axis=1, keepdims=True)
    res = sinkhorn(a, b, C, 0.05, tol=1e-12, log_domain=log_domain, return_plan=True)
    for t in (res.cost, res.f, res.g, res.plan):
        assert torch.isfinite(t).all()
    assert (res.plan[:, [0, 5], :] == 0).all() and (res.plan[:, :, 2] == 0).all()
    # Same cost as POT on the problem restricted to the support.
    keep_t, keep_s = np.flatnonzero(a[0] > 0), np.flatnonzero(b[0] > 0)
    for i in range(2):
        ref = ot.sinkhorn2(a[i, keep_t], b[i, keep_s], C[np.ix_(keep_t, keep_s)], 0.05, stopThr=1e-13)
        assert abs(float(res.cost[i]) - ref) < 1e-9


def test_small_eps_uses_the_log_domain_and_stays_correct():
    a, b, C = _problem(5, batch=2, k_t=8, k_s=4)
    eps = 1e-3  # exp(-1/eps) underflows float64: plain scaling would return 0 or NaN
    res = sinkhorn(a, b, C, eps, max_iter=20_000, tol=1e-10)
    assert res.log_domain
    assert torch.isfinite(res.cost).all() and torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    np.testing.assert_allclose(res.cost.numpy(), _pot_costs(a, b, C, eps, "sinkhorn_log"), atol=1e-6)
    exact = np.array([exact_cost(a[i], b[i], C) for i in range(2)])
    assert np.all(np.abs(res.cost.numpy() - exact) < 0.01)
    # Forcing the scaling iterations falls back to the log domain instead of returning NaN.
    forced = sinkhorn(a, b, C, eps, max_iter=20_000, tol=1e-10, log_domain=False)
    assert forced.log_domain and torch.allclose(forced.cost, res.cost)
    # float32 inputs: past the float32 limit (eps < 0.0153 here) the scaling iterations run in float64,
    # and only past the float64 limit in the log domain; results stay float32.
    a32, b32 = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    mid = sinkhorn(a32, b32, C, 0.01, tol=1e-6)
    assert not mid.log_domain and mid.cost.dtype == torch.float32
    np.testing.assert_allclose(mid.cost.numpy(), sinkhorn(a, b, C, 0.01).cost.numpy(), atol=1e-5)
    small = sinkhorn(a32, b32, C, eps, max_iter=20_000, tol=1e-6)
    assert small.log_domain and small.cost.dtype == torch.float32
    np.testing.assert_allclose(small.cost.numpy(), res.cost.numpy(), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    a, b, C = _problem(6, batch=3, k_t=16, k_s=5)
    ref = sinkhorn(a, b, C, 0.05)
    at, bt = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    res = sinkhorn(at, bt, torch.tensor(C, dtype=dtype), 0.05, tol=1e-6)
    assert res.cost.dtype == torch.float32 and res.f.dtype == torch.float32
    assert torch.isfinite(res.cost).all() and torch.isfinite(res.g).all()
    # Rounding the inputs to 8 (bf16) or 11 (fp16) bits moves the cost by about that much.
    atol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}[dtype]
    np.testing.assert_allclose(res.cost.double().numpy(), ref.cost.numpy(), atol=atol)
    # The cost matrix in float64 numpy follows the torch inputs' dtype.
    assert sinkhorn(at, bt, C, 0.05).cost.dtype == torch.float32


def test_tiny_float32_masses_give_finite_potentials():
    # Confident float32 softmax outputs hold masses of 1e-40 (subnormal) or exactly 0.
    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(8, 30, generator=gen) * 40, dim=1)
    b = torch.softmax(torch.randn(8, 6, generator=gen) * 40, dim=1)
    C = torch.rand(30, 6, generator=gen)
    assert (a < 1e-30).any() and (b < 1e-30).any()
    res = sinkhorn(a, b, C, 0.05, tol=1e-5)
    assert not res.log_domain
    for t in (res.cost, res.f, res.g):
        assert torch.isfinite(t).all()
    ref = sinkhorn(a.double(), b.double(), C.double(), 0.05)
    torch.testing.assert_close(res.cost.double(), ref.cost, atol=1e-5, rtol=0)


def test_shapes_broadcasting_and_numpy_inputs():
    a, b, C = _problem(7, batch=3, k_t=9, k_s=4)
    single = sinkhorn(a[0], b[0], C, 0.1)
    assert single.cost.shape == (1,) and single.f.shape == (1, 9) and single.g.shape == (1, 4)
    assert isinstance(single.cost, torch.Tensor) and single.cost.dtype == torch.float64
    assert single.plan is None
    batched = sinkhorn(a[0], b, C, 0.1)  # one source against three targets
    assert batched.cost.shape == (3,)
    assert abs(float(batched.cost[0]) - float(single.cost[0])) < 1e-9
    # b with a different mass is rescaled to the mass of a.
    scaled = sinkhorn(a[:1], 2 * b[:1], C, 0.1)
    assert abs(float(scaled.cost[0]) - float(single.cost[0])) < 1e-9


def test_invalid_inputs_raise():
    a, b, C = _problem(8, batch=2, k_t=6, k_s=3)
    with pytest.raises(ValueError):
        sinkhorn(a, b, C, 0.0)
    with pytest.raises(ValueError):
        sinkhorn(a, b, C.T, 0.1)
    with pytest.raises(ValueError):
        sinkhorn(-a, b, C, 0.1)
    with pytest.raises(ValueError):
        sinkhorn(a, np.zeros_like(b), C, 0.1)
    with pytest.raises(ValueError):
        sinkhorn(a, b[:1].repeat(3, axis=0), C, 0.1)


def test_max_iter_and_tolerance_are_honoured():
    a, b, C = _problem(9, batch=5, k_t=50, k_s=10)
    capped = sinkhorn(a, b, C, 0.01, max_iter=7)
    assert capped.n_iter == 7 and capped.marginal_error > 1e-9
    for tol in (1e-4, 1e-8, 1e-11):
        res = sinkhorn(a, b, C, 0.02, tol=tol, max_iter=10_000)
        assert res.marginal_error < tol and res.n_iter < 10_000


def test_entropic_plan_matches_pot():
    a, b, C = _problem(10, batch=1, k_t=8, k_s=4)
    G = entropic_plan(a[0], b[0], C, 0.05)
    np.testing.assert_allclose(G, ot.sinkhorn(a[0], b[0], C, 0.05, stopThr=1e-13), atol=1e-10)


@settings(max_examples=15, deadline=None, database=None)
@given(
    k_t=st.integers(2, 12),
    k_s=st.integers(2, 6),
    batch=st.integers(1, 4),
    eps=st.floats(0.03, 0.5),
    seed=st.integers(0, 2**16),
)
def test_property_marginals_and_pot_agreement(k_t, k_s, batch, eps, seed):
    a, b, C = _problem(seed, batch=batch, k_t=k_t, k_s=k_s, alpha=0.5)
    res = sinkhorn(a, b, C, eps, tol=1e-11, max_iter=100_000, return_plan=True)
    P = res.plan.numpy()
    np.testing.assert_allclose(P.sum(axis=2), a, atol=1e-10)
    np.testing.assert_allclose(P.sum(axis=1), b, atol=1e-10)
    np.testing.assert_allclose(res.cost.numpy(), _pot_costs(a, b, C, eps), atol=1e-8)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    a, b, C = _problem(11, batch=64, k_t=100, k_s=10)
    cpu = sinkhorn(a, b, C, 0.05)
    for dtype, tol, atol in ((torch.float64, 1e-9, 1e-9), (torch.float32, 1e-5, 1e-5)):
        at = torch.tensor(a, dtype=dtype, device="cuda")
        res = sinkhorn(at, torch.tensor(b, dtype=dtype, device="cuda"), C, 0.05, tol=tol)
        assert res.cost.device.type == "cuda" and res.g.device.type == "cuda"
        np.testing.assert_allclose(res.cost.double().cpu().numpy(), cpu.cost.numpy(), atol=atol)
    small = sinkhorn(torch.tensor(a, device="cuda"), torch.tensor(b, device="cuda"), C, 1e-3, max_iter=3000)
    assert small.log_domain and torch.isfinite(small.cost).all()
