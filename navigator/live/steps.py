"""The clinical steps the live session runs on a received series, over inputs kept warm in the process.

``Preplan`` holds what every later step needs, loaded once: the plan, the pre-plan CT, the structures and the
CTV sample points (so a needle check pays only for reading its scan, registering and finding the needles).
Each step returns its result dict (needles.json / postimplant.json / replan.json) and writes its files; journaling
and state changes are the session's job (``navigator.live.session``).

The intraoperative re-plan (``replan``) calls the planning functions ``navigator replan`` calls
(``planning.as_found.needles_as_found``, ``planning.replan.replan``) on the pre-plan held here and the needles.json
of a check, and writes the same four files. ``SeedDoses`` projects a delivery's dose on the CTV points as seeds
leave the applicator.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from navigator.core.plan import Plan
from navigator.core.volume import Volume
from navigator.errors import InputError
from navigator.io import write_json

log = logging.getLogger(__name__)


@dataclass
class Preplan:
    plan_path: Path
    ct_dir: Path
    structures_path: Path | None
    plan: Plan
    ct: Volume
    structures: dict
    ctv_points: np.ndarray | None
    ctv_note: str
    _masks: tuple | None = None
    field_cache: dict = field(default_factory=dict)  # the supplementary paths' masks, kept between evaluations

    def masks(self) -> tuple:
        """The CTV and OAR masks on the pre-plan CT (``postimplant.pipeline.preplan_masks``), made once."""
        if self._masks is None:
            from navigator.postimplant.pipeline import preplan_masks

            self._masks = preplan_masks(self.plan, self.ct, self.structures)
        return self._masks

    @property
    def patient_id(self) -> str:
        return (self.ct.patient_id or "").strip()

    def to_json(self) -> dict:
        return {"plan": str(self.plan_path), "preplan_ct": str(self.ct_dir),
                "structures": None if self.structures_path is None else str(self.structures_path),
                "patient_id": self.patient_id, "frame_of_reference_uid": self.ct.frame_of_reference_uid,
                "prescription_gy": self.plan.prescription_gy, "needles": len(self.plan.needles),
                "seeds": len(self.plan.seeds), "ctv_source": self.ctv_note}


def structures_json(pre: Preplan, max_points: int = 48, reach_mm: float = 15.0) -> dict:
    """The pre-plan's structures for the console's 3D view: each closed contour (pre-plan frame, LPS mm) with at
    most ``max_points`` points, its colour and its role (target, ctv, oar, body). Organs at risk only on the
    planes within ``reach_mm`` of the target's (a carotid or a cord runs the whole scan and would hide the node)."""
    from navigator.anatomy import targets

    target_z = [float(c[0, 2]) for n, s in pre.structures.items() if n == pre.plan.target or n.upper() == "CTV"
                for c in s.contours]
    z_lo, z_hi = (min(target_z) - reach_mm, max(target_z) + reach_mm) if target_z else (-np.inf, np.inf)
    out = []
    for name, s in pre.structures.items():
        if not s.contours:
            continue
        role = ("ctv" if name.upper().startswith("CTV") else "target" if name == pre.plan.target
                else "body" if targets.is_body_name(name) or targets.classify_oar(name) == "skin" else "oar")
        contours = []
        for c in s.contours:
            if role == "oar" and not z_lo <= float(c[0, 2]) <= z_hi:
                continue
            step = max(1, int(np.ceil(len(c) / max_points)))
            contours.append(np.round(c[::step], 1).tolist())
        out.append({"name": name, "role": role, "color": list(s.color) if s.color else None, "contours": contours})
    return {"frame_of_reference_uid": pre.ct.frame_of_reference_uid, "structures": out}


def structures_beside(plan_path: Path, ct_dir: Path) -> Path | None:
    """RTSTRUCT.dcm beside plan.json (``navigator plan`` writes it), else RS.dcm beside the CT folder."""
    for cand in (Path(plan_path).parent / "RTSTRUCT.dcm", Path(ct_dir).parent / "RS.dcm",
                 Path(ct_dir) / "RS.dcm"):
        if cand.is_file():
            return cand
    return None


