"""Supplementary seeds: the fewest extra seeds, on needle paths that can be inserted, that bring the CTV's D90
back to the prescription and V100 back to the plan's goal, without raising the hot spots (V150, V200) past the
plan's or taking an OAR past its limit.

Candidates (all in post-implant LPS mm):
- template paths: lines through the guide template's holes along its normal (the plan's template, mapped
  through the registration), seeds every ``step_mm`` inside the CTV; entry = the hole's reference point;
- freehand paths: straight lines from the skin to points of a ``step_mm`` lattice in the CTV, along the
  plan's insertion direction and tilted from it by ``tilts_deg``; entry = where the line meets the skin;
- planned positions: the plan's own seed places (mapped through the registration) on a straight path from
  the skin along their needle's axis - where the seeds missing from the ledger should have gone.
A path is insertable when no sample along it (1 mm apart) lies in the no-go mask (bone, internal air, OARs
grown by a clearance) and the seed lies >= ``min_skin_depth_mm`` below the skin; a candidate closer than
``min_seed_distance_mm`` to a seed already there is dropped.

Selection minimises the number of seeds subject to the constraints of ``coverage_targets``: D90 >= Rx and
V100 >= the plan's goal (capped at what the plan itself reached on the same points), V150/V200 no higher than
the plan's (or its V150 goal, or what is there already), every OAR's D0.1cc (estimated on its sample points)
under its limit (an OAR the implanted seeds already took past it may rise by ``oar_over_limit_rise`` only),
seeds ``min_seed_distance_mm`` apart. On a dose-influence matrix (one seed's TG-43 dose at CTV sample points,
the planner's kernel table, ``physics.kernel``): a greedy pass adds the candidate of largest gain that keeps
the hot-spot and OAR limits until the coverage targets hold - run twice, with the capped-coverage gain
sum(min(Rx, d + A) - min(Rx, d)) and with the number of points brought to Rx - then a pruning pass drops
every seed the targets can do without and a merging pass replaces two seeds by one candidate wherever the
constraints still hold; the smaller result is kept. Candidates include the planned positions no found seed
occupies (``planned_candidates``), so the seeds missing from the ledger can always be put back: the count is
then at most the number missing whenever the found seeds sit where they were planned. The masks live on the
pre-plan CT (no seeds there to look like bone) and are sampled through ``post_to_field``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.core.transform import RigidTransform
from navigator.core.sampling import sample_nearest
from navigator.core.volume import Volume
from navigator.physics.kernel import influence_matrix, kernel_table


@dataclass(frozen=True)
class SupplementSettings:
    step_mm: float = 5.0               # candidate spacing along a path and of the freehand lattice
    min_skin_depth_mm: float = 10.0
    min_seed_distance_mm: float = 5.0  # from seeds already implanted and from each other
    max_seeds: int = 20
    d90_goal_rx: float = 1.0
    v100_goal_pct: float = 95.0
    tilts_deg: tuple = (0.0, 20.0, -20.0)
    max_path_mm: float = 160.0
    trace_step_mm: float = 1.0
    min_gain_pct: float = 0.05         # a seed must raise the capped coverage by this % of the CTV at least
    oar_over_limit_rise: float = 0.02  # an OAR already over its limit may rise by this fraction at most
    restore_v100_pct: float = 1.0      # where the plan itself fell short of the V100 goal, its own V100 within
                                       # 1 point restores it (seeds found 0.5-1 mm off their places move it so)
    hot_slack_pct: float = 2.0         # V150/V200 may exceed the plan's by this many percentage points: seeds
                                       # found 0.5-1 mm off their places move a small CTV's V150 by about that


@dataclass
class NeedleField:
    """Where needles may go: masks on ``grid`` (the pre-plan CT), with ``post_to_field`` (4x4) mapping a
    post-implant LPS point into the grid's LPS frame."""

    grid: Volume
    body: np.ndarray
    skin_depth_mm: np.ndarray
    nogo: np.ndarray
    post_to_field: RigidTransform = field(default_factory=RigidTransform.identity)  # or a 4x4 array

    def __post_init__(self) -> None:
        self.post_to_field = RigidTransform.of(self.post_to_field)

    def sample(self, arr: np.ndarray, points_post_mm: np.ndarray, outside):
        p = np.asarray(points_post_mm, float)
        q = self.post_to_field.apply(p)
        vals, _ = sample_nearest(arr, self.grid, q.reshape(-1, 3), outside=outside)
        return vals.reshape(p.shape[:-1])


