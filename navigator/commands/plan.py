"""``navigator plan``: pre-plan a seed implant (cli-contract.md).

Reads the CT series and its RT Structure Set, plans CTV, needles and seeds (``navigator.planning.pipeline``) and
writes ``plan.json``, ``RTPLAN.dcm``, ``RTSTRUCT.dcm`` (target, CTV, OARs, needle tracks), ``RTDOSE.dcm``
(total dose of the plan) and ``plan.html``. Exit 0 when every clinical goal is met, 3 when the plan was
written but misses one (named on stderr), 2 on bad input.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from navigator.errors import InputError
from navigator.commands._common import Progress, add_output_options, add_strength_options, emit, out_dir
from navigator.io import write_json


def add_arguments(p) -> None:
    p.add_argument("--ct", required=True, help="folder of the planning CT series (DICOM)")
    p.add_argument("--structures", required=True, help="RT Structure Set (RS.dcm) drawn on that CT")
    p.add_argument("--target", required=True, help="name of the target structure (e.g. GTV); CTV = target + margin")
    p.add_argument("--oar", action="append", default=None, metavar="NAME",
                   help="organ at risk (repeat); default: every structure that is not a target, skin or body")
    p.add_argument("--rx-gy", type=float, required=True, help="prescription dose to the CTV (Gy, total dose)")
    p.add_argument("--seed-model", required=True, help="seed model: 6711 or IAI-125A")
    add_strength_options(p)
    p.add_argument("--oar-limit", action="append", default=None, metavar="NAME=GY",
                   help="D0.1cc limit of an OAR in Gy, replacing the default for its class (repeat)")
    p.add_argument("--margin-mm", type=float, default=5.0, help="CTV margin around the target (mm, default 5)")
    p.add_argument("--min-skin-depth-mm", type=float, default=10.0,
                   help="seeds at least this deep below the skin (mm, default 10)")
    p.add_argument("--dose-grid-mm", type=float, default=None, help="dose grid spacing (mm; default 1, coarser for big targets)")
    add_output_options(p)


def run(args) -> int:
    from navigator.physics import tg43
    from navigator.io.dicom import load_ct_series
    from navigator.planning.pipeline import PlanOptions, make_plan
    from navigator.io.dicom import read_structure_set

    prog = Progress()
    t0 = time.perf_counter()
    if args.rx_gy is None or not np.isfinite(args.rx_gy) or args.rx_gy <= 0:
        raise InputError(f"--rx-gy {args.rx_gy} Gy: the prescription must be > 0 Gy (I-125 node implants: 110-160 Gy)")
    if args.margin_mm < 0 or args.margin_mm > 30:
        raise InputError(f"--margin-mm {args.margin_mm} mm: give a CTV margin between 0 and 30 mm (usually 5)")
    model = tg43.load_seed_model(args.seed_model)
    sk_u = tg43.sk_u_from(activity_mci=args.activity_mci, activity_mbq=args.activity_mbq, sk_u=args.sk_u)
    out = out_dir(args)
    prog.step(f"reading CT {args.ct}")
    ct = load_ct_series(args.ct)
    prog.step(f"reading structures {args.structures}")
    structures = read_structure_set(args.structures, ct)
    opts = PlanOptions(margin_mm=args.margin_mm, min_skin_depth_mm=args.min_skin_depth_mm,
                       dose_grid_mm=args.dose_grid_mm, oar_limits_gy=_oar_limits(args.oar_limit, structures),
                       progress=prog.step)
    res = make_plan(ct, structures, args.target, args.oar, args.rx_gy, model, sk_u, opts)
    plan = res.plan

    prog.step("writing RTSTRUCT, RTPLAN, RTDOSE")
    files = write_outputs(out, res, ct, structures)
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
               f"written to {out}: plan.json, RTPLAN.dcm, RTSTRUCT.dcm, RTDOSE.dcm, plan.html")
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


def _describe(c: dict) -> str:
    parts = [f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items() if k != "ok"]
    return ", ".join(parts)


def write_outputs(out, res, ct, structures) -> dict:
    """RTSTRUCT (target, CTV, OARs, needle tracks), RTPLAN (referencing it), RTDOSE (referencing the plan)."""
    from navigator.io.dicom import PatientInfo, sop_instance_uid_of, write_rtdose, write_rtplan, write_rtstruct
    from navigator.anatomy.structures import mask_to_contours

    plan = res.plan
    patient = PatientInfo.from_volume(ct)
    rois, types = {}, {}

    def contours_of(name, s):
        if hasattr(s, "contours"):
            return s.contours
        return mask_to_contours(np.asarray(s, bool), ct)

    rois[plan.target] = contours_of(plan.target, structures[plan.target])
    types[plan.target] = "GTV"
    rois["CTV"] = mask_to_contours(res.ctv_mask, ct)
    types["CTV"] = "CTV"
    for name in res.oar_dose_masks:
        if name in structures and name not in rois:
            rois[name] = contours_of(name, structures[name])
            types[name] = "ORGAN"
    needle_names = {}
    for n in plan.needles:
        roi = f"Needle {n.id}" + (f" {n.hole}" if n.hole else "")
        rois[roi] = [np.array([n.entry_mm, n.tip_mm])]
        types[roi] = "BRACHY_CHANNEL"
        needle_names[n.id] = roi
    numbers = {name: i + 1 for i, name in enumerate(rois)}  # write_rtstruct numbers ROIs 1..n in order
    rs_path = out / "RTSTRUCT.dcm"
    write_rtstruct(rs_path, ct, rois, patient=patient, roi_types=types, label="PREPLAN",
                   series_description="navigator pre-plan structures")
    rs_uid = sop_instance_uid_of(rs_path)
    tpl = plan.extra.get("template", {})
    rp_path, rp_uid = write_rtplan(out / "RTPLAN.dcm", plan, ct, patient,
                                   template={"number": tpl.get("number", 1), "type": tpl.get("type", "GUIDE TEMPLATE"),
                                             "name": tpl.get("name", "5 mm grid")},
                                   structure_set_sop_uid=rs_uid, target_roi_number=numbers["CTV"],
                                   needle_roi_numbers={nid: numbers[r] for nid, r in needle_names.items()})
    rd_path = write_rtdose(out / "RTDOSE.dcm", res.dose, ct, patient, plan_sop_uid=rp_uid,
                           comment="navigator pre-plan total dose (TG-43)")
    return {"rtstruct": rs_path, "rtplan": rp_path, "rtdose": rd_path}


def plan_html(res, ct) -> str:
    """plan.html of this planning run on ``ct`` (the page is built by ``navigator.report.pages.plan``)."""
    from navigator.report.pages import PlanImages, plan_page

    return plan_page(res.plan, PlanImages.from_result(res, ct))
