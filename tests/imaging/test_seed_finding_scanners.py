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

from navigator.imaging.seed_finding import find_seeds
from simulators.phantoms import ScannerModel, render_seeds
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