@dataclass
class Candidate:
    position_mm: np.ndarray
    entry_mm: np.ndarray
    direction: np.ndarray
    kind: str                 # "template" or "freehand"
    hole: str | None = None


@dataclass
class Proposal:
    seeds: list[Candidate]
    stop_reason: str
    candidates: int
    predicted_points: dict    # D90/V100 on the CTV sample points after the added seeds
    before_points: dict
    oar_d01cc_gy: dict        # per OAR: before and after, estimated on sample points
    seconds: float
    targets: dict = field(default_factory=dict)     # the constraints the set was chosen to meet
    selection: dict = field(default_factory=dict)   # per greedy gain: seeds before / after pruning

    @property
    def count(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict:
        return {
            "seeds": [{"position_mm": [round(float(v), 2) for v in c.position_mm],
                       "entry_mm": [round(float(v), 2) for v in c.entry_mm],
                       "direction": [round(float(v), 4) for v in c.direction],
                       "path": c.kind, "hole": c.hole} for c in self.seeds],
            "stop_reason": self.stop_reason, "candidates": self.candidates,
            "points_before": self.before_points, "points_after": self.predicted_points,
            "oar_d0.1cc_gy": self.oar_d01cc_gy, "seconds": round(self.seconds, 3),
            "count": self.count, "targets": self.targets, "selection": self.selection,
        }


# --- candidates -----------------------------------------------------------------------------------------
def tilted_directions(axis, tilts_deg) -> list[np.ndarray]:
    """``axis`` and copies tilted by each angle about two axes perpendicular to it."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    h = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(a, h)
    u /= np.linalg.norm(u)
    v = np.cross(a, u)
    out = []
    for t in tilts_deg:
        for p in ((u,) if t == 0 else (u, v)):
            r = np.radians(t)
            d = np.cos(r) * a + np.sin(r) * p
            out.append(d / np.linalg.norm(d))
    return out


def _path_clear(fld: NeedleField, entry: np.ndarray, pos: np.ndarray, s: SupplementSettings) -> np.ndarray:
    """(N,) bool: segment entry -> position avoids the no-go mask (entries and positions (N, 3))."""
    L = np.linalg.norm(pos - entry, axis=1)
    n = int(np.ceil(L.max() / s.trace_step_mm)) + 1 if len(L) else 1
    t = np.linspace(0.0, 1.0, n)
    pts = entry[:, None, :] + t[None, :, None] * (pos - entry)[:, None, :]
    return ~fld.sample(fld.nogo, pts, outside=False).any(1)


def template_candidates(template, pre_to_post, ctv_grid: Volume, ctv_mask: np.ndarray,
                        fld: NeedleField, s: SupplementSettings) -> list[Candidate]:
    """Seeds every ``step_mm`` along each template hole's line, inside the CTV, reachable and deep enough."""
    pre_to_post = RigidTransform.of(pre_to_post)
    normal = pre_to_post.rotate(template.normal_lps)
    holes = template.holes()
    entries = pre_to_post.apply(np.array([template.hole_to_lps(h) for h in holes]))
    depths = np.arange(s.step_mm, s.max_path_mm + 1e-9, s.step_mm)
    pos = entries[:, None, :] + depths[None, :, None] * normal
    inside, _ = sample_nearest(ctv_mask, ctv_grid, pos.reshape(-1, 3), outside=False)
    hi, di = np.nonzero(inside.reshape(pos.shape[:2]))
    if not len(hi):
        return []
    P = pos[hi, di]
    E = entries[hi]
    ok = fld.sample(fld.skin_depth_mm, P, outside=0.0) >= s.min_skin_depth_mm
    ok &= _path_clear(fld, E, P, s)
    return [Candidate(P[q], E[q], normal.copy(), "template", holes[hi[q]]) for q in np.nonzero(ok)[0]]


def freehand_candidates(points_mm: np.ndarray, directions: list[np.ndarray], fld: NeedleField,
                        s: SupplementSettings) -> list[Candidate]:
    """For each point, the first direction (in the order given) whose straight path from the skin is clear."""
    pts = np.asarray(points_mm, float).reshape(-1, 3)
    deep = fld.sample(fld.skin_depth_mm, pts, outside=0.0) >= s.min_skin_depth_mm
    pts = pts[deep]
    chosen: dict[int, Candidate] = {}
    t = np.arange(0.0, s.max_path_mm + 1e-9, s.trace_step_mm)
    for d in directions:
        todo = np.array([q for q in range(len(pts)) if q not in chosen], dtype=int)
        if not len(todo):
            break
        ray = pts[todo, None, :] - t[None, :, None] * d[None, None, :]       # back from the seed to the skin
        body = fld.sample(fld.body, ray, outside=True)     # off the mask grid: no skin seen, no entry
        nogo = fld.sample(fld.nogo, ray, outside=False)
        out = ~body
        has_exit = out.any(1)
        first_out = np.argmax(out, axis=1)
        blocked = np.array([nogo[q, :first_out[q]].any() for q in range(len(todo))])
        for q in np.nonzero(has_exit & ~blocked)[0]:
            p = pts[todo[q]]
            chosen[int(todo[q])] = Candidate(p.copy(), p - t[first_out[q]] * d, d.copy(), "freehand")
    return [chosen[q] for q in sorted(chosen)]


def planned_candidates(points_mm: np.ndarray, axes: np.ndarray, fld: NeedleField,
                       s: SupplementSettings) -> list[Candidate]:
    """Seeds at the plan's own positions (post-implant LPS mm), each on a straight path from the skin along
    its needle's axis (either sense): the places of seeds missing from the ledger or lost."""
    out = []
    for p, a in zip(np.asarray(points_mm, float).reshape(-1, 3), np.asarray(axes, float).reshape(-1, 3)):
        a = a / np.linalg.norm(a)
        for c in freehand_candidates(p[None], [a, -a], fld, s):
            c.kind = "planned"
            out.append(c)
    return out


def ctv_lattice(ctv_grid: Volume, ctv_mask: np.ndarray, step_mm: float) -> np.ndarray:
    """LPS points of a ``step_mm`` lattice (in the grid's axes) that fall inside the CTV."""
    stride = np.maximum(1, np.round(step_mm / ctv_grid.spacing_mm).astype(int))   # (i, j, k)
    sub = ctv_mask[::stride[2], ::stride[1], ::stride[0]]
    kk, jj, ii = np.nonzero(sub)
    ijk = np.stack([ii * stride[0], jj * stride[1], kk * stride[2]], axis=1)
    return ctv_grid.ijk_to_lps(ijk)


# --- selection ------------------------------------------------------------------------------------------
_EPS = 1e-6


def _raw_metrics(d: np.ndarray, rx_gy: float) -> dict:
    if not len(d):
        return {"D90_gy": 0.0, "V100_pct": 0.0, "V150_pct": 0.0, "V200_pct": 0.0}
    return {"D90_gy": float(np.percentile(d, 10)), "V100_pct": float((d >= rx_gy).mean() * 100),
            "V150_pct": float((d >= 1.5 * rx_gy).mean() * 100), "V200_pct": float((d >= 2.0 * rx_gy).mean() * 100)}


def _point_metrics(d: np.ndarray, rx_gy: float) -> dict:
    return {k: round(v, 3) for k, v in _raw_metrics(d, rx_gy).items()}


def _d01cc(d: np.ndarray, point_cc: float) -> np.ndarray:
    """D0.1cc estimated on sample points each standing for ``point_cc``; d (..., n) -> (...)."""
    n = d.shape[-1]
    k = int(np.clip(np.ceil(0.1 / max(point_cc, 1e-9)), 1, n))
    return np.partition(d, n - k, axis=-1)[..., n - k]


def coverage_targets(rx_gy: float, settings: SupplementSettings = SupplementSettings(), plan_dose_gy=None,
                     before_dose_gy=None, v100_goal_pct: float | None = None,
                     v150_goal_pct: float | None = None, plan_metrics: dict | None = None) -> dict:
    """The constraints a supplementary set must meet, on the CTV sample points.

    Coverage: D90 >= ``d90_goal_rx`` x Rx always (the prescription is not negotiable), and V100 >= the plan's
    goal (``v100_goal_pct``, else the settings'), capped at the plan's own V100 on the same points
    (``plan_dose_gy``: the planned seeds' dose there) less ``restore_v100_pct`` when the plan itself fell short
    of its goal there: supplementary seeds restore the plan's coverage, they do not improve on it (the sample
    points are the CTV voxels of occupancy >= 0.5, so their V100 runs a little below the weighted DVH's).
    The plan's own D90/V100 on the points are kept (``plan_D90_gy``, ``plan_V100_pct``) to explain a count.
    Hot spots (with ``plan_dose_gy``): V150 <= max(the plan's V150 goal, the plan's V150, the delivered V150)
    and V200 <= max(the plan's V200, the delivered V200), each + ``hot_slack_pct`` - no worse than what the
    plan accepted or what is there already (a seed cannot lower a V-value), within what seed placement errors
    alone change; "the plan's" is the larger of its value on these points and its own report
    (``plan_metrics``, on the pre-plan CT)."""
    s = settings
    t = {"D90_gy": s.d90_goal_rx * rx_gy, "V100_pct": s.v100_goal_pct if v100_goal_pct is None else v100_goal_pct}
    if plan_dose_gy is None or not len(plan_dose_gy):
        return t
    pm = _raw_metrics(np.asarray(plan_dose_gy, float), rx_gy)
    bm = _raw_metrics(np.asarray(before_dose_gy, float), rx_gy) if before_dose_gy is not None else pm
    t["plan_D90_gy"], t["plan_V100_pct"] = pm["D90_gy"], pm["V100_pct"]
    t["V100_pct"] = min(t["V100_pct"], pm["V100_pct"] - s.restore_v100_pct)
    reported = {k: float((plan_metrics or {}).get(k) or 0.0) for k in ("V150_pct", "V200_pct")}
    t["V150_max_pct"] = max(pm["V150_pct"], reported["V150_pct"], bm["V150_pct"], v150_goal_pct or 0.0) \
        + s.hot_slack_pct
    t["V200_max_pct"] = max(pm["V200_pct"], reported["V200_pct"], bm["V200_pct"]) + s.hot_slack_pct
    return t


class _Selection:
    """The candidates' dose at the CTV (``A``, (C, n)) and OAR points (``B``) and the constraints a set of
    added seeds must hold; sets are lists of candidate indices."""

    def __init__(self, A, d0, rx_gy, targets, B, od0, oar_caps, point_cc, P, min_dist_mm):
        self.A, self.d0, self.rx, self.t = A, d0, rx_gy, targets
        self.B, self.od0, self.caps, self.point_cc = B, od0, oar_caps, point_cc
        self.P, self.min_dist = P, min_dist_mm

    def dose(self, idx) -> np.ndarray:
        return self.d0 + self.A[list(idx)].sum(0)

    def oar_dose(self, idx) -> dict:
        return {n: self.od0[n] + self.B[n][list(idx)].sum(0) for n in self.B}

    def covered_rows(self, D: np.ndarray) -> np.ndarray:
        """(r, n) doses -> (r,) bool: D90 and V100 at their targets."""
        ok = (D >= self.rx).mean(1) * 100 >= self.t["V100_pct"] - _EPS
        if ok.any():
            ok[ok] = np.percentile(D[ok], 10, axis=1) >= self.t["D90_gy"] - _EPS
        return ok

    def covered(self, d: np.ndarray) -> bool:
        return bool(self.covered_rows(d[None])[0])

    def hot_ok_rows(self, D: np.ndarray) -> np.ndarray:
        ok = np.ones(len(D), bool)
        for key, f in (("V150_max_pct", 1.5), ("V200_max_pct", 2.0)):
            if key in self.t:
                ok &= (D >= f * self.rx).mean(1) * 100 <= self.t[key] + _EPS
        return ok

    def oar_ok_rows(self, od: dict, rows=slice(None)) -> np.ndarray:
        """Each candidate (``rows`` of them) added to the OAR doses ``od``: every OAR under its cap."""
        ok = np.ones(len(self.P), bool)[rows]
        for n, cap in self.caps.items():
            if cap is not None:
                ok &= _d01cc(od[n][None, :] + self.B[n][rows], self.point_cc[n]) <= cap
        return ok

    def far_from(self, idx) -> np.ndarray:
        ok = np.ones(len(self.P), bool)
        for j in idx:
            ok &= np.linalg.norm(self.P - self.P[j], axis=1) >= self.min_dist
        return ok


def _stop_reason(base: str, excluded: set) -> str:
    if not excluded:
        return base
    what = " or ".join(w for w in ("an OAR past its limit", "V150/V200 above their limits") if w in excluded)
    return f"{base}; candidates that would help were excluded: {what}"


def _greedy(sel: _Selection, objective: str, max_seeds: int, min_gain: float) -> tuple[list, str]:
    """Add the candidate of largest gain (``capped``: sum min(Rx, d); ``count``: points reaching Rx, capped
    gain breaking ties) that keeps the hot spots and OARs within their limits, until the coverage targets hold."""
    rx, n = sel.rx, len(sel.d0)
    chosen: list[int] = []
    alive = np.ones(len(sel.P), bool)
    d, od = sel.d0.copy(), {k: v.copy() for k, v in sel.od0.items()}
    excluded: set = set()
    for _ in range(max_seeds):
        if sel.covered(d):
            return chosen, "goals met"
        D = d[None, :] + sel.A
        capped = np.minimum(D, rx).sum(1) - np.minimum(d, rx).sum()
        useful = alive & (capped >= min_gain)
        ok_oar, ok_hot = sel.oar_ok_rows(od), sel.hot_ok_rows(D)
        excluded |= {"an OAR past its limit"} if (useful & ~ok_oar).any() else set()
        excluded |= {"V150/V200 above their limits"} if (useful & ok_oar & ~ok_hot).any() else set()
        alive &= ok_oar & ok_hot          # both only rise as seeds are added: a refused candidate stays refused
        gain = capped if objective == "capped" else (D >= rx).sum(1) - (d >= rx).sum() + capped / (rx * n + 1.0)
        gain = np.where(alive, gain, -np.inf)
        best = int(np.argmax(gain))
        if not np.isfinite(gain[best]) or capped[best] < min_gain:
            if not np.isfinite(gain[best]) and "an OAR past its limit" in excluded:
                return chosen, _stop_reason("no candidate raises the coverage without an OAR past its limit",
                                            excluded - {"an OAR past its limit"})
            return chosen, _stop_reason("no candidate raises the coverage noticeably" if np.isfinite(gain[best])
                                        else "no candidate left at the minimum distance from the seeds", excluded)
        chosen.append(best)
        d += sel.A[best]
        for k in od:
            od[k] += sel.B[k][best]
        alive &= np.linalg.norm(sel.P - sel.P[best], axis=1) >= sel.min_dist   # later seeds keep their distance
    return chosen, "goals met" if sel.covered(d) else "maximum number of seeds reached"


def _prune(sel: _Selection, chosen: list) -> list:
    """Drop seeds while the coverage targets still hold (fewer seeds never raise a hot spot or an OAR dose);
    the seed whose removal keeps the most coverage goes first."""
    chosen = list(chosen)
    while len(chosen) > 0:
        d = sel.dose(chosen)
        rest_cov = [((d - sel.A[i]) >= sel.rx).sum() for i in chosen]
        for q in np.argsort(rest_cov)[::-1]:
            if sel.covered(d - sel.A[chosen[q]]):
                del chosen[q]
                break
        else:
            return chosen
    return chosen


def _merge_pairs(sel: _Selection, chosen: list) -> list:
    """Replace two seeds by one candidate while every constraint still holds (pruning removes one seed at a
    time; this finds the single seed that does the work of two)."""
    chosen = list(chosen)
    merged = True
    while merged and len(chosen) >= 2:
        merged = False
        d, od = sel.dose(chosen), sel.oar_dose(chosen)
        for a in range(len(chosen)):
            for b in range(a + 1, len(chosen)):
                i, j = chosen[a], chosen[b]
                rest = [c for c in chosen if c not in (i, j)]
                cand = np.nonzero(sel.far_from(rest))[0]
                if not len(cand):
                    continue
                D = (d - sel.A[i] - sel.A[j])[None, :] + sel.A[cand]
                ok = sel.covered_rows(D) & sel.hot_ok_rows(D)
                if ok.any():
                    odm = {k: od[k] - sel.B[k][i] - sel.B[k][j] for k in od}
                    ok[ok] &= sel.oar_ok_rows(odm, cand[ok])
                if ok.any():
                    best = cand[ok][int(np.argmax((D[ok] >= sel.rx).sum(1)))]
                    chosen, merged = rest + [int(best)], True
                    break
            if merged:
                break
    return chosen


def _choose(sel: _Selection, s: SupplementSettings, min_gain: float) -> tuple[list, str, dict]:
    """Greedy by each gain, then pruning and pair merging; the smallest set that meets every constraint
    (none meets them: the best-covering set)."""
    best, best_key, record = None, None, {}
    for objective in ("capped", "count"):
        chosen, reason = _greedy(sel, objective, s.max_seeds, min_gain)
        greedy_n = len(chosen)
        ok = sel.covered(sel.dose(chosen))
        if ok:
            chosen = _merge_pairs(sel, _prune(sel, chosen))
        m = _raw_metrics(sel.dose(chosen), sel.rx)
        key = (0, len(chosen), m["V150_pct"], -m["D90_gy"]) if ok else (1, -m["V100_pct"], len(chosen), 0.0)
        record[objective] = {"greedy": greedy_n, "after_pruning": len(chosen), "meets_targets": ok}
        if best_key is None or key < best_key:
            best, best_key, best_reason, record["chosen"] = chosen, key, reason, objective
    return best, best_reason, record


def propose_supplementary(ctv_points_mm: np.ndarray, ctv_dose_gy: np.ndarray, candidates: list[Candidate],
                          existing_seeds_mm: np.ndarray, sk_u: float, model, rx_gy: float,
                          oars: dict | None = None, settings: SupplementSettings = SupplementSettings(),
                          kernel=None, targets: dict | None = None) -> Proposal:
    """The fewest ``candidates`` that meet ``targets`` (``coverage_targets``; default: D90 and V100 goals of
    ``settings``, no hot-spot limit). ``ctv_dose_gy``: the current dose at ``ctv_points_mm``.
    ``oars``: {name: {"points_mm": (n, 3), "dose_gy": (n,), "limit_gy": float, "point_cc": float}}."""
    t0 = time.perf_counter()
    s = settings
    oars = {n: o for n, o in (oars or {}).items() if len(o["points_mm"])}
    d = np.asarray(ctv_dose_gy, float).copy()
    targets = dict(targets or coverage_targets(rx_gy, s))
    candidates = _spaced_from(candidates, existing_seeds_mm, s.min_seed_distance_mm)
    oar_info = {n: {"before": round(float(_d01cc(np.asarray(o["dose_gy"], float), o["point_cc"])), 2)}
                for n, o in oars.items()}
    empty = _Selection(np.zeros((0, len(d))), d, rx_gy, targets, {}, {}, {}, {}, np.zeros((0, 3)), 0.0)
    chosen_idx, record = [], {}
    if empty.covered(d):
        reason = "goals already met"
    elif not candidates:
        reason = "no insertable candidate position (no-go structures, skin depth or existing seeds)"
    else:
        kt = kernel or kernel_table(model, sk_u)
        P = np.array([c.position_mm for c in candidates])
        U = np.array([c.direction for c in candidates])
        A = influence_matrix(ctv_points_mm, P, U, kt).astype(np.float64)            # (C, n)
        B = {n: influence_matrix(o["points_mm"], P, U, kt).astype(np.float64) for n, o in oars.items()}
        od = {n: np.asarray(o["dose_gy"], float) for n, o in oars.items()}
        caps = {}
        for n, o in oars.items():
            start = float(_d01cc(od[n], o["point_cc"]))
            # an OAR already past its limit (from the implanted seeds) may rise by oar_over_limit_rise only
            caps[n] = None if o["limit_gy"] is None else max(o["limit_gy"], start * (1.0 + s.oar_over_limit_rise))
        sel = _Selection(A, d, rx_gy, targets, B, od, caps, {n: o["point_cc"] for n, o in oars.items()}, P,
                         s.min_seed_distance_mm)
        chosen_idx, reason, record = _choose(sel, s, s.min_gain_pct / 100.0 * len(d) * rx_gy)
        d = sel.dose(chosen_idx)
        for n, dn in sel.oar_dose(chosen_idx).items():
            oar_info[n]["after"] = round(float(_d01cc(dn, oars[n]["point_cc"])), 2)
            oar_info[n]["limit"] = oars[n]["limit_gy"]
    return Proposal(seeds=[candidates[i] for i in chosen_idx], stop_reason=reason, candidates=len(candidates),
                    predicted_points=_point_metrics(d, rx_gy), before_points=_point_metrics(ctv_dose_gy, rx_gy),
                    oar_d01cc_gy=oar_info, seconds=time.perf_counter() - t0,
                    targets={k: v if isinstance(v, list) else round(float(v), 3) for k, v in targets.items()},
                    selection=record)


def _spaced_from(candidates: list[Candidate], existing_seeds_mm, min_dist_mm: float) -> list[Candidate]:
    """The candidates at least ``min_dist_mm`` from every seed already there."""
    existing = np.asarray(existing_seeds_mm, float).reshape(-1, 3)
    if not candidates or not len(existing):
        return list(candidates)
    pos = np.array([c.position_mm for c in candidates])
    dmin = np.sqrt(((pos[:, None, :] - existing[None, :, :]) ** 2).sum(2)).min(1)
    return [c for c, ok in zip(candidates, dmin >= min_dist_mm) if ok]


def explain_count(prop: Proposal, planned: int, released: int | None, found: int) -> str:
    """Why ``prop`` holds as many seeds as it does, against the seeds missing from the ledger
    (``planned`` - ``released``; ``released`` None: no ledger count given) and those not found in the scan."""
    missing = max(0, planned - found)
    if released is None:
        ledger = f"no ledger count given; {missing} fewer seed(s) found than the {planned} planned"
    else:
        ledger = f"{max(0, planned - released)} seed(s) missing from the ledger ({released} released of {planned} planned)"
        if released > found:
            ledger += f", {released - found} released but not found in the scan"
    t = prop.targets
    goals = f"D90 >= {t.get('D90_gy', 0.0):.1f} Gy and V100 >= {t.get('V100_pct', 0.0):.1f} %"
    if t.get("plan_V100_pct") is not None and t["V100_pct"] < t["plan_V100_pct"] - 0.5 and \
            t["plan_V100_pct"] < 100.0 and t["V100_pct"] < 95.0:
        goals += f" (the plan's own V100 on these points, {t['plan_V100_pct']:.1f} %, less 1 point)"
    if prop.stop_reason == "goals already met":
        return f"{ledger}; {goals} already hold: no supplementary seed needed"
    if not prop.selection or not prop.selection[prop.selection["chosen"]]["meets_targets"]:
        return f"{ledger}; {prop.count} seed(s) proposed but they do not restore {goals}: {prop.stop_reason}"
    n = prop.count
    if n < missing:
        because = "the missing seeds' region is partly covered by its neighbours"
    elif n == missing:
        because = "each missing seed's place needs a seed"
    elif missing == 0:
        because = "no seed is missing: the cold region comes from seeds off their planned places"
    elif t.get("plan_D90_gy") is not None and t["plan_D90_gy"] < t.get("D90_gy", 0.0):
        because = (f"the plan itself reached only D90 {t['plan_D90_gy']:.1f} Gy on these points, so more are "
                   "needed than are missing")
    else:
        because = ("the seeds found sit off their planned places (or the missing places cannot be reached), "
                   "so more are needed than are missing")
    return f"{ledger}; {n} restore {goals}: {because}"


def supplementary_plan(base: Plan, proposal: list[dict], name: str, frame_of_reference_uid: str,
                       ct_series_uid: str = "") -> Plan | None:
    """The proposed supplementary seeds (postimplant.json ``supplementary.seeds``) as a deliverable plan in the
    post-implant frame: one needle per seed (hole from the proposal, else an ``X<n>`` label), the seed 5 mm
    short of the needle's tip; the prescription and seeds of ``base``. None when nothing is proposed."""
    if not proposal:
        return None
    needles, seeds = [], []
    for n, s in enumerate(proposal, start=1):
        pos, entry = np.array(s["position_mm"], float), np.array(s["entry_mm"], float)
        u = (pos - entry) / np.linalg.norm(pos - entry)
        needles.append(Needle(id=f"S{n:02d}", entry_mm=entry, tip_mm=pos + 5.0 * u, hole=s.get("hole") or f"X{n}"))
        seeds.append(PlannedSeed(id=f"{name}-{n:02d}", needle_id=f"S{n:02d}", position_mm=pos))
    return Plan(frame_of_reference_uid=frame_of_reference_uid, ct_series_uid=ct_series_uid, target=base.target,
                prescription_gy=base.prescription_gy, seed_model=base.seed_model, seed_sk_u=base.seed_sk_u,
                needles=needles, seeds=seeds, extra={"supplementary_for": name})
