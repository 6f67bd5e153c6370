"""postimplant.html: the post-implant evaluation: warnings, pre-plan vs post-implant vs with the proposed
seeds, the CTV's DVH (pre-plan, post-implant, with supplementary seeds), an axial slice through the largest cold
spot (isodoses, CTV, cold spots, found and proposed seeds), the cold spots, the proposed seeds, the registration.

Built from the postimplant.json dict and :class:`PostimplantImages`, what its pictures are drawn from;
``PostimplantImages.from_result`` takes them from the evaluation run, ``PostimplantImages.from_outputs`` from
the files ``navigator postimplant`` and ``navigator plan`` wrote (the rehearsal's report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navigator.core.volume import Volume
from navigator.physics.dvh import DVH
from navigator.report import html as H
from navigator.report import plots as R
from navigator.report.pages.plan import PlanImages

SLICE_NOTE = ("Isodose lines: blue 50 %, red 100 %, orange 150 %, magenta 200 % of the prescription; dashed: "
              "the CTV mapped from the pre-plan and the cold spots (CTV below Rx); circles: seeds found, stars: "
              "proposed supplementary seeds, within 2.5 mm of the slice. Coordinates: post-implant CT, LPS mm.")


@dataclass
class PostimplantImages:
    """What the post-implant pictures are drawn from, in the post-implant CT's frame (LPS mm).

    ``ctv_weights``: the CTV's occupancy (0..1) on the dose grid; ``cold_masks``: each cold spot's bool mask on
    the dose grid, in the order of postimplant.json's ``cold_spots``; ``preplan_dvh``: the CTV's DVH as
    planned (None: not drawn); ``dose_supplemented``: the dose with the proposed seeds (None: none proposed)."""

    ct: Volume
    dose: Volume
    ctv_weights: np.ndarray
    cold_masks: list
    preplan_dvh: DVH | None = None
    dose_supplemented: Volume | None = None

    @classmethod
    def from_result(cls, res, ct: Volume) -> PostimplantImages:
        """From an evaluation run (``navigator.postimplant.pipeline.PostimplantResult``) on the CT ``ct``."""
        return cls(ct=ct, dose=res.dose, ctv_weights=res.ctv_weights, cold_masks=list(res.cold_masks),
                   preplan_dvh=res.preplan_dvh,
                   dose_supplemented=res.dose_supplemented if len(res.supplementary_mm) else None)

    @classmethod
    def from_outputs(cls, result: dict, ct: Volume, dose: Volume, plan: PlanImages) -> PostimplantImages:
        """From the written outputs: ``result`` (postimplant.json), the post-implant ``ct``, its RT Dose
        ``dose`` and the pre-plan's pictures' inputs. The CTV is mapped through the registration of the result,
        the cold spots found again on the dose (same rule and threshold), the supplemented dose recomputed
        from the found and proposed seeds (TG-43, as the evaluation did)."""
        from navigator.postimplant.coldspots import find_cold_spots
        from navigator.postimplant.pipeline import resample_mask

        post_to_pre = np.linalg.inv(np.asarray(result["registration"]["fixed_to_moving"], float))
        weights = resample_mask(plan.outlines["CTV"], plan.ct, dose, post_to_pre)
        rx = float(result["prescription_gy"])
        cold = find_cold_spots(dose.array, weights >= 0.5, dose, rx, float(result["cold_spot_threshold_cc"]))
        pre_mask = plan.dose_masks.get("CTV")
        pre_dvh = (DVH.from_dose(plan.dose.array, pre_mask, plan.dose.voxel_volume_cc)
                   if pre_mask is not None and np.any(pre_mask) else None)
        return cls(ct=ct, dose=dose, ctv_weights=weights, cold_masks=[c.mask for c in cold.spots],
                   preplan_dvh=pre_dvh, dose_supplemented=_supplemented_dose(result, dose))


def _supplemented_dose(result: dict, dose: Volume) -> Volume | None:
    """The dose of the found seeds plus the proposed ones (None when none is proposed)."""
    from navigator.physics import tg43
    from navigator.physics.dose import dose_on_grid

    extra = result["supplementary"]["seeds"]
    if not extra:
        return None
    pts = np.array([s["position_mm"] for s in result["seeds"]] + [s["position_mm"] for s in extra], float)
    axes = np.array([s["axis"] for s in result["seeds"]] + [s["direction"] for s in extra], float)
    model = tg43.load_seed_model(result["seed_model"])
    return dose.with_array(dose_on_grid(dose, pts, axes, float(result["seed_sk_u"]), model))


def _positions(items: list) -> np.ndarray:
    return np.array([s["position_mm"] for s in items], float).reshape(-1, 3)


def _dvh_curves(images: PostimplantImages) -> dict:
    vcc = images.dose.voxel_volume_cc
    hists = {"pre-plan": images.preplan_dvh,
             "post-implant": DVH.from_dose(images.dose.array, images.ctv_weights, vcc)}
    if images.dose_supplemented is not None:
        hists["with supplementary"] = DVH.from_dose(images.dose_supplemented.array, images.ctv_weights, vcc)
    return {label: h.curve() for label, h in hists.items() if h is not None and h.total_cc > 0}


def postimplant_pictures(result: dict, images: PostimplantImages) -> tuple[str, str]:
    """(DVH of the CTV, axial slice through the largest cold spot, else the CTV's centre) as embedded images."""
    rx = float(result["prescription_gy"])
    dvh = R.dvh_figure(_dvh_curves(images), rx_gy=rx, title="DVH of the CTV", ylabel="CTV volume (%)")
    dose, ctv = images.dose, images.ctv_weights >= 0.5
    outlines = {"CTV": dose.with_array(ctv)}
    if images.cold_masks:
        outlines["cold spots"] = dose.with_array(np.any(images.cold_masks[:5], axis=0))
    spots = result.get("cold_spots") or []
    if spots:
        z, where = spots[0]["centroid_mm"][2], "the largest cold spot"
    else:
        z, where = float(np.mean(dose.voxel_centers_lps(ctv)[:, 2])) if ctv.any() else None, "the CTV's centre"
    markers = {"found seeds": _positions(result["seeds"]),
               "proposed seeds": _positions(result["supplementary"]["seeds"])}
    iso = R.isodose_slices_figure(images.ct, dose, rx, outlines, markers=markers, n_slices=1,
                                  z_mm=None if z is None else [z], title=f"axial slice through {where}")
    return H.image(R.png_base64(dvh), "DVH of the CTV"), H.image(R.png_base64(iso), "isodoses and cold spots")


def _tables(r: dict) -> list[str]:
    comp = [(c["quantity"] + (f" ({c['unit']})" if c["unit"] else ""), c["preplan"], c["postimplant"],
             c["with_supplementary"]) for c in r["comparison"]]
    cold = [(i + 1, H.num(c["volume_cc"], "{:.3f}"), c["centroid_mm"], c["min_dose_gy"], c["mean_deficit_gy"])
            for i, c in enumerate(r["cold_spots"])]
    sup = r["supplementary"]
    seeds = [(i + 1, s["position_mm"], s["entry_mm"], s["path"], s["hole"] or "—") for i, s in enumerate(sup["seeds"])]
    return [H.section("Pre-plan vs post-implant",
                      H.table(comp, ["", "pre-plan", "post-implant", "with supplementary (predicted)"])),
            H.section(f"Cold spots (threshold {r['cold_spot_threshold_cc']} cc)",
                      H.table(cold, ["#", "volume (cc)", "centroid (mm)", "min dose (Gy)", "mean deficit (Gy)"])),
            H.section(f"Proposed supplementary seeds ({sup['stop_reason']})",
                      H.table(seeds, ["#", "position (mm)", "entry (mm)", "path", "template hole"]))]


def postimplant_page(result: dict, images: PostimplantImages) -> str:
    """postimplant.html from ``result`` (the postimplant.json dict) and the pictures' inputs."""
    r, rx = result, float(result["prescription_gy"])
    comparison, cold, supplementary = _tables(r)
    dvh_img, slice_img = postimplant_pictures(r, images)
    reg = r.get("registration") or {}
    return H.page(
        "Post-implant evaluation",
        H.paragraph(f"Post-implant CT series {r['ct_series_uid']}; prescription {rx:g} Gy; seed model "
                    f"{r['seed_model']}, {r['seed_sk_u']:.4g} U. Seeds found: {len(r['seeds'])} (expected "
                    f"{r['expected_seeds']}). Coordinates: LPS mm of the post-implant CT."),
        H.section("Warnings", H.bullets(r.get("warnings", []))),
        comparison,
        H.section("DVH of the CTV", dvh_img),
        H.section("Isodoses", slice_img, H.note(SLICE_NOTE)),
        cold,
        supplementary,
        H.section("Registration", H.paragraph(f"estimated error {H.fmt(reg.get('estimated_error_mm'))} mm, "
                                              f"converged {reg.get('converged')}")),
    )