def load_preplan(plan_path, ct_dir, structures_path=None) -> Preplan:
    """Load and check the pre-plan once: plan on this CT, structures, CTV points for the dose impact."""
    from navigator.intraop.check import ctv_points
    from navigator.io.dicom import load_ct_series, read_structure_set

    plan_path, ct_dir = Path(plan_path), Path(ct_dir)
    if not plan_path.is_file():
        raise InputError(f"--plan {plan_path}: file not found; give the plan.json written by `navigator plan`")
    plan = Plan.load(plan_path)
    ct = load_ct_series(ct_dir)
    if plan.frame_of_reference_uid != ct.frame_of_reference_uid:
        raise InputError(f"--plan {plan_path} is in frame of reference {plan.frame_of_reference_uid!r} but "
                         f"--preplan-ct {ct_dir} is in {ct.frame_of_reference_uid!r}: give the CT the plan was made on")
    rs = Path(structures_path) if structures_path else structures_beside(plan_path, ct_dir)
    structures = read_structure_set(rs, ct=ct) if rs is not None else {}
    ctv_name = ctv_name_of(plan, structures)
    pts, note = ctv_points(plan, structures.get(ctv_name), ct.frame_of_reference_uid)
    return Preplan(plan_path, ct_dir, rs, plan, ct, structures, pts, note or f"structure {ctv_name} of {rs}")


def ctv_name_of(plan: Plan, structures: dict) -> str | None:
    """The structure that is the CTV: ``CTV``, else the plan's named CTV, else its target (None: none of them)."""
    return next((n for n in ("CTV", (plan.extra.get("ctv") or {}).get("name"), plan.target)
                 if n and n in structures), None)


def needle_check(pre: Preplan, ct_dir: Path, tolerance_mm: float = 2.0) -> tuple[dict, Volume]:
    """needles.json's content for the intraop CT in ``ct_dir``, every planned needle (nothing written)."""
    from navigator.intraop.check import (
        CheckOptions,
        check_inputs,
        check_needles,
        register_to_plan,
    )
    from navigator.io.dicom import load_ct_series

    ct = load_ct_series(ct_dir)
    check_inputs(pre.plan, pre.ct, ct, plan_name=f"the plan {pre.plan_path}", intraop_name="the received CT")
    reg = register_to_plan(pre.plan, pre.ct, ct)
    check = check_needles(pre.plan, ct, reg, pre.ctv_points, pre.ctv_note, CheckOptions(tolerance_mm=tolerance_mm),
                          intraop_name="the received CT")
    return check.to_json(), ct


def write_needle_check(data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "registration.json", data["registration"])
    write_json(out / "needles.json", data)


def needles_html(pre: Preplan, data: dict, ct: Volume, out: Path) -> None:
    """needles.html (pictures; after the check is published, so it never delays it)."""
    from navigator.report.pages import needles_page

    try:
        (out / "needles.html").write_text(needles_page(data, ct, pre.plan))
    except Exception:  # a picture that fails must not take the check with it
        log.exception("needles.html for %s", out)


def postimplant(pre: Preplan, ct_dir: Path, expected_seeds: int | None) -> tuple[object, Volume]:
    """The post-implant evaluation of the CT in ``ct_dir`` (``postimplant.pipeline.PostimplantResult``; nothing
    written)."""
    from navigator.imaging.registration import check_same_patient
    from navigator.io.dicom import load_ct_series
    from navigator.postimplant.pipeline import PostimplantOptions, run_postimplant

    if not pre.structures:
        raise InputError("no pre-plan structure set: put RTSTRUCT.dcm beside plan.json (or RS.dcm beside the "
                         "pre-plan CT folder) and restart; the CTV and OARs come from it")
    post = load_ct_series(ct_dir)
    check_same_patient(pre.ct, post)
    res = run_postimplant(pre.plan, pre.ct, post, pre.structures,
                          PostimplantOptions(expected_seeds=expected_seeds, field_cache=pre.field_cache),
                          masks=pre.masks())
    return res, post


