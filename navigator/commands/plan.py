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
    """plan.html: metrics, checks, DVH, isodose lines (50/100/150/200 %) on axial slices, needles and seeds."""
    from navigator.report import html as H
    from navigator.report import plots as R

    plan = res.plan
    m = plan.metrics
    rx = plan.prescription_gy
    dose = res.dose
    dvhs = {"CTV": R.cumulative_dvh(dose.array, res.ctv_dose_mask, 3 * rx)}
    for name, mask in res.oar_dose_masks.items():
        if mask.any():  # only the part of the OAR inside the dose grid (the metrics table covers all of it)
            dvhs[f"{name} (in dose grid)"] = R.cumulative_dvh(dose.array, mask, 3 * rx)
    dvh_png = R.png_base64(R.dvh_figure(dvhs, rx_gy=rx, title=f"DVH (dose grid {dose.spacing_mm[0]:g} mm)"))
    outlines = {"CTV": res.ctv_mask, plan.target: res.gtv_mask}
    hot_oars = sorted(((v.get("D0.1cc_gy") or 0.0, n) for n, v in m.get("oars", {}).items()), reverse=True)
    for d01, name in hot_oars[:4]:  # the OARs that matter on these slices: the most exposed ones
        if d01 >= 0.3 * rx and name in res.masks.get("oars", {}):
            outlines[name] = res.masks["oars"][name]
    iso_png = R.png_base64(R.isodose_slices_figure(ct, dose, rx, outlines, markers=plan.seed_positions_mm(),
                                                   n_slices=3, title="isodose lines, % of Rx"))
    target_rows = [(k, m[k]) for k in ("ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct",
                                        "V200_pct", "HI", "CI_paddick") if k in m]
    oar_rows = [(n, v.get("Dmax_gy"), v.get("D2cc_gy"), v.get("D0.1cc_gy"),
                 plan.extra["oar_limits"].get(n, {}).get("D0.1cc_gy")) for n, v in m.get("oars", {}).items()]
    check_rows = [(k, v.get("ok")) for k, v in res.checks.items() if isinstance(v, dict)]
    needle_rows = []
    for n in plan.needles:
        seeds = plan.seeds_of(n.id)
        needle_rows.append((n.id, n.hole or "single", round(n.length_mm, 1), len(seeds),
                            ", ".join(f"{n.depth_of(s.position_mm):.1f}" for s in seeds)))
    tpl = plan.extra["template"]
    opt = plan.extra["optimizer"]
    return H.page(
        f"Pre-plan: {plan.target}, {rx:g} Gy, {len(plan.seeds)} seeds",
        H.paragraph(f"CT series {plan.ct_series_uid}, frame of reference {plan.frame_of_reference_uid}. "
                    f"Seed model {plan.seed_model}, S_K {plan.seed_sk_u:.3f} U per seed "
                    f"({plan.extra['seed_activity_mci']:g} mCi). CTV = {plan.target} + "
                    f"{plan.extra['ctv']['margin_mm']:g} mm, clipped to the body. All coordinates LPS mm."),
        H.section("Target", H.table(target_rows, ["metric", "value"])),
        H.section("Clinical goals", H.table(check_rows, ["check", "met"])),
        H.section("Organs at risk (Gy)", H.table(oar_rows, ["OAR", "Dmax", "D2cc", "D0.1cc", "limit D0.1cc"]),
                  H.paragraph(plan.extra.get("oar_metrics_method", ""), "note")),
        H.section("DVH", H.image(dvh_png, "DVH")),
        H.section("Isodose lines", H.image(iso_png, "isodose lines on axial slices"),
                  H.paragraph("Blue 50 %, red 100 %, orange 150 %, magenta 200 % of the prescription; dashed: "
                              "CTV and target; circles: seeds within 2.5 mm of the slice.", "note")),
        H.section("Needles (depths from the template hole's reference point, mm; deepest seed first)",
                  H.paragraph(f"Template {tpl['rows']} x {tpl['cols']} holes ({tpl['hole_ids']}), pitch "
                              f"{tpl['pitch_mm']:g} mm, needle direction {tpl['normal_lps']} (LPS), "
                              f"approach {plan.extra['insertion_direction']}."),
                  H.table(needle_rows, ["needle", "hole", "tip depth", "seeds", "seed depths"], 1)),
        H.section("Optimiser", H.table([(k, v) for k, v in opt.items() if not isinstance(v, (dict, list))],
                                       ["item", "value"]),
                  H.table([tuple(r.values()) for r in opt["rounds"]], list(opt["rounds"][0].keys()))
                  if opt.get("rounds") else ""),
    )
