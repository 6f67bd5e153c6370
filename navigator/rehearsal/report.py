"""``report.html`` of a rehearsal: metrics pre/post/final, DVHs and isodoses (from the plan and post-implant
steps), a 3D picture of needles and seeds, the needle deviation tables, the seed ledger reconciled against the
device and the post-implant CT, and the timings per step. Self-contained: pictures are embedded as base64."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np

METRIC_ROWS = [("ctv_cc", "CTV volume (cc)", "{:.1f}"), ("D90_gy", "D90 (Gy)", "{:.1f}"),
               ("D100_gy", "D100 (Gy)", "{:.1f}"), ("V90_pct", "V90 (%)", "{:.1f}"),
               ("V100_pct", "V100 (%)", "{:.1f}"), ("V150_pct", "V150 (%)", "{:.1f}"),
               ("V200_pct", "V200 (%)", "{:.1f}"), ("HI", "HI", "{:.3f}")]

CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}
img{max-width:100%;border:1px solid #ccc;margin:4px 0}h2{border-bottom:2px solid #ddd;padding-bottom:3px}"""


def _fmt(v, f="{:.1f}"):
    if v is None:
        return "–"
    try:
        return f.format(v)
    except (TypeError, ValueError):
        return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]], left_cols: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left_cols else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left_cols else ""}">{c}</td>'
                                     for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _images_from_html(path: Path, limit: int = 4) -> list[str]:
    """The embedded PNGs of a step's own HTML page (plan.html, postimplant.html...)."""
    if not path.exists():
        return []
    return re.findall(r'src="(data:image/png;base64,[^"]+)"', path.read_text())[:limit]


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def metrics_table(result: dict) -> str:
    cols = [("pre-plan", result.get("preplan_metrics") or {}),
            ("post-implant", result.get("postimplant_metrics") or {}),
            ("final (after supplementary seeds)", result.get("final_metrics") or {})]
    rows = [["seeds", str(result.get("seeds_planned")), str(result.get("seeds_released")),
             str((result.get("seeds_released") or 0) + (result.get("supplementary_seeds") or 0))]]
    for key, label, f in METRIC_ROWS:
        rows.append([label] + [_fmt(m.get(key), f) for _, m in cols])
    return _table(["", *[c for c, _ in cols]], rows)


def needle_tables(out: Path, result: dict, session_steps: dict) -> str:
    parts = []
    for scan in result.get("needle_scans", []):
        step = session_steps.get(f"needles_{scan['scan']}_{scan['round']}") or {}
        needles = step.get("needles", [])
        rows = []
        for n in needles:
            ok = n.get("within_tolerance")
            rows.append([html.escape(str(n.get("id"))), "yes" if n.get("found") else '<span class="bad">no</span>',
                         _fmt(n.get("tip_error_mm")), _fmt(n.get("lateral_mm")), _fmt(n.get("depth_mm")),
                         _fmt(n.get("angle_deg")), _fmt(n.get("d90_change_gy")),
                         '<span class="ok">yes</span>' if ok else '<span class="bad">NO</span>',
                         f'<span style="text-align:left">{html.escape(str(n.get("advice", "")))}</span>'])
        reg = step.get("registration") or {}
        parts.append(f"<h3>{html.escape(scan['scan'])} needles, scan {scan['round']}: "
                     f"{scan['out_of_tolerance']} of {scan['needles']} out of tolerance</h3>"
                     f"<p>registration: estimated error {_fmt(reg.get('estimated_error_mm'), '{:.2f}')} mm, "
                     f"{_fmt(reg.get('seconds'), '{:.1f}')} s</p>"
                     + _table(["needle", "found", "tip error (mm)", "lateral (mm)", "depth (mm, + deep)",
                               "angle (°)", "ΔD90 (Gy)", "within 2 mm", "advice"], rows))
    return "\n".join(parts)


def ledger_section(out: Path, result: dict, steps: dict) -> str:
    rows = []
    for name in ["delivery"] + [k for k in sorted(steps) if k.startswith("supplement_")]:
        d = steps.get(name)
        if not d:
            continue
        rows.append([name, str(d.get("planned", "")), str(d.get("released")), str(d.get("device_released_total")),
                     '<span class="ok">yes</span>' if d.get("reconciled") else '<span class="bad">NO</span>',
                     str(len(d.get("uncertain_seeds", []) or []))])
    post = [(k, v) for k, v in sorted(steps.items()) if k.startswith("postimplant_")]
    ct_rows = [[k, str(v["truth_seeds"]), str(v["result"]["found"]),
                "; ".join(html.escape(w) for w in v["result"].get("warnings", [])) or "–"] for k, v in post]
    return (_table(["delivery", "planned", "released (ledger)", "device counter", "reconciled", "uncertain"], rows)
            + "<p>Seeds in the patient (simulator's truth) against seeds the navigator found in each "
              "post-implant CT:</p>"
            + _table(["scan", "seeds in patient", "found in CT", "warnings"], ct_rows))


