"""The intraoperative needle check: register the intraop CT to the pre-plan CT, find the needles along the
mapped tracks, measure each needle's deviation, its dose impact on the CTV's D90, and advise.

``check_needles`` is the whole pipeline over loaded inputs (the ``navigator needles`` command and the live
service call it); ``NeedleCheck.to_json`` is ``needles.json`` (cli-contract.md). Coordinates: the plan and the
CTV points in the pre-plan frame (LPS mm), the needles found in the intraop frame (LPS mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from navigator.core.plan import Plan, target_region
from navigator.core.volume import Volume, grid_volume
from navigator.errors import InputError
from navigator.imaging.needle_finding import NeedleFindingSettings, NeedleSearch, find_needles, planned_in_intraop
from navigator.imaging.registration import RegistrationResult, check_same_patient, register_rigid
from navigator.intraop import advice as advice_mod
from navigator.intraop.deviation import DoseImpact, NeedleDeviation, deviations_from_search
from navigator.physics import tg43
from navigator.physics.dose import dose_at_points

# An even subsample of the CTV keeps the D90 to ~0.1 Gy and the dose impact to about a second.
_MAX_CTV_POINTS = 6000


@dataclass(frozen=True)
class CheckOptions:
    tolerance_mm: float = 2.0
    metal_hu: float | None = None  # None: NeedleFindingSettings' default
    needle_ids: tuple[str, ...] | None = None  # check only these (those inserted so far); dose impact uses all seeds

    def __post_init__(self) -> None:
        if not self.tolerance_mm > 0:
            raise InputError(f"--tolerance-mm {self.tolerance_mm}: the tolerance must be > 0 mm (usually 2)")


@dataclass
class NeedleCheck:
    """One needle check's results; ``to_json()`` is needles.json."""

    registration: RegistrationResult
    options: CheckOptions
    deviations: list[NeedleDeviation]
    search: NeedleSearch
    intraop_ct: Volume
    ctv_source: str
    planned_d90_gy: float | None = None
    d90_all_as_found_gy: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def out_of_tolerance(self) -> list[NeedleDeviation]:
        return [d for d in self.deviations if not d.within_tolerance]

    def to_json(self) -> dict:
        return {
            "registration": self.registration.to_json(),
            "tolerance_mm": float(self.options.tolerance_mm),
            "needles": [d.to_json() for d in self.deviations],
            "unexpected_needles": [f.to_json() for f in self.search.unexpected],
            "out_of_tolerance": len(self.out_of_tolerance),
            "not_found": sum(1 for d in self.deviations if not d.found),
            "planned_d90_gy": None if self.planned_d90_gy is None else round(self.planned_d90_gy, 3),
            "d90_all_as_found_gy": None if self.d90_all_as_found_gy is None else round(self.d90_all_as_found_gy, 3),
            "ctv_source": self.ctv_source,
            "intraop_frame_of_reference_uid": self.intraop_ct.frame_of_reference_uid,
            "intraop_series_uid": self.intraop_ct.series_uid,
            "finding_seconds": round(self.search.seconds, 3),
        }


def check_inputs(plan: Plan, preplan_ct: Volume, intraop_ct: Volume, plan_name: str = "the plan",
                 preplan_name: str = "the pre-plan CT", intraop_name: str = "the intraop CT") -> None:
    """InputError/RegistrationError before any work: plan on this pre-plan CT, same patient, target covered."""
    if not plan.needles:
        raise InputError(f"{plan_name}: the plan has no needles to look for")
    if plan.frame_of_reference_uid != preplan_ct.frame_of_reference_uid:
        raise InputError(
            f"{plan_name} is in frame of reference {plan.frame_of_reference_uid!r} but {preplan_name} "
            f"is in {preplan_ct.frame_of_reference_uid!r}: the plan was not made on this CT. Give the CT "
            "the plan was made on (its plan.json names ct_series_uid), or re-plan on this CT")
    check_same_patient(preplan_ct, intraop_ct)
    # before registering: the intraop scan must reach the target's neighbourhood (patient motion is a few
    # centimetres at most); after registering, the mapped target itself must lie inside it
    _check_covers(intraop_ct, target_region(plan)[0], intraop_name, margin_mm=30.0)


def register_to_plan(plan: Plan, preplan_ct: Volume, intraop_ct: Volume) -> RegistrationResult:
    """Rigid pre-plan -> intraop registration around the target, its error estimated at the planned tips."""
    centre, half = target_region(plan)
    tips = np.array([n.tip_mm for n in plan.needles])
    return register_rigid(preplan_ct, intraop_ct, region_mm=(centre, half), check_points_mm=tips)


