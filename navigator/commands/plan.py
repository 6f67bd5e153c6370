"""``navigator plan``: pre-plan a seed implant (cli-contract.md).

Reads the CT series and its RT Structure Set, plans CTV, needles and seeds (``navigator.planning.pipeline``) and
writes ``plan.json``, ``RTPLAN.dcm``, ``RTSTRUCT.dcm`` (target, CTV, OARs, needle tracks), ``RTDOSE.dcm``
(total dose of the plan) and ``plan.html``. Exit 0 when every clinical goal is met, 3 when the plan was
written but misses one (named on stderr), 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path

import datetime as _dt
import sys
import time

import numpy as np

from navigator.errors import InputError, PlanError
from navigator.commands._common import Progress, add_ct_option, add_output_options, add_strength_options, emit, number, read_ct, staged_out, warn
from navigator.io import write_json


PRODUCES = ('plan.json', 'RTPLAN.dcm', 'RTSTRUCT.dcm', 'RTDOSE.dcm', 'plan.html')  # every output; an earlier run's are replaced or removed


def add_arguments(p) -> None:
    add_ct_option(p, "--ct", "folder of the planning CT series (DICOM)")
    p.add_argument("--structures", required=True, help="RT Structure Set (RS.dcm) drawn on that CT")
    p.add_argument("--target", required=True, help="name of the target structure (e.g. GTV); CTV = target + margin")
    p.add_argument("--oar", action="append", default=None, metavar="NAME",
                   help="organ at risk (repeat); default: every structure that is not a target, skin or body")
    p.add_argument("--rx-gy", type=number(0, 1000, "Gy", above=True), required=True, help="prescription dose to the CTV (Gy, total dose)")
    p.add_argument("--seed-model", required=True, help="seed model: 6711 or IAI-125A")
    add_strength_options(p)
    p.add_argument("--oar-limit", action="append", default=None, metavar="NAME=GY",
                   help="D0.1cc limit of an OAR in Gy, replacing the default for its class (repeat)")
    p.add_argument("--margin-mm", type=number(0, 30, "mm"), default=5.0, help="CTV margin around the target (mm, default 5)")
    p.add_argument("--min-skin-depth-mm", type=number(0, 50, "mm"), default=10.0,
                   help="seeds at least this deep below the skin (mm, default 10)")
    p.add_argument("--dose-grid-mm", type=number(0.25, 5, "mm"), default=None, help="dose grid spacing (mm; default 1, coarser for big targets)")
    p.add_argument("--seed-calibration-date", default=None, metavar="YYYYMMDD",
                   help="date of the seed strength given (the vendor's calibration certificate); the dose is then "
                        "computed with that strength decayed to --implant-date (I-125, T1/2 59.4 d)")
    p.add_argument("--seed-calibration-time", default=None, metavar="HHMMSS",
                   help="time of day of the seed calibration (required with --seed-calibration-date)")
    p.add_argument("--implant-date", default=None, metavar="YYYYMMDD",
                   help="day of the implant (default: the calibration date, else today)")
    p.add_argument("--robust", action="store_true",
                   help="robust loading: the --robust-percentile of D90 over needle placement errors reaches the "
                        "prescription (docs/robustness.md); plan.json records the figures under 'robust'")
    p.add_argument("--site", choices=("neck", "mediastinum"), default=None,
                   help="with --robust: the error model of a published series (default: tip 2 mm, depth 1 mm)")
    p.add_argument("--robust-percentile", type=number(1, 50, "%"), default=10.0,
                   help="with --robust: the percentile of D90 that must reach the prescription (default 10)")
    add_output_options(p)


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    from navigator.physics import tg43
    from navigator.planning.pipeline import PlanOptions, make_plan
    from navigator.io.dicom import read_structure_set

    prog = Progress()
    t0 = time.perf_counter()
    model = tg43.load_seed_model(args.seed_model)
    strength = source_strength(args, tg43.sk_u_from(activity_mci=args.activity_mci, activity_mbq=args.activity_mbq,
                                                    sk_u=args.sk_u))
    sk_u = strength["sk_u_at_implant"]
    prog.step(f"reading CT {args.ct}")
    ct = read_ct(args, "--ct")
    prog.step(f"reading structures {args.structures}")
    structures = read_structure_set(args.structures, ct)
    opts = PlanOptions(margin_mm=args.margin_mm, min_skin_depth_mm=args.min_skin_depth_mm,
                       dose_grid_mm=args.dose_grid_mm, oar_limits_gy=_oar_limits(args.oar_limit, structures),
                       progress=prog.step)
    from navigator.anatomy.structures import contour_warnings

    warnings = warn("plan", contour_warnings(structures, ct))
    res = make_plan(ct, structures, args.target, args.oar, args.rx_gy, model, sk_u, opts)
    if args.robust:
        from navigator.planning import robust as rb
        from navigator.planning.robustness import ErrorModel

        res = rb.robust_plan(res, ct, opts, rb.RobustOptions(ErrorModel.for_site(args.site), args.robust_percentile),
                             say=prog.step)
        strength = rb.scaled_strength(strength, res.plan.extra["robust"]["strength_factor"])
    plan = res.plan
    plan.extra["source_strength"] = strength
    plan.extra["warnings"] = warnings
    plan.check("the new plan")

    prog.step("writing RTSTRUCT, RTPLAN, RTDOSE")
    files = write_outputs(out, res, ct, structures, args.structures)
    plan.extra["files"] = {k: v.name for k, v in files.items()}
    plan.extra["command_seconds"] = round(time.perf_counter() - t0 + 0.0, 2)
    data = plan.to_dict()
    write_json(out / "plan.json", data)
    prog.step("writing plan.html")
    (out / "plan.html").write_text(plan_html(res, ct))
    m = plan.metrics
    failed = [k for k, v in res.checks.items() if isinstance(v, dict) and not v.get("ok", True)]
    summary = (f"plan: {len(plan.seeds)} seeds ({plan.seed_model}, {plan.seed_sk_u:.3f} U) on {len(plan.needles)} "
               f"needles, template {plan.extra['template']['rows']}x{plan.extra['template']['cols']} "
               f"({plan.extra['insertion_direction']})\n"
               f"CTV {m['ctv_cc']:.1f} cc: D90 {m['D90_gy']:.1f} Gy (Rx {plan.prescription_gy:g} Gy), "
               f"V100 {m['V100_pct']:.1f} %, V150 {m['V150_pct']:.1f} %, V200 {m['V200_pct']:.1f} %\n"
               f"written to {final}: plan.json, RTPLAN.dcm, RTSTRUCT.dcm, RTDOSE.dcm, plan.html")
    emit(args, data, summary)
    if failed:
        sys.stderr.write("navigator plan: the plan misses clinical goals: " + ", ".join(
            f"{k} ({_describe(res.checks[k])})" for k in failed) + "; review it before use (exit 3)\n")
        return 3
    return 0


def _oar_limits(items, structures) -> dict:
    """``["Cord=45", ...]`` -> ``{"Cord": 45.0}``; names must exist, limits must be > 0 Gy."""
    out = {}
    for item in items or []:
        name, sep, value = str(item).rpartition("=")
        try:
            gy = float(value)
        except ValueError:
            gy = float("nan")
        if not sep or not name or not np.isfinite(gy) or gy <= 0:
            raise InputError(f"--oar-limit {item!r}: give NAME=GY with a limit > 0 Gy (e.g. --oar-limit SpinalCord=45)")
        if name not in structures:
            raise InputError(f"--oar-limit {item!r}: no structure named '{name}'; the structure set holds: "
                             f"{', '.join(sorted(structures))}")
        out[name] = gy
    return out


def source_strength(args, sk_u_given: float) -> dict:
    """plan.json's ``source_strength``: the seed strength at calibration and at the implant, and the decay factor.

    ``seed_sk_u`` of the plan is ``sk_u_at_implant``: the strength every dose of the plan (plan.json metrics,
    RTDOSE.dcm; ``navigator needles`` / ``postimplant`` from plan.json) is computed with. With a calibration date
    the strength given is the strength then, decayed over the whole days to the implant date (the implant taken
    at the calibration's time of day); without one it is taken as the strength at the implant (factor 1)."""
    from navigator.io.dicom import decayed_strength
    from navigator.io.dicom.rtplan import I125_HALF_LIFE_D

    cal_date = _checked_date(args.seed_calibration_date, "--seed-calibration-date")
    cal_time = _checked_time(args.seed_calibration_time)
    implant = _checked_date(args.implant_date, "--implant-date")
    if cal_time and not cal_date:
        raise InputError(f"--seed-calibration-time {cal_time} without --seed-calibration-date; give the date of "
                         "the calibration too (YYYYMMDD, from the seed certificate)")
    if cal_date and not cal_time:
        raise InputError(f"--seed-calibration-date {cal_date} without --seed-calibration-time; give the time of "
                         "day of the calibration too (HHMMSS, from the seed certificate, e.g. 120000)")
    if not cal_date:
        return {"calibration_date": None, "calibration_time": None,
                "implant_date": implant or _dt.date.today().strftime("%Y%m%d"), "sk_u_at_calibration": None,
                "sk_u_at_implant": float(sk_u_given), "decay_factor": 1.0, "half_life_d": I125_HALF_LIFE_D,
                "note": "no seed calibration date given: the strength given is the strength at the implant"}
    implant = implant or cal_date
    try:
        sk_implant, factor = decayed_strength(sk_u_given, cal_date, implant)
    except PlanError as exc:
        raise InputError(f"--implant-date {implant}, --seed-calibration-date {cal_date}: {exc}") from None
    return {"calibration_date": cal_date, "calibration_time": cal_time, "implant_date": implant,
            "sk_u_at_calibration": float(sk_u_given), "sk_u_at_implant": float(sk_implant),
            "decay_factor": float(factor), "half_life_d": I125_HALF_LIFE_D,
            "note": "seed_sk_u is sk_u_at_implant: the strength at calibration decayed over the whole days to the "
                    "implant date; every dose of this plan is computed with it"}


def _checked_date(value, option: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    try:
        _dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise InputError(f"{option} {value!r} is not a date YYYYMMDD; give it as 8 digits (e.g. 20261201)") from None
    if len(text) != 8:
        raise InputError(f"{option} {value!r} is not a date YYYYMMDD; give it as 8 digits (e.g. 20261201)")
    return text


def _checked_time(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    ok = len(text) == 6 and text.isdigit() and int(text[:2]) < 24 and int(text[2:4]) < 60 and int(text[4:]) < 60
    if not ok:
        raise InputError(f"--seed-calibration-time {value!r} is not a time of day HHMMSS; give 6 digits "
                         "(e.g. 120000 for noon)")
    return text


def _describe(c: dict) -> str:
    parts = [f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items() if k != "ok"]
    return ", ".join(parts)


def write_outputs(out, res, ct, structures, structures_path=None) -> dict:
    """RTSTRUCT (the input's ROIs as read, CTV, needle tracks), RTPLAN (referencing it; prescription to the CTV),
    RTDOSE (referencing the plan), numbered above the CT's and the input structure set's series."""
    from navigator.io.dicom import (PatientInfo, sop_instance_uid_of, structure_set_series_number, write_rtdose,
                                    write_rtplan, write_rtstruct)

    plan = res.plan
    patient = PatientInfo.from_volume(ct)
    input_rs = structure_set_series_number(structures_path) if structures_path else None
    base = max(patient.series_number or 1, input_rs or 0)
    rois, types, ctv_name, needle_names = _preplan_rois(res, ct, structures)
    numbers = {name: i + 1 for i, name in enumerate(rois)}  # write_rtstruct numbers ROIs 1..n in order
    rs_path = out / "RTSTRUCT.dcm"
    write_rtstruct(rs_path, ct, rois, patient=patient, roi_types=types, label="PREPLAN",
                   series_description="navigator pre-plan structures", series_number=base + 1)
    rs_uid = sop_instance_uid_of(rs_path)
    tpl = plan.extra.get("template", {})
    rp_path, rp_uid = write_rtplan(out / "RTPLAN.dcm", plan, ct, patient,
                                   template={"number": tpl.get("number", 1), "type": tpl.get("type", "GUIDE TEMPLATE"),
                                             "name": tpl.get("name", "5 mm grid")},
                                   structure_set_sop_uid=rs_uid, target_roi_number=numbers[ctv_name],
                                   target_roi_name=ctv_name,
                                   needle_roi_numbers={nid: numbers[r] for nid, r in needle_names.items()},
                                   series_number=base + 2, series_description="navigator pre-plan: I-125 seeds")
    rd_path = write_rtdose(out / "RTDOSE.dcm", res.dose, ct, patient, plan_sop_uid=rp_uid,
                           comment="navigator pre-plan total dose (TG-43)", series_number=base + 3,
                           series_description="navigator pre-plan dose (TG-43, total)")
    return {"rtstruct": rs_path, "rtplan": rp_path, "rtdose": rd_path}


def _preplan_rois(res, ct, structures) -> tuple[dict, dict, str, dict]:
    """(ROIs, types, the CTV's ROI name, {needle id: ROI name}) of the pre-plan structure set: every ROI of the
    input as read (its colour, type and generation algorithm kept; BODY and Skin included), then the CTV and the
    needle tracks, ours (AUTOMATIC, navigator)."""
    from navigator.anatomy.structures import mask_to_contours

    plan = res.plan
    rois, types = {}, {}
    for name, s in structures.items():
        rois[name] = s if hasattr(s, "contours") else mask_to_contours(np.asarray(s, bool), ct)
        if not getattr(s, "roi_type", ""):
            types[name] = "GTV" if name == plan.target else "ORGAN"
    ctv_name = "CTV"
    while ctv_name in rois:  # the input has a CTV of its own: ours gets another name
        ctv_name = f"{ctv_name}'"
    rois[ctv_name] = mask_to_contours(res.ctv_mask, ct)
    types[ctv_name] = "CTV"
    needle_names = {}
    for n in plan.needles:
        roi = f"Needle {n.id}" + (f" {n.hole}" if n.hole else "")
        rois[roi] = [np.array([n.entry_mm, n.tip_mm])]
        types[roi] = "BRACHY_CHANNEL"
        needle_names[n.id] = roi
    return rois, types, ctv_name, needle_names


def plan_html(res, ct) -> str:
    """plan.html of this planning run on ``ct`` (the page is built by ``navigator.report.pages.plan``)."""
    from navigator.report.pages import PlanImages, plan_page

    return plan_page(res.plan, PlanImages.from_result(res, ct))
