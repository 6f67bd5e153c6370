"""A CT-like volume with its geometry in DICOM patient coordinates (LPS, mm).

Index conventions (the one place they meet):
- ``Volume.array`` is numpy-ordered ``(k, j, i)`` = (slice, row, column).
- ``ijk`` index vectors are ordered ``(i, j, k)`` = (column, row, slice), as in SimpleITK and DICOM.
- ``direction`` is a 3x3 matrix whose *columns* are the LPS unit vectors of the i, j and k axes
  (SimpleITK's direction, reshaped row-major).
- ``point_lps = origin_mm + direction @ (spacing_mm * ijk)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Volume:
    """A 3D image. ``array`` is (k, j, i); ``origin_mm`` is the LPS centre of voxel (0, 0, 0)."""

    array: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: np.ndarray  # (si, sj, sk)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    frame_of_reference_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin_mm = np.asarray(self.origin_mm, dtype=float).reshape(3)
        self.spacing_mm = np.asarray(self.spacing_mm, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    # --- shape and size -------------------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return i, j, k

    @property
    def voxel_volume_cc(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    # --- coordinates ----------------------------------------------------------------------------------
    def ijk_to_lps(self, ijk) -> np.ndarray:
        """Continuous voxel index (..., 3) ordered (i, j, k) -> LPS mm (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return self.origin_mm + (ijk * self.spacing_mm) @ self.direction.T

    def lps_to_ijk(self, points_mm) -> np.ndarray:
        """LPS mm (..., 3) -> continuous voxel index (..., 3) ordered (i, j, k)."""
        p = np.asarray(points_mm, dtype=float) - self.origin_mm
        return (p @ self.direction) / self.spacing_mm

    def contains_lps(self, points_mm, margin_vox: float = 0.0) -> np.ndarray:
        """True where a point lies inside the volume's voxel boxes (grown by ``margin_vox`` voxels)."""
        ijk = self.lps_to_ijk(points_mm)
        hi = np.array(self.shape_ijk, dtype=float) - 0.5 + margin_vox
        return np.all((ijk >= -0.5 - margin_vox) & (ijk <= hi), axis=-1)

    def axis_coords_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates along each index axis (only meaningful for an axis-aligned direction)."""
        i, j, k = self.shape_ijk
        return tuple(
            self.origin_mm[a] + self.direction[a, a] * self.spacing_mm[a] * np.arange(n)
            for a, n in zip(range(3), (i, j, k))
        )

    def voxel_centers_lps(self, mask: np.ndarray | None = None) -> np.ndarray:
        """LPS mm of voxel centres, (N, 3), for the voxels of ``mask`` (array-shaped bool) or all voxels."""
        if mask is None:
            kk, jj, ii = np.indices(self.array.shape)
            ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
        else:
            kk, jj, ii = np.nonzero(mask)
            ijk = np.stack([ii, jj, kk], axis=1)
        return self.ijk_to_lps(ijk)

    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(np.abs(self.direction), np.eye(3), atol=1e-6))

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same geometry and identity holding another array of the same shape (a mask, a dose)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return replace(self, array=array, meta=dict(self.meta))

    # --- SimpleITK bridge -----------------------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)  # numpy (k, j, i) -> sitk (i, j, k)
        img.SetOrigin(tuple(float(v) for v in self.origin_mm))
        img.SetSpacing(tuple(float(v) for v in self.spacing_mm))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, **identity) -> "Volume":
        import SimpleITK as sitk

        return cls(
            array=sitk.GetArrayFromImage(img),
            origin_mm=np.array(img.GetOrigin()),
            spacing_mm=np.array(img.GetSpacing()),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            **identity,
        )


# --- grids and crops -----------------------------------------------------------------------------------
def grid_volume(lo_mm, hi_mm, step_mm: float, frame_of_reference_uid: str = "", *, like: Volume | None = None,
                max_voxels: int | None = None, cover: bool = True) -> Volume:
    """An empty float32 grid over the box [lo, hi] at ``step_mm``: the one way a dose grid (or a grid to
    rasterise a structure on) is built.

    Without ``like``: axis-aligned, ``lo``/``hi`` in LPS mm, the origin at ``lo``. With ``like`` (a CT): in its
    orientation, ``lo``/``hi`` in mm along its i, j, k axes from its origin, with its identity (frame of
    reference, series, study, patient; ``frame_of_reference_uid`` is then not used) and
    ``meta["kind"] = "dose grid"``.
    ``cover``: True: ceil(extent / step) + 1 voxels per axis (at least 1), so the last voxel centre reaches
    ``hi`` or beyond and the box is covered; False: floor(extent / step) + 1, so the grid stays inside the box
    (the plan's and the post-implant dose grids, whose box already holds their margin).
    ``max_voxels``: the step grows by 0.5 mm until the grid holds no more voxels than this.
    """
    lo = np.asarray(lo_mm, dtype=float)
    hi = np.asarray(hi_mm, dtype=float)

    def counts(step):
        if cover:
            return np.maximum(1, np.ceil((hi - lo) / step).astype(int) + 1)
        return (np.floor((hi - lo) / step) + 1).astype(int)

    step = step_mm
    if max_voxels is not None:
        while np.prod(counts(step).astype(float)) > max_voxels:
            step += 0.5
    n = counts(step)
    array = np.zeros((n[2], n[1], n[0]), dtype=np.float32)
    if like is None:
        return Volume(array=array, origin_mm=lo, spacing_mm=np.full(3, float(step)),
                      frame_of_reference_uid=frame_of_reference_uid)
    return Volume(array=array, origin_mm=like.origin_mm + like.direction @ lo, spacing_mm=np.full(3, float(step)),
                  direction=like.direction.copy(), frame_of_reference_uid=like.frame_of_reference_uid,
                  series_uid=like.series_uid, study_uid=like.study_uid, patient_id=like.patient_id,
                  patient_name=like.patient_name, meta={"kind": "dose grid"})


def index_box(ijk, pad_vox, size_ijk, margin_vox: int = 0, allow_empty: bool = False):
    """Index bounds (lo, hi), each (i, j, k), hi exclusive, of the voxels within ``pad_vox`` (continuous, per
    axis) plus ``margin_vox`` whole voxels of the continuous indices ``ijk`` (..., 3), clipped to an array of
    ``size_ijk`` voxels. Never empty (at least the voxel nearest the points along each axis) unless
    ``allow_empty``: then a box wholly off the array is empty along that axis."""
    ijk = np.asarray(ijk, dtype=float).reshape(-1, 3)
    size = np.asarray(size_ijk)
    lo = np.floor(ijk.min(0) - pad_vox).astype(int) - margin_vox
    hi = np.ceil(ijk.max(0) + pad_vox).astype(int) + margin_vox + 1
    if allow_empty:
        return np.maximum(lo, 0), np.minimum(hi, size)
    lo = np.clip(lo, 0, size - 1)
    return lo, np.clip(hi, lo + 1, size)


def voxel_box(vol: Volume, points_mm, margin_mm=0.0, margin_vox: int = 0, allow_empty: bool = False):
    """``index_box`` of the voxels of ``vol`` within ``margin_mm`` (plus ``margin_vox`` voxels) of the LPS
    points' bounding box in ``vol``'s index axes: (lo, hi), each (i, j, k), hi exclusive."""
    return index_box(vol.lps_to_ijk(points_mm), np.asarray(margin_mm, dtype=float) / vol.spacing_mm,
                     vol.shape_ijk, margin_vox, allow_empty)


def box_slices(lo, hi) -> tuple[slice, slice, slice]:
    """numpy (k, j, i) slices of the (i, j, k) index box [lo, hi)."""
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def coarsen(vol: Volume, min_step_mm: float, reduce: str = "mean") -> tuple[Volume, tuple[int, int, int]]:
    """``vol`` on a grid at least ``min_step_mm`` apart along each axis, by whole blocks of voxels (``reduce``:
    "mean" for HU, "max" for a mask: a block is in when any voxel of it is); the (fi, fj, fk) block sizes.
    Trailing voxels that do not fill a block are dropped. Same orientation; the origin moves to the first
    block's centre."""
    sp = np.abs(np.asarray(vol.spacing_mm, dtype=float))
    f = tuple(max(1, int(min_step_mm // s)) for s in sp)           # (fi, fj, fk)
    if f == (1, 1, 1):
        return vol, f
    fk, fj, fi = f[2], f[1], f[0]
    k, j, i = (n // b for n, b in zip(vol.array.shape, (fk, fj, fi)))
    blocks = vol.array[: k * fk, : j * fj, : i * fi].reshape(k, fk, j, fj, i, fi)
    arr = blocks.max(axis=(1, 3, 5)) if reduce == "max" else blocks.mean(axis=(1, 3, 5), dtype=np.float32)
    origin = vol.ijk_to_lps(np.array([(fi - 1) / 2.0, (fj - 1) / 2.0, (fk - 1) / 2.0]))
    spacing = np.asarray(vol.spacing_mm, dtype=float) * np.array(f, dtype=float)
    return replace(vol, array=arr, origin_mm=origin, spacing_mm=spacing, direction=vol.direction.copy(),
                   meta=dict(vol.meta)), f


def crop(vol: Volume, points_mm, margin_mm=0.0, margin_vox: int = 0) -> tuple[Volume, tuple[slice, slice, slice]]:
    """The part of ``vol`` around LPS points (``voxel_box``: + ``margin_mm`` and ``margin_vox``, never empty) as
    a Volume over a view of its array, with its geometry and identity; and the (k, j, i) slices taken."""
    lo, hi = voxel_box(vol, points_mm, margin_mm, margin_vox)
    sl = box_slices(lo, hi)
    return replace(vol, array=vol.array[sl], origin_mm=vol.ijk_to_lps(lo), spacing_mm=vol.spacing_mm.copy(),
                   direction=vol.direction.copy(), meta=dict(vol.meta)), sl