def check_needles(plan: Plan, intraop_ct: Volume, reg: RegistrationResult, ctv_points_mm, ctv_source: str,
                  options: CheckOptions = CheckOptions(), intraop_name: str = "the intraop CT") -> NeedleCheck:
    """Find the plan's needles in the registered intraop CT; deviation, dose impact and advice for each."""
    settings = NeedleFindingSettings() if options.metal_hu is None else NeedleFindingSettings(metal_hu=options.metal_hu)
    planned = _selected(planned_in_intraop(plan, reg), plan, options.needle_ids)
    _check_covers(intraop_ct, reg.map_fixed_to_moving(target_region(plan)[0]), intraop_name)
    search = find_needles(intraop_ct, planned, settings)
    devs = deviations_from_search(search, options.tolerance_mm)
    impact = _impact(plan, ctv_points_mm)
    moves = _advise(plan, reg, devs, impact)
    return NeedleCheck(
        registration=reg, options=options, deviations=devs, search=search, intraop_ct=intraop_ct,
        ctv_source=ctv_source,
        planned_d90_gy=None if impact is None else impact.planned_d90_gy,
        d90_all_as_found_gy=None if impact is None or not moves else impact.all_moved_d90_gy(moves))


def ctv_points(plan: Plan, ctv=None, frame_of_reference_uid: str = "") -> tuple[np.ndarray | None, str]:
    """Equal-volume CTV sample points (pre-plan LPS mm) for the D90 and a note of where they came from.

    ``ctv``: a ``core.Structure`` (and the text naming it as ``ctv.name``) or None; without one, the prescription
    isodose of the planned seeds stands in for the CTV (said in the note)."""
    if ctv is not None:
        from navigator.anatomy.structures import structure_mask

        lo, hi = ctv.bounds_mm()
        grid = grid_volume(lo - 2.0, hi + 2.0, 1.5, frame_of_reference_uid=frame_of_reference_uid)
        mask = structure_mask(ctv, grid)
        if mask.any():
            return grid.voxel_centers_lps(mask), None
    if not plan.seeds:
        return None, "none (the plan has no seeds)"
    seeds = plan.seed_positions_mm()
    grid = grid_volume(seeds.min(0) - 10.0, seeds.max(0) + 10.0, 2.0)
    pts = grid.voxel_centers_lps()
    model = tg43.load_seed_model(plan.seed_model)
    dose = dose_at_points(pts, seeds, plan.seed_axes(), plan.seed_sk_u, model)
    return pts[dose >= plan.prescription_gy], "prescription isodose of the planned seeds (no CTV structure found)"


def _selected(planned: list, plan: Plan, needle_ids) -> list:
    if not needle_ids:
        return planned
    unknown = [v for v in needle_ids if v not in {n.id for n in plan.needles}]
    if unknown:
        raise InputError(f"--needles names {unknown}, which the plan does not have; its needles are "
                         f"{[n.id for n in plan.needles]}")
    return [p for p in planned if p[0] in needle_ids]


def _impact(plan: Plan, pts) -> DoseImpact | None:
    if pts is None or len(pts) == 0 or not plan.seeds:
        return None
    model = tg43.load_seed_model(plan.seed_model)
    if len(pts) > _MAX_CTV_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, _MAX_CTV_POINTS).astype(int)]
    return DoseImpact(pts, plan.seed_positions_mm(), plan.seed_axes(), [s.needle_id for s in plan.seeds],
                      plan.seed_sk_u, model)


def _advise(plan: Plan, reg: RegistrationResult, devs: list[NeedleDeviation], impact: DoseImpact | None) -> dict:
    """Sets each deviation's dose impact and advice; returns the found needles' moves in the pre-plan frame."""
    intraop_to_preplan = reg.moving_to_fixed
    holes = advice_mod.HoleLocator(plan)
    moves = {}
    for d in devs:
        needle = plan.needle(d.needle_id)
        lat_pre = None
        if d.found:
            tip_pre = intraop_to_preplan.apply(d.tip_mm)
            axis_pre = intraop_to_preplan.rotate(d.found_axis)
            moves[d.needle_id] = (needle.tip_mm, needle.axis, tip_pre, axis_pre)
            if impact is not None:
                d.d90_change_gy = impact.d90_change_gy(d.needle_id, needle.tip_mm, needle.axis, tip_pre, axis_pre)
            lat_pre = intraop_to_preplan.rotate(d.lateral_vector_mm)
        d.advice = advice_mod.advise(d, holes, needle.entry_mm, lat_pre, needle.hole)
    return moves


def _check_covers(ct: Volume, point_mm, ct_name: str, margin_mm: float = 0.0) -> None:
    """InputError when the intraop CT does not reach the target region (with a margin for patient motion)."""
    if ct.contains_lps(point_mm, margin_vox=margin_mm / float(ct.spacing_mm.max())):
        return
    lo = ct.ijk_to_lps(np.zeros(3))
    hi = ct.ijk_to_lps(np.array(ct.shape_ijk, float) - 1)
    a, b = np.minimum(lo, hi), np.maximum(lo, hi)
    raise InputError(
        f"{ct_name}: the intraop CT covers x {a[0]:.0f}..{b[0]:.0f}, y {a[1]:.0f}..{b[1]:.0f}, "
        f"z {a[2]:.0f}..{b[2]:.0f} mm and does not include the target region around "
        f"[{point_mm[0]:.0f}, {point_mm[1]:.0f}, {point_mm[2]:.0f}] mm; scan over the target and the needle tips")
