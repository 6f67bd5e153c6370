"""The patient as the intraoperative re-plan sees it: the CTV, the organs at risk, the body and the no-go mask
around the implant, a dose grid over the CTV, the optimiser's sample points, and the metrics of any seed set.

Everything is on the pre-plan CT (LPS mm of its frame) and built once per re-plan, on a crop of the CT around
the CTV and the needles (``core.crop``): the re-plan has a few seconds, not the pre-plan's minute. The rules
are the pre-plan's (``planning.pipeline``): seeds clear of the no-go mask (bone, internal air, the OARs, grown
by the plan's needle clearance) at both ends and the middle and >= the minimum skin depth below the skin; CTV
sample points, a conformity shell 2-12 mm outside it and the OARs' points within 25 mm of it. The metrics are
plan.json's: the CTV's on the dose grid with its partial-volume fraction (as ``navigator dose`` weighs it), each
OAR's at its CT voxel centres nearest the implant (TG-43 at points, as the pre-plan's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from navigator.anatomy import targets
from navigator.anatomy.structures import structure_fraction, structure_mask
from navigator.core.plan import Plan
from navigator.core.sampling import sample_nearest
from navigator.core.structure import Structure
from navigator.core.volume import Volume, crop, grid_volume
from navigator.errors import StructureError
from navigator.physics import dvh
from navigator.physics.dose import dose_on_grid
from navigator.physics.kernel import influence_matrix
from navigator.planning.needles import VERIFY_STEP_MM
from navigator.planning.optimize import PointPenalties

SEED_HALF_LENGTH_MM = 2.25   # an I-125 seed is 4.5 mm long: its ends are checked as well as its centre
SHELL_MM = (2.0, 12.0)       # conformity shell outside the CTV
OAR_REACH_MM = 25.0          # OAR points this close to the CTV carry its penalty
CANDIDATE_REACH_MM = 3.0     # a seed place this far outside the CTV at most
OAR_METRIC_VOXELS = 8000     # an OAR's metrics from its CT voxels nearest the seeds (its hottest 2 cc and more)


@dataclass
class ReplanAnatomy:
    """What the re-plan needs of the patient, on the pre-plan CT ``ct`` (LPS mm). ``oar_limits_gy``: each OAR's
    D0.1cc limit as in the plan; ``body``: the structure set's outline (None: an HU threshold on the CT)."""

    ct: Volume
    ctv: Structure
    oars: dict
    oar_limits_gy: dict
    body: Structure | None = None
    ctv_source: str = ""


@dataclass
class ReplanField:
    crop: Volume                 # the CT around the CTV and the needles
    skin_mm: np.ndarray          # skin depth on the crop
    nogo: np.ndarray             # on the crop
    oar_crop: dict               # {name: mask on the crop}
    grid: Volume                 # dose grid over the CTV
    ctv_w: np.ndarray            # CTV fraction on the dose grid
    ctv: np.ndarray              # CTV voxels (fraction >= 0.5) on the dose grid
    dist_out_mm: np.ndarray      # distance outside the CTV on the dose grid
    oar_grid: dict               # {name: mask on the dose grid}
    ctv_points: np.ndarray       # centres of the dose grid's voxels the CTV touches (LPS mm) ...
    ctv_weights: np.ndarray      # ... and the CTV's fraction of each
    oar_points: dict             # {name: centres of the OAR's dose-grid voxels}
    oar_voxels: dict             # {name: (its CT voxel centres nearest the implant, its volume on the crop, cc)}
    fixed_points: np.ndarray     # shell points, then the OARs' points
    n_shell: int
    oar_penalties: list          # PointPenalties per OAR with points
    oar_limits: list             # (name, limit) per OAR with points


