"""Needles and seeds in CT: partial volume, sub-voxel position (intensity centroid), error model, streaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navigator.core.volume import Volume
from simulators.phantoms import (NEEDLE_18G_DIAMETER_MM, SEED_DIAMETER_MM, SEED_LENGTH_MM, NeedleErrorModel,
                                 ScannerModel, draw_needles, needle_occupancy, render_needles, render_seeds,
                                 seed_occupancy)

# The intensity centroid is meaningful on the scanner's linear response: no clipping (HU max far away), no noise.
LINEAR = ScannerModel(hu_max=1e9, noise_hu=0.0)
SEED_CAPSULE_MM3 = (math.pi * (SEED_DIAMETER_MM / 2) ** 2 * (SEED_LENGTH_MM - SEED_DIAMETER_MM)
                    + 4 / 3 * math.pi * (SEED_DIAMETER_MM / 2) ** 3)


def _water(center, n=(64, 64, 40), spacing=(0.8, 0.8, 1.25), direction=None) -> Volume:
    """A 0 HU block with anisotropic voxels and an awkward non-zero origin, centred near ``center``."""
    sp = np.array(spacing, dtype=float)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    origin = np.asarray(center, dtype=float) - d @ (sp * (np.array(n) - 1) / 2) + [0.137, -0.291, 0.377]
    return Volume(np.zeros(n[::-1], np.float32), origin, sp, d)


def _centroid(vol: Volume, around_mm, box_mm: float = 9.0) -> np.ndarray:
    """Intensity-weighted centroid (LPS) of the positive signal within a box around a point."""
    a = np.clip(vol.array.astype(float), 0, None)
    kk, jj, ii = np.indices(a.shape)
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)
    near = np.all(np.abs(vol.ijk_to_lps(ijk) - around_mm) < box_mm, axis=1)
    w = a.reshape(-1) * near
    return vol.ijk_to_lps((w[:, None] * ijk).sum(0) / w.sum())


def _in_plane(vol: Volume, v) -> np.ndarray:
    """Components of an LPS vector along the image rows and columns (the slice plane)."""
    return np.asarray(v) @ vol.direction[:, :2]


RNG = np.random.default_rng(20261122)
POSITIONS = [np.array([3.0, -7.0, -120.0]) + RNG.uniform(-1.5, 1.5, 3) for _ in range(3)]


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("axis", [[1, 1, 1], [0.2, -0.5, 1.0], [1, -0.4, 0.6]])
def test_seed_centroid_within_0_2_mm_thin_slices(pos, axis):
    vol = render_seeds(_water(pos), [pos], [axis], rng=1, scanner=LINEAR)
    assert np.linalg.norm(_centroid(vol, pos) - pos) < 0.2


@pytest.mark.parametrize("slice_mm", [2.5, 5.0])
@pytest.mark.parametrize("axis", [[0, 0, 1], [1, 0.3, 0], [1, 1, 1]])
def test_seed_centroid_in_plane_within_0_2_mm_thick_slices(slice_mm, axis):
    """Through thick slices the in-plane position stays exact; along z a seed inside one slice cannot be
    located better than the slice (that is the scanner, not the phantom)."""
    pos = POSITIONS[0]
    vol = render_seeds(_water(pos, (64, 64, int(50 / slice_mm)), (0.8, 0.8, slice_mm)), [pos], [axis], rng=1,
                       scanner=LINEAR)
    err = _centroid(vol, pos) - pos
    assert np.linalg.norm(_in_plane(vol, err)) < 0.2
    assert abs(err[2]) <= 0.5 * slice_mm


def test_seed_centroid_in_plane_with_realistic_scanner_ffs():
    """Clipped at 3071 HU, with noise and streaks, feet-first axes: the in-plane centroid still holds."""
    pos = POSITIONS[1]
    vol = _water(pos, (64, 64, 20), (0.8, 0.8, 2.5), np.diag([-1.0, 1.0, -1.0]))
    vol = render_seeds(vol, [pos], [[0.3, 0.4, 1.0]], rng=3, scanner=ScannerModel(noise_hu=0.0))
    assert vol.array.max() == 3071.0
    assert np.linalg.norm(_in_plane(vol, _centroid(vol, pos) - pos)) < 0.2


@pytest.mark.parametrize("slice_mm", [1.25, 2.5, 5.0])
def test_seed_partial_volume_conserves_the_capsule_volume(slice_mm):
    pos = POSITIONS[2]
    g = _water(pos, (48, 48, int(40 / slice_mm)), (0.8, 0.8, slice_mm))
    occ = seed_occupancy(g, [pos], [[0.3, -0.2, 1.0]])
    assert occ.sum(dtype=np.float64) * g.voxel_volume_cc * 1000 == pytest.approx(SEED_CAPSULE_MM3, rel=0.02)
    # imaged across two slices at most when the seed lies along the slice axis and straddles a boundary
    assert np.count_nonzero(occ.reshape(occ.shape[0], -1).max(1)) >= 1


def test_touching_and_overlapping_seeds():
    pos = POSITIONS[0]
    u = np.array([0.0, 0.0, 1.0])
    g = _water(pos, (48, 48, 40), (0.8, 0.8, 1.25))
    touching = seed_occupancy(g, [pos, pos + SEED_LENGTH_MM * u], [u, u])
    assert touching.sum() * g.voxel_volume_cc * 1000 == pytest.approx(2 * SEED_CAPSULE_MM3, rel=0.02)
    crossing = seed_occupancy(g, [pos, pos], [u, [1.0, 0, 0]])
    assert crossing.max() <= 1.0
    # two crossing seeds share their middle: less than two seeds of metal, more than one
    total = crossing.sum() * g.voxel_volume_cc * 1000
    assert SEED_CAPSULE_MM3 < total < 2 * SEED_CAPSULE_MM3
    vol = render_seeds(g, [pos, pos + SEED_LENGTH_MM * u], [u, u], rng=0)
    assert len(vol.meta["truth"]["seeds_mm"]) == 2


def test_needle_partial_volume_and_centroid():
    entry = np.array([-31.3, -14.2, -140.9])
    tip = np.array([4.71, 6.33, -104.05])
    mid = 0.5 * (entry + tip)
    g = _water(mid, (80, 64, 48), (0.8, 0.8, 1.25))
    occ = needle_occupancy(g, [(entry, tip)])
    cyl = math.pi * (NEEDLE_18G_DIAMETER_MM / 2) ** 2 * np.linalg.norm(tip - entry)
    assert occ.sum(dtype=np.float64) * g.voxel_volume_cc * 1000 == pytest.approx(cyl, rel=0.02)
    vol = render_needles(g, [(entry, tip)], rng=0, scanner=LINEAR)
    assert np.linalg.norm(_centroid(vol, mid, box_mm=40.0) - mid) < 0.2


def test_steep_needle_cross_sections_centre_on_the_axis():
    """Each slice's cross-section of a steep needle centres on where the axis crosses the slice centre."""
    entry = np.array([10.37, -5.11, -60.2])
    tip = np.array([14.9, -1.6, -110.6])
    g = _water(0.5 * (entry + tip), (40, 40, 24), (0.8, 0.8, 2.5))
    vol = render_needles(g, [(entry, tip)], rng=0, scanner=ScannerModel(hu_max=1e9, noise_hu=0.0, streaks=False))
    u = (tip - entry) / np.linalg.norm(tip - entry)
    errors = []
    for k in range(vol.array.shape[0]):
        z = vol.ijk_to_lps([0, 0, k])[2]
        s = (z - entry[2]) / u[2]
        if not 6.0 < s < np.linalg.norm(tip - entry) - 6.0:
            continue
        a = np.clip(vol.array[k].astype(float), 0, None)
        jj, ii = np.indices(a.shape)
        c_ij = [(a * ii).sum() / a.sum(), (a * jj).sum() / a.sum()]
        p = vol.ijk_to_lps([c_ij[0], c_ij[1], k])
        errors.append(np.linalg.norm((p - (entry + s * u))[:2]))
    assert len(errors) >= 10 and max(errors) < 0.2


