"""Inverse seed-loading optimisation over candidate positions (which candidates get a seed).

The dose of candidate seed j at sample point i is precomputed once by the caller (the influence matrix A[j, i],
Gy, from ``navigator.physics.kernel``'s TG-43U1 table; 2D formalism, the seed's axis = its needle's axis).
A plan is a 0/1 loading x; its dose at the points is d = x @ A. Each point carries a piecewise-linear
penalty (below a dose, above one or two doses) and every seed costs a little; a greedy add/remove local
search then lowers the total:

    F(x) = sum_i w_i phi_i(d_i) + seed_cost * |x|
    phi_i(d) = w_step [d < under] + w_under max(0, under - d)/under
               + w_over1 max(0, d - over1)/over1 + w_over2 max(0, d - over2)/over2

CTV points get under = Rx (the step term is V100 itself), over1 = 1.5 Rx, over2 = 2 Rx (V150/V200);
points in a shell around the CTV get over1 = Rx (conformity); OAR points get over1 = their limit.
Seeds on one needle sit on the candidate raster (5 mm), so any loading keeps >= 5 mm spacing.
Units: mm, Gy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange


# --- objective ---------------------------------------------------------------------------------------
@dataclass
class PointPenalties:
    """Per-point penalty parameters (arrays of length M); thresholds in Gy, weights dimensionless."""

    under: np.ndarray
    w_step: np.ndarray
    w_under: np.ndarray
    over1: np.ndarray
    w_over1: np.ndarray
    over2: np.ndarray
    w_over2: np.ndarray

    @classmethod
    def concat(cls, parts: list["PointPenalties"]) -> "PointPenalties":
        return cls(*[np.concatenate([getattr(p, f) for p in parts]).astype(np.float64)
                     for f in ("under", "w_step", "w_under", "over1", "w_over1", "over2", "w_over2")])

    @classmethod
    def uniform(cls, m: int, under=0.0, w_step=0.0, w_under=0.0, over1=np.inf, w_over1=0.0, over2=np.inf,
                w_over2=0.0, weight: float = 1.0) -> "PointPenalties":
        f = lambda v: np.full(m, float(v))  # noqa: E731
        return cls(f(under), f(w_step * weight), f(w_under * weight), f(over1), f(w_over1 * weight), f(over2),
                   f(w_over2 * weight))


@njit(inline="always", cache=True)
def _phi(d, under, w_step, w_under, over1, w_over1, over2, w_over2):
    v = 0.0
    if d < under:
        v += w_step + w_under * (under - d) / under
    if d > over1:
        v += w_over1 * (d - over1) / over1
    if d > over2:
        v += w_over2 * (d - over2) / over2
    return v


@njit(cache=True)
def _sparse_rows(A, thr):
    """CSR form of the entries of A that are >= thr (row pointer, column index, value)."""
    n, m = A.shape
    ptr = np.zeros(n + 1, np.int64)
    for j in range(n):
        c = 0
        for i in range(m):
            if A[j, i] >= thr:
                c += 1
        ptr[j + 1] = ptr[j] + c
    idx = np.empty(ptr[n], np.int32)
    val = np.empty(ptr[n], np.float32)
    for j in range(n):
        p = ptr[j]
        for i in range(m):
            if A[j, i] >= thr:
                idx[p] = i
                val[p] = A[j, i]
                p += 1
    return ptr, idx, val


@njit(parallel=True, cache=True)
def _deltas(ptr, idx, val, d, x, under, w_step, w_under, over1, w_over1, over2, w_over2, out):
    """out[j]: change of sum phi if candidate j is toggled (added when x[j] == 0, removed when 1).

    Only entries above a small dose (the CSR rows) are visited: a seed's dose far away changes no
    threshold term and the linear terms by a negligible amount; the dose d itself is kept exact."""
    for j in prange(ptr.shape[0] - 1):
        sgn = -1.0 if x[j] else 1.0
        s = 0.0
        for p in range(ptr[j], ptr[j + 1]):
            i = idx[p]
            a = val[p]
            d0 = d[i]
            s += _phi(d0 + sgn * a, under[i], w_step[i], w_under[i], over1[i], w_over1[i], over2[i], w_over2[i]) \
                - _phi(d0, under[i], w_step[i], w_under[i], over1[i], w_over1[i], over2[i], w_over2[i])
        out[j] = s


@njit(cache=True)
def _total(d, under, w_step, w_under, over1, w_over1, over2, w_over2):
    s = 0.0
    for i in range(d.shape[0]):
        s += _phi(d[i], under[i], w_step[i], w_under[i], over1[i], w_over1[i], over2[i], w_over2[i])
    return s


@dataclass(frozen=True)
class OptimizeOptions:
    seed_cost: float = 0.002
    batch_spacing_mm: float = 15.0   # seeds added in one batch are at least this far apart
    max_batch: int = 24
    max_iterations: int = 2000
    time_limit_s: float = 60.0
    converged_rel: float = 0.01
    sparse_threshold_gy: float = 0.2  # seed doses below this are left out of the move evaluation only


@dataclass
class OptimizeResult:
    loading: np.ndarray      # bool (N,)
    dose_gy: np.ndarray      # (M,) dose at the sample points
    objective: float
    iterations: int
    adds: int
    removes: int
    seconds: float
    stop: str
    history: list = field(default_factory=list)


def optimize_loading(A: np.ndarray, pen: PointPenalties, positions_mm: np.ndarray, x0: np.ndarray | None = None,
                     opts: OptimizeOptions | None = None) -> OptimizeResult:
    """Greedy add/remove local search of F(x) from ``x0`` (default empty). ``A`` is (N, M) float32."""
    opts = opts or OptimizeOptions()
    t0 = time.perf_counter()
    n = A.shape[0]
    x = np.zeros(n, dtype=np.bool_) if x0 is None else x0.astype(np.bool_).copy()
    d = (x.astype(np.float32) @ A).astype(np.float64) if x.any() else np.zeros(A.shape[1])
    args = (pen.under, pen.w_step, pen.w_under, pen.over1, pen.w_over1, pen.over2, pen.w_over2)
    delta = np.empty(n)
    ptr, idx, val = _sparse_rows(A, np.float32(opts.sparse_threshold_gy))
    adds = removes = it = 0
    bmax = opts.max_batch
    n_sel = int(x.sum())
    stop = "no improving move"
    history = []
    while it < opts.max_iterations:
        it += 1
        _deltas(ptr, idx, val, d, x, *args, delta)
        gain = delta + np.where(x, -opts.seed_cost, opts.seed_cost)
        j = int(np.argmin(gain))
        if gain[j] >= -1e-9:
            break
        picks = _batch(gain, positions_mm, opts, bmax)
        f_old = _total(d, *args) + opts.seed_cost * n_sel
        x_new, d_new = x.copy(), d.copy()
        for p in picks:
            x_new[p] = not x_new[p]
            d_new += -A[p] if x[p] else A[p]
        n_new = int(x_new.sum())
        if len(picks) > 1 and _total(d_new, *args) + opts.seed_cost * n_new >= f_old:
            # the moves interfered (each gain was computed alone): take the best one only, smaller batches
            bmax = max(1, bmax // 2)
            picks = picks[:1]
            x_new, d_new = x.copy(), d.copy()
            x_new[picks[0]] = not x[picks[0]]
            d_new += -A[picks[0]] if x[picks[0]] else A[picks[0]]
            n_new = int(x_new.sum())
        else:
            bmax = min(opts.max_batch, bmax + 1)
        added = int(np.sum(x_new & ~x))
        adds += added
        removes += len(picks) - added
        x, d, n_sel = x_new, d_new, n_new
        if it % 10 == 0:
            history.append((it, int(x.sum()), float(_total(d, *args) + opts.seed_cost * x.sum())))
            if len(history) >= 2 and history[-2][2] - history[-1][2] < opts.converged_rel * history[-1][2]:
                stop = f"converged (< {100 * opts.converged_rel:g} % better in 10 iterations)"
                break
        if time.perf_counter() - t0 > opts.time_limit_s:
            stop = f"time limit {opts.time_limit_s:g} s"
            break
    else:
        stop = f"iteration limit {opts.max_iterations}"
    obj = float(_total(d, *args) + opts.seed_cost * x.sum())
    return OptimizeResult(x, d, obj, it, adds, removes, time.perf_counter() - t0, stop, history)


def _batch(gain: np.ndarray, pos: np.ndarray, opts: OptimizeOptions, bmax: int) -> list[int]:
    """The best improving moves (adds or removes), mutually at least ``batch_spacing_mm`` apart so that
    their gains, each computed alone, still add up."""
    cand = np.nonzero(gain < -1e-9)[0]
    cand = cand[np.argsort(gain[cand])]
    # batch size grows with how many improving moves there are: big early, one at a time near the end
    size = int(np.clip(len(cand) // 20, 1, bmax))
    picks: list[int] = []
    lim2 = opts.batch_spacing_mm ** 2
    chosen = np.empty((size, 3))
    for c in cand[: 10 * size]:  # scan a few times the batch size only: this loop is Python
        if not picks or np.min(np.sum((chosen[: len(picks)] - pos[c]) ** 2, axis=1)) >= lim2:
            chosen[len(picks)] = pos[c]
            picks.append(int(c))
            if len(picks) >= size:
                break
    return picks
