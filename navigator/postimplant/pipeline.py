"""The post-implant pipeline: register the pre-plan CT to the post-implant CT, map the CTV and OARs, find the
seeds, compute the delivered dose (TG-43 from the found seeds and their axes), the metrics, the cold spots,
and propose supplementary seeds. Returns the ``postimplant.json`` dict of cli-contract.md (plus extra keys)
and the volumes the command writes (RT Dose) and draws (postimplant.html).

Stages of ``run_postimplant``: ``_check_inputs`` (same patient, same plan CT, a scan with seeds),
``preplan_masks``, ``_register``, ``_find`` (seeds), ``evaluate_seeds`` (dose grid, metrics, cold spots and
the supplementary proposal of any set of seeds: usable on its own with known seeds), ``_preplan_reference``
(the plan's own DVH) and ``_result_json``. The proposal's ``missing_from_ledger`` is the plan's seed count less
``expected_seeds`` (the ledger's released count; None when no ledger count was given).

Frames: every coordinate in the result is LPS mm of the post-implant CT. The registration maps pre-plan
(fixed) points into it (``fixed_to_moving``); the pre-plan masks are resampled through it as fractional
occupancy (trilinear), which the DVH uses as weights; cold spots use occupancy >= 0.5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from navigator.physics import dvh, tg43
from navigator.anatomy import targets
from navigator.anatomy.structures import mask_of
from navigator.postimplant.coldspots import DEFAULT_MIN_VOLUME_CC, ColdSpotResult, find_cold_spots
from navigator.physics.dose import dose_on_grid
from navigator.errors import InputError, PlanError
from navigator.core.volume import Volume, box_slices, coarsen, crop, grid_volume, voxel_box
from navigator.core.plan import Plan
from navigator.core.transform import RigidTransform
from navigator.imaging.registration import RegistrationResult, check_same_patient, register_rigid
from navigator.imaging.seed_finding import SeedFindingSettings, find_seeds
from navigator.physics.kernel import influence_matrix, kernel_table
from navigator.postimplant.supplement import (NeedleField, Proposal, SupplementSettings, coverage_targets, ctv_lattice,
                                              explain_count, freehand_candidates, planned_candidates,
                                              propose_supplementary, template_candidates, tilted_directions)

NEEDLE_FIELD_STEP_MM = 1.0   # grid of the supplementary needles' path masks (body, skin depth, no-go)
CERTAINLY_METAL_HU = 2500.0  # above any bone: a scan that reaches it holds metal, the early seed check is skipped
COMPARISON_KEYS = [("seed count", "seeds", ""), ("CTV volume", "ctv_cc", "cc"), ("D90", "D90_gy", "Gy"),
                   ("D100", "D100_gy", "Gy"), ("V100", "V100_pct", "%"), ("V150", "V150_pct", "%"), ("HI", "HI", "")]


@dataclass
class PostimplantOptions:
    expected_seeds: int | None = None      # delivery ledger count; None: the plan's seed count
    grid_mm: float = 1.0
    grid_margin_mm: float = 10.0
    max_dose_voxels: int = 1_500_000
    search_margin_mm: float = 40.0         # seeds are searched within this distance of the mapped CTV box
    cold_spot_min_cc: float = DEFAULT_MIN_VOLUME_CC
    max_ctv_points: int = 6000
    max_oar_points: int = 1500
    seed_finding: SeedFindingSettings = field(default_factory=SeedFindingSettings)
    supplement: SupplementSettings = field(default_factory=SupplementSettings)
    progress: object = None                # callable(str) or None
    # the supplementary paths' masks depend on the pre-plan only: a caller evaluating several scans of one
    # pre-plan (the live session) passes a dict that keeps them between evaluations
    field_cache: dict | None = None


@dataclass
class PostimplantResult:
    result: dict                 # postimplant.json
    dose: Volume                 # Gy on the post-implant dose grid (found seeds)
    dose_supplemented: Volume    # with the proposed seeds added
    ctv_weights: np.ndarray      # occupancy on the dose grid
    oar_weights: dict
    cold_masks: list
    preplan_dvh: object          # dvh.DVH of the plan's own seeds on the pre-plan CTV
    seeds_mm: np.ndarray
    seed_axes: np.ndarray
    supplementary_mm: np.ndarray


# --- pre-plan masks -------------------------------------------------------------------------------------
def preplan_masks(plan: Plan, ct: Volume, structures: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CTV and OAR masks (bool, pre-plan CT grid) from ``structures`` ({name: Structure or bool mask}).
    The CTV is the structure named "CTV" when there is one (the plan command writes it), else the plan's
    target grown by the plan's margin (default 5 mm) and clipped to the body, as ``navigator plan`` builds it."""
    names = {n.lower(): n for n in structures}
    if "ctv" in names:
        ctv = mask_of("CTV", structures[names["ctv"]], ct)
    else:
        tname = plan.target if plan.target in structures else names.get(plan.target.lower())
        if tname is None:
            raise PlanError(f"the plan's target '{plan.target}' is not in the structure set ({', '.join(sorted(structures))}); "
                            "give the RT Structure Set the plan was made with (--structures)")
        gtv = mask_of(tname, structures[tname], ct)
        margin = float((plan.extra.get("ctv") or {}).get("margin_mm", 5.0))
        ctv = targets.ctv_mask(gtv, ct, margin, body=targets.body_mask(ct), rule="surface", beyond_grid="error")
    if not ctv.any():
        raise PlanError("the CTV is empty on the pre-plan CT; check the structure set belongs to this CT")
    wanted = list((plan.metrics.get("oars") or {}).keys())
    if not wanted:
        wanted = [n for n in structures if not targets.is_target_name(n) and n != plan.target
                  and targets.classify_oar(n) != "skin" and "needle" not in n.lower()]
    oars = {}
    for n in wanted:
        key = n if n in structures else names.get(n.lower())
        if key is not None:
            oars[n] = mask_of(n, structures[key], ct)
    return ctv, oars


