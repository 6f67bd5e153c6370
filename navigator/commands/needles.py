"""``navigator needles --plan plan.json --preplan-ct DIR --ct DIR --out DIR [--tolerance-mm 2]
[--structures RS.dcm] [--ctv NAME] [--registration registration.json] [--needles ID,...]``

Finds the needles in an intraop CT and compares each with the plan: registration (pre-plan -> intraop),
needle finding along the mapped tracks, deviation per needle (tip error, lateral, depth, angle), the dose
impact on the CTV's D90, and advice. Writes ``needles.json`` (cli-contract.md), ``registration.json`` and
``needles.html``. Exit 3 when a needle is out of tolerance or not found (the JSON is still written).

The CTV for the dose impact is read from ``--structures`` (default: ``RTSTRUCT.dcm`` beside plan.json, as
``navigator plan`` writes it); without one, the plan's prescription isodose stands in for it (said in the JSON).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from navigator.errors import ClinicalCheckFailed, InputError, RegistrationError
from navigator.commands._common import Progress, add_output_options, emit, out_dir
from navigator.io import write_json


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="plan.json", help="the pre-plan (navigator plan)")
    parser.add_argument("--preplan-ct", required=True, metavar="DIR", help="the CT series the plan was made on")
    parser.add_argument("--ct", required=True, metavar="DIR", help="the intraop CT series with the needles")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="tip error tolerance, mm (default 2)")
    parser.add_argument("--structures", metavar="RS.dcm", help="RT Structure Set with the CTV (default: beside plan)")
    parser.add_argument("--ctv", default="CTV", help="CTV structure name (default CTV)")
    parser.add_argument("--registration", metavar="registration.json",
                        help="use this registration (navigator register) instead of registering again")
    parser.add_argument("--metal-hu", type=float, default=None, help="needle metal threshold, HU (1500)")
    parser.add_argument("--needles", metavar="ID,ID,...",
                        help="check only these needles (those inserted so far); the dose impact still uses every "
                             "planned seed")
    add_output_options(parser)


def run(args) -> int:
    from navigator.core.plan import Plan
    from navigator.intraop.check import CheckOptions, check_inputs, check_needles, ctv_points, register_to_plan
    from navigator.io.dicom import load_ct_series

    wanted = tuple(v.strip() for v in args.needles.split(",") if v.strip()) if args.needles else None
    options = CheckOptions(tolerance_mm=args.tolerance_mm, metal_hu=args.metal_hu, needle_ids=wanted)
    prog = Progress(enabled=not args.json)
    out = out_dir(args)
    plan = Plan.load(args.plan)
    prog.step(f"loading the pre-plan CT {args.preplan_ct}")
    pre = load_ct_series(args.preplan_ct)
    prog.step(f"loading the intraop CT {args.ct}")
    ct = load_ct_series(args.ct)
    check_inputs(plan, pre, ct, plan_name=f"--plan {args.plan}", preplan_name=f"--preplan-ct {args.preplan_ct}",
                 intraop_name=f"--ct {args.ct}")

    if args.registration:
        reg = _read_registration(args.registration, pre)
    else:
        prog.step("registering the intraop CT to the pre-plan CT around the target")
        try:
            reg = register_to_plan(plan, pre, ct)
        except RegistrationError as exc:
            if getattr(exc, "result", None) is not None:
                write_json(out / "registration.json", exc.result.to_json())
            raise
    write_json(out / "registration.json", reg.to_json())

    prog.step(f"finding {len(plan.needles)} needles; dose impact of each (TG-43, CTV D90)")
    ctv, rs = _ctv_structure(args, pre)
    pts, note = ctv_points(plan, ctv, pre.frame_of_reference_uid)
    check = check_needles(plan, ct, reg, pts, note or f"structure {args.ctv} of {rs}", options,
                          intraop_name=f"--ct {args.ct}")
    data = check.to_json()
    write_json(out / "needles.json", data)
    prog.step("writing needles.html")
    devs = check.deviations
    (out / "needles.html").write_text(_html(data, devs, ct, plan))

    out_of_tol = check.out_of_tolerance
    lines = [f"{d.needle_id:>5}: " + (f"tip error {d.tip_error_mm:4.1f} mm (lateral {d.lateral_mm:.1f}, depth "
                                       f"{d.depth_mm:+.1f}, angle {d.angle_deg:.1f} deg) " if d.found else "")
             + d.advice for d in devs]
    emit(args, data, "\n".join(lines) + f"\n{len(out_of_tol)} of {len(devs)} needles need action; "
                                        f"wrote {out / 'needles.json'} and {out / 'needles.html'}")
    if out_of_tol:
        raise ClinicalCheckFailed(
            f"{len(out_of_tol)} of {len(devs)} needles are out of the {args.tolerance_mm:g} mm tolerance or not found ("
            + ", ".join(d.needle_id for d in out_of_tol) + f"); see {out / 'needles.json'} for the advice")
    return 0


def _read_registration(path, pre):
    import json

    from navigator.imaging.registration import RegistrationResult

    try:
        reg = RegistrationResult.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise InputError(f"--registration {path}: cannot read it ({exc}); "
                         "give the registration.json written by `navigator register`") from None
    if reg.fixed_frame_of_reference_uid and reg.fixed_frame_of_reference_uid != pre.frame_of_reference_uid:
        raise InputError(f"--registration {path} was made from frame of reference "
                         f"{reg.fixed_frame_of_reference_uid}, not the pre-plan CT's {pre.frame_of_reference_uid}")
    return reg


def _ctv_structure(args, pre):
    """The CTV structure (``--structures``, else RTSTRUCT.dcm beside plan.json) and its file, or (None, None)."""
    from navigator.io.dicom import read_structure_set

    rs = Path(args.structures) if args.structures else Path(args.plan).resolve().parent / "RTSTRUCT.dcm"
    if not rs.exists():
        return None, None
    structs = read_structure_set(rs)
    if args.ctv in structs:
        return structs[args.ctv], rs
    if args.structures:
        raise InputError(f"--structures {rs}: no structure named {args.ctv!r} (it has {sorted(structs)}); "
                         "name the CTV with --ctv")
    return None, None


# --- report -------------------------------------------------------------------------------------------------


def needle_panel(ax, ct, d, half_width_mm: float = 12.0, slab_mm: float = 1.5) -> None:
    """CT in the plane of the planned needle (thin-slab maximum), planned (green) vs found (red) needle."""
    from scipy import ndimage

    u = d.planned_axis
    w = d.lateral_vector_mm if d.found and d.lateral_mm > 0.2 else np.cross(u, [0, 0, 1.0])
    if np.linalg.norm(w) < 1e-6:
        w = np.cross(u, [1.0, 0, 0])
    w = w - np.dot(w, u) * u
    w /= np.linalg.norm(w)
    nrm = np.cross(u, w)
    ref = d.planned_tip_mm
    s = np.arange(-45.0, 15.0 + 1e-9, 0.25)  # along the needle, 0 = planned tip
    t = np.arange(-half_width_mm, half_width_mm + 1e-9, 0.25)
    S, T = np.meshgrid(s, t, indexing="xy")
    img = None
    for o in np.arange(-slab_mm, slab_mm + 1e-9, 0.5):
        pts = ref + S[..., None] * u + T[..., None] * w + o * nrm
        ijk = ct.lps_to_ijk(pts.reshape(-1, 3))
        v = ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, cval=-1000.0)
        v = v.reshape(S.shape)
        img = v if img is None else np.maximum(img, v)
    ax.imshow(img, cmap="gray", vmin=-200, vmax=1500, origin="lower",
              extent=(s[0], s[-1], t[0], t[-1]), aspect="equal")
    pe = (d.planned_entry_mm - ref) @ u
    ax.plot([max(pe, s[0]), 0], [0, 0], "--", color="lime", lw=1.0, label="planned")
    ax.plot([0], [0], "o", mfc="none", color="lime", ms=6)
    if d.found:
        tip = d.tip_mm - ref
        a = d.found_axis
        back = tip - 45.0 * a
        ax.plot([back @ u, tip @ u], [back @ w, tip @ w], "-", color="red", lw=0.8, label="found")
        ax.plot([tip @ u], [tip @ w], "x", color="red", ms=7)
    ax.set_xlim(s[0], s[-1])
    ax.set_ylim(t[0], t[-1])
    status = "OK" if d.within_tolerance else ("NOT FOUND" if not d.found else "OUT")
    ax.set_title(f"{d.needle_id} {status}" + (f" {d.tip_error_mm:.1f} mm" if d.found else ""), fontsize=8,
                 color="black" if d.within_tolerance else "red")
    ax.tick_params(labelsize=6)


def _figure_png(ct, devs) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(devs)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.6 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k < n:
            needle_panel(ax, ct, devs[k])
        else:
            ax.axis("off")
    fig.suptitle("needle plane, mm from the planned tip (green: planned, red: found)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _html(data: dict, devs, ct, plan) -> str:
    png = base64.b64encode(_figure_png(ct, devs)).decode("ascii")
    reg = data["registration"]

    def cell(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    rows = []
    for n in data["needles"]:
        bad = not n["within_tolerance"]
        rows.append(
            f"<tr{' class=bad' if bad else ''}><td>{html.escape(n['id'])}</td><td>{'yes' if n['found'] else 'NO'}</td>"
            f"<td>{cell(n['tip_error_mm'])}</td><td>{cell(n['lateral_mm'])}</td><td>{cell(n['depth_mm'], '{:+.1f}')}</td>"
            f"<td>{cell(n['angle_deg'])}</td><td>{cell(n['d90_change_gy'], '{:+.2f}')}</td>"
            f"<td>{'yes' if n['within_tolerance'] else 'no'}</td><td>{html.escape(n['advice'])}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Needle check</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 7px;font-size:13px}} tr.bad td{{background:#fdd}}</style></head><body>
<h1>Needle check: {len(devs)} needles, {data['out_of_tolerance']} need action (tolerance {data['tolerance_mm']:g} mm)</h1>
<p>Intraop series {html.escape(str(data['intraop_series_uid']))}; plan target {html.escape(plan.target)},
prescription {plan.prescription_gy:g} Gy. Coordinates: intraop CT LPS mm. Depth + means too deep.</p>
<p>Registration pre-plan &rarr; intraop: rotation {reg['rotation_deg']:.2f}&deg;, translation {reg['translation_mm']} mm,
estimated error {reg['estimated_error_mm']:.2f} mm, {reg['seconds']:.1f} s ({html.escape(reg['stop_condition'])}).</p>
<p>CTV D90 as planned: {cell(data['planned_d90_gy'], '{:.1f}')} Gy; with every needle as found:
{cell(data['d90_all_as_found_gy'], '{:.1f}')} Gy (CTV: {html.escape(data['ctv_source'])}).</p>
<table><tr><th>needle</th><th>found</th><th>tip error mm</th><th>lateral mm</th><th>depth mm</th><th>angle &deg;</th>
<th>&Delta;D90 Gy</th><th>within</th><th>advice</th></tr>
{''.join(rows)}</table>
<p>Unexpected metal lines (no planned needle near): {len(data['unexpected_needles'])}</p>
<img alt="needles" src="data:image/png;base64,{png}">
</body></html>
"""
