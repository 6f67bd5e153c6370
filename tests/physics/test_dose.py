"""Dose engine: the fast grid engine against the direct TG-43 sum (``dose_at_points``), on grids that catch
axis mix-ups (anisotropic spacing, non-zero origin, feet-first and permuted directions) with tilted seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navigator.physics import dose, tg43
from navigator.errors import InputError
from navigator.core.volume import Volume


def _grid(shape_kji, spacing, origin, direction):
    return Volume(array=np.zeros(shape_kji, np.float32), origin_mm=origin, spacing_mm=spacing, direction=direction)


def _cluster(n, rng, centre):
    seeds = centre + rng.uniform(-9.0, 9.0, (n, 3))
    axes = rng.normal(size=(n, 3))
    return seeds, axes / np.linalg.norm(axes, axis=1)[:, None]


def _compare(grid, seeds, axes, sk, model):
    fast = dose.dose_on_grid(grid, seeds, axes, sk, model)
    ref = dose.naive_dose_on_grid(grid, seeds, axes, sk, model)
    assert fast.shape == grid.array.shape and fast.dtype == np.float32
    assert np.all(np.isfinite(fast))
    rel = np.abs(fast - ref) / ref
    return rel, ref


FEET_FIRST = np.diag([-1.0, 1.0, -1.0])
PERMUTED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: i, j, k axes in LPS


@pytest.mark.parametrize("name", ["6711", "IAI-125A"])
@pytest.mark.parametrize("direction", [np.eye(3), FEET_FIRST, PERMUTED], ids=["HFS", "FFS", "permuted"])
def test_grid_engine_matches_direct_sum_2d(name, direction):
    """Within 1 % wherever the dose exceeds 10 % of the maximum (the accuracy target), 1.5 % everywhere."""
    rng = np.random.default_rng(7)
    model = tg43.load_seed_model(name)
    centre = np.array([-40.0, 25.0, 610.0])
    seeds, axes = _cluster(16, rng, centre)
    spacing = np.array([0.9, 1.1, 1.6])
    shape_ijk = np.array([50, 42, 30])
    origin = centre - direction @ (spacing * (shape_ijk - 1) / 2.0)  # grid centred on the cluster
    grid = _grid(tuple(shape_ijk[::-1]), spacing, origin, direction)
    rel, ref = _compare(grid, seeds, axes, rng.uniform(0.4, 0.8, 16), model)
    assert rel[ref > 0.1 * ref.max()].max() < 0.01
    assert rel.max() < 0.015


def test_grid_engine_matches_direct_sum_1d():
    rng = np.random.default_rng(3)
    model = tg43.load_seed_model("6711")
    seeds, _ = _cluster(12, rng, np.array([5.0, -7.0, 33.0]))
    grid = _grid((28, 36, 40), [1.0, 0.8, 1.5], [-15.0, -22.0, 12.0], np.eye(3))
    rel, ref = _compare(grid, seeds, None, 0.635, model)
    assert rel[ref > 0.1 * ref.max()].max() < 0.01
    assert rel.max() < 0.015


def test_point_dose_at_reference_point_and_decay():
    model = tg43.load_seed_model("6711")
    axis = np.array([[0.0, 0.6, 0.8]])
    seed = np.array([[10.0, 20.0, 30.0]])
    p = seed[0] + 10.0 * np.array([1.0, 0.0, 0.0])  # 1 cm from the seed, perpendicular to its axis
    total = dose.dose_at_points(p[None], seed, axis, 0.635, model)[0]
    assert total == pytest.approx(0.635 * 0.965 * model.tau_h / 100.0, rel=1e-9)  # Gy
    t = 24.0 * 59.4  # one half-life: half the total dose
    assert dose.dose_at_points(p[None], seed, axis, 0.635, model, t_h=t)[0] == pytest.approx(total / 2, rel=1e-9)


def test_grid_options_strength_per_seed_and_time():
    rng = np.random.default_rng(11)
    model = tg43.load_seed_model("IAI-125A")
    seeds, axes = _cluster(5, rng, np.zeros(3))
    grid = _grid((20, 24, 26), [1.2, 1.0, 1.4], [-15.0, -12.0, -14.0], np.eye(3))
    one = dose.dose_on_grid(grid, seeds, axes, 1.0, model)
    sk = np.array([0.3, 0.5, 0.6, 0.7, 0.8])
    per_seed = dose.dose_on_grid(grid, seeds, axes, sk, model)
    by_seed = sum(dose.dose_on_grid(grid, seeds[s:s + 1], axes[s:s + 1], sk[s], model) for s in range(5))
    np.testing.assert_allclose(per_seed, by_seed, rtol=1e-5)
    assert not np.allclose(per_seed, one)
    t_h = 500.0
    partial = dose.dose_on_grid(grid, seeds, axes, 1.0, model, t_h=t_h)
    np.testing.assert_allclose(partial, one * (1 - math.exp(-t_h / model.tau_h)), rtol=1e-5)


def test_voxel_at_a_seed_centre_is_finite():
    model = tg43.load_seed_model("6711")
    grid = _grid((11, 11, 11), [1.0, 1.0, 1.0], [-5.0, -5.0, -5.0], np.eye(3))
    seeds = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # one exactly on a voxel centre, one a voxel away
    for axes in (np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), None):
        d = dose.dose_on_grid(grid, seeds, axes, 0.6, model)
        ref = dose.naive_dose_on_grid(grid, seeds, axes, 0.6, model)
        assert np.all(np.isfinite(d)) and d.max() < 1e5
        rel = np.abs(d - ref) / ref
        assert rel[ref > 0.1 * ref.max()].max() < 0.01
        assert rel.max() < 0.02  # every voxel, on a seed's axis too


def test_no_seeds_gives_zero_dose():
    grid = _grid((4, 5, 6), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], np.eye(3))
    assert not dose.dose_on_grid(grid, np.zeros((0, 3)), None, 0.6, tg43.load_seed_model("6711")).any()


@pytest.mark.parametrize(
    "seeds, axes, sk",
    [
        (np.zeros((2, 2)), None, 0.6),
        (np.array([[0.0, 0.0, np.nan]]), None, 0.6),
        (np.zeros((1, 3)), np.zeros((1, 3)), 0.6),
        (np.zeros((2, 3)), np.ones((3, 3)), 0.6),
        (np.zeros((1, 3)), None, -0.5),
    ],
)
def test_bad_seed_input_is_an_input_error(seeds, axes, sk):
    grid = _grid((4, 5, 6), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], np.eye(3))
    with pytest.raises(InputError):
        dose.dose_on_grid(grid, seeds, axes, sk, tg43.load_seed_model("6711"))


def test_non_orthonormal_grid_is_refused():
    grid = _grid((4, 5, 6), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputError):
        dose.dose_on_grid(grid, np.zeros((1, 3)), None, 0.6, tg43.load_seed_model("6711"))