def test_needle_error_model_draws_are_recorded_and_have_the_stated_spread():
    rng = np.random.default_rng(0)
    planned = [(np.array([0.0, 0, 0]), np.array([60.0, 20, 10]))] * 2000
    model = NeedleErrorModel(lateral_sd_mm=1.5, depth_sd_mm=2.0, angle_sd_deg=3.0)
    draws = draw_needles(planned, model, rng)
    depth = np.array([d.depth_error_mm for d in draws])
    lat = np.array([d.lateral_offset_mm for d in draws])
    tilt = np.array([d.tilt_deg for d in draws])
    assert depth.std() == pytest.approx(2.0, rel=0.08)
    assert np.sqrt((lat ** 2).sum(1).mean() / 2) == pytest.approx(1.5, rel=0.08)
    assert tilt.std() == pytest.approx(3.0, rel=0.08)
    u = planned[0][1] / np.linalg.norm(planned[0][1])
    for d in draws[:50]:
        assert abs(np.dot(d.lateral_offset_mm, u)) < 1e-9           # lateral is perpendicular
        length = np.linalg.norm(d.tip_mm - d.entry_mm)
        assert length == pytest.approx(np.linalg.norm(planned[0][1]) + d.depth_error_mm)
        assert d.angle_deg == pytest.approx(np.hypot(*d.tilt_deg), rel=0.02, abs=1e-3)
        assert set(d.to_dict()) >= {"entry_mm", "tip_mm", "depth_error_mm", "tip_error_mm", "angle_deg"}
    exact = draw_needles(planned[:1], NeedleErrorModel(0, 0, 0), rng)[0]
    np.testing.assert_allclose(exact.tip_mm, planned[0][1], atol=1e-12)


