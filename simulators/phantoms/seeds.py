"""I-125 seeds in CT: 4.5 x 0.8 mm titanium capsules (with their radio-opaque marker) at given positions.

A seed is a capsule of total length 4.5 mm and diameter 0.8 mm centred on ``position_mm`` along the unit
``axis``; its rounded ends are hemispheres. Touching or overlapping seeds add their occupancy (clipped at 1
per voxel). Coordinates are LPS mm of the grid's own frame.
"""

from __future__ import annotations

import numpy as np

from navigator.core.volume import Volume

from . import _kernels as K
from .needles import _nsub
from .scanner import ScannerModel, add_metal

SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8
SEED_HU = 20000.0   # effective HU of the titanium capsule with its silver/gold marker, before clipping


def _unit(axes, n: int) -> np.ndarray:
    a = np.asarray(axes, dtype=float).reshape(-1, 3)
    if len(a) == 1 and n > 1:
        a = np.repeat(a, n, axis=0)
    if len(a) != n:
        raise ValueError(f"{n} seed positions but {len(a)} axes; give one axis per seed or one for all")
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def seed_occupancy(grid: Volume, positions_mm, axes, length_mm: float = SEED_LENGTH_MM,
                   diameter_mm: float = SEED_DIAMETER_MM, out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume occupancy (k, j, i) float32 of seeds at ``positions_mm`` (N, 3) along ``axes`` (N, 3)
    in the grid's LPS frame; the whole slice thickness is averaged (box slice profile)."""
    occ = np.zeros(grid.array.shape, dtype=np.float32) if out is None else out
    p = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
    if len(p) == 0:
        return occ
    u = _unit(axes, len(p))
    r = 0.5 * diameter_mm
    seg = length_mm - 2 * r      # distance between the centres of the end hemispheres
    starts = p - 0.5 * seg * u
    K.rods_occupancy(occ, grid.origin_mm, grid.direction, grid.spacing_mm, starts, u, np.full(len(p), seg),
                     np.full(len(p), r), True, *_nsub(grid))
    return occ


def render_seeds(ct: Volume, positions_mm, axes, rng: np.random.Generator | int | None = 0,
                 scanner: ScannerModel = ScannerModel(), seed_hu: float = SEED_HU) -> Volume:
    """``ct`` with seeds imaged into it (partial volume at ct's slice thickness, blur, blooming, streaks,
    clipping). Returns a new Volume; ``meta['truth']`` gets ``seeds_mm`` and ``seed_axes``."""
    rng = np.random.default_rng(rng)
    p = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
    occ = seed_occupancy(ct, p, axes)
    img = add_metal(ct, occ * np.float32(seed_hu), occ, rng, scanner)
    vol = ct.with_array(img.astype(np.float32))
    truth = dict(vol.meta.get("truth", {}))
    truth["seeds_mm"] = p.tolist()
    truth["seed_axes"] = _unit(axes, len(p)).tolist() if len(p) else []
    vol.meta["truth"] = truth
    return vol
