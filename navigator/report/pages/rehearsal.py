"""report.html of a rehearsal: dose metrics pre-plan / re-plan / post-implant / final side by side, the re-plan
on the needles as found (used or not, and why), a 3D picture of the implant, the pre-plan's and each
post-implant scan's DVH and isodoses, the needle deviations per scan, the seed ledger reconciled against the
device and the post-implant CTs, and the timings per step.

Every picture is drawn here from results (the plan, its dose and structures, each postimplant.json with its CT
and dose), with the functions the plan and post-implant pages use: nothing is copied out of another page.
The caller (``navigator.rehearsal.report``) reads the files and the session journal and passes them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navigator.core.plan import Plan
from navigator.report import html as H
from navigator.report.pages.needles import needle_table
from navigator.report.pages.plan import PlanImages, plan_pictures
from navigator.report.pages.postimplant import PostimplantImages, postimplant_pictures
from navigator.report.pages.replan import METRIC_ROWS, comparison_table


@dataclass
class PostimplantScan:
    """One post-implant scan of the rehearsal: its step name, its postimplant.json and its pictures' inputs
    (None with ``problem`` saying why they could not be loaded)."""

    name: str
    result: dict
    images: PostimplantImages | None = None
    problem: str = ""


def implant_picture(path, plan: Plan, images: PlanImages, post_result: dict | None = None, title: str = "") -> Path:
    """The 3D picture (PNG at ``path``) in the pre-plan frame: target and CTV surfaces, planned needles, and the
    seeds found in ``post_result`` (a postimplant.json) mapped back through its registration (else the
    planned seeds)."""
    from navigator.report.render3d import render_implant_png

    seeds, axes = plan.seed_positions_mm(), plan.seed_axes()
    reg = (post_result or {}).get("registration") or {}
    if "fixed_to_moving" in reg and (post_result or {}).get("seeds"):
        moving_to_fixed = np.linalg.inv(np.array(reg["fixed_to_moving"], float))
        pts = np.array([s["position_mm"] for s in post_result["seeds"]], float)
        seeds = pts @ moving_to_fixed[:3, :3].T + moving_to_fixed[:3, 3]
        axes = np.array([s["axis"] for s in post_result["seeds"]], float) @ moving_to_fixed[:3, :3].T
    return render_implant_png(path, images.ct, images.outlines.get(plan.target), images.outlines.get("CTV"), {},
                              [(n.entry_mm, n.tip_mm) for n in plan.needles], seeds, axes, None, title=title)


def metrics_table(result: dict) -> str:
    """Seeds and CTV metrics side by side: as pre-planned, as re-planned on the needles as found (predicted;
    a dash where no re-plan was made), after the implant and after the supplementary seeds."""
    rp = result.get("replan") or {}
    cols = [result.get("preplan_metrics") or {}, rp.get("metrics_replan") or {},
            result.get("postimplant_metrics") or {}, result.get("final_metrics") or {}]
    rows = [["seeds", rp.get("seeds_preplan", result.get("seeds_planned")), rp.get("seeds"),
             result.get("seeds_released"),
             (result.get("seeds_released") or 0) + (result.get("supplementary_seeds") or 0)]]
    rows += [[label] + [H.num(m.get(key), spec) for m in cols] for key, label, spec in METRIC_ROWS]
    used = "delivered" if rp.get("used") else ("not used" if rp.get("metrics_replan") else "none")
    return H.table(rows, ["", "pre-plan", f"re-plan ({used})", "post-implant", "final (after supplementary seeds)"])


def replan_section(result: dict, replan_json: dict | None) -> str:
    """Whether the implant was re-planned on the needles as found and why; the re-plan's comparison table."""
    rp = result.get("replan") or {}
    if not rp:
        return ""
    parts = [H.paragraph(f"Re-plan after the all-needles check: {rp.get('reason', '')}",
                         "ok" if rp.get("used") else "")]
    if replan_json:
        parts.append(comparison_table(replan_json))
    return H.section("Re-plan on the needles as found", *parts)


def robustness_section(result: dict, d90_samples_gy=None) -> str:
    """The pre-plan's robustness preview (D90 under the site's published placement errors) beside the D90 that
    was delivered."""
    rb = result.get("robustness") or {}
    if not rb.get("D90_gy"):
        return ""
    from navigator.report import plots as R
    from navigator.report.pages.robustness import d90_histogram_figure

    rx = float(result.get("prescription_gy") or 0.0)
    d, em = rb["D90_gy"], rb.get("error_model") or {}
    model = (f"tip {H.fmt(em.get('tip_sd_mm'), 1)} mm, depth {H.fmt(em.get('depth_sd_mm'), 1)} mm, angle "
             f"{H.fmt(em.get('angle_sd_deg'), 1)} deg (1 SD{', site ' + em['site'] if em.get('site') else ''})")
    rows = [["D90 (Gy)", d.get("p5"), d.get("p10"), d.get("p50"), d.get("p90"), rb.get("final_D90_gy")],
            ["V100 (%)", *(rb.get("V100_pct", {}).get(k) for k in ("p5", "p10", "p50", "p90")),
             (result.get("final_metrics") or {}).get("V100_pct")]]
    parts = [H.paragraph(f"Before the procedure, {rb.get('samples')} samples of needle placement errors ({model}) "
                         f"gave D90 >= Rx in {H.fmt(100.0 * float(rb.get('pass_rate') or 0.0), 0)} % of implants. "
                         f"The delivered D90 ({H.fmt(rb.get('final_D90_gy'), 1)} Gy) lies at the "
                         f"{H.fmt(rb.get('final_D90_percentile'), 0)}th percentile of that prediction."),
             H.table(rows, ["", "p5", "p10", "median", "p90", "delivered (final)"], digits=1)]
    if d90_samples_gy:
        try:
            fig = d90_histogram_figure(d90_samples_gy, rx, d.get("p10"), (rb.get("nominal") or {}).get("D90_gy"))
            fig.axes[0].axvline(float(rb["final_D90_gy"]), color="#2e9d57", lw=2.0, label="delivered")
            fig.axes[0].legend(fontsize=7)
            parts.append(H.image(R.png_base64(fig), "D90 predicted and delivered"))
        except Exception as exc:  # noqa: BLE001 - the report is written all the same, saying what is missing
            parts.append(H.unavailable("D90 predicted and delivered", exc))
    return H.section("Robustness preview of the pre-plan, and what happened", *parts)


