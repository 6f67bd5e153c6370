"""Seed loading with a seed budget and a minimum spacing: which candidate places get a seed when at most
``max_seeds`` are in the cartridge (the intraoperative re-plan, ``planning.replan``).

The objective is the pre-plan's (``planning.optimize``): per-point piecewise-linear penalties on the dose
d = x @ A plus a small cost per seed. The search starts from a loading (the pre-plan's, carried on the needles
as found) and takes one move at a time, the best of:

- a batch of adds while the budget has room (the best single adds, mutually ``batch_spacing_mm`` apart so that
  their gains, each computed alone, still add up; evaluated together exactly);
- a single add (within the budget, no loaded seed on the same needle closer than the spacing) or removal,
  every one evaluated exactly (one pass over the points per candidate);
- an exchange (remove r, add a): the ``best_removals`` removals that cost least alone paired with the
  ``best_adds`` adds that gain most alone (an add that conflicts only with r is allowed), every pair evaluated
  exactly.
While more than ``max_seeds`` are loaded, or two loaded seeds are too close, the removal that costs least
(of those too close) is forced first. The search stops when
no move lowers the objective, or at the move or time limit. Places lie on a finer raster than the spacing, so
a seed may shift along its needle by less than the spacing; the conflict test keeps loaded seeds apart.

A is (N, M) float32 Gy (candidate j's dose at point i, ``physics.kernel.influence_matrix``); doses in Gy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from navigator.planning.optimize import PointPenalties


@dataclass(frozen=True)
class ExchangeOptions:
    seed_cost: float = 0.002   # as the pre-plan's optimiser
    best_removals: int = 6     # removals that cost least alone, paired with ...
    best_adds: int = 16        # ... the adds that gain most alone, each pair evaluated exactly
    max_batch: int = 6         # adds in one batch at most ...
    batch_spacing_mm: float = 15.0  # ... mutually this far apart
    max_moves: int = 300
    time_limit_s: float = 0.5


@dataclass
class ExchangeResult:
    loading: np.ndarray        # bool (N,)
    dose_gy: np.ndarray        # (M,) at the sample points
    objective: float
    adds: int
    removes: int
    exchanges: int
    budget_removals: int
    seconds: float
    stop: str


@njit(inline="always", cache=True)
def _phi(v, under, w_step, w_under, over1, w_over1, over2, w_over2):
    s = 0.0
    if v < under:
        s += w_step + w_under * (under - v) / under
    if v > over1:
        s += w_over1 * (v - over1) / over1
    if v > over2:
        s += w_over2 * (v - over2) / over2
    return s


@njit(parallel=True, cache=True)
def _move_totals(d, A, rem, add, under, w_step, w_under, over1, w_over1, over2, w_over2, out):
    """out[p, q]: the sum of the point penalties with ``rem[p]`` taken out (none when < 0) and ``add[q]`` put
    in (none when < 0)."""
    m = d.shape[0]
    nq = add.shape[0]
    for t in prange(rem.shape[0] * nq):
        p = t // nq
        q = t % nq
        r = rem[p]
        a = add[q]
        s = 0.0
        for i in range(m):
            v = d[i]
            if a >= 0:
                v += A[a, i]
            if r >= 0:
                v -= A[r, i]
            s += _phi(v, under[i], w_step[i], w_under[i], over1[i], w_over1[i], over2[i], w_over2[i])
        out[p, q] = s


def _totals(d, A, rem, add, args) -> np.ndarray:
    out = np.empty((len(rem), len(add)))
    _move_totals(d, A, np.asarray(rem, np.int64), np.asarray(add, np.int64), *args, out)
    return out


def exchange_loading(A: np.ndarray, pen: PointPenalties, conflicts: np.ndarray, x0: np.ndarray, max_seeds: int,
                     positions_mm: np.ndarray, opts: ExchangeOptions = ExchangeOptions()) -> ExchangeResult:
    """The loading of at most ``max_seeds`` seeds the moves reach from ``x0`` (bool (N,)). ``conflicts``: bool
    (N, N), True where two places cannot both hold a seed (same needle, closer than the spacing);
    ``positions_mm``: (N, 3) the places (LPS mm), for the batches."""
    t0 = time.perf_counter()
    x = x0.astype(bool).copy()
    d = x.astype(np.float32) @ A if x.any() else np.zeros(A.shape[1], np.float32)
    d = d.astype(np.float64)
    args = (pen.under, pen.w_step, pen.w_under, pen.over1, pen.w_over1, pen.over2, pen.w_over2)
    cost, conf = opts.seed_cost, conflicts.astype(np.int32)
    none = np.array([-1])
    f = float(_totals(d, A, none, none, args)[0, 0]) + cost * x.sum()
    adds = removes = exchanges = forced = 0
    stop = "no improving move"
    for _ in range(opts.max_moves):
        if time.perf_counter() - t0 > opts.time_limit_s:
            stop = f"time limit {opts.time_limit_s:g} s"
            break
        sel, free = np.nonzero(x)[0], np.nonzero(~x)[0]
        n = len(sel)
        blocked = conf[free] @ x.astype(np.int32)            # loaded seeds too close to each free place
        f_rem = _totals(d, A, sel, none, args)[:, 0] + cost * (n - 1)
        f_add = _totals(d, A, none, free, args)[0] + cost * (n + 1)
        clash = (conf[np.ix_(sel, sel)].sum(axis=1) > 1) if n else np.zeros(0, bool)  # 1: the seed itself
        if n > max_seeds or clash.any():  # over the budget or too close: the cheapest removal, forced
            j = int(np.argmin(np.where(clash, f_rem, np.inf))) if clash.any() else int(np.argmin(f_rem))
            x[sel[j]] = False
            d -= A[sel[j]]
            f = float(f_rem[j])
            forced += 1
            continue
        best_f, move = f - 1e-9 * max(1.0, abs(f)), None
        ok_add = blocked == 0
        if n < max_seeds and ok_add.any():
            j = int(np.argmin(np.where(ok_add, f_add, np.inf)))
            if f_add[j] < best_f:
                best_f, move = float(f_add[j]), (-1, int(free[j]))
            batch = _batch(free, f_add, ok_add, f, conf, positions_mm, min(max_seeds - n, opts.max_batch), opts)
            if len(batch) > 1:
                fb = float(_totals(d + A[batch].sum(axis=0), A, none, none, args)[0, 0]) + cost * (n + len(batch))
                if fb < best_f:
                    best_f, move = fb, (-1, batch)
        if n:
            j = int(np.argmin(f_rem))
            if f_rem[j] < best_f:
                best_f, move = float(f_rem[j]), (int(sel[j]), -1)
            rem = sel[np.argsort(f_rem)[: opts.best_removals]]
            cand = np.argsort(f_add)[: 3 * opts.best_adds]
            cand = cand[blocked[cand] <= 1][: opts.best_adds]   # at most one conflict: with the seed taken out
            if len(cand):
                add = free[cand]
                tot = _totals(d, A, rem, add, args) + cost * n
                # an add that conflicts with a loaded seed other than the one taken out is not a move
                bad = (blocked[cand][None, :] - conf[np.ix_(rem, add)]) > 0
                tot[bad] = np.inf
                p, q = np.unravel_index(int(np.argmin(tot)), tot.shape)
                if tot[p, q] < best_f:
                    best_f, move = float(tot[p, q]), (int(rem[p]), int(add[q]))
        if move is None:
            break
        r, a = move
        if isinstance(a, list):  # a batch of adds
            x[a] = True
            d += A[a].sum(axis=0)
            adds += len(a)
            f = best_f
            continue
        if r >= 0:
            x[r] = False
            d -= A[r]
        if a >= 0:
            x[a] = True
            d += A[a]
        adds += int(r < 0)
        removes += int(a < 0)
        exchanges += int(r >= 0 and a >= 0)
        f = best_f
    else:
        stop = f"move limit {opts.max_moves}"
    return ExchangeResult(loading=x, dose_gy=d, objective=f, adds=adds, removes=removes, exchanges=exchanges,
                          budget_removals=forced, seconds=time.perf_counter() - t0, stop=stop)


def _batch(free: np.ndarray, f_add: np.ndarray, ok_add: np.ndarray, f: float, conf: np.ndarray,
           positions_mm: np.ndarray, size: int, opts: ExchangeOptions) -> list[int]:
    """The best improving single adds, mutually apart and free of conflicts, at most ``size``."""
    picks: list[int] = []
    for j in np.argsort(f_add):
        if len(picks) >= size or f_add[j] >= f:
            break
        c = int(free[j])
        if not ok_add[j] or any(conf[c, p] for p in picks):
            continue
        if picks and np.min(np.linalg.norm(positions_mm[picks] - positions_mm[c], axis=1)) < opts.batch_spacing_mm:
            continue
        picks.append(c)
    return picks
