"""Analytic shapes and the scene that paints them: the anatomy's vocabulary.

All shapes live in the pre-plan LPS frame (mm). A ``Scene`` holds a table of shapes, the paint groups (a HU
value painted over what came before, partial volume blended) and the named structures (a union of shapes
minus a union of others). ``render_hu`` / ``structure_occupancy`` evaluate them on any CT grid through a
``Motion`` (the grid may be a later scan in its own frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from navigator.core.volume import Volume

from . import _kernels as K
from .motion import Motion


def _row(kind: float, center, R=None, offset_mm: float = 0.0, bound_mm: float = 0.0) -> np.ndarray:
    row = np.zeros(K.NP)
    row[0] = kind
    row[K.C0:K.C0 + 3] = center
    row[K.R0:K.R0 + 9] = (np.eye(3) if R is None else np.asarray(R, dtype=float)).ravel()
    row[K.OFF] = offset_mm
    row[K.BOUND] = bound_mm + max(0.0, -offset_mm)
    return row


def ellipsoid(center, axes_mm, R=None, offset_mm: float = 0.0) -> np.ndarray:
    """Ellipsoid with semi-axes ``axes_mm`` along the columns of ``R`` (default LPS axes)."""
    row = _row(K.T_ELLIPSOID, center, R, offset_mm, float(max(axes_mm)))
    row[K.P0:K.P0 + 3] = axes_mm
    return row


def secyl(center, a_mm: float, b_mm: float, half_length_mm: float, exponent: float = 2.0, R=None,
          offset_mm: float = 0.0) -> np.ndarray:
    """Superelliptic cylinder: |x/a|^n + |y/b|^n <= 1 in the local x-y plane, |z| <= half_length (local z is
    R's third column; default the LPS S axis)."""
    bound = math.hypot(math.hypot(a_mm, b_mm), half_length_mm)
    row = _row(K.T_SECYL, center, R, offset_mm, bound)
    row[K.P0:K.P0 + 4] = (a_mm, b_mm, exponent, half_length_mm)
    return row


def capsule(p0, p1, r0_mm: float, r1_mm: float | None = None, offset_mm: float = 0.0) -> np.ndarray:
    """Segment p0 -> p1 swept by a sphere whose radius goes from r0 to r1 (a tube piece with round ends)."""
    p0 = np.asarray(p0, dtype=float)
    p1 = np.asarray(p1, dtype=float)
    r1_mm = r0_mm if r1_mm is None else r1_mm
    bound = 0.5 * float(np.linalg.norm(p1 - p0)) + max(r0_mm, r1_mm)
    row = _row(K.T_CAPSULE, 0.5 * (p0 + p1), None, offset_mm, bound)
    row[K.P0:K.P0 + 8] = (*p0, *p1, r0_mm, r1_mm)
    return row


def tube(points_mm, radii_mm, offset_mm: float = 0.0) -> list[np.ndarray]:
    """A tube along a polyline (radius per vertex, or one radius): one capsule per segment."""
    pts = np.asarray(points_mm, dtype=float)
    radii = np.broadcast_to(np.asarray(radii_mm, dtype=float), (len(pts),))
    return [capsule(pts[n], pts[n + 1], radii[n], radii[n + 1], offset_mm) for n in range(len(pts) - 1)]


def blob(center, axes_mm, lobe_dirs, lobe_amps, kappa: float = 4.0, R=None, offset_mm: float = 0.0) -> np.ndarray:
    """Lobulated ellipsoid: radius (in units of the semi-axes) ``1 + sum a_m exp(kappa (u . v_m - 1))``."""
    dirs = np.asarray(lobe_dirs, dtype=float).reshape(-1, 3)
    amps = np.asarray(lobe_amps, dtype=float).reshape(-1)
    if len(dirs) > K.MAX_LOBES:
        raise ValueError(f"at most {K.MAX_LOBES} lobes, got {len(dirs)}")
    bound = float(max(axes_mm)) * (1.0 + float(np.clip(amps, 0, None).sum()))
    row = _row(K.T_BLOB, center, R, offset_mm, bound)
    row[K.P0:K.P0 + 3] = axes_mm
    row[K.P0 + 3] = len(dirs)
    row[K.P0 + 4] = kappa
    for m, (v, a) in enumerate(zip(dirs, amps)):
        base = K.P0 + 5 + 4 * m
        row[base:base + 3] = v / np.linalg.norm(v)
        row[base + 3] = a
    return row


def blob_radial_integral(row: np.ndarray, n_dirs: int = 20000) -> float:
    """Volume (mm^3) of a blob with zero offset: abc * integral of r(u)^3 / 3 over the unit sphere."""
    # Fibonacci sphere: near-uniform directions, equal weights
    n = np.arange(n_dirs) + 0.5
    phi = np.arccos(1 - 2 * n / n_dirs)
    theta = np.pi * (1 + 5 ** 0.5) * n
    u = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    r = np.ones(n_dirs)
    for m in range(int(row[K.P0 + 3])):
        base = K.P0 + 5 + 4 * m
        r += row[base + 3] * np.exp(row[K.P0 + 4] * (u @ row[base:base + 3] - 1.0))
    a, b, c = row[K.P0:K.P0 + 3]
    return float(a * b * c * 4 * np.pi * np.mean(r ** 3) / 3)


@dataclass
class Group:
    plus: list[int]
    minus: list[int] = field(default_factory=list)
    hu: float = 0.0


@dataclass
class Scene:
    """Shapes (rows), paint groups in order, and named structures. Add with ``add``; refer by index."""

    rows: list[np.ndarray] = field(default_factory=list)
    paint: list[Group] = field(default_factory=list)
    structures: dict[str, Group] = field(default_factory=dict)
    background_hu: float = -1000.0

    def add(self, *shapes) -> list[int]:
        """Add shapes (rows or lists of rows, e.g. a tube); returns their indices."""
        idx = []
        for s in shapes:
            for row in (s if isinstance(s, list) else [s]):
                self.rows.append(np.asarray(row, dtype=float))
                idx.append(len(self.rows) - 1)
        return idx

    def layer(self, hu: float, plus: list[int], minus: list[int] | None = None) -> None:
        self.paint.append(Group(list(plus), list(minus or []), float(hu)))

    def structure(self, name: str, plus: list[int], minus: list[int] | None = None) -> None:
        self.structures[name] = Group(list(plus), list(minus or []))

    @property
    def table(self) -> np.ndarray:
        return np.array(self.rows, dtype=float).reshape(-1, K.NP)

    def bounds_mm(self, plus: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (pre-plan LPS) holding the bounding spheres of the given shapes."""
        t = self.table[plus]
        c = t[:, K.C0:K.C0 + 3]
        r = t[:, K.BOUND][:, None]
        return (c - r).min(0), (c + r).max(0)


def _grid_args(grid: Volume):
    dir_sp = grid.direction * grid.spacing_mm[None, :]
    return grid.origin_mm.astype(float), np.ascontiguousarray(dir_sp)


def _sampling(grid: Volume, nsub: int | None):
    """Sub-slices per slice and the in-plane ramp width: the slice profile is sampled at about the in-plane
    pixel size so partial volume is about isotropic."""
    w = float(min(grid.spacing_mm[0], grid.spacing_mm[1]))
    if nsub is None:
        nsub = max(1, int(math.ceil(grid.spacing_mm[2] / w - 1e-6)))
    return nsub, w


TILE = 8
SAFETY = 2.0  # factor on the approximate distances: tiles = brute force (tested); 1.1 was not enough (mediastinum)


def _pack(groups: list[Group]):
    plus_idx = np.array([i for g in groups for i in g.plus], dtype=np.int64)
    minus_idx = np.array([i for g in groups for i in g.minus], dtype=np.int64)
    plus_start = np.cumsum([0] + [len(g.plus) for g in groups]).astype(np.int64)
    minus_start = np.cumsum([0] + [len(g.minus) for g in groups]).astype(np.int64)
    hu = np.array([g.hu for g in groups], dtype=float)
    return hu, plus_idx, plus_start, minus_idx, minus_start


def render_hu(scene: Scene, grid: Volume, motion: Motion | None = None, nsub: int | None = None,
              bruteforce: bool = False) -> np.ndarray:
    """Ideal (noise-free, unblurred) HU on ``grid`` (k, j, i) float32, the patient moved by ``motion``.

    ``bruteforce`` samples every shape at every voxel (slow; the reference the tiled renderer is tested on).
    """
    motion = Motion.coerce(motion)
    s2p, dc, dd, ds = motion.kernel_args()
    origin, dir_sp = _grid_args(grid)
    nsub, w = _sampling(grid, nsub)
    packed = _pack(scene.paint)
    out = np.empty(grid.array.shape, dtype=np.float32)
    if bruteforce:
        K.paint_bruteforce(out, origin, dir_sp, s2p, dc, dd, float(ds), nsub, w, scene.table, *packed,
                           float(scene.background_hu))
    else:
        K.paint(out, np.zeros(3, dtype=np.int64), origin, dir_sp, s2p, dc, dd, float(ds), nsub, w, scene.table,
                *packed, float(scene.background_hu), TILE, SAFETY)
    return out


def _index_box(scene: Scene, group: Group, grid: Volume, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """(k, j, i) index box of the scan grid that can hold the group (bounding spheres moved by the motion)."""
    lo, hi = scene.bounds_mm(group.plus)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    pad = 2.0
    if motion.deformation is not None:
        pad += float(np.abs(motion.deformation.displacements_mm).sum(0).max())
    m = motion.rigid_preplan_to_scan
    ijk = grid.lps_to_ijk(corners @ m[:3, :3].T + m[:3, 3])
    pad_ijk = pad / grid.spacing_mm + 1
    shape_ijk = np.array(grid.shape_ijk)
    lo_ijk = np.clip(np.floor(ijk.min(0) - pad_ijk), 0, shape_ijk).astype(int)
    hi_ijk = np.clip(np.ceil(ijk.max(0) + pad_ijk) + 1, 0, shape_ijk).astype(int)
    return lo_ijk[::-1], hi_ijk[::-1]


def structure_occupancy(scene: Scene, name: str, grid: Volume, motion: Motion | None = None,
                        nsub: int | None = None) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] of structure ``name`` on ``grid`` (k, j, i) float32."""
    motion = Motion.coerce(motion)
    g = scene.structures[name]
    s2p, dc, dd, ds = motion.kernel_args()
    origin, dir_sp = _grid_args(grid)
    nsub, w = _sampling(grid, nsub)
    out = np.zeros(grid.array.shape, dtype=np.float32)
    lo, hi = _index_box(scene, g, grid, motion)
    if np.any(hi <= lo):
        return out
    sub = np.zeros(tuple(hi - lo), dtype=np.float32)
    # only this structure's shapes, re-indexed: the tile test then looks at a handful of rows, not the scene
    used = list(dict.fromkeys(g.plus + g.minus))
    remap = {old: new for new, old in enumerate(used)}
    packed = _pack([Group([remap[i] for i in g.plus], [remap[i] for i in g.minus], 1.0)])
    K.paint(sub, lo.astype(np.int64), origin, dir_sp, s2p, dc, dd, float(ds), nsub, w, scene.table[used], *packed,
            0.0, TILE, SAFETY)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = sub
    return out