def needle_sections(result: dict, steps: dict) -> str:
    """One deviation table per needle scan (the journal's ``needles_<scan>_<round>`` steps)."""
    parts = []
    for scan in result.get("needle_scans", []):
        step = steps.get(f"needles_{scan['scan']}_{scan['round']}") or {}
        reg = step.get("registration") or {}
        parts.append(H.subsection(
            f"{scan['scan']} needles, scan {scan['round']}: {scan['out_of_tolerance']} of {scan['needles']} out of "
            "tolerance",
            H.paragraph(f"registration: estimated error {H.fmt(reg.get('estimated_error_mm'))} mm, "
                        f"{H.fmt(reg.get('seconds'), 1)} s"),
            needle_table(step.get("needles", []))))
    return "\n".join(parts)


def ledger_tables(steps: dict) -> str:
    """Deliveries (ledger vs device counter) and seeds in the patient vs found in each post-implant CT."""
    rows = []
    for name in ["delivery"] + [k for k in sorted(steps) if k.startswith("supplement_")]:
        d = steps.get(name)
        if d:
            rows.append([name, d.get("planned", ""), d.get("released"), d.get("device_released_total"),
                         H.flag(d.get("reconciled")), len(d.get("uncertain_seeds", []) or [])])
    ct_rows = [[k, v.get("truth_seeds"), v["result"]["found"], "; ".join(v["result"].get("warnings", [])) or "—"]
               for k, v in sorted(steps.items()) if k.startswith("postimplant_")]
    return (H.table(rows, ["delivery", "planned", "released (ledger)", "device counter", "reconciled", "uncertain"])
            + H.paragraph("Seeds in the patient (simulator's truth) against seeds the navigator found in each "
                          "post-implant CT:")
            + H.table(ct_rows, ["scan", "seeds in patient", "found in CT", "warnings"]))


def timings_table(result: dict) -> str:
    rows = [[k, H.num(v)] for k, v in result.get("timings_s", {}).items() if v is not None]
    rows.append(["total", H.num(result.get("seconds"))])
    return H.table(rows, ["step", "seconds"])


def _pictures(plan: Plan | None, plan_images: PlanImages | None, scans, scene_png, problems: dict) -> list[str]:
    scene = (H.image(scene_png, "3D implant") if scene_png is not None
             else H.paragraph(f"3D picture unavailable: {problems.get('3D picture', 'not drawn')}", "fail"))
    if plan is not None and plan_images is not None:
        pre = plan_pictures(plan, plan_images)
    else:
        pre = (H.paragraph(f"pre-plan pictures unavailable: {problems.get('pre-plan', 'not drawn')}", "fail"),)
    parts = [H.section("Implant in 3D", scene), H.section("Pre-plan: DVH and isodoses", *pre)]
    for scan in scans:
        pics = (postimplant_pictures(scan.result, scan.images) if scan.images is not None
                else (H.paragraph(f"pictures unavailable: {scan.problem or 'not drawn'}", "fail"),))
        parts.append(H.section(f"{scan.name}: DVH, isodoses, cold spots, proposed seeds", *pics))
    return parts


def rehearsal_page(result: dict, steps: dict, plan: Plan | None = None, plan_images: PlanImages | None = None,
                   scans=(), scene_png: bytes | None = None, problems: dict | None = None,
                   replan_json: dict | None = None, robustness_d90_gy=None) -> str:
    """report.html. ``result``: the rehearsal's result dict; ``steps``: the journal's finished steps
    (``{step: result}``); ``plan`` and ``plan_images``: the pre-plan and its pictures' inputs; ``scans``:
    :class:`PostimplantScan` in order; ``scene_png``: the 3D picture (:func:`implant_picture`);
    ``problems``: ``{"3D picture" | "pre-plan": why it is missing}``; ``replan_json``: the re-plan's
    replan.json, when one was made; ``robustness_d90_gy``: the robustness preview's per-sample D90."""
    case = result.get("case")
    return H.page(
        f"Rehearsal {case}",
        H.paragraph(f"Prescription {H.fmt(result.get('prescription_gy'), 0)} Gy (matched peripheral dose), total "
                    f"{H.fmt(result.get('seconds'), 0)} s. All coordinates LPS mm; doses are total doses of the "
                    "permanent implant (TG-43U1)."),
        H.section("Dose metrics: pre-plan, re-plan, post-implant, final", metrics_table(result)),
        replan_section(result, replan_json),
        robustness_section(result, robustness_d90_gy),
        *_pictures(plan, plan_images, scans, scene_png, problems or {}),
        H.section("Needle deviations per scan", needle_sections(result, steps)),
        H.section("Seed ledger, device and post-implant CT", ledger_tables(steps)),
        H.section("Timings", timings_table(result)),
        heading=f"Seed-implant rehearsal: case {case}, seed {result.get('seed')}",
    )
