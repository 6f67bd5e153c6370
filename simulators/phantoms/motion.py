"""Patient motion between scans: a rigid transform and a small smooth deformation, with exact truth.

Frames: ``preplan`` is the LPS frame of the pre-plan CT (where the patient's anatomy is defined); ``scan`` is
the LPS frame of a later scan (intraop, post-implant). The truth maps points both ways:

    scan_to_preplan(y) = z + v(z),  z = inv(rigid_preplan_to_scan) @ y,  v(z) = sum_m d_m exp(-|z - c_m|^2 / 2s^2)
    preplan_to_scan(x) = rigid_preplan_to_scan @ z,  where z solves z + v(z) = x (fixed point, |grad v| << 1)

The deformation is defined on the scan side because rendering a scan needs scan -> pre-plan for every voxel
(one closed-form pass); the few points that go the other way (needles, seeds) are solved iteratively to
1e-6 mm. ``rigid_preplan_to_scan`` is a 4x4, row-major, acting on column vectors [x, y, z, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` about the unit ``axis`` (right-handed, LPS)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)


def rigid_4x4(rotation: np.ndarray, translation_mm) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(translation_mm, dtype=float)
    return m


def apply_4x4(m: np.ndarray, points_mm) -> np.ndarray:
    """Apply a 4x4 (row-major, column-vector convention) to points (..., 3)."""
    p = np.asarray(points_mm, dtype=float)
    return p @ m[:3, :3].T + m[:3, 3]


def random_rigid(rng: np.random.Generator, max_translation_mm: float = 15.0, max_rotation_deg: float = 8.0,
                 center_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A random rigid ``preplan_to_scan`` 4x4: rotation about ``center_mm`` (pre-plan LPS) by an angle drawn
    uniformly in [0, max_rotation_deg] about a uniformly random axis, then a translation of the centre drawn
    uniformly in direction and in length over [0, max_translation_mm]. The centre (e.g. the node) moves by
    exactly the translation, so the target stays in the new scan."""
    axis = rng.normal(size=3)
    angle = rng.uniform(0.0, max_rotation_deg)
    d = rng.normal(size=3)
    t = d / np.linalg.norm(d) * rng.uniform(0.0, max_translation_mm)
    R = rotation_matrix(axis, angle)
    c = np.asarray(center_mm, dtype=float)
    return rigid_4x4(R, c + t - R @ c)


def rigid_parameters(m: np.ndarray) -> tuple[float, float]:
    """(rotation angle in degrees, translation length in mm of the origin) of a rigid 4x4."""
    cos = np.clip((np.trace(m[:3, :3]) - 1) / 2, -1, 1)
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(m[:3, 3]))


@dataclass
class Deformation:
    """Smooth displacement ``v(z) = sum_m displacements_mm[m] * exp(-|z - centers_mm[m]|^2 / (2 sigma_mm^2))``,
    z in the pre-plan frame after undoing the rigid motion (see the module docstring)."""

    centers_mm: np.ndarray
    displacements_mm: np.ndarray
    sigma_mm: float

    def __post_init__(self) -> None:
        self.centers_mm = np.asarray(self.centers_mm, dtype=float).reshape(-1, 3)
        self.displacements_mm = np.asarray(self.displacements_mm, dtype=float).reshape(-1, 3)
        self.sigma_mm = float(self.sigma_mm)

    def displacement(self, z_mm) -> np.ndarray:
        z = np.asarray(z_mm, dtype=float)
        d2 = ((z[..., None, :] - self.centers_mm) ** 2).sum(-1)
        g = np.exp(-d2 / (2 * self.sigma_mm ** 2))
        return g @ self.displacements_mm

    def max_gradient(self) -> float:
        """Upper bound of |dv/dz| (per component sum): must stay well below 1 for the map to be invertible."""
        return float(np.abs(self.displacements_mm).sum(1).sum() / self.sigma_mm * np.exp(-0.5))

    def to_dict(self) -> dict:
        return {"centers_mm": self.centers_mm.tolist(), "displacements_mm": self.displacements_mm.tolist(),
                "sigma_mm": self.sigma_mm}

    @classmethod
    def from_dict(cls, d: dict) -> "Deformation":
        return cls(d["centers_mm"], d["displacements_mm"], d["sigma_mm"])


