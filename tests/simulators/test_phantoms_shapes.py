"""Analytic shapes on CT grids: partial volume matches analytic volumes; the tiled renderer is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navigator.core.volume import Volume
from simulators.phantoms import anatomy, shapes
from simulators.phantoms.motion import Motion, random_deformation, random_rigid


def _grid(center, n=(64, 64, 24), spacing=(0.8, 0.8, 2.5), direction=None) -> Volume:
    """Anisotropic grid with a non-zero origin centred (about) on ``center``."""
    ni, nj, nk = n
    sp = np.array(spacing, dtype=float)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    origin = np.asarray(center, dtype=float) - d @ (sp * (np.array(n) - 1) / 2) + [0.31, -0.17, 0.43]
    return Volume(np.zeros((nk, nj, ni), np.float32), origin, sp, d)


def _scene_with(*rows) -> shapes.Scene:
    s = shapes.Scene(background_hu=0.0)
    for n, row in enumerate(rows):
        idx = s.add(row)
        s.layer(1.0, idx)
        s.structure(f"s{n}", idx)
    return s


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.25), (0.8, 0.8, 2.5), (0.9, 0.9, 5.0)])
def test_ellipsoid_occupancy_matches_analytic_volume(spacing):
    c = np.array([-12.3, 40.7, -300.2])
    axes = (9.0, 6.5, 11.0)
    R = Motion(random_rigid(np.random.default_rng(1), 0, 90)).rigid_preplan_to_scan[:3, :3]
    s = _scene_with(shapes.ellipsoid(c, axes, R))
    g = _grid(c, (48, 48, int(40 / spacing[2])), spacing)
    occ = shapes.structure_occupancy(s, "s0", g)
    vol = occ.sum(dtype=np.float64) * np.prod(spacing)
    exact = 4 / 3 * math.pi * np.prod(axes)
    # the ramp partial volume is exact to first order; the ellipsoid's approximate distance costs < 1 %
    assert vol == pytest.approx(exact, rel=0.01)
    mask_vol = (occ >= 0.5).sum() * np.prod(spacing)
    assert mask_vol == pytest.approx(exact, rel=0.05)


def test_node_blob_volume_is_the_requested_diameter():
    rng = np.random.default_rng(7)
    for d in (10.0, 30.0, 50.0):
        s = shapes.Scene()
        node_i, _, vol = anatomy._node(s, rng, np.array([5.0, -3.0, 100.0]), d, False)
        assert vol == pytest.approx(math.pi * d ** 3 / 6, rel=1e-9)
        s.structure("node", [node_i])
        g = _grid([5.0, -3.0, 100.0], (int(1.6 * d / 0.8) + 8,) * 2 + (int(1.6 * d / 1.25) + 4,), (0.8, 0.8, 1.25))
        occ = shapes.structure_occupancy(s, "node", g)
        assert occ.sum(dtype=np.float64) * g.voxel_volume_cc * 1000 == pytest.approx(vol, rel=0.015)


def test_capsule_tube_volume():
    p0, p1, r = np.array([0.0, 0.0, 0.0]), np.array([20.0, 10.0, 15.0]), 3.0
    s = _scene_with(shapes.capsule(p0, p1, r))
    g = _grid(0.5 * (p0 + p1), (64, 56, 40), (0.7, 0.7, 1.0))
    occ = shapes.structure_occupancy(s, "s0", g)
    exact = math.pi * r ** 2 * np.linalg.norm(p1 - p0) + 4 / 3 * math.pi * r ** 3
    assert occ.sum(dtype=np.float64) * g.voxel_volume_cc * 1000 == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("site", ["neck", "mediastinum"])
def test_tiled_renderer_equals_brute_force(site):
    """The per-tile culling (shape status from the tile centre) must not change a single voxel."""
    an = getattr(anatomy, site)(np.random.default_rng(11), 35.0)
    rng = np.random.default_rng(2)
    m = Motion(random_rigid(rng, center_mm=an.node_center_mm), random_deformation(rng, an.node_center_mm))
    for motion, direction in ((None, None), (m, np.diag([-1.0, 1.0, -1.0]))):
        g = _grid(an.node_center_mm, (200, 160, 3), (0.9, 0.9, 2.5), direction)
        tiled = shapes.render_hu(an.scene, g, motion)
        brute = shapes.render_hu(an.scene, g, motion, bruteforce=True)
        np.testing.assert_array_equal(tiled, brute)


def test_structure_occupancy_equals_painting_that_structure_alone():
    an = anatomy.neck(np.random.default_rng(5), 25.0)
    g = _grid(an.node_center_mm, (96, 96, 12), (0.8, 0.8, 2.5))
    gtv = an.scene.structures["GTV"]
    alone = shapes.Scene(rows=an.scene.rows, paint=[shapes.Group(gtv.plus, gtv.minus, 1.0)], background_hu=0.0)
    np.testing.assert_allclose(shapes.structure_occupancy(an.scene, "GTV", g),
                               shapes.render_hu(alone, g, bruteforce=True), atol=1e-6)