# --- geometry helpers -----------------------------------------------------------------------------------

def _mask_corners_lps(mask: np.ndarray, ct: Volume) -> np.ndarray:
    kk, jj, ii = np.nonzero(mask)
    lo = np.array([ii.min(), jj.min(), kk.min()], float) - 0.5
    hi = np.array([ii.max(), jj.max(), kk.max()], float) + 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return ct.ijk_to_lps(corners)


def dose_grid_over(points_lps: np.ndarray, ct: Volume, step_mm: float, margin_mm: float, max_voxels: int) -> Volume:
    """A grid in ``ct``'s orientation over the LPS points + margin, ``step_mm`` (coarser if too many voxels)."""
    local = (points_lps - ct.origin_mm) @ ct.direction        # mm along the ct's i, j, k axes
    return grid_volume(local.min(0) - margin_mm, local.max(0) + margin_mm, step_mm, like=ct, max_voxels=max_voxels,
                       cover=False)


def resample_mask(mask: np.ndarray, src: Volume, grid: Volume, grid_to_src, _coords=None) -> np.ndarray:
    """Occupancy (float32 0..1) of a bool mask on ``src`` at ``grid``'s voxel centres (trilinear), mapping the
    grid's LPS points into ``src``'s LPS frame with ``grid_to_src`` (4x4)."""
    coords = _coords if _coords is not None else _grid_coords_in(src, grid, grid_to_src)
    occ = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    return np.clip(occ, 0.0, 1.0).reshape(grid.array.shape).astype(np.float32)


def resample_masks(masks: dict, src: Volume, grid: Volume, grid_to_src) -> dict:
    """``resample_mask`` for several masks on the same grids (the coordinates computed once)."""
    coords = _grid_coords_in(src, grid, grid_to_src)
    return {n: resample_mask(m, src, grid, grid_to_src, coords) for n, m in masks.items()}


def _grid_coords_in(src: Volume, grid: Volume, grid_to_src) -> np.ndarray:
    ijk = src.lps_to_ijk(RigidTransform.of(grid_to_src).apply(grid.voxel_centers_lps()))
    return np.stack([ijk[:, 2], ijk[:, 1], ijk[:, 0]])       # numpy (k, j, i) order for map_coordinates


def _r3(v):
    return [round(float(x), 3) for x in v]


