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


def grid_volume(lo_mm, hi_mm, step_mm: float, frame_of_reference_uid: str = "") -> Volume:
    """An empty axis-aligned float32 grid covering the LPS box [lo, hi] at ``step_mm`` (e.g. a dose grid)."""
    lo = np.asarray(lo_mm, dtype=float)
    hi = np.asarray(hi_mm, dtype=float)
    n = np.maximum(1, np.ceil((hi - lo) / step_mm).astype(int) + 1)
    return Volume(
        array=np.zeros((n[2], n[1], n[0]), dtype=np.float32),
        origin_mm=lo,
        spacing_mm=np.full(3, float(step_mm)),
        frame_of_reference_uid=frame_of_reference_uid,
    )