def build_field(anatomy: ReplanAnatomy, around_mm: np.ndarray, clearance_mm: float, min_skin_depth_mm: float,
                dose_grid_mm: float, grid_margin_mm: float, max_dose_voxels: int,
                max_shell_points: int, max_oar_points: int) -> ReplanField:
    """The field of a re-plan: masks on a crop of the CT reaching ``around_mm`` (needle tips, seeds) and the
    CTV with room for the skin depth, and the dose grid with its sample points."""
    ct, ctv_s = anatomy.ct, anatomy.ctv
    lo, hi = ctv_s.bounds_mm()
    reach = max(30.0, 3.0 * min_skin_depth_mm)
    pts = np.vstack([lo, hi, np.asarray(around_mm, float).reshape(-1, 3)])
    sub, _ = crop(ct, pts, margin_mm=reach + 5.0)
    ctv_c = structure_mask(ctv_s, sub)
    if not ctv_c.any():
        raise StructureError(f"CTV '{ctv_s.name}' covers no voxel of the pre-plan CT; give the structure set the "
                             "plan was made on (its RTSTRUCT.dcm holds the CTV)")
    body = structure_mask(anatomy.body, sub) if anatomy.body is not None else targets.body_mask(sub)
    oar_c = {n: structure_mask(s, sub) for n, s in anatomy.oars.items()}
    skin = targets.skin_depth_mm(body, sub, near=ctv_c, reach_mm=reach)
    nogo, _ = targets.nogo_mask(sub, body, oar_c, clearance_mm=clearance_mm, track_step_mm=VERIFY_STEP_MM)
    grid = _dose_grid(sub, ctv_c, dose_grid_mm, grid_margin_mm, max_dose_voxels)
    ctv_w = structure_fraction(ctv_s, grid)
    ctv_g = ctv_w >= 0.5
    if not ctv_g.any():
        ctv_g = ctv_w > 0
    sampling = tuple(abs(float(s)) for s in grid.spacing_mm[::-1])  # numpy (k, j, i) meets (i, j, k) spacing
    dist_out = ndimage.distance_transform_edt(~ctv_g, sampling=sampling)
    body_g, _ = sample_nearest(body, sub, grid.voxel_centers_lps(), outside=False)
    body_g = body_g.reshape(grid.array.shape).astype(bool)
    oar_g = {n: structure_mask(s, grid) for n, s in anatomy.oars.items()}
    rng = np.random.default_rng(1)
    shell = body_g & ~ctv_g & (dist_out > SHELL_MM[0]) & (dist_out <= SHELL_MM[1])
    for m in oar_g.values():
        shell &= ~m
    s_pts = subsample(grid.voxel_centers_lps(shell), max_shell_points, rng)
    o_pts, o_pen, o_lim = [], [], []
    for n, m in oar_g.items():
        p = subsample(grid.voxel_centers_lps(m & (dist_out <= OAR_REACH_MM)), max_oar_points, rng)
        if len(p):
            lim = float(anatomy.oar_limits_gy[n])
            o_pts.append(p)
            # as the pre-plan: its hottest 0.1 cc weighs like the target (per-point weight of 300 points)
            o_pen.append(PointPenalties.uniform(len(p), over1=0.95 * lim, w_over1=3.0, over2=1.1 * lim,
                                                w_over2=10.0, weight=1.0 / 300.0))
            o_lim.append((n, lim))
    fixed = np.concatenate([s_pts] + o_pts) if (len(s_pts) or o_pts) else np.zeros((0, 3))
    touched = ctv_w > 0
    return ReplanField(crop=sub, skin_mm=skin, nogo=nogo, oar_crop=oar_c, grid=grid, ctv_w=ctv_w, ctv=ctv_g,
                       dist_out_mm=dist_out, oar_grid=oar_g, ctv_points=grid.voxel_centers_lps(touched),
                       ctv_weights=ctv_w[touched].astype(float),
                       oar_points={n: grid.voxel_centers_lps(m) for n, m in oar_g.items()},
                       oar_voxels={n: _nearest_voxels(sub, m, around_mm) for n, m in oar_c.items()},
                       fixed_points=fixed, n_shell=len(s_pts), oar_penalties=o_pen, oar_limits=o_lim)


def _dose_grid(sub: Volume, ctv: np.ndarray, step_mm: float, margin_mm: float, max_voxels: int) -> Volume:
    """A grid in the CT's orientation over the CTV + ``margin_mm`` (inside the crop), ``step_mm`` made coarser
    until it holds at most ``max_voxels``."""
    kk, jj, ii = np.nonzero(ctv)
    lo = np.array([ii.min(), jj.min(), kk.min()], float) * sub.spacing_mm - margin_mm
    hi = np.array([ii.max(), jj.max(), kk.max()], float) * sub.spacing_mm + margin_mm
    return grid_volume(lo, hi, step_mm, like=sub, max_voxels=max_voxels, cover=False)


