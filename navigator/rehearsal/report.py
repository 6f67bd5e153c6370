"""``report.html`` of a rehearsal, written at its end (page: ``navigator.report.pages.rehearsal``).

This module gathers the page's inputs from the rehearsal's folder and the session journal: the result, the
journal's finished steps (replayed), the plan with its CT, RT Dose and RT Structure Set, the re-plan's
replan.json (when one was made), and each post-implant scan's postimplant.json with its CT and RT Dose. The
pictures are drawn from those results, never copied out of the steps' own HTML pages. A picture whose inputs
cannot be read is replaced by a line saying why; the report is written all the same.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_plan(out: Path):
    """(plan, PlanImages) of the rehearsal's pre-plan: ``plan/plan.json``, ``plan/RTDOSE.dcm``,
    ``plan/RTSTRUCT.dcm`` and the case's pre-plan CT."""
    from navigator.core.plan import Plan
    from navigator.io.dicom import load_ct_series, read_rtdose, read_structure_set
    from navigator.report.pages import PlanImages

    plan = Plan.load(out / "plan" / "plan.json")
    ct = load_ct_series(out / "case" / "preplan" / "ct")
    structures = read_structure_set(out / "plan" / "RTSTRUCT.dcm", ct)
    dose = read_rtdose(out / "plan" / "RTDOSE.dcm")
    return plan, PlanImages.from_outputs(plan, ct, dose, structures)


def load_scans(out: Path, plan_images) -> list:
    """Each ``postimplant_<n>/`` scan in order: its postimplant.json and, when ``plan_images`` is there, the
    inputs of its pictures (its CT in ``ct/`` and its ``RTDOSE.dcm``)."""
    from navigator.io.dicom import load_ct_series, read_rtdose
    from navigator.report.pages import PostimplantImages, PostimplantScan

    scans = []
    for path in sorted(out.glob("postimplant_*/postimplant.json"), key=lambda p: _scan_number(p.parent.name)):
        scan = PostimplantScan(name=path.parent.name, result=json.loads(path.read_text()))
        try:
            if plan_images is None:
                raise ValueError("the pre-plan's CT, dose or structures could not be read")
            ct = load_ct_series(path.parent / "ct")
            dose = read_rtdose(path.parent / "RTDOSE.dcm")
            scan.images = PostimplantImages.from_outputs(scan.result, ct, dose, plan_images)
        except Exception as exc:  # noqa: BLE001 (a picture is a convenience; the report must still be written)
            scan.problem = str(exc)
        scans.append(scan)
    return scans


def _scan_number(name: str) -> int:
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else 0


def write_report(out: Path, result: dict) -> Path:
    """Write ``out/report.html`` (and the 3D picture ``out/implant3d.png``) for the rehearsal in ``out``."""
    from navigator.report.pages import implant_picture, rehearsal_page
    from navigator.session.controller import replay
    from navigator.session.journal import Journal

    out = Path(out)
    steps = replay(Journal.read(out / "session.jsonl")).steps_done
    problems, plan, plan_images, scene_png = {}, None, None, None
    try:
        plan, plan_images = load_plan(out)
    except Exception as exc:  # noqa: BLE001 (the pictures are a convenience; the report must still be written)
        problems["pre-plan"] = problems["3D picture"] = str(exc)
    scans = load_scans(out, plan_images)
    if plan_images is not None:
        try:
            scene = implant_picture(out / "implant3d.png", plan, plan_images, scans[-1].result if scans else None,
                                    title=f"{result.get('case')} seed {result.get('seed')}: planned needles, seeds "
                                          "found post-implant (pre-plan frame)")
            scene_png = scene.read_bytes()
        except Exception as exc:  # noqa: BLE001
            problems["3D picture"] = str(exc)
    replan_json = None
    if (result.get("replan") or {}).get("metrics_replan"):
        try:
            replan_json = json.loads((out / "replan" / "replan.json").read_text())
        except (OSError, ValueError) as exc:
            problems["re-plan"] = str(exc)
    path = out / "report.html"
    robust = steps.get("robustness") or {}
    path.write_text(rehearsal_page(result, steps, plan, plan_images, scans, scene_png, problems, replan_json,
                                   robust.get("d90_samples_gy")))
    return path
