r"""Optimal transport between label spaces: batched entropic Sinkhorn (torch) and exact OT (POT).

All solvers work with a cost :math:`\mathbf{C} \in \mathbb{R}^{K_t \times K_s}` between a teacher label
space and a target label space, normally with values in :math:`[0, 1]` (:mod:`scd_core.ot.costs`), so that
the regularisation ``eps`` is relative to a known cost scale.

The entropic problem solved by :func:`sinkhorn` is the one of POT's ``ot.sinkhorn``:

.. math::
    \mathbf{P}^\star = \mathop{\arg\min}_{\mathbf{P} \in U(\mathbf{a}, \mathbf{b})}
        \langle \mathbf{P}, \mathbf{C} \rangle_F + \varepsilon \sum_{ij} \mathbf{P}_{ij} \log \mathbf{P}_{ij},
    \qquad U(\mathbf{a}, \mathbf{b}) = \{\mathbf{P} \ge 0 : \mathbf{P} \mathbf{1} = \mathbf{a},\
        \mathbf{P}^\top \mathbf{1} = \mathbf{b}\}

whose solution is :math:`\mathbf{P}^\star = \operatorname{diag}(\mathbf{u}) \mathbf{K}
\operatorname{diag}(\mathbf{v})` with :math:`\mathbf{K} = \exp(-\mathbf{C} / \varepsilon)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ot
import torch

from scd_core.utils import as_float64

__all__ = ["SinkhornResult", "entropic_plan", "exact_cost", "exact_plan", "sinkhorn"]

ArrayLike = torch.Tensor | np.ndarray


def _log_domain_chunk(C: torch.Tensor) -> int:
    """Batch items per (chunk, K_t, K_s) temporary of the log-domain solver: 2^18 elements on the CPU,
    where temporaries that stay in cache make the logsumexp several times faster, 2^26 on a GPU."""
    elements = 1 << 26 if C.device.type == "cuda" else 1 << 18
    return max(1, elements // max(1, C.numel()))


@dataclass
class SinkhornResult:
    """Result of a batch of entropic OT problems (see :func:`sinkhorn`).

    Attributes
    ----------
    cost : Tensor, shape (B,)
        Linear transport cost :math:`\\langle \\mathbf{P}_b, \\mathbf{C} \\rangle_F` of each plan, without
        the entropy term (what POT's ``ot.sinkhorn2`` returns).
    f : Tensor, shape (B, K_t)
        Dual potentials on the teacher side, :math:`\\varepsilon \\log \\mathbf{u}` (shifted, see ``g``).
    g : Tensor, shape (B, K_s)
        Dual potentials on the target side, :math:`\\varepsilon \\log \\mathbf{v}`, centred to zero mean
        over the support of ``b`` in each row; ``f`` carries the opposite shift, so that
        :math:`\\mathbf{P}_{ij} = \\exp((f_i + g_j - \\mathbf{C}_{ij}) / \\varepsilon)` still holds.
        Zero-mass entries (whose true potential is :math:`-\\infty`), and tiny masses whose scaling
        underflowed, hold the minimum of the row's other potentials, so that products with such a
        mass stay (almost) 0 instead of NaN.
    plan : Tensor, shape (B, K_t, K_s), or None
        The plans :math:`\\mathbf{P}_b`, only with ``return_plan=True``.
    n_iter : int
        Number of iterations done (``u`` updates).
    marginal_error : float
        :math:`\\max_b \\|\\mathbf{P}_b^\\top \\mathbf{1} - \\mathbf{b}_b\\|_1` at the returned iterate, where
        the row marginals are exact (the last update is a plain ``u`` update); when over-relaxation was
        active, the larger of the row and column errors (neither is exact then).
    log_domain : bool
        Whether the log-domain (logsumexp) iterations were used.
    """

    cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    plan: torch.Tensor | None
    n_iter: int
    marginal_error: float
    log_domain: bool


def _underflow_limit(dtype: torch.dtype) -> float:
    """Cost spread / eps beyond which the kernel exp(-(C - min C) / eps) underflows the dtype."""
    return -math.log(torch.finfo(dtype).tiny)


def _standard_limit(dtype: torch.dtype) -> float:
    """Largest cost spread / eps sent to the scaling iterations automatically: K >= tiny^(3/4), which
    leaves the scalings (up to about exp(spread / eps)) room before overflow."""
    return 0.75 * _underflow_limit(dtype)


def _pick_device_dtype(*xs: ArrayLike) -> tuple[torch.device, torch.dtype]:
    """The device of the first torch tensor and the promoted dtype of the torch tensors.

    Numpy inputs follow the torch inputs; with numpy inputs only, the computation is float64 on the
    CPU. Half precisions are upcast to float32 (Sinkhorn scalings overflow float16 immediately).
    """
    tensors = [x for x in xs if isinstance(x, torch.Tensor)]
    if not tensors:
        return torch.device("cpu"), torch.float64
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        dtype = torch.float32
    return tensors[0].device, dtype


def _to_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device).to(dtype)


def _lse_rows(beta: torch.Tensor, neg_ce: torch.Tensor, chunk: int) -> torch.Tensor:
    """:math:`r_{bi} = \\log \\sum_j \\exp(\\beta_{bj} - C_{ij} / \\varepsilon)`, in batch chunks."""
    out = torch.empty(beta.shape[0], neg_ce.shape[0], device=beta.device, dtype=beta.dtype)
    for s in range(0, beta.shape[0], chunk):
        out[s : s + chunk] = torch.logsumexp(beta[s : s + chunk, None, :] + neg_ce, dim=2)
    return out


def _lse_cols(alpha: torch.Tensor, neg_ce: torch.Tensor, chunk: int) -> torch.Tensor:
    """:math:`c_{bj} = \\log \\sum_i \\exp(\\alpha_{bi} - C_{ij} / \\varepsilon)`, in batch chunks."""
    out = torch.empty(alpha.shape[0], neg_ce.shape[1], device=alpha.device, dtype=alpha.dtype)
    for s in range(0, alpha.shape[0], chunk):
        out[s : s + chunk] = torch.logsumexp(alpha[s : s + chunk, :, None] + neg_ce, dim=1)
    return out


# Over-relaxation is switched on in the linear regime only: once the marginal error is below
# _OMEGA_MAX_ERR and two successive convergence rates agree (in the transient before that, over-relaxing
# can diverge), and only when the rate is slow enough for it to matter. omega stays below 2 (the limit
# of convergence); when the error rises anyway, the iterate restarts from v at the last check, omega
# returns to 1 and its cap halves towards 1 for a later attempt.
_OMEGA_MIN_RATE = 0.3
_OMEGA_MAX_ERR = 0.1
_OMEGA_MAX = 1.8


@dataclass
class _Progress:
    """Iteration count, convergence checks and over-relaxation, carried from one solver phase to the next.

    Sinkhorn converges linearly, so the errors measured at two checks give the rate :math:`\\lambda`
    per iteration. It is used twice: to place the next check where the error should cross ``tol``
    (instead of overshooting by up to ``check_every`` iterations), and to choose the over-relaxation
    :math:`\\omega = 2 / (1 + \\sqrt{1 - \\lambda})` (Thibault et al., 2021), whose asymptotic rate is
    about :math:`\\omega - 1` instead of :math:`\\lambda`.
    """

    check_every: int
    n: int = 0
    check_at: int = 0
    prev: tuple[int, float] | None = None
    plain_rate: float | None = None  # last rate measured without over-relaxation
    omega: float = 1.0
    omega_cap: float = _OMEGA_MAX

    def __post_init__(self) -> None:
        # An early first check, so that the rate (and omega) is known after a few iterations.
        self.check_at = max(1, self.check_every // 2)

    def due(self, max_iter: int) -> bool:
        return self.n >= self.check_at or self.n >= max_iter

    def diverging(self, err: float) -> bool:
        """Whether over-relaxed steps made the error non-finite or larger than at the last check."""
        return self.omega > 1.0 and (not math.isfinite(err) or (self.prev is not None and err >= self.prev[1]))

    def reject(self) -> None:
        """The over-relaxed steps since the last check were rolled back: continue plain."""
        self.omega, self.plain_rate = 1.0, None
        self.omega_cap = 1.0 + (self.omega_cap - 1.0) / 2
        self.check_at = self.n + self.check_every

    def after_check(self, err: float, tol: float) -> bool:
        """Record a check that did not stop the loop; False when the error did not decrease (a stall)."""
        prev = self.prev
        rate = None
        if prev is not None and 0 < err < prev[1] and self.n > prev[0]:
            rate = (err / prev[1]) ** (1.0 / (self.n - prev[0]))
            if self.omega == 1.0 and rate < 1.0:
                last, self.plain_rate = self.plain_rate, rate
                settled = last is not None and 2 / 3 < (1.0 - rate) / (1.0 - last) < 3 / 2
                if settled and err < _OMEGA_MAX_ERR and rate > _OMEGA_MIN_RATE and self.omega_cap > 1.01:
                    self.omega = min(2.0 / (1.0 + math.sqrt(1.0 - rate)), self.omega_cap)
                    rate = max(self.omega - 1.0, 1e-3)  # the rate expected from now on
        ahead = self.check_every
        if rate is not None and rate < 1.0:
            ahead = min(max(math.ceil(math.log(tol / err) / math.log(rate)), 1), self.check_every)
        self.check_at = self.n + ahead
        self.prev = (self.n, err)
        return prev is None or err < prev[1]


def _relax_(x: torch.Tensor, x_new: torch.Tensor, omega: float) -> torch.Tensor:
    """x <- (1 - omega) x + omega x_new, kept non-negative (a zero entry recovers at the next update)."""
    return x.lerp_(x_new, omega).clamp_min_(0.0)


def _relax_log(x: torch.Tensor, x_new: torch.Tensor, omega: float, pos: torch.Tensor) -> torch.Tensor:
    """Log-domain (geometric) over-relaxation; zero-mass entries stay at -inf (lerp would give NaN)."""
    if omega == 1.0:
        return x_new
    return torch.where(pos, torch.lerp(x, x_new, omega), -math.inf)


def _l1_max(x: torch.Tensor) -> float:
    """max over the batch of the L1 norm of each row (one device sync)."""
    return float(torch.linalg.vector_norm(x, ord=1, dim=1).max())


def _scaling_loop(
    a: torch.Tensor,
    b: torch.Tensor,
    K: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    progress: _Progress,
    max_iter: int,
    tol: float,
    stop_on_stall: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """Scaling iterations from (u, v); returns (u, v, err), or None when a scaling over/underflows.

    ``progress`` is updated in place. With ``stop_on_stall`` the loop also returns when the error
    stops decreasing (the rounding floor of a low-precision warm-up phase).
    """
    KT = K.T  # a view: BLAS reads it transposed, no copy
    row = torch.empty_like(a)  # (K v)_i
    col = torch.empty_like(b)  # (K^T u)_j: the next v-update's denominator, reused by the error check
    u_new, v_new = torch.empty_like(a), torch.empty_like(b)
    v_keep = v.clone()  # v at the last check: a rollback restarts from it with a plain u update
    while True:
        omega = progress.omega
        torch.matmul(v, KT, out=row)
        if omega == 1.0:
            torch.div(a, row, out=u)  # row marginals are now exact
        else:
            _relax_(u, torch.div(a, row, out=u_new), omega)
        torch.matmul(u, K, out=col)
        progress.n += 1
        if progress.due(max_iter):
            # Column-marginal error of (u, v): B x K_s entries. The row marginals are exact without
            # over-relaxation; with it, their error is measured too.
            err = _l1_max(v * col - b)
            if omega != 1.0:
                err = max(err, _l1_max(u * row - a))
            if progress.diverging(err):
                v.copy_(v_keep)
                torch.div(a, torch.matmul(v, KT, out=row), out=u)
                torch.matmul(u, K, out=col)
                progress.reject()
            elif not math.isfinite(err):
                return None
            elif err < tol or progress.n >= max_iter:
                return u, v, err
            else:
                decreasing = progress.after_check(err, tol)
                if stop_on_stall and not decreasing and omega == 1.0:
                    return u, v, err
            if progress.omega != 1.0:
                v_keep.copy_(v)
        if progress.omega == 1.0:
            torch.div(b, col, out=v)
        else:
            _relax_(v, torch.div(b, col, out=v_new), progress.omega)


def _sinkhorn_standard(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, max_iter: int, tol: float, check_every: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float] | None:
    """Scaling iterations; returns (u, v, K, n_iter, err) or None when the scalings over/underflow."""
    # Shifting C by its minimum leaves the plan unchanged (u absorbs the constant) and keeps K <= 1.
    spread = float(C.max() - C.min()) / eps
    if spread > _underflow_limit(C.dtype):
        # K would underflow to zero or subnormals: the scalings would then converge to the solution of
        # another problem (the support of K changed), silently. Only the log domain is correct here.
        return None
    K = torch.exp(-(C - C.min()) / eps)
    u, v = torch.ones_like(a), torch.ones_like(b)
    progress = _Progress(check_every)
    # float64 precision ladder: the early iterations only need to get close, so run them with
    # float32 matrix products (twice the BLAS throughput) down to the float32 rounding floor, then
    # finish in float64 from there. The fixed point and the final tolerance are those of float64.
    warm_tol = 1e-6
    if a.dtype == torch.float64 and tol < warm_tol and max_iter > 1 and spread < _standard_limit(torch.float32):
        # max_iter - 1: the float64 phase always does at least one iteration.
        warm = _scaling_loop(
            a.float(), b.float(), K.float(), u.float(), v.float(), progress, max_iter - 1, warm_tol, True
        )
        if warm is None:  # the float32 scalings overflowed: start again in float64
            progress = _Progress(check_every)
        else:
            u, v = warm[0].double(), warm[1].double()
    res = _scaling_loop(a, b, K, u, v, progress, max_iter, tol)
    if res is None:
        return None
    u, v, err = res
    return u, v, K, progress.n, err


def _sinkhorn_log(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, max_iter: int, tol: float, check_every: int
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Log-domain iterations on alpha = f / eps, beta = g / eps; returns (alpha, beta, n_iter, err)."""
    neg_ce = -C / eps
    chunk = _log_domain_chunk(C)
    log_a = torch.log(a)  # -inf on zero mass: exp(-inf) = 0 keeps those entries out of every sum
    log_b = torch.log(b)
    a_pos, b_pos = a > 0, b > 0
    alpha = torch.zeros_like(a)
    beta = torch.zeros_like(b)
    beta_keep = beta  # beta at the last check (not updated in place): a rollback restarts from it
    progress = _Progress(check_every)
    while True:
        omega = progress.omega
        r = _lse_rows(beta, neg_ce, chunk)
        alpha = _relax_log(alpha, log_a - r, omega, a_pos)  # without relaxation, rows are now exact
        c = _lse_cols(alpha, neg_ce, chunk)
        progress.n += 1
        if progress.due(max_iter):
            err = _l1_max(torch.exp(beta + c) - b)
            if omega != 1.0:
                err = max(err, _l1_max(torch.exp(alpha + r) - a))
            if progress.diverging(err):
                beta = beta_keep
                alpha = log_a - _lse_rows(beta, neg_ce, chunk)
                c = _lse_cols(alpha, neg_ce, chunk)
                progress.reject()
            elif err < tol or progress.n >= max_iter or not math.isfinite(err):
                return alpha, beta, progress.n, err
            else:
                progress.after_check(err, tol)
            beta_keep = beta
        beta = _relax_log(beta, log_b - c, progress.omega, b_pos)


def _centre(f: torch.Tensor, g: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean g over the support of b (f takes the opposite shift); finite values on zero mass."""
    # A potential is -inf where the mass is 0, or where a positive but tiny mass underflowed its scaling
    # (float32 softmax outputs): both are masked, so that mass * potential products stay finite.
    a_pos, b_pos = (a > 0) & (f > -math.inf), (b > 0) & (g > -math.inf)
    if bool(b_pos.all()):
        shift = g.mean(dim=1, keepdim=True)
    else:
        shift = torch.where(b_pos, g, 0.0).sum(dim=1, keepdim=True) / b_pos.sum(dim=1, keepdim=True)
    f, g = f + shift, g - shift
    out = []
    for pot, pos in ((f, a_pos), (g, b_pos)):
        if not bool(pos.all()):
            row_min = torch.where(pos, pot, math.inf).amin(dim=1, keepdim=True)
            pot = torch.where(pos, pot, row_min)
        out.append(pot)
    return out[0], out[1]


@torch.no_grad()
def sinkhorn(
    a: ArrayLike,
    b: ArrayLike,
    cost: ArrayLike,
    eps: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    log_domain: bool | None = None,
    return_plan: bool = False,
    check_every: int = 10,
) -> SinkhornResult:
    r"""Batched entropic OT with one cost matrix shared by the whole batch.

    For each problem :math:`b` of the batch, solves

    .. math::
        \min_{\mathbf{P} \in U(\mathbf{a}_b, \mathbf{b}_b)} \langle \mathbf{P}, \mathbf{C} \rangle_F
            + \varepsilon \sum_{ij} \mathbf{P}_{ij} \log \mathbf{P}_{ij}

    with the Sinkhorn iterations written as two matrix products for the whole batch (rows of
    :math:`\mathbf{U}, \mathbf{V}` are the scalings of each problem):

    .. math::
        \mathbf{U} \leftarrow \mathbf{A} \oslash (\mathbf{V} \mathbf{K}^\top), \qquad
        \mathbf{V} \leftarrow \mathbf{B} \oslash (\mathbf{U} \mathbf{K}), \qquad
        \mathbf{K} = \exp(-(\mathbf{C} - \min \mathbf{C}) / \varepsilon)

    or, in the log domain, :math:`f_i = \varepsilon \log a_i - \varepsilon \log \sum_j
    \exp((g_j - \mathbf{C}_{ij}) / \varepsilon)` and symmetrically for :math:`g`.

    **Domain choice.** The scaling iterations need the smallest kernel entry
    :math:`\exp(-\text{spread} / \varepsilon)` to stay above :math:`\text{tiny}^{3/4}` of the dtype,
    which leaves headroom for the scalings (they grow up to about :math:`\exp(\text{spread} /
    \varepsilon)`): spread / eps up to 531 in float64 and 65 in float32, i.e. :math:`\varepsilon \ge
    0.0019` (float64) and :math:`\varepsilon \ge 0.0153` (float32) for a :math:`[0, 1]` cost. With
    ``log_domain=None``, the solver uses the log domain only beyond the float64 limit: its
    :math:`B \times K_t \times K_s` logsumexp is far slower than matrix products. Inputs in a
    narrower dtype beyond their own limit are iterated in float64 (scaling or log domain), and the
    results cast back: float64 scalings are still much faster than a log domain, and a float32 log
    domain at such eps loses the low bits of potentials of size spread / eps. If the scaling
    iterations still produce a non-finite value, the solve restarts in the log domain.

    **Stopping.** The loop stops when the column-marginal error
    :math:`\max_b \|\mathbf{P}_b^\top \mathbf{1} - \mathbf{b}_b\|_1` is below ``tol`` (the row marginals
    are exact after each ``u`` update; the column side is checked because it reuses the next update's
    matrix product and has the :math:`K_s \le K_t` entries of the target space), or after ``max_iter``
    iterations. The check synchronises with the device, so it does not run every iteration: it runs
    every ``check_every`` iterations at first, then at the iteration where the linear convergence
    rate measured between the last two checks predicts the error to cross ``tol`` (at most
    ``check_every`` later), so the loop rarely overshoots. ``tol`` is raised to
    100 ulps of the dtype (1.2e-5 in float32, 2.2e-14 in float64): below that the error measures
    rounding, and the loop would just run ``max_iter`` iterations.

    **Over-relaxation.** Once two successive measured rates :math:`\lambda` agree and the error is
    below 0.1 (the linear regime), the updates become :math:`\mathbf{u} \leftarrow (1 - \omega) \mathbf{u} + \omega\,
    \mathbf{a} \oslash (\mathbf{K} \mathbf{v})` (and likewise for :math:`\mathbf{v}`; geometric
    in the log domain) with :math:`\omega = 2 / (1 + \sqrt{1 - \lambda})` capped at 1.8, which has
    the same fixed point and converges at about :math:`\omega - 1` per iteration instead of
    :math:`\lambda` (Thibault et al., "Overrelaxed Sinkhorn-Knopp algorithm for regularized optimal
    transport", 2021): about 2x fewer iterations at eps = 0.02, 3x at eps = 0.01. Both marginals are
    then checked, and :math:`\omega` falls back to 1 (with a lower cap for a later attempt) if the
    error rises.

    **Precision ladder.** In float64 with ``tol < 1e-6`` (and a spread / eps below 65), the
    first iterations run with float32 matrix products until the error reaches 1e-6 or stops
    decreasing, then the solve continues in float64 from those scalings. The fixed point and the
    final tolerance are those of float64; only the warm start is cheaper (BLAS float32 runs at about
    twice the float64 rate).

    **Masses.** Each ``b`` row is rescaled to the mass of its ``a`` row (Sinkhorn has no fixed point
    otherwise, and rounded softmax outputs rarely sum to exactly the same value). Zero entries are
    allowed in both and produce zero rows/columns of the plan, never NaN; every row needs a positive
    total mass.

    **Gradient.** At a fixed point, the envelope theorem gives the gradient of the entropic objective
    :math:`\mathrm{OT}_\varepsilon(\mathbf{a}, \mathbf{b})` (linear cost plus entropy term) with respect
    to :math:`\mathbf{b}` as :math:`g` up to an additive constant, i.e. exactly on the tangent space of
    the simplex; likewise :math:`f` for :math:`\mathbf{a}`. The distillation loss uses ``g`` directly
    instead of backpropagating through the iterations, which is why this function runs under
    ``torch.no_grad()`` and returns detached tensors.

    Parameters
    ----------
    a : Tensor or ndarray, shape (B, K_t) or (K_t,)
        Source histograms (e.g. teacher predictions). Non-negative.
    b : Tensor or ndarray, shape (B, K_s) or (K_s,)
        Target histograms. A 1-D ``a`` or ``b`` is broadcast against the other; unbatched inputs
        give results with batch dimension 1.
    cost : Tensor or ndarray, shape (K_t, K_s)
        Cost matrix shared by the batch.
    eps : float
        Entropic regularisation :math:`\varepsilon > 0`, in the units of the cost.
    max_iter : int
        Maximum number of iterations.
    tol : float
        Tolerance on the L1 marginal error (see Stopping), maximum over the batch.
    log_domain : bool or None
        True forces the log-domain iterations; False uses the scaling iterations even beyond the
        automatic threshold, as long as the kernel does not underflow (falling back to the log domain
        otherwise, and on overflow); None chooses.
    return_plan : bool
        Also return the (B, K_t, K_s) plans. The cost itself never materialises them in the standard
        domain: :math:`\langle \mathbf{P}_b, \mathbf{C} \rangle = \mathbf{u}_b^\top
        (\mathbf{K} \odot \mathbf{C}) \mathbf{v}_b`.
    check_every : int
        Iterations between two convergence checks (each check synchronises with the device).

    Returns
    -------
    SinkhornResult
        On the device of the torch inputs (CPU for numpy inputs) and in their floating dtype
        (float64 for numpy inputs, float32 for float16/bfloat16 inputs).
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if max_iter < 1 or check_every < 1:
        raise ValueError("max_iter and check_every must be at least 1")
    device, dtype = _pick_device_dtype(a, b, cost)
    A = _to_tensor(a, device, dtype)
    Bm = _to_tensor(b, device, dtype)
    C = _to_tensor(cost, device, dtype)
    if C.ndim != 2 or A.ndim not in (1, 2) or Bm.ndim not in (1, 2):
        raise ValueError(f"expected a (B,K_t), b (B,K_s), cost (K_t,K_s); got {A.shape}, {Bm.shape}, {C.shape}")
    A = A.reshape(-1, A.shape[-1]) if A.ndim == 2 else A[None]
    Bm = Bm.reshape(-1, Bm.shape[-1]) if Bm.ndim == 2 else Bm[None]
    if (A.shape[1], Bm.shape[1]) != tuple(C.shape):
        raise ValueError(f"a has {A.shape[1]} and b {Bm.shape[1]} entries for a cost of shape {tuple(C.shape)}")
    batch = max(A.shape[0], Bm.shape[0])
    if A.shape[0] != Bm.shape[0] and 1 not in (A.shape[0], Bm.shape[0]):
        raise ValueError(f"batch sizes of a ({A.shape[0]}) and b ({Bm.shape[0]}) differ")
    A = A.expand(batch, -1).contiguous()
    Bm = Bm.expand(batch, -1)

    a_mass = A.sum(dim=1, keepdim=True)
    b_mass = Bm.sum(dim=1, keepdim=True)
    # One device sync for all input checks; a NaN fails every comparison.
    ok = (A.min() >= 0) & (Bm.min() >= 0) & (a_mass.min() > 0) & (b_mass.min() > 0)
    ok &= torch.isfinite(a_mass).all() & torch.isfinite(b_mass).all() & torch.isfinite(C).all()
    if not bool(ok):
        raise ValueError("a and b must be finite and non-negative with positive mass in every row; cost finite")
    Bm = Bm * (a_mass / b_mass)

    # Below ~100 ulps the error measures rounding, not convergence (float32: 1.2e-5).
    tol = max(tol, 100 * torch.finfo(dtype).eps)
    spread = float(C.max() - C.min()) / eps
    if log_domain is None:
        log_domain = spread > _standard_limit(torch.float64)
    # Past the dtype's own limit, iterate in float64: its scaling iterations are still far faster than
    # a B x K_t x K_s logsumexp, and a float32 log domain at such eps is inaccurate (potentials of
    # size spread / eps lose their low bits).
    work = torch.float64 if spread > _standard_limit(dtype) else dtype
    Aw, Bw, Cw = A.to(work), Bm.to(work), C.to(work)

    plan = None
    res = None if log_domain else _sinkhorn_standard(Aw, Bw, Cw, eps, max_iter, tol, check_every)
    if res is not None:
        u, v, K, n_iter, err = res
        cost_b = ((u @ (K * Cw)) * v).sum(dim=1)
        # f carries the shift of C by its minimum (K was built from C - min C).
        f = eps * torch.log(u) + Cw.min()
        g = eps * torch.log(v)
        if return_plan:
            plan = u[:, :, None] * K * v[:, None, :]
    else:
        log_domain = True
        alpha, beta, n_iter, err = _sinkhorn_log(Aw, Bw, Cw, eps, max_iter, tol, check_every)
        neg_ce = -Cw / eps
        chunk = _log_domain_chunk(Cw)
        cost_b = torch.empty(batch, device=device, dtype=work)
        if return_plan:
            plan = torch.empty(batch, *C.shape, device=device, dtype=work)
        for s in range(0, batch, chunk):
            p = torch.exp(alpha[s : s + chunk, :, None] + beta[s : s + chunk, None, :] + neg_ce)
            cost_b[s : s + chunk] = (p * Cw).sum(dim=(1, 2))
            if plan is not None:
                plan[s : s + chunk] = p
        f = eps * alpha
        g = eps * beta
    cost_b, f, g = cost_b.to(dtype), f.to(dtype), g.to(dtype)
    plan = plan.to(dtype) if plan is not None else None
    f, g = _centre(f, g, A, Bm)
    return SinkhornResult(
        cost=cost_b, f=f, g=g, plan=plan, n_iter=n_iter, marginal_error=err, log_domain=bool(log_domain)
    )


def _renormalised(a: ArrayLike, b: ArrayLike, cost: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = as_float64(a).ravel()
    b = as_float64(b).ravel()
    M = np.ascontiguousarray(as_float64(cost))
    if M.shape != (a.size, b.size):
        raise ValueError(f"cost of shape {M.shape} for a of {a.size} and b of {b.size} entries")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(M).all()):
        raise ValueError("a, b and the cost must be finite (no NaN or infinity)")
    if np.any(a < 0) or np.any(b < 0) or not a.sum() > 0 or not b.sum() > 0:
        raise ValueError("a and b must be non-negative with positive mass")
    # POT checks that the masses agree to ~1e-7: normalise both to 1 exactly in float64.
    return a / a.sum(), b / b.sum(), M


def exact_plan(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
    r"""Exact OT plan :math:`\mathop{\arg\min}_{\mathbf{P} \in U(\mathbf{a}, \mathbf{b})}
    \langle \mathbf{P}, \mathbf{C} \rangle_F` (network simplex, ``ot.emd``).

    ``a`` and ``b`` are normalised to total mass 1 in float64 first, so the plan sums to 1.
    Returns an ndarray of shape (K_t, K_s), float64.
    """
    a, b, M = _renormalised(a, b, cost)
    return ot.emd(a, b, M, numItermax=10_000_000)


def exact_cost(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    r"""Exact OT cost :math:`\min_{\mathbf{P} \in U(\mathbf{a}, \mathbf{b})} \langle \mathbf{P}, \mathbf{C} \rangle_F`
    (``ot.emd2``), with ``a`` and ``b`` normalised to mass 1 as in :func:`exact_plan`."""
    a, b, M = _renormalised(a, b, cost)
    return float(ot.emd2(a, b, M, numItermax=10_000_000))


def entropic_plan(
    a: np.ndarray, b: np.ndarray, cost: np.ndarray, eps: float, *, max_iter: int = 10_000, tol: float = 1e-9
) -> np.ndarray:
    r"""Entropic OT plan for one pair (float64, via :func:`sinkhorn`); ``a``, ``b`` normalised to mass 1.

    Returns :math:`\operatorname{diag}(\mathbf{u}) \exp(-\mathbf{C}/\varepsilon) \operatorname{diag}(\mathbf{v})`
    as an ndarray of shape (K_t, K_s).
    """
    a, b, M = _renormalised(a, b, cost)
    res = sinkhorn(a, b, M, eps, max_iter=max_iter, tol=tol, return_plan=True)
    assert res.plan is not None
    return res.plan[0].cpu().numpy()
