"""needles.html: one intraop needle check: the registration, each needle against the plan (tip error, lateral,
depth, angle, the CTV D90 change, advice) and the CT in the plane of each needle.

Built from the check's needles.json dict, the intraop CT the needles were found in and the plan.
"""

from __future__ import annotations

from navigator.core.plan import Plan
from navigator.core.volume import Volume
from navigator.report import html as H
from navigator.report import plots as R

NEEDLE_HEADER = ["needle", "found", "tip error (mm)", "lateral (mm)", "depth (mm, + deep)", "angle (°)",
                 "ΔD90 (Gy)", "within tolerance", "advice"]


def needle_rows(needles: list) -> list[list]:
    """Table rows of needles.json ``needles`` entries (the columns of :data:`NEEDLE_HEADER`)."""
    return [[n.get("id"), H.flag(n.get("found")), H.num(n.get("tip_error_mm")), H.num(n.get("lateral_mm")),
             H.num(n.get("depth_mm"), "{:+.1f}"), H.num(n.get("angle_deg")),
             H.num(n.get("d90_change_gy"), "{:+.2f}"), H.flag(n.get("within_tolerance")), n.get("advice", "")]
            for n in needles]


def needle_table(needles: list) -> str:
    """The deviation table; rows of needles out of tolerance (or not found) are shaded."""
    return H.table(needle_rows(needles), NEEDLE_HEADER, bad_rows=[not n.get("within_tolerance") for n in needles])


def needles_page(check: dict, ct: Volume, plan: Plan) -> str:
    """needles.html from ``check`` (the needles.json dict), the intraop ``ct`` and the ``plan``."""
    reg, needles = check["registration"], check["needles"]
    gy = "—" if check.get("planned_d90_gy") is None else f"{check['planned_d90_gy']:.1f}"
    found_gy = "—" if check.get("d90_all_as_found_gy") is None else f"{check['d90_all_as_found_gy']:.1f}"
    picture = R.needle_planes_figure(ct, needles) if needles else None
    return H.page(
        "Needle check",
        H.paragraph(f"Intraop series {check.get('intraop_series_uid')}; plan target {plan.target}, prescription "
                    f"{plan.prescription_gy:g} Gy. Coordinates: intraop CT LPS mm. Depth + means too deep."),
        H.section("Registration pre-plan → intraop", H.paragraph(
            f"rotation {H.fmt(reg.get('rotation_deg'))}°, shift at the target "
            f"{H.fmt(reg.get('translation_at_centre_mm', reg.get('translation_mm')))} mm, "
            f"estimated error {H.fmt(reg.get('estimated_error_mm'))} mm, {H.fmt(reg.get('seconds'), 1)} s "
            f"({reg.get('stop_condition')}).")),
        H.section("Needles", H.paragraph(f"CTV D90 as planned: {gy} Gy; with every needle as found: {found_gy} Gy "
                                         f"(CTV: {check.get('ctv_source')})."),
                  needle_table(needles),
                  H.paragraph(f"Unexpected metal lines (no planned needle near): "
                              f"{len(check.get('unexpected_needles', []))}")),
        H.section("Needle planes", H.image(R.png_base64(picture), "needles") if picture is not None else ""),
        heading=f"Needle check: {len(needles)} needles, {check['out_of_tolerance']} need action "
                f"(tolerance {check['tolerance_mm']:g} mm)",
    )