def _nearest_voxels(sub: Volume, mask: np.ndarray, around_mm) -> tuple[np.ndarray, float]:
    """(the ``OAR_METRIC_VOXELS`` CT voxel centres of ``mask`` nearest the points ``around_mm``, its volume cc):
    an OAR's hottest part lies next to the seeds, and every seed of a re-plan lies near a found needle."""
    from scipy.spatial import cKDTree

    pts = sub.voxel_centers_lps(mask)
    cc = len(pts) * sub.voxel_volume_cc
    if len(pts) > OAR_METRIC_VOXELS:
        dist, _ = cKDTree(np.asarray(around_mm, float).reshape(-1, 3)).query(pts)
        pts = pts[np.argpartition(dist, OAR_METRIC_VOXELS)[:OAR_METRIC_VOXELS]]
    return pts, cc


def subsample(pts: np.ndarray, n: int, rng) -> np.ndarray:
    if len(pts) <= n:
        return pts
    return pts[np.sort(rng.choice(len(pts), n, replace=False))]


def allowed_places(fld: ReplanField, positions_mm: np.ndarray, axes: np.ndarray,
                   min_skin_depth_mm: float) -> dict:
    """Per candidate place (N,): bool arrays ``clear`` (the seed's ends and middle outside the no-go mask),
    ``deep`` (>= the minimum skin depth) and ``near`` (within ``CANDIDATE_REACH_MM`` of the CTV)."""
    clear = np.ones(len(positions_mm), bool)
    for off in (-SEED_HALF_LENGTH_MM, 0.0, SEED_HALF_LENGTH_MM):
        v, _ = sample_nearest(fld.nogo, fld.crop, positions_mm + off * axes, outside=True)
        clear &= ~v.astype(bool)
    sd, _ = sample_nearest(fld.skin_mm, fld.crop, positions_mm, outside=0.0)
    dist, _ = sample_nearest(fld.dist_out_mm, fld.grid, positions_mm, outside=np.inf)
    return {"clear": clear, "deep": sd >= min_skin_depth_mm, "near": dist <= CANDIDATE_REACH_MM,
            "skin_depth_mm": sd}


def evaluate(fld: ReplanField, plan: Plan, model, kt, rx_gy: float) -> tuple[dict, Volume]:
    """(plan.json metrics, dose on the dose grid) of ``plan``'s seeds (their axes = their needles')."""
    seeds, axes = plan.seed_positions_mm(), plan.seed_axes()
    dose = dose_on_grid(fld.grid, seeds, axes, plan.seed_sk_u, model) if len(seeds) else \
        np.zeros(fld.grid.array.shape, np.float32)
    vol = fld.grid.with_array(dose.astype(np.float32))
    vol.meta = {"kind": "dose", "units": "GY"}
    m = dvh.plan_metrics(vol, fld.ctv_w, {}, rx_gy)
    m["oars"] = {n: _oar_metrics(pts, cc, fld.crop.voxel_volume_cc, seeds, axes, kt)
                 for n, (pts, cc) in fld.oar_voxels.items()}
    return m, vol


def _oar_metrics(pts: np.ndarray, total_cc: float, voxel_cc: float, seeds, axes, kt) -> dict:
    """plan.json's OAR metrics from the TG-43 dose at the OAR's CT voxel centres ``pts`` (the pre-plan's method,
    ``pipeline._oar_metrics_at_voxels``); D2cc null when the OAR is < 2 cc."""
    if len(pts) == 0 or len(seeds) == 0:
        return {"Dmax_gy": 0.0, "D2cc_gy": None, "D0.1cc_gy": 0.0}
    dose = influence_matrix(pts, seeds, axes, kt).sum(axis=0, dtype=np.float64)
    m = dvh.oar_metrics(dose, np.ones(len(dose), bool), voxel_cc)
    if total_cc >= 2.0 and m["D2cc_gy"] is None:
        m["D2cc_gy"] = 0.0  # the nearest voxels hold < 2 cc: the structure's D2cc is below their minimum
    return {k: (None if v is None else round(float(v), 3)) for k, v in m.items()}


def d01cc_gy(dose_gy: np.ndarray, voxel_cc: float) -> float:
    """D0.1cc (Gy) of an OAR's voxel doses (0 where it has none): the optimiser's check on the dose grid."""
    if len(dose_gy) == 0:
        return 0.0
    d = np.sort(dose_gy)[::-1]
    return float(d[min(len(d), int(np.ceil(0.1 / voxel_cc))) - 1])
