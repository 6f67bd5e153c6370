"""The clinical steps the live session runs on a received series, over inputs kept warm in the process.

``Preplan`` holds what every later step needs, loaded once: the plan, the pre-plan CT, the structures and the
CTV sample points (so a needle check pays only for reading its scan, registering and finding the needles).
Each step returns its result dict (needles.json / postimplant.json) and writes its files; journaling and state
changes are the session's job (``navigator.live.session``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


def structures_json(pre: Preplan, max_points: int = 48) -> dict:
    """The pre-plan's structures for the console's 3D view: each closed contour (pre-plan frame, LPS mm) with at
    most ``max_points`` points, its colour and its role (target, ctv, oar, body)."""
    from navigator.anatomy import targets

    out = []
    for name, s in pre.structures.items():
        if not s.contours:
            continue
        role = ("ctv" if name.upper().startswith("CTV") else "target" if name == pre.plan.target
                else "body" if targets.is_body_name(name) or targets.classify_oar(name) == "skin" else "oar")
        contours = []
        for c in s.contours:
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
    ctv_name = next((n for n in ("CTV", (plan.extra.get("ctv") or {}).get("name"), plan.target)
                     if n and n in structures), None)
    pts, note = ctv_points(plan, structures.get(ctv_name), ct.frame_of_reference_uid)
    return Preplan(plan_path, ct_dir, rs, plan, ct, structures, pts, note or f"structure {ctv_name} of {rs}")


def needle_check(pre: Preplan, ct_dir: Path, out: Path, tolerance_mm: float = 2.0) -> tuple[dict, Volume]:
    """needles.json of the intraop CT in ``ct_dir`` for every planned needle, written to ``out``."""
    from navigator.intraop.check import CheckOptions, check_inputs, check_needles, register_to_plan
    from navigator.io.dicom import load_ct_series

    ct = load_ct_series(ct_dir)
    check_inputs(pre.plan, pre.ct, ct, plan_name=f"the plan {pre.plan_path}", intraop_name="the received CT")
    reg = register_to_plan(pre.plan, pre.ct, ct)
    check = check_needles(pre.plan, ct, reg, pre.ctv_points, pre.ctv_note, CheckOptions(tolerance_mm=tolerance_mm),
                          intraop_name="the received CT")
    data = check.to_json()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "registration.json", data["registration"])
    write_json(out / "needles.json", data)
    return data, ct


def needles_html(pre: Preplan, data: dict, ct: Volume, out: Path) -> None:
    """needles.html (pictures; after the check is published, so it never delays it)."""
    from navigator.report.pages import needles_page

    try:
        (out / "needles.html").write_text(needles_page(data, ct, pre.plan))
    except Exception:  # a picture that fails must not take the check with it
        log.exception("needles.html for %s", out)


def postimplant(pre: Preplan, ct_dir: Path, out: Path, expected_seeds: int | None) -> tuple[dict, object, Volume]:
    """postimplant.json (and RTDOSE.dcm) of the post-implant CT in ``ct_dir``."""
    from navigator.imaging.registration import check_same_patient
    from navigator.io.dicom import load_ct_series, write_rtdose
    from navigator.postimplant.pipeline import PostimplantOptions, run_postimplant

    if not pre.structures:
        raise InputError("no pre-plan structure set: put RTSTRUCT.dcm beside plan.json (or RS.dcm beside the "
                         "pre-plan CT folder) and restart; the CTV and OARs come from it")
    post = load_ct_series(ct_dir)
    check_same_patient(pre.ct, post)
    res = run_postimplant(pre.plan, pre.ct, post, pre.structures, PostimplantOptions(expected_seeds=expected_seeds),
                          masks=pre.masks())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "postimplant.json", res.result)
    write_rtdose(out / "RTDOSE.dcm", res.dose, post, comment="post-implant dose, found seeds")
    return res.result, res, post


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
    """The proposed supplementary seeds as a deliverable plan (post-implant frame): one needle per seed (hole
    from the proposal, else an ``X<n>`` label), the seed 5 mm short of the needle's tip."""
    from navigator.core.plan import Needle, PlannedSeed

    proposal = result["supplementary"]["seeds"]
    if not proposal:
        return None
    needles, seeds = [], []
    for n, s in enumerate(proposal, start=1):
        pos, entry = np.array(s["position_mm"], float), np.array(s["entry_mm"], float)
        u = (pos - entry) / np.linalg.norm(pos - entry)
        needles.append(Needle(id=f"S{n:02d}", entry_mm=entry, tip_mm=pos + 5.0 * u, hole=s.get("hole") or f"X{n}"))
        seeds.append(PlannedSeed(id=f"{name}-{n:02d}", needle_id=f"S{n:02d}", position_mm=pos))
    base = pre.plan
    return Plan(frame_of_reference_uid=result["frame_of_reference_uid"], ct_series_uid=result["ct_series_uid"],
                target=base.target, prescription_gy=base.prescription_gy, seed_model=base.seed_model,
                seed_sk_u=base.seed_sk_u, needles=needles, seeds=seeds, extra={"supplementary_for": name})


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
