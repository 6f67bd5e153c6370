"""Needle finding on scanners other than the one the finder was first tuned on (issue #12, item 2).

The independent phantom that broke the intraop check, rebuilt with the simulator's own knobs: a coplanar
template (every needle parallel to the 2.5 mm slices), 0.9 mm pixels, a Gaussian in-plane blur of sigma
0.45 mm, no blooming, no streaks, steel stored clipped at 3071 HU (steel of 12 000 HU effective: a rod lying
inside one slice saturates, one straddling two slices does not), rigid motion of 2.5 / -1.5 / 3.5 degrees and
5.5 / -3 / 4 mm, 18 of 19 needles inserted, 7 of them 3-5 mm off their plan. A second variant has dimmer
steel (8 000 HU: nothing reaches the clip, the weakest stretches are near bone's level), a third thin slices.

The planned needles are mapped with the exact motion, so the finder alone is measured. Tolerances: every
found tip within 2 mm of its own true tip (a neighbour's steel is 10 mm away), the 0.7 mm tip goal (issue #6)
on the mean of the well-placed needles; and the reported tip standard error must cover the error (within
3 sd for all but one needle).
"""

from __future__ import annotations

import numpy as np
import pytest

from navigator.imaging.needle_finding import find_needles
from simulators.phantoms.cases import demo_implant, intraop_scan, make_patient
from simulators.phantoms.motion import Motion, apply_4x4, rigid_4x4, rotation_matrix
from simulators.phantoms.needles import (
    NeedleErrorModel,
    _perpendicular_basis,
    draw_needles,
    render_needles,
)
from simulators.phantoms.scanner import ScannerModel

TIP_GOAL_MM = 0.7
MISSING = 7  # N08: inside the 5 x 4 lattice, neighbours 10 mm away on every side
OFF = (0, 3, 5, 12, 14, 16, 18)  # placed 3-5 mm off their plan


def _independent_case(steel_hu: float, slice_mm: float, pixel_mm: float, seed: int = 0):
    patient = make_patient("neck", 7, matrix=(150, 150), n_slices=36, pixel_mm=pixel_mm)
    needles, _, _ = demo_implant(patient, n_needles=19, spacing_mm=10.0)
    c = patient.node_center_mm
    rot = rotation_matrix([1, 0, 0], 2.5) @ rotation_matrix([0, 1, 0], -1.5) @ rotation_matrix([0, 0, 1], 3.5)
    motion = rigid_4x4(rot, c + np.array([5.5, -3.0, 4.0]) - rot @ c)
    rng = np.random.default_rng(seed)
    actual = [(d.entry_mm, d.tip_mm) for d in draw_needles(needles, NeedleErrorModel(0.4, 0.5, 0.5), rng)]
    for k in OFF:  # a whole-needle shift of 3-5 mm in a random direction across the needle
        e, t = actual[k]
        e1, e2 = _perpendicular_basis((t - e) / np.linalg.norm(t - e))
        a, mag = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(3.0, 5.0)
        shift = mag * (np.cos(a) * e1 + np.sin(a) * e2)
        actual[k] = (e + shift, t + shift)
    planned = [(f"N{k + 1:02d}", apply_4x4(motion, e), apply_4x4(motion, t)) for k, (e, t) in enumerate(needles)]
    inserted = [k for k in range(len(needles)) if k != MISSING]
    scanner = ScannerModel(psf_fwhm_mm=0.45 * 2.3548, bloom_fraction=0.0, streaks=False, hu_max=3071.0)
    empty = intraop_scan(patient, [], motion, rng=np.random.default_rng(seed + 100), slice_mm=slice_mm,
                         length_mm=70.0, pixel_mm=pixel_mm, scanner=scanner)
    m = Motion.coerce(motion)
    in_scan = [(m.preplan_to_scan(actual[k][0]), m.preplan_to_scan(actual[k][1])) for k in inserted]
    scan = render_needles(empty, in_scan, np.random.default_rng(seed + 200), scanner, steel_hu=steel_hu)
    truth = dict(zip(inserted, np.array(scan.meta["truth"]["needles_mm"])[:, 1]))
    return scan, planned, truth


@pytest.fixture(scope="module", params=[(12000.0, 2.5, 0.9), (8000.0, 2.5, 0.9), (12000.0, 1.25, 0.7)],
                ids=["clipped-2.5mm", "dim-2.5mm", "clipped-1.25mm"])
def searched(request):
    steel_hu, slice_mm, pixel_mm = request.param
    scan, planned, truth = _independent_case(steel_hu, slice_mm, pixel_mm)
    return dict(res=find_needles(scan, planned), truth=truth, steel_hu=steel_hu, pixel_mm=pixel_mm)


def test_every_inserted_needle_found_on_its_own_steel(searched):
    res, truth = searched["res"], searched["truth"]
    tips = np.array([truth[k] for k in sorted(truth)])
    for k, m in enumerate(res.matches):
        if k == MISSING:
            assert m.found is None, f"{m.needle_id} is not in the scan but was given steel"
            continue
        assert m.found is not None, f"{m.needle_id} not found"
        d = np.linalg.norm(tips - m.found.tip_mm, axis=1)
        assert np.linalg.norm(m.found.tip_mm - truth[k]) < 2.0, m.needle_id
        assert d.min() == pytest.approx(np.linalg.norm(m.found.tip_mm - truth[k])), f"{m.needle_id}: neighbour's steel"
    assert res.unexpected == []


def test_tip_accuracy_and_its_reported_uncertainty(searched):
    res, truth = searched["res"], searched["truth"]
    err = {k: float(np.linalg.norm(m.found.tip_mm - truth[k])) for k, m in enumerate(res.matches) if k in truth}
    well = [e for k, e in err.items() if k not in OFF]
    assert np.mean(well) <= TIP_GOAL_MM, sorted(well)
    sd = {k: res.matches[k].found.tip_sd_mm for k in err}
    assert all(np.isfinite(v) and 0.0 < v < 2.0 for v in sd.values()), sd
    assert sum(err[k] > 3.0 * sd[k] for k in err) <= 1, {k: (round(err[k], 2), round(sd[k], 2)) for k in err}


def test_metal_appearance_is_measured_on_the_scan(searched):
    a = searched["res"].settings["appearance"]
    if searched["steel_hu"] >= 12000.0:
        assert a["clip_hu"] == 3071.0
    else:
        assert a["clip_hu"] is None  # nothing reaches the 3071 HU ceiling
    assert a["tissue_hu"] < a["metal_hu"] < a["weakest_line_hu"]
    # the blur of a steel edge as sampled: the 0.45 mm PSF, the pixel's box (p^2 / 12) and the linear
    # interpolation between pixel centres (a triangle, p^2 / 6): p^2 / 4 in all; within 20 %
    expected = np.hypot(0.45, 0.5 * searched["pixel_mm"])
    assert abs(a["sigma_mm"] - expected) < 0.2 * expected, (a["sigma_mm"], expected)