def write_postimplant(res, post: Volume, out: Path) -> None:
    """postimplant.json and RTDOSE.dcm."""
    from navigator.io.dicom import write_rtdose

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "postimplant.json", res.result)
    write_rtdose(out / "RTDOSE.dcm", res.dose, post, comment="post-implant dose, found seeds")


def postimplant_html(res, post: Volume, out: Path) -> None:
    from navigator.report.pages import PostimplantImages, postimplant_page

    try:
        (out / "postimplant.html").write_text(postimplant_page(res.result, PostimplantImages.from_result(res, post)))
    except Exception:
        log.exception("postimplant.html for %s", out)


def postimplant_summary(r: dict) -> dict:
    m = r["metrics"]
    return {"found": len(r["seeds"]), "expected": r.get("expected_seeds"), "D90_gy": m.get("D90_gy"),
            "V100_pct": m.get("V100_pct"), "cold_spots": len(r.get("cold_spots", [])),
            "supplementary_seeds": len(r.get("supplementary", {}).get("seeds", []))}


def supplement_plan(pre: Preplan, result: dict, name: str) -> Plan | None:
    """The evaluation's proposed supplementary seeds as a deliverable plan (post-implant frame)."""
    from navigator.postimplant.supplement import supplementary_plan

    return supplementary_plan(pre.plan, result["supplementary"]["seeds"], name, result["frame_of_reference_uid"],
                              result["ct_series_uid"])


def deliverable(plan: Plan, folder: Path) -> Path:
    """The plan to deliver: freehand needles (no template hole) get an ``X<n>`` label, as the rehearsal does;
    written to ``folder/plan.json``."""
    used = {n.hole for n in plan.needles if n.hole}
    labels = (f"X{k}" for k in range(1, 1000) if f"X{k}" not in used)
    for n in plan.needles:
        if not n.hole:
            n.hole = next(labels)
    folder.mkdir(parents=True, exist_ok=True)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


# --- the intraoperative re-plan ---------------------------------------------------------------------------------
REPLAN_FILES = ("replan.json", "plan.json", "RTPLAN.dcm", "replan.html")
REVISION_SERIES_STEP = 10   # the revision's RT Plan series number: the revised plan's + this (as `navigator replan`)


def replan_anatomy(pre: Preplan):
    """The re-plan's anatomy from the pre-plan's structure set (as ``navigator replan`` assembles it): the CTV, the
    plan's organs at risk with their D0.1cc limits and the body outline."""
    from navigator.anatomy import targets
    from navigator.planning.replan_field import ReplanAnatomy

    plan, structures = pre.plan, pre.structures
    name = ctv_name_of(plan, structures)
    if name is None:
        where = (f"the structure set {pre.structures_path} has no CTV (nor the target {plan.target!r})"
                 if pre.structures_path else "no structure set came with the pre-plan")
        raise InputError(f"the re-plan needs the CTV: {where}; restart `navigator serve` with the RT Structure Set "
                         "the plan was made on (RTSTRUCT.dcm beside plan.json, or send it by DICOM)")
    ctv = structures[name]
    limits = {n: float(v["D0.1cc_gy"]) for n, v in (plan.extra.get("oar_limits") or {}).items()}
    if not limits:  # a plan from elsewhere: its OARs' class limits
        limits = {n: targets.oar_limit(n, plan.prescription_gy)["D0.1cc_gy"] for n in (plan.metrics.get("oars") or {})}
    missing = sorted(n for n in limits if n not in structures)
    if missing:
        raise InputError(f"{pre.structures_path}: the plan's organ(s) at risk {', '.join(missing)} are not in it, so "
                         "their limits cannot be held; restart with the structure set the plan was made on")
    body = next((st for n, st in structures.items() if st is not ctv and targets.is_body_name(n)), None)
    return ReplanAnatomy(ct=pre.ct, ctv=ctv, oars={n: structures[n] for n in limits}, oar_limits_gy=limits,
                         body=body, ctv_source=f"structure {name} of {pre.structures_path}")


