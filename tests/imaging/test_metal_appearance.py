"""The metal-appearance model behind the needle finder's thresholds and tip bias (navigator/imaging/
metal_appearance.py), checked against profiles built from its own physics: a flat steel end blurred by a
Gaussian and clipped, a disc cut by slices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from navigator.imaging.metal_appearance import (
    axis_contrast,
    clipped_end_bias,
    detect_clip,
    disk_share,
    slice_entry_depth_mm,
)


def test_clip_is_a_plateau_at_the_maximum_not_any_bright_voxel():
    a = np.full((4, 10, 10), 40.0)
    a[1, 1:9, 4:6] = 3071.0  # 16 voxels saturated
    assert detect_clip(a) == 3071.0
    a[1, 1:9, 4:6] = np.linspace(2500.0, 5000.0, 16).reshape(8, 2)  # extended range: no plateau
    assert detect_clip(a) is None


@pytest.mark.parametrize("contrast_hu, sigma_mm", [(4000.0, 0.5), (9000.0, 0.5), (9000.0, 0.8)])
def test_half_max_crossing_less_the_bias_is_the_end_of_a_clipped_rod(contrast_hu, sigma_mm):
    t = np.arange(-10.0, 10.0, 0.01)
    end_mm, bg, clip = 1.3, 40.0, 3071.0
    prof = np.minimum(bg + contrast_hu * ndtr((end_mm - t) / sigma_mm), clip)
    half = 0.5 * (clip + bg)
    t_half = t[np.nonzero(prof >= half)[0].max()]
    bias, sd = clipped_end_bias(clip, bg, clip, contrast_hu, sigma_mm, noise_hu=12.0)
    assert t_half - bias == pytest.approx(end_mm, abs=0.02)
    assert 0.0 < sd < 0.05
    assert clipped_end_bias(2000.0, bg, None, contrast_hu, sigma_mm, 12.0)[0] == 0.0  # nothing clipped: no bias


def test_disc_shares_and_the_depth_that_lights_a_slice():
    r = 0.635
    assert disk_share(-1.0, 1.0, r) == pytest.approx(1.0)
    assert disk_share(0.0, 1.0, r) == pytest.approx(0.5)
    assert slice_entry_depth_mm(0.5, r) == pytest.approx(r, abs=0.01)  # half the rod in: the face at its axis
    assert slice_entry_depth_mm(0.1, r) < slice_entry_depth_mm(0.3, r) < r
    # a rod centred in a 2.5 mm slice: its axis sees the full contrast; straddling two 1.25 mm slices, half
    assert axis_contrast(5000.0, 0.0, 2.5, 2.5, r) == pytest.approx(5000.0)
    assert axis_contrast(5000.0, 0.5, 1.25, 1.25, r) == pytest.approx(2500.0, rel=0.02)
