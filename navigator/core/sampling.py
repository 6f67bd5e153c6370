"""Nearest-voxel lookups of arrays on a ``Volume``'s grid at LPS points.

Masks and maps (body, no-go, skin depth, CTV) live on a CT grid as numpy ``(k, j, i)`` arrays; needle traces,
candidate seed positions and dose-grid voxel centres are LPS mm points. ``Sampler`` does the index maths for
a set of points once and then reads any number of arrays on that grid; ``sample_nearest`` is the one-array form.
"""

from __future__ import annotations

import numpy as np

from navigator.core.volume import Volume


def sample_nearest(field_arr: np.ndarray, grid: Volume, points_mm: np.ndarray, outside=0):
    """Nearest-voxel values of a (k, j, i) array at LPS points; ``outside`` where a point is off the grid.

    Returns (values shaped like the points' leading axes, inside bool of the same shape)."""
    return Sampler(grid, points_mm).take(field_arr, outside)


class Sampler:
    """Nearest-voxel lookups of several arrays on one grid at the same LPS points (index maths done once)."""

    def __init__(self, grid: Volume, points_mm: np.ndarray):
        ijk = np.rint(grid.lps_to_ijk(points_mm)).astype(np.int64)
        shape = np.array(grid.shape_ijk)
        self.inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
        ijk = np.clip(ijk, 0, shape - 1)
        # flat index into the C-ordered (k, j, i) array from the (i, j, k) index vectors
        self.flat = (ijk[..., 2] * shape[1] + ijk[..., 1]) * shape[0] + ijk[..., 0]

    def take(self, field_arr: np.ndarray, outside=0):
        """(values, inside): the array's nearest-voxel values at the points, ``outside`` off the grid."""
        vals = field_arr.reshape(-1)[self.flat]
        return np.where(self.inside, vals, outside), self.inside
