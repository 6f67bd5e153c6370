"""The page builders of navigator.report.pages on small synthetic results: each returns a whole page with its
title, its tables and real embedded PNGs; the rehearsal's page draws its pictures from results (no image is
scraped out of another page).

The phantom has anisotropic voxels and a non-zero origin so that an axis mix-up shows; the dose is a smooth
blob whose prescription isodose is a sphere of about 10 mm around the target."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from navigator.anatomy.structures import mask_to_contours
from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.core.structure import Structure
from navigator.core.volume import Volume
from navigator.report import (
    PlanImages,
    PostimplantImages,
    PostimplantScan,
    needles_page,
    plan_page,
    postimplant_page,
    rehearsal_page,
)

REPO = Path(__file__).resolve().parents[2]
RX = 120.0
CENTRE = np.array([2.0, -6.0, 70.0])


def _pngs(text: str) -> list[bytes]:
    """The embedded pictures of a page, each checked to be a PNG."""
    out = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in out)
    return out


def _sphere(grid: Volume, radius_mm: float, centre=CENTRE) -> np.ndarray:
    return np.linalg.norm(grid.voxel_centers_lps().reshape(*grid.array.shape, 3) - centre, axis=-1) <= radius_mm


@pytest.fixture(scope="module")
def world():
    ct = Volume(np.full((20, 64, 56), 40.0, np.float32), origin_mm=[-23.0, -31.0, 46.0],
                spacing_mm=[0.9, 0.8, 2.5])
    dose = Volume(np.zeros((41, 41, 41), np.float32), origin_mm=CENTRE - 20.0, spacing_mm=[1.0, 1.0, 1.0])
    r = np.linalg.norm(dose.voxel_centers_lps().reshape(41, 41, 41, 3) - CENTRE, axis=-1)
    dose = dose.with_array((1.6 * RX * np.exp(-(r / 15.0) ** 2)).astype(np.float32))
    masks = {"CTV": _sphere(ct, 10.0), "GTV": _sphere(ct, 6.0),
             "Cord": _sphere(ct, 4.0, CENTRE + [0.0, 16.0, 0.0])}
    return ct, dose, masks


@pytest.fixture(scope="module")
def plan():
    needles = [Needle(id=f"N0{n + 1}", entry_mm=CENTRE + [dx, -60.0, 0.0], tip_mm=CENTRE + [dx, 8.0, 0.0],
                      hole=f"C{n + 3}") for n, dx in enumerate((-4.0, 4.0))]
    seeds = [PlannedSeed(id=f"S00{k + 1}", needle_id=needles[k // 2].id,
                         position_mm=CENTRE + [(-4.0, 4.0)[k // 2], (-4.0, 3.0)[k % 2], 0.0]) for k in range(4)]
    metrics = {"ctv_cc": 4.19, "D90_gy": 131.2, "D100_gy": 90.5, "V90_pct": 99.0, "V100_pct": 95.1,
               "V150_pct": 40.2, "V200_pct": 10.3, "HI": 0.58, "CI_paddick": 0.7,
               "oars": {"Cord": {"Dmax_gy": 70.0, "D2cc_gy": None, "D0.1cc_gy": 55.0}}}
    extra = {"checks": {"D90 >= Rx": {"ok": True, "D90_gy": 131.2}, "Cord D0.1cc": {"ok": False, "D0.1cc_gy": 55.0}},
             "template": {"rows": 7, "cols": 7, "hole_ids": "A1-G7", "pitch_mm": 5.0, "normal_lps": [0, 1, 0]},
             "insertion_direction": "anterior", "seed_activity_mci": 0.5, "ctv": {"margin_mm": 5.0},
             "oar_limits": {"Cord": {"D0.1cc_gy": 45.0}}, "oar_metrics_method": "TG-43 at the OAR's voxels",
             "optimizer": {"candidates": 12, "rounds": [{"round": 1, "seeds": 4, "D90_gy": 131.2}]}}
    return Plan(frame_of_reference_uid="1.2.3", ct_series_uid="1.2.3.4", target="GTV", prescription_gy=RX,
                seed_model="6711", seed_sk_u=0.635, needles=needles, seeds=seeds, metrics=metrics, extra=extra)


@pytest.fixture(scope="module")
def plan_images(world):
    ct, dose, masks = world
    return PlanImages(ct=ct, dose=dose, dose_masks={"CTV": _sphere(dose, 10.0)},
                      outlines={"CTV": masks["CTV"], "GTV": masks["GTV"]})


def _postimplant_result(plan: Plan, supplementary: bool = True) -> dict:
    seeds = [{"position_mm": s.position_mm.tolist(), "axis": [0.0, 1.0, 0.0]} for s in plan.seeds]
    extra = [{"position_mm": (CENTRE + [0.0, 0.0, 7.5]).tolist(), "entry_mm": (CENTRE + [0.0, -60.0, 7.5]).tolist(),
              "direction": [0.0, 1.0, 0.0], "path": "template", "hole": "D4"}] if supplementary else []
    comparison = [{"quantity": "D90", "unit": "Gy", "preplan": 131.2, "postimplant": 101.0, "with_supplementary": 125.0},
                  {"quantity": "seed count", "unit": "", "preplan": 4, "postimplant": 4, "with_supplementary": 5}]
    cold = [{"volume_cc": 0.0812, "centroid_mm": (CENTRE + [0.0, 0.0, 7.5]).tolist(), "min_dose_gy": 80.1,
             "mean_deficit_gy": 12.3}]
    return {"ct_series_uid": "9.8.7", "prescription_gy": RX, "seed_model": "6711", "seed_sk_u": 0.635,
            "seeds": seeds, "expected_seeds": 4, "comparison": comparison, "cold_spots": cold,
            "cold_spot_threshold_cc": 0.05, "warnings": ["delivered D90 101.0 Gy is below the prescription"],
            "supplementary": {"seeds": extra, "stop_reason": "D90 reaches Rx"},
            "registration": {"fixed_to_moving": np.eye(4).tolist(), "estimated_error_mm": 0.4, "converged": True}}


def test_plan_page_has_its_tables_and_pictures(plan, plan_images):
    text = plan_page(plan, plan_images)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<title>Pre-plan: GTV, 120 Gy, 4 seeds</title>" in text
    for words in ("Target", "Clinical goals", "Organs at risk", "D90_gy", "Cord", "N02", "C4", "Optimiser",
                  "isodose"):
        assert words in text, words
    assert text.count("<table>") >= 5
    assert len(_pngs(text)) == 2
    assert '<td class="fail">FAIL</td>' in text  # the missed goal stands out


def test_plan_images_from_the_written_structures(world, plan):
    ct, dose, masks = world
    structures = {n: Structure(name=n, number=i + 1, contours=mask_to_contours(m, ct)) for i, (n, m) in
                  enumerate(masks.items())}
    images = PlanImages.from_outputs(plan, ct, dose, structures)
    assert set(images.dose_masks) == {"CTV", "Cord"} and set(images.outlines) == {"CTV", "GTV", "Cord"}
    ctv = images.dose_masks["CTV"]
    truth = _sphere(dose, 10.0)
    assert 2 * (ctv & truth).sum() / (ctv.sum() + truth.sum()) > 0.85  # the CTV lands where it was drawn


def test_needles_page_shades_the_needles_that_need_action(world, plan):
    ct = world[0]
    entry, tip = plan.needles[0].entry_mm, plan.needles[0].tip_mm
    ok = {"id": "N01", "found": True, "within_tolerance": True, "tip_error_mm": 0.8, "lateral_mm": 0.5,
          "depth_mm": -0.6, "angle_deg": 1.0, "d90_change_gy": -0.4, "advice": "ok",
          "planned_entry_mm": entry.tolist(), "planned_tip_mm": tip.tolist(), "tip_mm": (tip + [0.5, 0, 0]).tolist(),
          "axis": [0.0, 1.0, 0.0], "lateral_vector_mm": [0.5, 0.0, 0.0]}
    out = {**ok, "id": "N02", "within_tolerance": False, "tip_error_mm": 3.4, "depth_mm": 3.1,
           "advice": "withdraw 3 mm", "tip_mm": (tip + [0, 3.1, 0]).tolist()}
    lost = {**ok, "id": "N03", "found": False, "within_tolerance": False, "tip_mm": None, "axis": None,
            "lateral_vector_mm": None, "tip_error_mm": None, "advice": "not found: rescan"}
    check = {"registration": {"rotation_deg": 0.3, "translation_mm": [1.0, 0.0, -2.0], "estimated_error_mm": 0.2,
                              "seconds": 1.2, "stop_condition": "converged"},
             "tolerance_mm": 2.0, "needles": [ok, out, lost], "unexpected_needles": [], "out_of_tolerance": 2,
             "planned_d90_gy": 131.2, "d90_all_as_found_gy": None, "ctv_source": "structure CTV",
             "intraop_series_uid": "5.6.7"}
    text = needles_page(check, ct, plan)
    assert "<title>Needle check</title>" in text and "3 needles, 2 need action" in text
    assert "<table>" in text and "withdraw 3 mm" in text and "+3.1" in text
    assert text.count('<tr class="bad">') == 2
    assert len(_pngs(text)) == 1


def test_postimplant_page_has_its_tables_and_pictures(world, plan):
    ct, dose, _ = world
    ctv = _sphere(dose, 10.0)
    cold = ctv & (np.arange(41)[:, None, None] > 33)
    images = PostimplantImages(ct=ct, dose=dose, ctv_weights=ctv.astype(np.float32), cold_masks=[cold],
                               dose_supplemented=dose.with_array(dose.array * 1.1))
    text = postimplant_page(_postimplant_result(plan), images)
    assert "<title>Post-implant evaluation</title>" in text
    for words in ("Warnings", "below the prescription", "Pre-plan vs post-implant", "DVH of the CTV", "Cold spots",
                  "0.081", "Proposed supplementary seeds (D90 reaches Rx)", "D4", "Registration"):
        assert words in text, words
    assert text.count("<table>") == 3
    assert len(_pngs(text)) == 2


def test_postimplant_images_from_the_written_outputs(world, plan, plan_images):
    ct, dose, _ = world
    result = _postimplant_result(plan)
    images = PostimplantImages.from_outputs(result, ct, dose, plan_images)
    ctv = images.ctv_weights >= 0.5
    assert abs(int(ctv.sum()) - int(_sphere(dose, 10.0).sum())) < 0.1 * ctv.sum()  # identity registration
    assert all(not (m & ~ctv).any() for m in images.cold_masks)  # cold spots lie in the CTV
    assert images.preplan_dvh is not None and images.preplan_dvh.total_cc > 3.0
    assert images.dose_supplemented is not None and (images.dose_supplemented.array > dose.array).any()
    none = PostimplantImages.from_outputs(_postimplant_result(plan, supplementary=False), ct, dose, plan_images)
    assert none.dose_supplemented is None


def test_rehearsal_page_draws_its_pictures_from_results(world, plan, plan_images):
    ct, dose, _ = world
    scan = PostimplantScan("postimplant_1", _postimplant_result(plan),
                           PostimplantImages.from_outputs(_postimplant_result(plan), ct, dose, plan_images))
    lost = PostimplantScan("postimplant_2", _postimplant_result(plan), problem="RTDOSE.dcm not found")
    metrics = {"D90_gy": 131.24, "V100_pct": 95.0, "HI": 0.5812}
    result = {"case": "neck", "seed": 3, "prescription_gy": RX, "preplan_metrics": metrics,
              "postimplant_metrics": metrics, "final_metrics": {**metrics, "D90_gy": 127.46}, "seeds_planned": 4,
              "seeds_released": 4, "supplementary_seeds": 1, "seconds": 31.0, "timings_s": {"plan": 4.2},
              "needle_scans": [{"scan": "reference", "round": 1, "needles": 1, "out_of_tolerance": 0}]}
    steps = {"needles_reference_1": {"needles": [{"id": "N01", "found": True, "within_tolerance": True,
                                                  "tip_error_mm": 0.7, "advice": "ok"}],
                                     "registration": {"estimated_error_mm": 0.3, "seconds": 2.0}},
             "delivery": {"planned": 4, "released": 4, "device_released_total": 4, "reconciled": True},
             "postimplant_1": {"truth_seeds": 4, "result": {"found": 4, "warnings": []}}}
    scene = _pngs(plan_page(plan, plan_images))[0]  # any PNG stands in for the 3D picture here
    text = rehearsal_page(result, steps, plan, plan_images, [scan, lost], scene_png=scene)
    assert "<title>Rehearsal neck</title>" in text and "Seed-implant rehearsal: case neck, seed 3" in text
    for words in ("pre-plan", "post-implant", "Implant in 3D", "Needle deviations", "Seed ledger", "Timings",
                  "127.5", "0.581", "RTDOSE.dcm not found"):
        assert words in text, words
    assert len(_pngs(text)) == 5  # the 3D picture, the plan's DVH and slices, postimplant_1's DVH and slice


def test_no_page_is_scraped_from_another_page():
    """Only the HTML kit writes a data URI; nothing in report/ or the rehearsal's report reads pages back."""
    sources = sorted((REPO / "navigator" / "report").rglob("*.py")) + [REPO / "navigator" / "rehearsal" / "report.py"]
    for path in sources:
        text = path.read_text()
        if path.name != "html.py" or path.parent.name != "report":
            assert "data:image" not in text, path
        assert not re.search(r"\bre\.(findall|search|finditer|match)\(", text), path
    rehearsal = (REPO / "navigator" / "rehearsal" / "report.py").read_text()
    assert set(re.findall(r"[\w*]+\.html", rehearsal)) <= {"report.html"}  # it opens no other page


def test_the_kit_escapes_text_and_formats_numbers():
    from navigator.report import html as H

    text = H.table([("<b>", np.float32(1.234), np.bool_(True), [1.0, 2.5], None, H.num(-0.04, "{:+.1f}"))],
                   ["a&b", "x", "ok", "p", "n", "d"], bad_rows=[True])
    assert "&lt;b&gt;" in text and "a&amp;b" in text and "<b>" not in text
    assert '<td class="num">1.23</td>' in text and '<td class="ok">ok</td>' in text
    assert "(1.00, 2.50)" in text and "—" in text and '<td class="num">-0.0</td>' in text
    assert text.count('<tr class="bad">') == 1
    page = H.page("T <1>", H.section("S", H.image(b"\x89PNG\r\n\x1a\n", "pic")), heading="H")
    assert "<title>T &lt;1&gt;</title>" in page and "<h1>H</h1>" in page and len(_pngs(page)) == 1