def random_deformation(rng: np.random.Generator, center_mm, radius_mm: float = 60.0, n_centers: int = 6,
                       max_displacement_mm: float = 3.0, sigma_mm: float = 40.0) -> Deformation:
    """A few Gaussian bumps within ``radius_mm`` of ``center_mm`` (pre-plan LPS), each displacing up to
    ``max_displacement_mm``; ``sigma_mm`` sets the smoothness (default keeps |grad v| below ~0.1)."""
    c = np.asarray(center_mm, dtype=float)
    centers = c + rng.uniform(-radius_mm, radius_mm, size=(n_centers, 3))
    d = rng.normal(size=(n_centers, 3))
    d *= (rng.uniform(0.3, 1.0, size=(n_centers, 1)) * max_displacement_mm / np.linalg.norm(d, axis=1, keepdims=True))
    return Deformation(centers, d, sigma_mm)


@dataclass
class Motion:
    """Where the patient is in a later scan. ``rigid_preplan_to_scan`` 4x4 + optional ``deformation``."""

    rigid_preplan_to_scan: np.ndarray = field(default_factory=lambda: np.eye(4))
    deformation: Deformation | None = None

    def __post_init__(self) -> None:
        self.rigid_preplan_to_scan = np.asarray(self.rigid_preplan_to_scan, dtype=float).reshape(4, 4)

    @classmethod
    def coerce(cls, motion) -> "Motion":
        """None -> identity; a 4x4 -> rigid only; a Motion -> itself."""
        if motion is None:
            return cls()
        if isinstance(motion, Motion):
            return motion
        return cls(np.asarray(motion, dtype=float))

    @property
    def rigid_scan_to_preplan(self) -> np.ndarray:
        return np.linalg.inv(self.rigid_preplan_to_scan)

    def scan_to_preplan(self, points_mm) -> np.ndarray:
        z = apply_4x4(self.rigid_scan_to_preplan, points_mm)
        if self.deformation is None:
            return z
        return z + self.deformation.displacement(z)

    def preplan_to_scan(self, points_mm, tol_mm: float = 1e-6) -> np.ndarray:
        x = np.asarray(points_mm, dtype=float)
        z = x.copy()
        if self.deformation is not None:
            for _ in range(100):
                z_new = x - self.deformation.displacement(z)
                if np.max(np.abs(z_new - z), initial=0.0) < tol_mm:
                    z = z_new
                    break
                z = z_new
        return apply_4x4(self.rigid_preplan_to_scan, z)

    def directions_preplan_to_scan(self, units) -> np.ndarray:
        """Rotate direction vectors (seed axes) by the rigid part."""
        return np.asarray(units, dtype=float) @ self.rigid_preplan_to_scan[:3, :3].T

    def to_dict(self) -> dict:
        return {"preplan_to_scan": self.rigid_preplan_to_scan.tolist(),
                "deformation": None if self.deformation is None else self.deformation.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Motion":
        deform = d.get("deformation")
        return cls(np.array(d["preplan_to_scan"]), None if deform is None else Deformation.from_dict(deform))

    def kernel_args(self):
        """(scan_to_preplan 4x4, centres (M,3), displacements (M,3), sigma) for the compiled renderer."""
        if self.deformation is None:
            return self.rigid_scan_to_preplan, np.zeros((0, 3)), np.zeros((0, 3)), 1.0
        d = self.deformation
        return self.rigid_scan_to_preplan, d.centers_mm, d.displacements_mm, d.sigma_mm
