"""DVH metrics against closed-form values on a sphere with an analytic dose, weights by fractional occupancy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navigator.physics import dvh
from navigator.errors import InputError
from navigator.core.volume import Volume

R_MM = 10.0
H_MM = 0.5  # voxel size
A_GY, B_GY_PER_MM = 200.0, 10.0  # dose = A − B r: 200 Gy at the centre, 100 Gy on the surface


def _sphere(sub=4):
    """Occupancy of a sphere of radius R (sub³ sample points per voxel) and the dose at the voxel centres."""
    n = int(2 * R_MM / H_MM) + 4
    c = (np.arange(n) - (n - 1) / 2) * H_MM
    off = ((np.arange(sub) + 0.5) / sub - 0.5) * H_MM
    frac = np.zeros((n, n, n))
    for ox in off:
        for oy in off:
            for oz in off:
                z, y, x = np.meshgrid(c + oz, c + oy, c + ox, indexing="ij")
                frac += (x * x + y * y + z * z) <= R_MM**2
    frac /= sub**3
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    return frac, A_GY - B_GY_PER_MM * r, (H_MM**3) / 1000.0


FRAC, DOSE, VOXEL_CC = _sphere()
SPHERE_CC = 4.0 / 3.0 * math.pi * R_MM**3 / 1000.0


def _dose_at_volume_fraction(f):
    """The dose on the sphere of radius r where the inner (hotter) part holds fraction f: r = R f^(1/3)."""
    return A_GY - B_GY_PER_MM * R_MM * f ** (1.0 / 3.0)


def _v_pct(dose_gy):
    r = min(max((A_GY - dose_gy) / B_GY_PER_MM, 0.0), R_MM)
    return 100.0 * (r / R_MM) ** 3


# Tolerances from the voxel: the dose changes by B·h/2 = 2.5 Gy across half a voxel; a shell of half a voxel
# holds 3h/(2R) = 7.5 % of the volume, but occupancy weights make the shell's volume right, leaving ~1 %.
D_TOL_GY = B_GY_PER_MM * H_MM / 2
V_TOL_PCT = 1.0


def test_target_metrics_match_closed_form():
    rx = 120.0
    m = dvh.target_metrics(DOSE, FRAC, VOXEL_CC, rx)
    assert set(m) == {"ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI"}
    assert m["ctv_cc"] == pytest.approx(SPHERE_CC, rel=0.002)
    assert m["D90_gy"] == pytest.approx(_dose_at_volume_fraction(0.9), abs=D_TOL_GY)
    assert m["D100_gy"] == pytest.approx(A_GY - B_GY_PER_MM * R_MM, abs=B_GY_PER_MM * H_MM)  # the rim voxels
    for key, level in (("V90_pct", 0.9), ("V100_pct", 1.0), ("V150_pct", 1.5), ("V200_pct", 2.0)):
        assert m[key] == pytest.approx(_v_pct(rx * level), abs=V_TOL_PCT), key
    v100, v150 = _v_pct(rx), _v_pct(1.5 * rx)
    assert m["HI"] == pytest.approx((v100 - v150) / v100, abs=0.02)
    assert 0 < m["HI"] < 1


def test_supersampled_dose_is_closer_for_d100():
    plain = dvh.target_metrics(DOSE, FRAC, VOXEL_CC, 120.0)
    fine = dvh.target_metrics(DOSE, FRAC, VOXEL_CC, 120.0, supersample_factor=3)
    assert fine["ctv_cc"] == pytest.approx(plain["ctv_cc"], rel=1e-9)  # weights are shared, not refined
    exact_d90 = _dose_at_volume_fraction(0.9)
    assert abs(fine["D90_gy"] - exact_d90) <= abs(plain["D90_gy"] - exact_d90) + 0.05


def test_oar_metrics_match_closed_form():
    m = dvh.oar_metrics(DOSE, FRAC, VOXEL_CC)
    assert m["Dmax_gy"] == pytest.approx(A_GY, abs=B_GY_PER_MM * H_MM)
    r2 = (2000.0 * 3 / (4 * math.pi)) ** (1 / 3)  # radius of the hottest 2 cc (mm)
    r01 = (100.0 * 3 / (4 * math.pi)) ** (1 / 3)
    assert m["D2cc_gy"] == pytest.approx(A_GY - B_GY_PER_MM * r2, abs=D_TOL_GY)
    assert m["D0.1cc_gy"] == pytest.approx(A_GY - B_GY_PER_MM * r01, abs=D_TOL_GY)


def test_small_structure_has_no_d2cc():
    small = FRAC * (DOSE > 180.0)  # the inner sphere of radius 2 mm: 0.03 cc
    assert small.sum() * VOXEL_CC < 2.0
    assert dvh.oar_metrics(DOSE, small, VOXEL_CC)["D2cc_gy"] is None


def test_d_x_on_a_handful_of_voxels():
    """Four voxels of 1 cc at 10, 20, 30, 40 Gy: mid-volume points (0.5, 40) (1.5, 30) (2.5, 20) (3.5, 10) cc."""
    dose = np.array([[[10.0, 20.0, 30.0, 40.0]]])
    mask = np.ones_like(dose, dtype=bool)
    h = dvh.DVH.from_dose(dose, mask, 1.0)
    assert h.total_cc == 4.0
    assert h.d_pct(100) == 10.0 and h.d_pct(0) == 40.0
    assert h.d_at_cc(2.0) == pytest.approx(25.0)
    assert h.d_pct(50) == pytest.approx(25.0)
    assert h.v_pct(20.0) == 75.0


def test_conformity_index_paddick():
    dose = np.zeros((1, 1, 8))
    target = np.zeros_like(dose)
    target[..., :4] = 1
    dose[..., :4] = 150.0
    assert dvh.conformity_index(dose, target, 1.0, 145.0) == pytest.approx(1.0)
    dose[..., 4:8] = 150.0  # twice the target volume gets Rx
    assert dvh.conformity_index(dose, target, 1.0, 145.0) == pytest.approx(0.5)
    dose[..., :2] = 0.0  # half the target cold, 6 voxels hot: CI = 2² / (4 · 6)
    assert dvh.conformity_index(dose, target, 1.0, 145.0) == pytest.approx(4 / 24)


def test_plan_metrics_shape():
    vol = Volume(array=DOSE.astype(np.float32), origin_mm=[3.0, -2.0, 50.0], spacing_mm=[H_MM] * 3)
    oar = FRAC * (DOSE < 130)
    m = dvh.plan_metrics(vol, FRAC, {"cord": oar, "tiny": FRAC * (DOSE > 195)}, 120.0)
    assert {"ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI", "oars"} <= set(m)
    assert set(m["oars"]) == {"cord", "tiny"}
    assert set(m["oars"]["cord"]) == {"Dmax_gy", "D2cc_gy", "D0.1cc_gy"}
    assert m["oars"]["tiny"]["D2cc_gy"] is None
    assert "method" in m and 0 < m["CI_paddick"] <= 1


def test_bad_structures_are_input_errors():
    with pytest.raises(InputError):
        dvh.target_metrics(DOSE, np.zeros_like(FRAC), VOXEL_CC, 120.0)  # empty
    with pytest.raises(InputError):
        dvh.target_metrics(DOSE, FRAC[:-1], VOXEL_CC, 120.0)  # wrong shape
    with pytest.raises(InputError):
        dvh.target_metrics(DOSE, FRAC * 2, VOXEL_CC, 120.0)  # weights > 1
    with pytest.raises(InputError):
        dvh.target_metrics(DOSE, FRAC, VOXEL_CC, 0.0)  # no prescription