def rtplan_of(pre: Preplan, candidates) -> dict | None:
    """The RT Plan a revision revises and references: the first of ``candidates`` (paths) that is an RT Plan of
    this frame of reference and patient, as ``rtplan_identity`` reads it (+ ``path``); None when there is none
    (a plan.json given without its RTPLAN.dcm: the revision then references no plan, and says so)."""
    from navigator.io.dicom.rtplan import rtplan_identity

    for path in candidates:
        if path is None or not Path(path).is_file():
            continue
        try:
            ident = rtplan_identity(path)
        except Exception as exc:  # noqa: BLE001 (not an RT Plan: the next candidate)
            log.info("%s is not the pre-plan's RT Plan (%s)", path, exc)
            continue
        if ident["frame_of_reference_uid"] not in ("", pre.plan.frame_of_reference_uid):
            continue
        if ident["patient_id"] and pre.patient_id and ident["patient_id"] != pre.patient_id:
            continue
        return {**ident, "path": Path(path)}
    return None


def replan(pre: Preplan, needles_json: Path, out: Path, revision: int, fixed: list[dict] | None = None,
           max_seeds: int | None = None, original: dict | None = None,
           seed_prefix: str | None = None) -> tuple[dict, object]:
    """Revision ``revision`` of the pre-plan on the needles as found in ``needles_json`` (a check of all needles),
    written to ``out`` as ``navigator replan`` writes it (replan.json, plan.json, RTPLAN.dcm; replan.html is
    drawn by ``replan_html``). ``fixed``: the seeds already released (``{"seed_id", "needle_id", "position_mm",
    "axis"}``, pre-plan LPS mm): their dose counts, the revision holds only the seeds still to deliver;
    ``max_seeds``: the seeds left in the cartridge; ``original``: ``rtplan_of``'s answer; ``seed_prefix``: the
    revision's seeds are named ``<prefix>S<nnn>`` (so that no seed id of a session is used twice). Returns
    (replan.json's dict, the ``ReplanResult``)."""
    import time

    from navigator.core.models import NeedleCheckFile, load
    from navigator.core.plan import PlannedSeed
    from navigator.planning.as_found import needles_as_found
    from navigator.planning.replan import ReplanOptions
    from navigator.planning.replan import replan as run_replan

    t0 = time.perf_counter()
    fixed = list(fixed or [])
    _, check = load(NeedleCheckFile, needles_json, "the check's needles.json")
    found = needles_as_found(pre.plan, check, f"the check {needles_json}")
    anatomy = replan_anatomy(pre)
    # the n-th re-plan of the session is revision n of the pre-plan (replan() numbers the plan's revision + 1)
    base = replace(pre.plan, extra={**pre.plan.extra, "revision": revision - 1})
    opts = ReplanOptions(max_seeds=max_seeds,
                         fixed_seeds_mm=tuple(tuple(float(v) for v in f["position_mm"]) for f in fixed),
                         fixed_seed_axes=tuple(tuple(float(v) for v in f["axis"]) for f in fixed),
                         fixed_seed_needles=tuple(str(f["needle_id"]) for f in fixed))
    res = run_replan(base, found, anatomy, opts, based_on_sop_instance_uid=(original or {}).get("sop_instance_uid", ""))
    rev = res.plan
    if not rev.seeds:
        raise InputError(f"the re-plan places no seed on the needles as found ({len(fixed)} released): the released "
                         "seeds alone are all it would deliver; review the dose with a physicist before going on")
    if seed_prefix:
        rev.seeds = [PlannedSeed(f"{seed_prefix}S{k:03d}", s.needle_id, s.position_mm)
                     for k, s in enumerate(rev.seeds, start=1)]
    if fixed:
        rev.extra["fixed_seeds"] = [{"seed_id": f["seed_id"], "needle_id": f["needle_id"],
                                     "position_mm": [round(float(v), 3) for v in f["position_mm"]]} for f in fixed]
    rev.check("the revision")
    out.mkdir(parents=True, exist_ok=True)
    for name in REPLAN_FILES:  # an attempt that was never journaled leaves nothing behind
        (out / name).unlink(missing_ok=True)
    _write_revision_rtplan(out / "RTPLAN.dcm", rev, pre, anatomy.ctv, original)
    rev.extra["files"] = {"rtplan": "RTPLAN.dcm", "based_on": str(original["path"]) if original else None}
    write_json(out / "plan.json", rev.to_dict())
    data = res.to_json()
    data.update({"ctv_source": anatomy.ctv_source, "plan": str(pre.plan_path), "needles_json": str(needles_json),
                 "released_seed_ids": [f["seed_id"] for f in fixed], "goals_met": bool(res.checks["all_ok"]),
                 "based_on": str(original["path"]) if original else None,
                 "command_seconds": round(time.perf_counter() - t0, 2)})
    write_json(out / "replan.json", data)
    return data, res


