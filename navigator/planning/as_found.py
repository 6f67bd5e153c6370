"""The needles as found (the intraoperative re-plan's first two steps, ``planning.replan``), in the pre-plan frame.

``needles_as_found``: the needle check (needles.json: intraop LPS mm, with the registration's ``fixed_to_moving``,
pre-plan -> intraop) mapped back to the pre-plan frame through ``intraop_to_preplan``, the registration's
inverse. A found needle keeps its id and hole; its tip is where it was found, its axis as found, and its entry
where that line crosses the template plane (through the planned hole's reference point, normal to the
template): depth 0 of the applicator, so a seed's depth is its distance from ``entry_mm`` along the needle.
Needles not found are dropped. The check must be of this plan (its ids, its planned tips, its frame).

``carried_loading``: the pre-plan's loading carried on the needles as found - each seed the planned distance back
from its needle's tip, where the applicator docked at the tip and retracted puts it; the seeds of the dropped
needles are not delivered ("as placed").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.core.transform import RigidTransform
from navigator.errors import InputError


@dataclass
class NeedlesAsFound:
    """The check's found needles in the pre-plan frame (LPS mm), in the plan's order."""

    needles: list[Needle]
    dropped: list[str]                   # planned needles not found
    intraop_to_preplan: RigidTransform
    moves: dict                          # {id: {"tip_moved_mm", "depth_change_mm", "angle_deg", "entry_offset_mm"}}

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.needles]


def needles_as_found(plan: Plan, check: dict, source: str = "needles.json",
                     mismatch_mm: float = 1.0) -> NeedlesAsFound:
    """The found needles of ``check`` (needles.json's dict) in the plan's frame; ``InputError`` when the check is
    not of this plan (other needle ids, planned tips elsewhere, another frame) or found no needle."""
    reg = check.get("registration") or {}
    try:
        preplan_to_intraop = RigidTransform(np.asarray(reg["fixed_to_moving"], float))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source}: no registration fixed_to_moving (4x4); give the needles.json written by "
                         "`navigator needles`") from None
    fixed_for = reg.get("fixed_frame_of_reference_uid")
    if fixed_for and fixed_for != plan.frame_of_reference_uid:
        raise InputError(f"{source}: its registration starts from frame of reference {fixed_for}, the plan is in "
                         f"{plan.frame_of_reference_uid}: the check is of another plan or CT; check the needles "
                         "with this plan (`navigator needles --plan ...`)")
    entries = {str(n.get("id")): n for n in check.get("needles") or []}
    planned = {n.id: n for n in plan.needles}
    unknown = sorted(set(entries) - set(planned))
    if unknown:
        raise InputError(f"{source} holds needle(s) {', '.join(unknown)}, which the plan does not have (its needles: "
                         f"{', '.join(planned)}): it is the check of another plan; check the needles with this plan")
    unchecked = [i for i in planned if i not in entries]
    if unchecked:
        raise InputError(f"{source} checked {len(entries)} of the plan's {len(planned)} needles (not checked: "
                         f"{', '.join(unchecked)}); re-plan on the check of all needles (`navigator needles` "
                         "without --needles)")
    intraop_to_preplan = preplan_to_intraop.inverse()
    normal = _template_normal(plan)
    needles, dropped, moves = [], [], {}
    for nid, n0 in planned.items():
        e = entries[nid]
        _check_same_plan(n0, e, preplan_to_intraop, source, mismatch_mm)
        if not e.get("found") or e.get("tip_mm") is None:
            dropped.append(nid)
            continue
        tip = intraop_to_preplan.apply(np.asarray(e["tip_mm"], float))
        if e.get("axis") is not None:
            axis = intraop_to_preplan.rotate(np.asarray(e["axis"], float))
        else:  # a finder without an axis: the line from the planned hole to the found tip
            axis = tip - n0.entry_mm
        axis = axis / np.linalg.norm(axis)
        axis = axis if np.dot(axis, n0.axis) >= 0 else -axis
        needles.append(_through_template(n0, tip, axis, normal if n0.hole else None, source))
        moves[nid] = {"tip_moved_mm": round(float(np.linalg.norm(tip - n0.tip_mm)), 3),
                      "depth_change_mm": round(float(np.dot(tip - n0.tip_mm, n0.axis)), 3),
                      "angle_deg": round(float(np.degrees(np.arccos(np.clip(np.dot(axis, n0.axis), -1, 1)))), 3),
                      "entry_offset_mm": round(float(np.linalg.norm(needles[-1].entry_mm - n0.entry_mm)), 3)}
    if not needles:
        raise InputError(f"{source}: none of the plan's {len(planned)} needles was found; there is nothing to "
                         "re-plan on: re-insert the needles and check them again")
    return NeedlesAsFound(needles, dropped, intraop_to_preplan, moves)


def _template_normal(plan: Plan) -> np.ndarray | None:
    n = (plan.extra.get("template") or {}).get("normal_lps")
    if n is None:
        return None
    n = np.asarray(n, float)
    return n / np.linalg.norm(n)


def _check_same_plan(n0: Needle, e: dict, preplan_to_intraop: RigidTransform, source: str, tol_mm: float) -> None:
    """The check's planned tip of this needle (intraop) must be the plan's, mapped by the check's registration."""
    if e.get("planned_tip_mm") is None:
        return
    off = float(np.linalg.norm(preplan_to_intraop.apply(n0.tip_mm) - np.asarray(e["planned_tip_mm"], float)))
    if off > tol_mm:
        raise InputError(f"{source}: needle {n0.id}'s planned tip lies {off:.1f} mm from this plan's (mapped through "
                         f"the check's registration; at most {tol_mm:g} mm): the check was made for another plan; "
                         "check the needles with this plan (`navigator needles --plan ...`)")


def _through_template(n0: Needle, tip: np.ndarray, axis: np.ndarray, normal, source: str) -> Needle:
    """The found needle (``tip``, ``axis``, pre-plan frame) entering where its line crosses the plane of the
    planned entry (normal: the template's, else the planned axis)."""
    nrm = n0.axis if normal is None else normal
    cos = float(np.dot(axis, nrm))
    if cos < 0.5:
        raise InputError(f"{source}: needle {n0.id} was found {np.degrees(np.arccos(np.clip(cos, -1, 1))):.0f} deg "
                         "from its template's direction; that is not a needle through its hole: check the scan")
    depth = float(np.dot(tip - n0.entry_mm, nrm)) / cos
    if depth < 1.0:
        raise InputError(f"{source}: needle {n0.id} was found with its tip {depth:.1f} mm from the template plane; "
                         "check the needle and the scan")
    return Needle(id=n0.id, entry_mm=tip - depth * axis, tip_mm=tip, hole=n0.hole)


def carried_loading(plan: Plan, found: NeedlesAsFound) -> Plan:
    """The pre-plan's seeds on the needles as found (each the planned distance back from its needle's tip);
    the seeds of needles not found are left out."""
    by_id = {n.id: n for n in found.needles}
    seeds = []
    for s in plan.seeds:
        n = by_id.get(s.needle_id)
        if n is None:
            continue
        n0 = plan.needle(s.needle_id)
        back = n0.length_mm - n0.depth_of(s.position_mm)
        seeds.append(PlannedSeed(s.id, s.needle_id, n.tip_mm - back * n.axis))
    return replace(plan, needles=[copy_needle(n) for n in found.needles], seeds=seeds, metrics={}, extra={})


def copy_needle(n: Needle) -> Needle:
    return Needle(id=n.id, entry_mm=n.entry_mm.copy(), tip_mm=n.tip_mm.copy(), hole=n.hole)
