"""plan.html: the pre-plan's metrics, clinical goals, OAR doses, DVH, isodose lines on axial slices, needles
with their seed depths, and the optimiser's rounds.

The page is built from the plan (``Plan``, as in plan.json) and :class:`PlanImages`, what its pictures are
drawn from; ``PlanImages.from_result`` takes them from the planning run, ``PlanImages.from_outputs`` from the
files ``navigator plan`` wrote (so the rehearsal's report draws the same pictures from them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navigator.core.plan import Plan
from navigator.core.volume import Volume
from navigator.report import html as H
from navigator.report import plots as R

ISODOSE_NOTE = ("Blue 50 %, red 100 %, orange 150 %, magenta 200 % of the prescription; dashed: CTV, target and "
                "the most exposed organs at risk; circles: seeds within 2.5 mm of the slice.")


def _exposed_oars(plan: Plan, n: int = 4) -> list[str]:
    """The OARs worth outlining on the slices: the ``n`` most exposed with D0.1cc >= 30 % of Rx."""
    oars = (plan.metrics or {}).get("oars", {})
    hot = sorted(((v.get("D0.1cc_gy") or 0.0, name) for name, v in oars.items()), reverse=True)
    return [name for d01, name in hot[:n] if d01 >= 0.3 * plan.prescription_gy]


@dataclass
class PlanImages:
    """What the pre-plan pictures are drawn from, all in the planning CT's frame (LPS mm).

    ``dose_masks``: ``{"CTV": mask, OAR: mask}`` on the dose grid (the DVH); ``outlines``: ``{"CTV": mask,
    target: mask, exposed OAR: mask}`` on the CT grid (drawn on the slices)."""

    ct: Volume
    dose: Volume
    dose_masks: dict
    outlines: dict

    @classmethod
    def from_result(cls, res, ct: Volume) -> PlanImages:
        """From a planning run (``navigator.planning.pipeline.PlanResult``) on ``ct``."""
        outlines = {"CTV": res.ctv_mask, res.plan.target: res.gtv_mask}
        oar_masks = res.masks.get("oars", {})
        outlines.update({n: oar_masks[n] for n in _exposed_oars(res.plan) if n in oar_masks})
        return cls(ct=ct, dose=res.dose, dose_masks={"CTV": res.ctv_dose_mask, **res.oar_dose_masks},
                   outlines=outlines)

    @classmethod
    def from_outputs(cls, plan: Plan, ct: Volume, dose: Volume, structures: dict) -> PlanImages:
        """From what ``navigator plan`` wrote: the plan, its CT, its RT Dose and its RT Structure Set (with the
        CTV), the structures read onto ``ct`` (``{name: Structure}``)."""
        from navigator.anatomy.structures import structure_mask

        oars = [n for n in (plan.metrics or {}).get("oars", {}) if n in structures]
        dose_masks = {n: structure_mask(structures[n], dose) for n in ["CTV", *oars] if n in structures}
        wanted = ["CTV", plan.target, *(n for n in _exposed_oars(plan) if n in oars)]
        outlines = {n: structure_mask(structures[n], ct) for n in wanted if n in structures}
        return cls(ct=ct, dose=dose, dose_masks=dose_masks, outlines=outlines)


def plan_pictures(plan: Plan, images: PlanImages) -> tuple[str, str]:
    """(DVH, isodose slices) as embedded images: the DVH of the CTV and of each OAR's part inside the dose
    grid; three axial slices with isodose lines, outlines and the seeds."""
    rx, dose = plan.prescription_gy, images.dose
    dvhs = {}
    for name, mask in images.dose_masks.items():
        if np.any(mask):  # an OAR only where it lies in the dose grid (the metrics table covers all of it)
            label = name if name == "CTV" else f"{name} (in dose grid)"
            dvhs[label] = R.cumulative_dvh(dose.array, mask, 3 * rx)
    dvh = R.dvh_figure(dvhs, rx_gy=rx, title=f"DVH (dose grid {dose.spacing_mm[0]:g} mm)")
    iso = R.isodose_slices_figure(images.ct, dose, rx, images.outlines, markers=plan.seed_positions_mm(),
                                  n_slices=3, title="isodose lines, % of Rx")
    return (H.image(R.png_base64(dvh), "DVH"),
            H.image(R.png_base64(iso), "isodose lines on axial slices"))


def _needles_section(plan: Plan) -> str:
    rows = []
    for n in plan.needles:
        seeds = plan.seeds_of(n.id)
        rows.append((n.id, n.hole or "single", round(n.length_mm, 1), len(seeds),
                     ", ".join(f"{n.depth_of(s.position_mm):.1f}" for s in seeds)))
    tpl = plan.extra.get("template") or {}
    about = (H.paragraph(f"Template {tpl['rows']} x {tpl['cols']} holes ({tpl['hole_ids']}), pitch "
                         f"{tpl['pitch_mm']:g} mm, needle direction {tpl['normal_lps']} (LPS), "
                         f"approach {plan.extra.get('insertion_direction')}.") if tpl else "")
    return H.section("Needles (depths from the template hole's reference point, mm; deepest seed first)", about,
                     H.table(rows, ["needle", "hole", "tip depth", "seeds", "seed depths"], 1))


def _optimiser_section(plan: Plan) -> str:
    opt = plan.extra.get("optimizer") or {}
    rounds = opt.get("rounds") or []
    return H.section("Optimiser", H.table([(k, v) for k, v in opt.items() if not isinstance(v, (dict, list))],
                                          ["item", "value"]),
                     H.table([tuple(r.values()) for r in rounds], list(rounds[0].keys())) if rounds else "")


def plan_page(plan: Plan, images: PlanImages) -> str:
    """plan.html: metrics, clinical goals, OAR doses, DVH, isodose lines (50/100/150/200 %) on axial slices
    with the seeds, needles and the optimiser. ``plan``: the plan with its metrics and ``extra`` (checks,
    template, OAR limits, optimiser) as ``navigator plan`` made it."""
    m, rx, extra = plan.metrics, plan.prescription_gy, plan.extra
    target_rows = [(k, m[k]) for k in ("ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct",
                                        "V200_pct", "HI", "CI_paddick") if k in m]
    limits = extra.get("oar_limits") or {}
    oar_rows = [(n, v.get("Dmax_gy"), v.get("D2cc_gy"), v.get("D0.1cc_gy"), limits.get(n, {}).get("D0.1cc_gy"))
                for n, v in m.get("oars", {}).items()]
    check_rows = [(k, v.get("ok")) for k, v in (extra.get("checks") or {}).items() if isinstance(v, dict)]
    dvh_img, iso_img = plan_pictures(plan, images)
    return H.page(
        f"Pre-plan: {plan.target}, {rx:g} Gy, {len(plan.seeds)} seeds",
        H.paragraph(f"CT series {plan.ct_series_uid}, frame of reference {plan.frame_of_reference_uid}. "
                    f"Seed model {plan.seed_model}, S_K {plan.seed_sk_u:.3f} U per seed "
                    f"({extra.get('seed_activity_mci', float('nan')):g} mCi). CTV = {plan.target} + "
                    f"{(extra.get('ctv') or {}).get('margin_mm', float('nan')):g} mm, clipped to the body. "
                    "All coordinates LPS mm."),
        H.section("Target", H.table(target_rows, ["metric", "value"])),
        H.section("Clinical goals", H.table(check_rows, ["check", "met"])),
        H.section("Organs at risk (Gy)", H.table(oar_rows, ["OAR", "Dmax", "D2cc", "D0.1cc", "limit D0.1cc"]),
                  H.note(extra.get("oar_metrics_method", ""))),
        H.section("DVH", dvh_img),
        H.section("Isodose lines", iso_img, H.note(ISODOSE_NOTE)),
        _needles_section(plan),
        _optimiser_section(plan),
    )