def test_metal_streaks_run_along_the_needle():
    """Photon starvation and beam hardening streak along the rays through the most metal: past the tip of an
    in-plane needle the image is disturbed far more than at the same distance to the side."""
    entry, tip = np.array([-30.0, 0.2, 0.3]), np.array([10.0, 0.2, 0.3])
    g = _water([0.0, 0.0, 0.0], (128, 128, 5), (0.8, 0.8, 2.5))
    vol = render_needles(g, [(entry, tip)], rng=0, scanner=ScannerModel(noise_hu=0.0))
    k = 2
    along = [vol.array[k][tuple(np.rint(vol.lps_to_ijk([x, 0.2, 0.3])[[1, 0]]).astype(int))] for x in (25, 30, 35)]
    side = [vol.array[k][tuple(np.rint(vol.lps_to_ijk([-10, y, 0.3])[[1, 0]]).astype(int))] for y in (-25, -30, -35)]
    assert np.mean(np.abs(along)) > 5 * max(np.mean(np.abs(side)), 1.0)
    no_streaks = render_needles(g, [(entry, tip)], rng=0, scanner=ScannerModel(noise_hu=0.0, streaks=False))
    assert np.abs(no_streaks.array[k, :, 115:]).max() < 1.0


def test_seed_straddling_two_thick_slices_shows_in_both():
    """A seed along z centred on the boundary of two 5 mm slices puts half its metal in each."""
    g = _water([0.0, 0.0, 0.0], (32, 32, 8), (0.8, 0.8, 5.0))
    boundary = g.ijk_to_lps([15.3, 16.1, 3.5])
    occ = seed_occupancy(g, [boundary], [[0.0, 0.0, 1.0]])
    per_slice = occ.reshape(occ.shape[0], -1).sum(1)
    assert np.count_nonzero(per_slice) == 2
    np.testing.assert_allclose(per_slice[3], per_slice[4], rtol=0.02)
    vol = render_seeds(g, [boundary], [[0.0, 0.0, 1.0]], rng=0)
    assert vol.array[3].max() > 1000 and vol.array[4].max() > 1000
