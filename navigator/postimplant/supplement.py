"""Supplementary seeds: the fewest extra seeds, on needle paths that can be inserted, that bring the CTV's D90
back to the prescription and V100 up, without taking an OAR past its limit.

Candidates (all in post-implant LPS mm):
- template paths: lines through the guide template's holes along its normal (the plan's template, mapped
  through the registration), seeds every ``step_mm`` inside the CTV; entry = the hole's reference point;
- freehand paths: straight lines from the skin to points of a ``step_mm`` lattice in the CTV, along the
  plan's insertion direction and tilted from it by ``tilts_deg``; entry = where the line meets the skin.
A path is insertable when no sample along it (1 mm apart) lies in the no-go mask (bone, internal air, OARs
grown by a clearance) and the seed lies >= ``min_skin_depth_mm`` below the skin; a candidate closer than
``min_seed_distance_mm`` to a seed already there is dropped.

Selection is greedy on a dose-influence matrix (one seed's TG-43 dose at CTV sample points, the
planner's kernel table, ``physics.kernel``): each round adds the candidate with the largest gain in capped coverage
sum(min(Rx, d + A) - min(Rx, d)) whose addition keeps every OAR's D0.1cc (estimated on its sample points)
under its limit (an OAR the implanted seeds already took past it may rise by ``oar_over_limit_rise`` only), until D90 >= Rx and V100 >= the goal, or no candidate helps. The masks live on the pre-plan
CT (no seeds there to look like bone) and are sampled through ``post_to_field``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

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

    def to_dict(self) -> dict:
        return {
            "seeds": [{"position_mm": [round(float(v), 2) for v in c.position_mm],
                       "entry_mm": [round(float(v), 2) for v in c.entry_mm],
                       "direction": [round(float(v), 4) for v in c.direction],
                       "path": c.kind, "hole": c.hole} for c in self.seeds],
            "stop_reason": self.stop_reason, "candidates": self.candidates,
            "points_before": self.before_points, "points_after": self.predicted_points,
            "oar_d0.1cc_gy": self.oar_d01cc_gy, "seconds": round(self.seconds, 3),
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


def ctv_lattice(ctv_grid: Volume, ctv_mask: np.ndarray, step_mm: float) -> np.ndarray:
    """LPS points of a ``step_mm`` lattice (in the grid's axes) that fall inside the CTV."""
    stride = np.maximum(1, np.round(step_mm / ctv_grid.spacing_mm).astype(int))   # (i, j, k)
    sub = ctv_mask[::stride[2], ::stride[1], ::stride[0]]
    kk, jj, ii = np.nonzero(sub)
    ijk = np.stack([ii * stride[0], jj * stride[1], kk * stride[2]], axis=1)
    return ctv_grid.ijk_to_lps(ijk)


# --- selection ------------------------------------------------------------------------------------------
def _point_metrics(d: np.ndarray, rx_gy: float) -> dict:
    if not len(d):
        return {"D90_gy": 0.0, "V100_pct": 0.0}
    return {"D90_gy": round(float(np.percentile(d, 10)), 3), "V100_pct": round(float((d >= rx_gy).mean() * 100), 3)}


def _d01cc(d: np.ndarray, point_cc: float) -> np.ndarray:
    """D0.1cc estimated on sample points each standing for ``point_cc``; d (..., n) -> (...)."""
    n = d.shape[-1]
    k = int(np.clip(np.ceil(0.1 / max(point_cc, 1e-9)), 1, n))
    return np.partition(d, n - k, axis=-1)[..., n - k]


def propose_supplementary(ctv_points_mm: np.ndarray, ctv_dose_gy: np.ndarray, candidates: list[Candidate],
                          existing_seeds_mm: np.ndarray, sk_u: float, model, rx_gy: float,
                          oars: dict | None = None, settings: SupplementSettings = SupplementSettings(),
                          kernel=None) -> Proposal:
    """Greedy choice among ``candidates``. ``ctv_dose_gy``: the current dose at ``ctv_points_mm``.
    ``oars``: {name: {"points_mm": (n, 3), "dose_gy": (n,), "limit_gy": float, "point_cc": float}}."""
    t0 = time.perf_counter()
    s = settings
    oars = oars or {}
    d = np.asarray(ctv_dose_gy, float).copy()
    before = _point_metrics(d, rx_gy)
    existing = np.asarray(existing_seeds_mm, float).reshape(-1, 3)
    if candidates and len(existing):
        pos = np.array([c.position_mm for c in candidates])
        dmin = np.sqrt(((pos[:, None, :] - existing[None, :, :]) ** 2).sum(2)).min(1)
        candidates = [c for c, ok in zip(candidates, dmin >= s.min_seed_distance_mm) if ok]
    oar_info = {n: {"before": round(float(_d01cc(np.asarray(o["dose_gy"], float), o["point_cc"])), 2)}
                for n, o in oars.items() if len(o["points_mm"])}

    def goals_met(dd):
        m = _point_metrics(dd, rx_gy)
        return m["D90_gy"] >= s.d90_goal_rx * rx_gy and m["V100_pct"] >= s.v100_goal_pct

    chosen: list[Candidate] = []
    reason = "goals already met"
    if not goals_met(d):
        if not candidates:
            reason = "no insertable candidate position (no-go structures, skin depth or existing seeds)"
        else:
            kt = kernel or kernel_table(model, sk_u)
            P = np.array([c.position_mm for c in candidates])
            U = np.array([c.direction for c in candidates])
            A = influence_matrix(ctv_points_mm, P, U, kt).astype(np.float64)            # (C, n)
            B = {n: influence_matrix(o["points_mm"], P, U, kt).astype(np.float64)
                 for n, o in oars.items() if len(o["points_mm"])}
            od = {n: np.asarray(oars[n]["dose_gy"], float).copy() for n in B}
            oar_start = {n: float(_d01cc(od[n], oars[n]["point_cc"])) for n in B}
            alive = np.ones(len(candidates), bool)
            min_gain = s.min_gain_pct / 100.0 * len(d) * rx_gy
            reason = "maximum number of seeds reached"
            for _ in range(s.max_seeds):
                base = np.minimum(d, rx_gy).sum()
                gain = np.minimum(d[None, :] + A, rx_gy).sum(1) - base
                for n, Bn in B.items():
                    lim = oars[n]["limit_gy"]
                    if lim is None:
                        continue
                    new = _d01cc(od[n][None, :] + Bn, oars[n]["point_cc"])
                    # an OAR already past its limit (from the implanted seeds) may not be raised further
                    alive &= new <= max(lim, oar_start[n] * (1.0 + s.oar_over_limit_rise))
                gain[~alive] = -np.inf
                best = int(np.argmax(gain))
                if not np.isfinite(gain[best]) or gain[best] < min_gain:
                    reason = "no candidate raises the coverage without an OAR past its limit" \
                        if not np.isfinite(gain[best]) else "no candidate raises the coverage noticeably"
                    break
                chosen.append(candidates[best])
                d += A[best]
                for n in B:
                    od[n] += B[n][best]
                # later seeds keep their distance from this one
                far = np.linalg.norm(P - P[best], axis=1) >= s.min_seed_distance_mm
                alive &= far
                if goals_met(d):
                    reason = "goals met"
                    break
            for n in B:
                oar_info[n]["after"] = round(float(_d01cc(od[n], oars[n]["point_cc"])), 2)
                oar_info[n]["limit"] = oars[n]["limit_gy"]
    return Proposal(seeds=chosen, stop_reason=reason, candidates=len(candidates),
                    predicted_points=_point_metrics(d, rx_gy), before_points=before, oar_d01cc_gy=oar_info,
                    seconds=time.perf_counter() - t0)