# --- the pipeline ---------------------------------------------------------------------------------------
def run_postimplant(plan: Plan, preplan_ct: Volume, post_ct: Volume, structures: dict,
                    options: PostimplantOptions | None = None,
                    registration: RegistrationResult | None = None,
                    masks: tuple[np.ndarray, dict] | None = None) -> PostimplantResult:
    """The whole post-implant evaluation; see the module docstring. ``structures``: the pre-plan structure
    set ({name: Structure} or {name: bool mask on ``preplan_ct``}). ``registration``: a known pre-plan ->
    post-implant registration (else computed). ``masks``: ``preplan_masks(plan, preplan_ct, structures)`` when the
    caller keeps them (the live session computes them once per pre-plan). Raises InputError for a scan of another patient, a plan made
    on another CT, a scan with no seeds."""
    o = options or PostimplantOptions()
    t_all = time.perf_counter()
    _check_inputs(plan, preplan_ct, post_ct, o)
    t = time.perf_counter()
    ctv_pre, oars_pre = masks if masks is not None else preplan_masks(plan, preplan_ct, structures)
    timing = {"masks": time.perf_counter() - t}
    t = time.perf_counter()
    registration = _register(preplan_ct, post_ct, ctv_pre, registration, o)
    timing["registration"] = time.perf_counter() - t
    found, expected = _find(plan, post_ct, ctv_pre, preplan_ct, registration.fixed_to_moving, o)
    timing["seed_finding"] = found.seconds
    ev = evaluate_seeds(plan, preplan_ct, post_ct, ctv_pre, oars_pre, found.positions_mm, found.axes,
                        registration.fixed_to_moving, o)
    timing.update(ev.timing)
    pre_dvh, preplan_metrics = _preplan_reference(plan, preplan_ct, ctv_pre, o)
    result = _result_json(plan, post_ct, found, expected, ev, preplan_metrics, registration, o)
    result["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    result["seconds"] = round(time.perf_counter() - t_all, 3)
    return PostimplantResult(result=result, dose=ev.dose, dose_supplemented=ev.dose_supplemented,
                             ctv_weights=ev.ctv_weights, oar_weights=ev.oar_weights,
                             cold_masks=[c.mask for c in ev.cold.spots], preplan_dvh=pre_dvh,
                             seeds_mm=found.positions_mm, seed_axes=found.axes, supplementary_mm=ev.supplementary_mm)


@dataclass
class Evaluation:
    """The dose of a set of implanted seeds, what it lacks and the seeds that would restore it (post-implant
    LPS mm; the dose grid in the post-implant CT's orientation)."""

    grid: Volume
    dose: Volume                 # Gy, the implanted seeds
    ctv_weights: np.ndarray      # occupancy on the grid
    oar_weights: dict
    metrics: dict
    cold: ColdSpotResult
    proposal: Proposal
    supplementary: dict          # postimplant.json's "supplementary"
    supplementary_mm: np.ndarray
    dose_supplemented: Volume
    timing: dict


def evaluate_seeds(plan: Plan, preplan_ct: Volume, post_ct: Volume, ctv_pre: np.ndarray, oars_pre: dict,
                   seeds_mm: np.ndarray, axes: np.ndarray, pre_to_post, o: PostimplantOptions | None = None) -> Evaluation:
    """Dose, metrics, cold spots and the supplementary proposal of seeds at ``seeds_mm`` (post-implant LPS
    mm, axes (N, 3)); ``ctv_pre``/``oars_pre``: ``preplan_masks``; ``pre_to_post``: pre-plan -> post-implant."""
    o = o or PostimplantOptions()
    say = o.progress or (lambda msg: None)
    pre_to_post = RigidTransform.of(pre_to_post)
    post_to_pre = pre_to_post.inverse()
    rx, sk, model = float(plan.prescription_gy), float(plan.seed_sk_u), tg43.load_seed_model(plan.seed_model)
    t = time.perf_counter()
    say(f"dose of {len(seeds_mm)} seeds")
    corners_pre = _mask_corners_lps(ctv_pre, preplan_ct)
    grid = dose_grid_over(pre_to_post.apply(corners_pre), post_ct, o.grid_mm, o.grid_margin_mm, o.max_dose_voxels)
    mapped = resample_masks({"__ctv__": ctv_pre, **oars_pre}, preplan_ct, grid, post_to_pre)
    ctv_w = mapped.pop("__ctv__")
    oar_w = {n: w for n, w in mapped.items() if w.sum() > 0}
    dose = grid.with_array(dose_on_grid(grid, seeds_mm, axes, sk, model))
    metrics = dvh.plan_metrics(dose, ctv_w, oar_w, rx)
    timing = {"dose_and_metrics": time.perf_counter() - t}
    ctv_mask = ctv_w >= 0.5
    planned_dose = dose_on_grid(grid, pre_to_post.apply(plan.seed_positions_mm()), pre_to_post.rotate(plan.seed_axes()),
                                sk, model) if len(plan.seeds) else None
    cold = find_cold_spots(dose.array, ctv_mask, grid, rx, o.cold_spot_min_cc, reference_gy=planned_dose)

    t = time.perf_counter()
    say("proposing supplementary seeds")
    proposal, extra_mm, extra_axes, t_sup = _supplement(plan, preplan_ct, oars_pre, corners_pre, pre_to_post,
                                                        grid, dose, ctv_mask, oar_w, seeds_mm, o)
    timing.update(t_sup)
    dose_sup = dose
    if len(extra_mm):
        dose_sup = grid.with_array(dose_on_grid(grid, np.vstack([seeds_mm, extra_mm]),
                                                np.vstack([axes, extra_axes]), sk, model))
    predicted = dvh.plan_metrics(dose_sup, ctv_w, oar_w, rx)
    timing["supplement_total"] = time.perf_counter() - t
    released = o.expected_seeds
    missing_ledger = None if released is None else max(0, len(plan.seeds) - int(released))
    why = explain_count(proposal, len(plan.seeds), released, len(seeds_mm))
    supplementary = {**proposal.to_dict(), "predicted_metrics": predicted, "missing_from_ledger": missing_ledger,
                     "why": why}
    return Evaluation(grid=grid, dose=dose, ctv_weights=ctv_w, oar_weights=oar_w, metrics=metrics, cold=cold,
                      proposal=proposal, supplementary=supplementary, supplementary_mm=extra_mm,
                      dose_supplemented=dose_sup, timing=timing)


# --- stages of run_postimplant --------------------------------------------------------------------------
def _check_inputs(plan: Plan, preplan_ct: Volume, post_ct: Volume, o: PostimplantOptions) -> None:
    check_same_patient(preplan_ct, post_ct)
    if plan.frame_of_reference_uid and preplan_ct.frame_of_reference_uid and \
            plan.frame_of_reference_uid != preplan_ct.frame_of_reference_uid:
        raise PlanError(f"the plan was made on frame of reference {plan.frame_of_reference_uid} but the pre-plan CT "
                        f"given is in {preplan_ct.frame_of_reference_uid}; give the CT the plan was made on")
    tg43.load_seed_model(plan.seed_model)
    # a scan with no seeds (the pre-plan CT given twice...) is refused before the slow registration; a scan
    # with metal far brighter than bone needs no such check (the finder runs once, after the registration)
    if float(np.nanmax(post_ct.array)) < CERTAINLY_METAL_HU:
        find_seeds(post_ct, settings=o.seed_finding)


def _register(preplan_ct: Volume, post_ct: Volume, ctv_pre: np.ndarray, registration, o) -> RegistrationResult:
    """Pre-plan (fixed) -> post-implant (moving), around the CTV (unless given)."""
    if registration is not None:
        return registration
    (o.progress or (lambda msg: None))("registering the pre-plan CT to the post-implant CT")
    corners_pre = _mask_corners_lps(ctv_pre, preplan_ct)
    centre = corners_pre.mean(0)
    half = float(np.max(np.abs(corners_pre - centre))) + 30.0
    return register_rigid(preplan_ct, post_ct, region_mm=(centre, half))


def _find(plan: Plan, post_ct: Volume, ctv_pre: np.ndarray, preplan_ct: Volume, pre_to_post, o):
    """The seeds in the post-implant CT near the mapped CTV, matched to the plan's; (found, expected count)."""
    (o.progress or (lambda msg: None))("finding the seeds")
    planned = plan.seed_positions_mm()
    planned_post = pre_to_post.apply(planned) if len(planned) else planned
    planned_axes_post = pre_to_post.rotate(plan.seed_axes()) if len(planned) else None
    expected = o.expected_seeds if o.expected_seeds is not None else (len(planned) or None)
    roi = _search_roi(post_ct, pre_to_post.apply(_mask_corners_lps(ctv_pre, preplan_ct)), o.search_margin_mm)
    found = find_seeds(post_ct, expected=expected, planned_mm=planned_post, planned_axes=planned_axes_post,
                       settings=o.seed_finding, roi_mask=roi)
    return found, expected


def _preplan_reference(plan: Plan, preplan_ct: Volume, ctv_pre: np.ndarray, o: PostimplantOptions):
    """The plan's own dose on the pre-plan CTV, for the DVH comparison: (DVH, metrics)."""
    rx, sk, model = float(plan.prescription_gy), float(plan.seed_sk_u), tg43.load_seed_model(plan.seed_model)
    planned = plan.seed_positions_mm()
    pre_grid = dose_grid_over(_mask_corners_lps(ctv_pre, preplan_ct), preplan_ct, o.grid_mm, 2.0, o.max_dose_voxels)
    pre_w = resample_mask(ctv_pre, preplan_ct, pre_grid, np.eye(4))
    pre_dose = dose_on_grid(pre_grid, planned, plan.seed_axes(), sk, model) if len(planned) else \
        np.zeros(pre_grid.array.shape, np.float32)
    pre_dvh = dvh.DVH.from_dose(pre_dose, pre_w, pre_grid.voxel_volume_cc)
    return pre_dvh, plan.metrics or dvh.plan_metrics(pre_grid.with_array(pre_dose), pre_w, {}, rx)


def _result_json(plan: Plan, post_ct: Volume, found, expected, ev: Evaluation, preplan_metrics: dict,
                 registration: RegistrationResult, o: PostimplantOptions) -> dict:
    """postimplant.json (cli-contract.md), less the timings."""
    rx, metrics, n_found = float(plan.prescription_gy), ev.metrics, len(found.positions_mm)
    warnings = list(found.warnings)
    if metrics["D90_gy"] < rx:
        warnings.append(f"delivered D90 {metrics['D90_gy']:.1f} Gy is below the prescription {rx:.1f} Gy; "
                        f"{len(ev.proposal.seeds)} supplementary seed(s) proposed")
    if found.missing:
        warnings.append(f"{found.missing} seed(s) of the {expected} expected were not found in the scan")
    grid = ev.grid
    return {
        "frame_of_reference_uid": post_ct.frame_of_reference_uid,
        "ct_series_uid": post_ct.series_uid,
        "prescription_gy": rx,
        "seed_model": plan.seed_model,
        "seed_sk_u": float(plan.seed_sk_u),
        "seeds": [s.to_dict() for s in found.seeds],
        "expected_seeds": expected,
        "metrics": metrics,
        "preplan_metrics": preplan_metrics,
        "cold_spots": [c.to_dict() for c in ev.cold.spots],
        "supplementary": ev.supplementary,
        "cold_spot_threshold_cc": ev.cold.min_volume_cc,
        "cold_spot_summary": ev.cold.to_dict(),
        "warnings": warnings,
        "migrated": found.migrated,
        "missing": found.missing,
        "unmatched_planned_seeds": [plan.seeds[j].id for j in found.unmatched_planned],
        "seed_finding": {"blobs": found.blobs, "seed_integral_hu_cc": round(found.seed_integral_hu_cc, 3),
                         "settings": dict(o.seed_finding.__dict__), "seconds": round(found.seconds, 3),
                         "appearance": found.appearance.to_dict() if found.appearance else None,
                         "axis_from_needle": sum(s.axis_source == "needle" for s in found.seeds)},
        "comparison": _comparison(len(plan.seeds), preplan_metrics, n_found, metrics,
                                  n_found + len(ev.supplementary_mm), ev.supplementary["predicted_metrics"]),
        "registration": registration.to_json(),
        "dose_grid": {"spacing_mm": grid.spacing_mm.tolist(), "shape_ijk": list(grid.shape_ijk),
                      "origin_mm": _r3(grid.origin_mm)},
    }


def _search_roi(ct: Volume, corners_lps: np.ndarray, margin_mm: float) -> np.ndarray:
    # empty when the mapped CTV box misses the scan: there is then nowhere to look for this CTV's seeds
    lo, hi = voxel_box(ct, corners_lps, margin_mm, allow_empty=True)
    roi = np.zeros(ct.array.shape, bool)
    roi[box_slices(lo, hi)] = True
    return roi


def _comparison(n_pre, pre, n_post, post, n_sup, sup) -> list[dict]:
    rows = []
    for label, key, unit in COMPARISON_KEYS:
        if key == "seeds":
            vals = (n_pre, n_post, n_sup)
        else:
            vals = tuple(None if m.get(key) is None else round(float(m[key]), 3) for m in (pre, post, sup))
        rows.append({"quantity": label, "unit": unit, "preplan": vals[0], "postimplant": vals[1],
                     "with_supplementary": vals[2]})
    return rows


# --- supplementary seeds --------------------------------------------------------------------------------
def _needle_field(preplan_ct: Volume, oars_pre: dict, corners_pre: np.ndarray, post_to_pre, s,
                  cache: dict | None = None) -> NeedleField:
    key = (preplan_ct.series_uid, tuple(np.round(corners_pre, 2).ravel()), float(s.max_path_mm))
    if cache is not None and key in cache:
        return replace(cache[key], post_to_field=post_to_pre)
    # the masks for the paths on a crop of the pre-plan CT: a path leaving the crop inside the body is refused
    # on a grid of >= 1 mm: a path's clearances (2 mm) and skin depth (10 mm) need no finer, and a 0.5 mm
    # scan's crop would take seconds to transform (the post-implant result should be on screen in seconds)
    fine, sl = crop(preplan_ct, corners_pre, min(s.max_path_mm, 70.0))
    sub, _ = coarsen(fine, NEEDLE_FIELD_STEP_MM)
    body = targets.body_mask(sub)
    skin = targets.skin_depth_mm(body, sub)
    oars = {n: coarsen(fine.with_array(m[sl]), NEEDLE_FIELD_STEP_MM, reduce="max")[0].array
            for n, m in oars_pre.items()}
    nogo, _ = targets.nogo_mask(sub, body, oars, clearance_mm=2.0)
    fld = NeedleField(grid=sub, body=body, skin_depth_mm=skin, nogo=nogo, post_to_field=post_to_pre)
    if cache is not None:
        cache.clear()  # one pre-plan's field at a time
        cache[key] = fld
    return fld


def prepare_needle_field(preplan_ct: Volume, ctv_pre: np.ndarray, oars_pre: dict, cache: dict,
                         o: PostimplantOptions | None = None) -> None:
    """Fill ``cache`` (``PostimplantOptions.field_cache``) with the supplementary paths' masks of this pre-plan
    before a post-implant scan needs them (the live session does it while it waits for scans)."""
    o = o or PostimplantOptions()
    _needle_field(preplan_ct, oars_pre, _mask_corners_lps(ctv_pre, preplan_ct), RigidTransform.identity(),
                  o.supplement, cache)


def _candidates(plan: Plan, pre_to_post, grid: Volume, ctv_mask: np.ndarray, fld: NeedleField, s) -> list:
    """Template paths, freehand paths to a CTV lattice, and the plan's own positions."""
    from navigator.core.template import GuideTemplate

    cands, tpl = [], None
    if plan.extra.get("template"):
        try:
            tpl = GuideTemplate.from_dict(plan.extra["template"])
        except (KeyError, TypeError, ValueError, InputError):
            tpl = None
    if tpl is not None:
        cands += template_candidates(tpl, pre_to_post, grid, ctv_mask, fld, s)
        main_dir = pre_to_post.rotate(tpl.normal_lps)
    elif plan.needles:
        a = np.mean([n.axis for n in plan.needles], axis=0)
        main_dir = pre_to_post.rotate(a / np.linalg.norm(a))
    else:
        main_dir = np.array([0.0, 1.0, 0.0])   # anterior: the usual CT-guided approach
    lattice = ctv_lattice(grid, ctv_mask, s.step_mm)
    free = freehand_candidates(lattice, tilted_directions(main_dir, s.tilts_deg), fld, s)
    if cands and free:
        tp = np.array([c.position_mm for c in cands])
        free = [c for c in free if np.linalg.norm(tp - c.position_mm, axis=1).min() > 0.5 * s.step_mm]
    cands += free
    if len(plan.seeds):
        cands += planned_candidates(pre_to_post.apply(plan.seed_positions_mm()),
                                    pre_to_post.rotate(plan.seed_axes()), fld, s)
    return cands


def _sample_points(grid: Volume, dose: Volume, ctv_mask: np.ndarray, oar_w: dict, plan: Plan, rx: float,
                   o: PostimplantOptions) -> tuple[np.ndarray, np.ndarray, dict]:
    """CTV sample points with their dose; per OAR its points, dose, D0.1cc limit and the cc a point stands for."""
    rng = np.random.default_rng(0)
    kk, jj, ii = np.nonzero(ctv_mask)
    idx = np.arange(len(kk))
    if len(idx) > o.max_ctv_points:
        idx = rng.choice(idx, o.max_ctv_points, replace=False)
    ctv_pts = grid.ijk_to_lps(np.stack([ii[idx], jj[idx], kk[idx]], axis=1))
    ctv_d = dose.array[kk[idx], jj[idx], ii[idx]]
    limits = plan.extra.get("oar_limits") or {}
    oars = {}
    for n, w in oar_w.items():
        k2, j2, i2 = np.nonzero(w >= 0.5)
        if not len(k2):
            continue
        sel = np.arange(len(k2))
        if len(sel) > o.max_oar_points:
            sel = rng.choice(sel, o.max_oar_points, replace=False)
        lim = (limits.get(n) or {}).get("D0.1cc_gy") or targets.oar_limit(n, rx)["D0.1cc_gy"]
        oars[n] = {"points_mm": grid.ijk_to_lps(np.stack([i2[sel], j2[sel], k2[sel]], axis=1)),
                   "dose_gy": dose.array[k2[sel], j2[sel], i2[sel]], "limit_gy": float(lim),
                   "point_cc": len(k2) * grid.voxel_volume_cc / len(sel)}
    return ctv_pts, ctv_d, oars


def _plan_targets(plan: Plan, pre_to_post, ctv_pts: np.ndarray, ctv_d: np.ndarray, rx: float, s) -> dict:
    """``coverage_targets`` from the plan's goals (plan.extra["checks"]) and the planned seeds' dose at the
    same CTV points (the plan mapped into the post-implant frame)."""
    checks = plan.extra.get("checks") or {}
    v100_goal = (checks.get("V100_ge_goal") or {}).get("limit_pct")
    v150_goal = (checks.get("V150_le_max") or {}).get("limit_pct")
    plan_d = None
    if len(plan.seeds):
        kt = kernel_table(tg43.load_seed_model(plan.seed_model), float(plan.seed_sk_u))
        plan_d = influence_matrix(ctv_pts, pre_to_post.apply(plan.seed_positions_mm()),
                                  pre_to_post.rotate(plan.seed_axes()), kt).sum(0, dtype=np.float64)
    return coverage_targets(rx, s, plan_d, ctv_d, v100_goal_pct=v100_goal, v150_goal_pct=v150_goal,
                            plan_metrics=plan.metrics)


def _supplement(plan, preplan_ct, oars_pre, corners_pre, pre_to_post, grid, dose, ctv_mask, oar_w, seeds_mm,
                o: PostimplantOptions):
    s, rx = o.supplement, float(plan.prescription_gy)
    t0 = time.perf_counter()
    fld = _needle_field(preplan_ct, oars_pre, corners_pre, pre_to_post.inverse(), s, o.field_cache)
    t_masks = time.perf_counter() - t0
    t0 = time.perf_counter()
    cands = _candidates(plan, pre_to_post, grid, ctv_mask, fld, s)
    ctv_pts, ctv_d, oars = _sample_points(grid, dose, ctv_mask, oar_w, plan, rx, o)
    goal = _plan_targets(plan, pre_to_post, ctv_pts, ctv_d, rx, s)
    t_cand = time.perf_counter() - t0
    prop = propose_supplementary(ctv_pts, ctv_d, cands, seeds_mm, float(plan.seed_sk_u),
                                 tg43.load_seed_model(plan.seed_model), rx, oars, s, targets=goal)
    extra = np.array([c.position_mm for c in prop.seeds]).reshape(-1, 3)
    extra_axes = np.array([c.direction for c in prop.seeds]).reshape(-1, 3)
    times = {"supplement_masks": t_masks, "supplement_candidates": t_cand, "supplement_selection": prop.seconds,
             "supplement_proposal": t_cand + prop.seconds}
    return prop, extra, extra_axes, times