def timings_table(result: dict) -> str:
    rows = [[html.escape(k), _fmt(v, "{:.1f}")] for k, v in result.get("timings_s", {}).items() if v is not None]
    rows.append(["<b>total</b>", f"<b>{_fmt(result.get('seconds'), '{:.1f}')}</b>"])
    return _table(["step", "seconds"], rows)


def render_scene(out: Path, result: dict) -> Path | None:
    """3D picture in the pre-plan frame: GTV/CTV, planned needles, seeds found after the implant (mapped back
    through the post-implant registration) and supplementary seeds."""
    from navigator.io.dicom import load_ct_series
    from navigator.core.plan import Plan
    from navigator.report.render3d import render_implant_png
    from navigator.anatomy.structures import structure_mask
    from navigator.io.dicom import read_structure_set

    plan = Plan.load(out / "plan" / "plan.json")
    ct = load_ct_series(out / "case" / "preplan" / "ct")
    structures = read_structure_set(out / "plan" / "RTSTRUCT.dcm", ct)
    gtv = structure_mask(structures[plan.target], ct) if plan.target in structures else None
    ctv_name = next((n for n in structures if n.upper().startswith("CTV")), None)
    ctv = structure_mask(structures[ctv_name], ct) if ctv_name else None
    needles = [(n.entry_mm, n.tip_mm) for n in plan.needles]
    seeds, supp = plan.seed_positions_mm(), None
    axes = plan.seed_axes()
    last = sorted(out.glob("postimplant_*/postimplant.json"))
    if last:
        post = json.loads(last[-1].read_text())
        reg = post.get("registration") or {}
        if "fixed_to_moving" in reg and post.get("seeds"):
            moving_to_fixed = np.linalg.inv(np.array(reg["fixed_to_moving"], float))
            pts = np.array([s["position_mm"] for s in post["seeds"]], float)
            seeds = pts @ moving_to_fixed[:3, :3].T + moving_to_fixed[:3, 3]
            axes = np.array([s["axis"] for s in post["seeds"]], float) @ moving_to_fixed[:3, :3].T
    path = out / "implant3d.png"
    render_implant_png(path, ct, gtv, ctv, {}, needles, seeds, axes, supp,
                       title=f"{result.get('case')} seed {result.get('seed')}: planned needles, seeds found "
                             f"post-implant (pre-plan frame)")
    return path


def write_report(out: Path, result: dict) -> Path:
    from navigator.session.journal import Journal
    from navigator.session.controller import replay

    out = Path(out)
    steps = replay(Journal.read(out / "session.jsonl")).steps_done
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Rehearsal {html.escape(str(result.get('case')))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Seed-implant rehearsal: case {html.escape(str(result.get('case')))}, seed {result.get('seed')}</h1>",
             f"<p>Prescription {_fmt(result.get('prescription_gy'), '{:.0f}')} Gy (matched peripheral dose), "
             f"total {_fmt(result.get('seconds'), '{:.0f}')} s. All coordinates LPS mm; doses are total doses of "
             f"the permanent implant (TG-43U1).</p>",
             "<h2>Dose metrics: pre-plan, post-implant, final</h2>", metrics_table(result)]
    try:
        scene = render_scene(out, result)
        parts += ["<h2>Implant in 3D</h2>", f'<img src="{_png_data_uri(scene)}" alt="3D implant">']
    except Exception as exc:  # the picture is a convenience; the report must still be written
        parts += ["<h2>Implant in 3D</h2>", f"<p class='bad'>3D picture unavailable: {html.escape(str(exc))}</p>"]
    parts.append("<h2>Pre-plan: DVH and isodoses</h2>")
    parts += [f'<img src="{uri}">' for uri in _images_from_html(out / "plan" / "plan.html")]
    for d in sorted(out.glob("postimplant_*/postimplant.html")):
        parts.append(f"<h2>{html.escape(d.parent.name)}: DVH, isodoses, cold spots, proposed seeds</h2>")
        parts += [f'<img src="{uri}">' for uri in _images_from_html(d)]
    parts += ["<h2>Needle deviations per scan</h2>", needle_tables(out, result, steps),
              "<h2>Seed ledger, device and post-implant CT</h2>", ledger_section(out, result, steps),
              "<h2>Timings</h2>", timings_table(result), "</body></html>"]
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