def _write_revision_rtplan(path: Path, rev: Plan, pre: Preplan, ctv, original: dict | None) -> None:
    """The revision's RT Plan, as ``navigator replan`` writes it: the pre-plan CT's patient and study, the CTV of
    the structure set as the prescription's ROI, numbered above the revised plan, referencing it (PREDECESSOR)."""
    from navigator.io.dicom import PatientInfo, sop_instance_uid_of, write_rtplan

    n = int(rev.extra["revision"])
    series = (original or {}).get("series_number")
    write_rtplan(path, rev, pre.ct, PatientInfo.from_volume(pre.ct), label=f"I125 LDR rev{n}",
                 structure_set_sop_uid=sop_instance_uid_of(pre.structures_path), target_roi_number=ctv.number,
                 target_roi_name=ctv.name, referenced_rtplan_uid=(original or {}).get("sop_instance_uid") or None,
                 series_number=None if series is None else series + REVISION_SERIES_STEP,
                 series_description=f"navigator re-plan (revision {n}): I-125 seeds")


def replan_html(res, data: dict, out: Path) -> None:
    """replan.html (pictures; after the re-plan is published, so it never delays it)."""
    from navigator.report.pages import replan_page

    try:
        (out / "replan.html").write_text(replan_page(res, data))
    except Exception:
        log.exception("replan.html for %s", out)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# --- live dosimetry ---------------------------------------------------------------------------------------------
class SeedDoses:
    """The dose of single seeds at the pre-plan's CTV points (pre-plan LPS mm, TG-43 at points), each seed computed
    once, so that a delivery's projection after every released seed is a sum. Thread-safe."""

    MAX_POINTS = 6000   # as the needle check's dose impact: equal-volume samples, evenly thinned

    def __init__(self, pre: Preplan):
        from navigator.physics import tg43

        pts = pre.ctv_points if pre.ctv_points is not None else np.zeros((0, 3))
        if len(pts) > self.MAX_POINTS:
            pts = pts[np.linspace(0, len(pts) - 1, self.MAX_POINTS).astype(int)]
        self.points_mm = np.asarray(pts, float)
        self.rx_gy = float(pre.plan.prescription_gy)
        self.sk_u = float(pre.plan.seed_sk_u)
        self.model = tg43.load_seed_model(pre.plan.seed_model)
        self.source = pre.ctv_note
        self._cache: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def _one(self, position_mm, axis) -> np.ndarray:
        from navigator.physics.dose import dose_at_points

        key = tuple(np.round(np.concatenate([np.asarray(position_mm, float), np.asarray(axis, float)]), 4))
        with self._lock:
            got = self._cache.get(key)
        if got is None:
            got = dose_at_points(self.points_mm, np.asarray(position_mm, float)[None],
                                 np.asarray(axis, float)[None], self.sk_u, self.model)
            with self._lock:
                self._cache[key] = got
        return got

    def metrics(self, seeds) -> dict:
        """{"D90_gy", "V100_pct"} of the seeds ``[(position_mm, axis), ...]`` on the CTV points."""
        from navigator.intraop.deviation import d90_gy

        if not len(self.points_mm):
            return {"D90_gy": None, "V100_pct": None}
        dose = np.zeros(len(self.points_mm))
        for pos, axis in seeds:
            dose += self._one(pos, axis)
        return {"D90_gy": round(d90_gy(dose), 2), "V100_pct": round(float(np.mean(dose >= self.rx_gy) * 100.0), 2)}
