"""Seed finding on a second scanner (issue #12, item 2): the independent phantom's appearance rebuilt with the
simulator's knobs (a Gaussian in-plane blur of sigma 0.45 mm, no blooming, no streaks, 0.9 mm pixels, metal
clipped at 3071 HU), with ordinary seeds and with dim ones (8 000 HU effective: their cores stay below the
clip), against our own scanner (tests/imaging/test_seed_finding.py) on the same implant.

Goal: the 0.5 mm centre goal on the mean for slices up to 2.5 mm; on 5 mm slices the box slice profile leaves
z open within a slice, so only the in-plane position is held to it (as in test_seed_finding.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from navigator.core.volume import Volume
from navigator.imaging.seed_finding import SeedFindingSettings, find_seeds
from simulators.phantoms import ScannerModel, render_seeds
from simulators.phantoms.scanner import SCANNERS, add_metal
from simulators.phantoms.seeds import seed_occupancy
from tests.imaging.test_seed_finding import _background, _implant, _match

INDEPENDENT = ScannerModel(psf_fwhm_mm=0.45 * 2.3548, bloom_fraction=0.0, streaks=False, hu_max=3071.0)


def _scan(scanner, slice_mm, pixel_mm, seed_hu, rng_seed=31):
    rng = np.random.default_rng(rng_seed)
    centre = np.array([-20.0, 35.0, -140.0])
    pos, axes = _implant(rng, centre)
    shape = (int(round(80.0 / slice_mm)), int(112.0 / pixel_mm), int(120.0 / pixel_mm))
    ct = _background(shape, (pixel_mm, pixel_mm, slice_mm), centre - np.array([60.0, 56.0, 40.0]), rng)
    return render_seeds(ct, pos, axes, rng, scanner, seed_hu=seed_hu), pos, axes


@pytest.mark.parametrize("scanner, seed_hu", [(INDEPENDENT, 20000.0), (INDEPENDENT, 8000.0), (ScannerModel(), 20000.0)],
                         ids=["independent", "independent-dim-seeds", "ours"])
def test_centres_on_2_5_mm_slices(scanner, seed_hu):
    scan, pos, axes = _scan(scanner, 2.5, 0.9, seed_hu)
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    assert len(res.seeds) == len(pos)
    _, _, err = _match(pos, res.positions_mm)
    assert err.mean() <= 0.5, f"mean {err.mean():.3f} mm, max {err.max():.3f} mm"
    assert err.max() < 0.5 * 2.5  # no seed beyond half a slice: none taken for its neighbour


def test_five_mm_slices_in_plane_on_the_independent_scanner():
    scan, pos, axes = _scan(INDEPENDENT, 5.0, 0.9, 20000.0)
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    assert len(res.seeds) == len(pos)
    r, c, _ = _match(pos, res.positions_mm)
    dxy = np.linalg.norm((res.positions_mm[c] - pos[r])[:, :2], axis=1)
    assert dxy.mean() <= 0.5 and np.percentile(dxy, 90) < 0.5, f"in-plane mean {dxy.mean():.3f} mm"


def _scan_profiled(scanner, slice_mm, pixel_mm, seed_hu, rng_seed=31):
    """As ``_scan``, with the seeds seen through the scanner's slice profile as ``simulators.phantoms.cases``
    renders it: box (``render_seeds``), or Gaussian (FWHM = thickness) summed over sub-slices of a third of a
    slice, one slice beyond each side."""
    if scanner.slice_profile == "box":
        return _scan(scanner, slice_mm, pixel_mm, seed_hu, rng_seed)
    rng = np.random.default_rng(rng_seed)
    centre = np.array([-20.0, 35.0, -140.0])
    pos, axes = _implant(rng, centre)
    shape = (round(80.0 / slice_mm), int(112.0 / pixel_mm), int(120.0 / pixel_mm))
    origin = centre - np.array([60.0, 56.0, 40.0])
    ct = _background(shape, (pixel_mm, pixel_mm, slice_mm), origin, rng)
    m = 3
    fine = Volume(np.zeros((m * shape[0] + 2 * m,) + shape[1:], np.float32),
                  origin + np.array([0.0, 0.0, -1.5 * slice_mm + 0.5 * slice_mm / m]),
                  (pixel_mm, pixel_mm, slice_mm / m), direction=np.eye(3))
    occ_f = seed_occupancy(fine, pos, axes)
    off = (np.arange(3 * m) + 0.5 - 1.5 * m) * slice_mm / m       # sub-slice centres from the slice centre
    w = np.exp(-0.5 * (off / (slice_mm / 2.3548)) ** 2)
    w /= w.sum()
    occ = sum(np.float32(wt) * occ_f[s: s + m * shape[0]: m] for s, wt in enumerate(w))
    img = add_metal(ct, occ * np.float32(seed_hu), np.minimum(occ, 1.0), rng, scanner)
    return ct.with_array(img.astype(np.float32)), pos, axes


@pytest.mark.parametrize("name", ["sim_a", "vendor_b"])
def test_blur_and_slice_profile_are_measured_on_the_scan(name):
    """The in-plane blur and the slice profile come from the scan's isolated seeds (issue #12), not from the
    constants fitted to sim_a. Truth: sim_a PSF sigma 0.8 / 2.3548 = 0.34 mm plus 20 % blooming of sigma
    0.85 mm, box profile; vendor_b sigma 1.06 / 2.3548 = 0.45 mm, no blooming, Gaussian profile (FWHM =
    thickness). Tolerance 0.07 mm on sigma (a sixth of it): sim_a's blooming widens the core the fit sees
    (measured +0.056 mm), and with 0.9 mm pixels a seed's cut holds two or three samples above a fifth of its
    peak (vendor_b measured +0.006 mm; the seed-to-seed spread is ~0.05 mm). The profile is a class: a box leaves the
    neighbouring slices ~0 % of a seed centred in a slice, a Gaussian ~7 % on 2.5 mm slices."""
    scanner = SCANNERS[name]
    # sim_a's 20 000 HU seeds all clip at 3071 HU (then blur and profile fall back: a clipped cut shows only its
    # blooming tail), so its seeds are the dim ones of test_centres_on_2_5_mm_slices; vendor_b's Gaussian profile
    # spreads a seed over three slices and keeps most of them below the clip
    scan, pos, axes = _scan_profiled(scanner, 2.5, 0.9, 8000.0 if name == "sim_a" else 20000.0)
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes)
    app = res.appearance
    true_sigma = scanner.psf_fwhm_mm / 2.3548
    assert app.blur_source == "scan" and app.profile_source == "scan" and app.threshold_source == "scan"
    assert abs(app.blur_sigma_mm - true_sigma) < 0.07, app
    assert app.slice_profile == scanner.slice_profile, app
    assert len(res.seeds) == len(pos)
    # a caller's setting wins over the estimate
    forced = find_seeds(scan, expected=len(pos), settings=SeedFindingSettings(slice_profile="box",
                                                                              scanner_blur_sigma_mm=0.35))
    assert forced.appearance.slice_profile == "box" and forced.appearance.profile_source == "setting"
    assert forced.appearance.blur_sigma_mm == 0.35 and forced.appearance.blur_source == "setting"


def _touching_implant():
    """Seeds that touch after the blur: three pairs of parallel seeds side by side, 2.5 mm apart (seeds of two
    neighbouring needles 5 mm apart in the template, drawn toward each other), and three crossings (two seeds
    at 60 degrees, centres 2.3 mm apart, and a third 2.4 mm beside the crossing), as the bench's 'neighbours'
    and 'crossing' geometries make them; isolated seeds around them for the appearance."""
    centre = np.array([-20.0, 35.0, -140.0])
    d = np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93])
    u = np.cross(d, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    d2 = np.cos(np.radians(60.0)) * d + np.sin(np.radians(60.0)) * u
    pos, axes = [], []
    for k in range(3):                                      # side by side
        c = centre + (k - 1) * 14.0 * v - 16.0 * u
        pos += [c - 1.25 * u, c + 1.25 * u]
        axes += [d, d]
    for k in range(3):                                      # crossings
        c = centre + (k - 1) * 14.0 * v + 12.0 * u
        pos += [c - 1.15 * v, c + 1.15 * v, c + 2.4 * u]
        axes += [d, d2, d]
    for k in range(8):                                      # isolated
        c = centre + (k - 3.5) * 9.0 * v + 30.0 * u
        pos.append(c)
        axes.append(d)
    return centre, np.array(pos), np.array(axes)


@pytest.mark.parametrize("name, slice_mm, pixel_mm", [("vendor_c", 0.625, 0.5), ("vendor_c", 1.25, 0.5),
                                                      ("vendor_b", 2.5, 0.9)])
def test_touching_seeds_of_neighbouring_and_crossing_needles(name, slice_mm, pixel_mm):
    """Each seed of a touching group where it is, not pulled toward its neighbour: the mixture started every
    member along the group's long axis (across two parallel seeds lying farther apart than half their length),
    and shared the overlap's voxels; the fit of blurred, clipped rods places them (0.5 mm goal on the mean, as
    the bench's cells; before, on vendor_c: 1.6 mm for each seed of a side-by-side pair)."""
    scanner = SCANNERS[name]
    rng = np.random.default_rng(41)
    centre, pos, axes = _touching_implant()
    shape = (round(60.0 / slice_mm), int(100.0 / pixel_mm), int(100.0 / pixel_mm))
    origin = centre - np.array([50.0, 50.0, 30.0])
    ct = _background(shape, (pixel_mm, pixel_mm, slice_mm), origin, rng)
    if scanner.slice_profile == "box":
        scan = render_seeds(ct, pos, axes, rng, scanner)
    else:                                                   # Gaussian profile, as _scan_profiled renders it
        m = 3
        fine = Volume(np.zeros((m * shape[0] + 2 * m,) + shape[1:], np.float32),
                      origin + np.array([0.0, 0.0, -1.5 * slice_mm + 0.5 * slice_mm / m]),
                      (pixel_mm, pixel_mm, slice_mm / m), direction=np.eye(3))
        occ_f = seed_occupancy(fine, pos, axes)
        off = (np.arange(3 * m) + 0.5 - 1.5 * m) * slice_mm / m
        w = np.exp(-0.5 * (off / (slice_mm / 2.3548)) ** 2)
        occ = sum(np.float32(wt / w.sum()) * occ_f[s: s + m * shape[0]: m] for s, wt in enumerate(w))
        scan = ct.with_array(add_metal(ct, occ * np.float32(20000.0), np.minimum(occ, 1.0), rng,
                                       scanner).astype(np.float32))
    res = find_seeds(scan, expected=len(pos), planned_mm=pos, planned_axes=axes,
                     settings=SeedFindingSettings(slice_profile=scanner.slice_profile))
    assert len(res.seeds) == len(pos)
    _, _, err = _match(pos, res.positions_mm)
    touching = err[:15]
    assert touching.mean() <= 0.5 and err.max() < 1.0, f"touching seeds: mean {touching.mean():.2f}, " \
                                                        f"max {err.max():.2f} mm"
