"""Cold spots on analytic dose fields: known regions below Rx, their volume, centroid, minimum, ranking."""

import numpy as np
import pytest

from navigator.postimplant.coldspots import find_cold_spots
from navigator.core.volume import Volume

RX = 140.0


def _grid():
    # anisotropic voxels and a non-zero origin so an axis mix-up shows
    return Volume(np.zeros((40, 50, 60), np.float32), origin_mm=(-30.0, 12.0, -80.0), spacing_mm=(1.0, 0.8, 1.25))


def _ball(grid, centre_mm, radius_mm):
    p = grid.voxel_centers_lps().reshape(grid.array.shape + (3,))
    return np.linalg.norm(p - np.asarray(centre_mm), axis=-1) <= radius_mm


def test_two_cold_balls_found_ranked_and_measured():
    g = _grid()
    ctv = np.ones(g.array.shape, bool)
    dose = np.full(g.array.shape, 1.5 * RX, np.float32)
    big_c, small_c = np.array([-10.0, 30.0, -60.0]), np.array([15.0, 40.0, -45.0])
    big, small = _ball(g, big_c, 6.0), _ball(g, small_c, 3.0)
    dose[big] = 0.9 * RX             # large, mildly cold
    dose[small] = 0.3 * RX           # small, very cold
    dose[small & (np.linalg.norm(g.voxel_centers_lps().reshape(g.array.shape + (3,)) - small_c, axis=-1) < 1)] = 10.0
    res = find_cold_spots(dose, ctv, g, RX, min_volume_cc=0.01)
    assert len(res.spots) == 2
    vols = {round(s.volume_cc, 3) for s in res.spots}
    assert round(big.sum() * g.voxel_volume_cc, 3) in vols and round(small.sum() * g.voxel_volume_cc, 3) in vols
    # ranking by volume x mean deficit: 0.905 cc x 14 Gy vs 0.113 cc x ~98 Gy
    first, second = res.spots
    assert first.score_cc_gy >= second.score_cc_gy
    assert np.allclose(first.centroid_mm, big_c, atol=0.3)
    assert np.allclose(second.centroid_mm, small_c, atol=0.3)
    assert second.min_dose_gy == pytest.approx(10.0)
    assert first.min_dose_gy == pytest.approx(0.9 * RX, rel=1e-6)
    assert res.cold_cc == pytest.approx((big.sum() + small.sum()) * g.voxel_volume_cc)


def test_tiny_regions_dropped_and_reported():
    g = _grid()
    ctv = np.ones(g.array.shape, bool)
    dose = np.full(g.array.shape, 2 * RX, np.float32)
    dose[5, 5, 5] = dose[30, 40, 50] = 0.5 * RX     # single voxels: 0.001 cc each
    big = _ball(g, (0.0, 30.0, -55.0), 5.0)
    dose[big] = 0.8 * RX
    res = find_cold_spots(dose, ctv, g, RX, min_volume_cc=0.05)
    assert len(res.spots) == 1 and res.dropped == 2
    assert res.dropped_cc == pytest.approx(2 * g.voxel_volume_cc)
    assert res.to_dict()["cold_spot_threshold_cc"] == 0.05


def test_only_inside_the_ctv_and_diagonal_voxels_connect():
    g = _grid()
    dose = np.full(g.array.shape, 2 * RX, np.float32)
    ctv = np.zeros(g.array.shape, bool)
    ctv[10:30, 10:40, 10:50] = True
    dose[:, :, :12] = 0.5 * RX                      # cold slab, only partly in the CTV
    dose[20, 20, 20] = dose[21, 21, 21] = 0.5 * RX  # touching only at a corner: one region (26-connectivity)
    res = find_cold_spots(dose, ctv, g, RX, min_volume_cc=0.0)
    vox = sorted(s.voxels for s in res.spots)
    assert vox == [2, 20 * 30 * 2]


def test_no_cold_spot_when_covered():
    g = _grid()
    res = find_cold_spots(np.full(g.array.shape, 2 * RX, np.float32), np.ones(g.array.shape, bool), g, RX)
    assert res.spots == [] and res.cold_cc == 0.0


def test_gap_joined_to_the_cold_rim_is_located_at_the_gap():
    """A cold rim all round the CTV (the outer 3 mm at 0.9 Rx, as in any implant) joined to a deep gap where
    seeds are missing: one 26-connected region whose geometric centroid sits near the CTV's centre. The
    reported centroid must sit at the gap, with the plan's dose as reference (missing-dose weighting) and
    without it (the deficit core)."""
    g = _grid()
    p = g.voxel_centers_lps().reshape(g.array.shape + (3,))
    centre, gap_c = np.array([-5.0, 32.0, -55.0]), np.array([3.0, 32.0, -55.0])
    r = np.linalg.norm(p - centre, axis=-1)
    ctv = r <= 15.0
    planned = np.where(r <= 12.0, 1.5 * RX, 0.9 * RX).astype(np.float32)
    gap = np.linalg.norm(p - gap_c, axis=-1) <= 6.0
    dose = planned.copy()
    dose[gap] = 0.5 * RX
    with_ref = find_cold_spots(dose, ctv, g, RX, reference_gy=planned)
    without = find_cold_spots(dose, ctv, g, RX)
    for res in (with_ref, without):
        assert len(res.spots) == 1
        s = res.spots[0]
        assert np.linalg.norm(s.region_centroid_mm - centre) < np.linalg.norm(s.region_centroid_mm - gap_c)
        assert np.linalg.norm(s.centroid_mm - gap_c) < 3.0, s.centroid_mm
    assert with_ref.spots[0].weighting == "missing dose" and without.spots[0].weighting == "deficit core"
    assert np.linalg.norm(with_ref.spots[0].missing_peak_mm - gap_c) <= 6.5
    assert with_ref.spots[0].to_dict()["centroid_weighting"] == "missing dose"
