"""``RigidTransform``: a rigid (rotation + translation) map between two patient frames, as a value.

Name each one after the frames it maps between, ``a_to_b`` (``preplan_to_intraop``): ``a_to_b.apply(p_a)`` gives
the point in frame b; ``rotate`` turns directions (no translation); ``inverse()`` is ``b_to_a``;
``b_to_c @ a_to_b`` is ``a_to_c``. LPS mm on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class RigidTransform:
    matrix: np.ndarray  # 4x4 homogeneous: [p_b, 1] = matrix @ [p_a, 1]

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=float).reshape(4, 4)
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls(np.eye(4))

    @classmethod
    def of(cls, value) -> "RigidTransform":
        """A RigidTransform from itself or a 4x4 array (e.g. read from JSON)."""
        return value if isinstance(value, RigidTransform) else cls(value)

    @classmethod
    def from_rotation_translation(cls, rotation, translation_mm) -> "RigidTransform":
        m = np.eye(4)
        m[:3, :3] = np.asarray(rotation, dtype=float)
        m[:3, 3] = np.asarray(translation_mm, dtype=float)
        return cls(m)

    @property
    def rotation(self) -> np.ndarray:
        return self.matrix[:3, :3]

    @property
    def translation_mm(self) -> np.ndarray:
        return self.matrix[:3, 3]

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle (degrees)."""
        c = (np.trace(self.rotation) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))

    def apply(self, points_mm) -> np.ndarray:
        """Points (..., 3) LPS mm in frame a -> frame b."""
        p = np.asarray(points_mm, dtype=float)
        return p @ self.rotation.T + self.translation_mm

    def rotate(self, vectors) -> np.ndarray:
        """Directions (..., 3) from frame a to frame b: the rotation only."""
        return np.asarray(vectors, dtype=float) @ self.rotation.T

    def inverse(self) -> "RigidTransform":
        r = self.rotation.T  # a rotation's inverse is its transpose
        return RigidTransform.from_rotation_translation(r, -r @ self.translation_mm)

    def __matmul__(self, other: "RigidTransform") -> "RigidTransform":
        """``b_to_c @ a_to_b`` -> ``a_to_c``."""
        return RigidTransform(self.matrix @ other.matrix)

    def __array__(self, dtype=None, copy=None):
        return np.array(self.matrix, dtype=dtype)

    def to_list(self, nd: int = 8) -> list[list[float]]:
        """Row-major 4x4 for JSON."""
        return [[round(float(v), nd) for v in row] for row in self.matrix]
