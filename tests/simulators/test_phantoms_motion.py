"""Patient motion truth: bounded random rigid motion, exact two-way mapping, scans rendered where truth says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navigator.core.volume import Volume
from simulators.phantoms import anatomy, shapes
from simulators.phantoms.motion import (Motion, apply_4x4, random_deformation, random_rigid, rigid_parameters,
                                        rotation_matrix)


def test_random_rigid_respects_bounds_and_is_a_rotation():
    rng = np.random.default_rng(0)
    c = np.array([-30.0, 12.0, -250.0])
    angles, shifts = [], []
    for _ in range(300):
        m = random_rigid(rng, 15.0, 8.0, center_mm=c)
        R = m[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        angle, _ = rigid_parameters(m)
        angles.append(angle)
        shifts.append(np.linalg.norm(apply_4x4(m, c) - c))
    assert max(angles) <= 8.0 + 1e-9 and max(angles) > 6.0
    assert max(shifts) <= 15.0 + 1e-9 and max(shifts) > 12.0


def test_rotation_matrix_right_handed():
    # +90 deg about S (z) takes L (x) to P (y)
    np.testing.assert_allclose(rotation_matrix([0, 0, 1], 90) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_motion_maps_points_both_ways_with_deformation():
    rng = np.random.default_rng(4)
    c = np.array([10.0, -20.0, -400.0])
    m = Motion(random_rigid(rng, center_mm=c), random_deformation(rng, c, max_displacement_mm=4.0))
    assert m.deformation.max_gradient() < 0.5
    pts = c + rng.uniform(-60, 60, size=(500, 3))
    np.testing.assert_allclose(m.scan_to_preplan(m.preplan_to_scan(pts)), pts, atol=1e-5)
    np.testing.assert_allclose(m.preplan_to_scan(m.scan_to_preplan(pts)), pts, atol=1e-5)
    # the deformation is small and smooth: within a few mm of the rigid motion
    rigid_only = apply_4x4(m.rigid_preplan_to_scan, pts)
    assert np.abs(m.preplan_to_scan(pts) - rigid_only).max() < 4.0 * 2


def test_motion_truth_round_trips_through_json():
    rng = np.random.default_rng(8)
    m = Motion(random_rigid(rng), random_deformation(rng, [0, 0, 0]))
    m2 = Motion.from_dict(json.loads(json.dumps(m.to_dict())))
    pts = rng.uniform(-50, 50, size=(20, 3))
    np.testing.assert_allclose(m2.preplan_to_scan(pts), m.preplan_to_scan(pts), atol=1e-9)
    assert Motion.coerce(None).preplan_to_scan(pts) == pytest.approx(pts)
    np.testing.assert_allclose(Motion.coerce(m.rigid_preplan_to_scan).preplan_to_scan(pts),
                               apply_4x4(m.rigid_preplan_to_scan, pts))


def test_moved_structure_lands_where_the_truth_maps_it():
    """A structure rendered through the motion on a scan grid has its centroid where ``preplan_to_scan`` puts
    the pre-plan centroid (rigid exactly; deformation to well under a voxel)."""
    an = anatomy.neck(np.random.default_rng(3), 30.0)
    rng = np.random.default_rng(9)
    c = an.node_center_mm
    pre = Volume(np.zeros((28, 96, 96), np.float32), c - [38.2, 37.9, 34.6], [0.8, 0.8, 2.5])
    occ = shapes.structure_occupancy(an.scene, "GTV", pre)
    w = occ.sum()
    centroid_pre = pre.ijk_to_lps((occ.reshape(-1, 1) * ijk_of(occ)).sum(0) / w)
    for motion in (Motion(random_rigid(rng, center_mm=c)),
                   Motion(random_rigid(rng, center_mm=c), random_deformation(rng, c, max_displacement_mm=2.0))):
        c_scan = motion.preplan_to_scan(c)
        scan = Volume(np.zeros((40, 96, 96), np.float32), c_scan - [37.1, 39.3, 49.0], [0.8, 0.8, 2.5])
        occ_s = shapes.structure_occupancy(an.scene, "GTV", scan, motion)
        assert occ_s.sum() * scan.voxel_volume_cc == pytest.approx(w * pre.voxel_volume_cc, rel=0.03)
        centroid_scan = scan.ijk_to_lps((occ_s.reshape(-1, 1) * ijk_of(occ_s)).sum(0) / occ_s.sum())
        expected = motion.preplan_to_scan(centroid_pre)
        tol = 0.3 if motion.deformation is None else 1.0
        assert np.linalg.norm(centroid_scan - expected) < tol


def ijk_of(a: np.ndarray) -> np.ndarray:
    kk, jj, ii = np.indices(a.shape)
    return np.stack([ii, jj, kk], -1).reshape(-1, 3)
