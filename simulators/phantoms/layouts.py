"""Needle geometries that finders find hard, for the generalisation tests and bench (issue #12).

All in the pre-plan frame (LPS mm) of a ``Patient``, aimed at its node; each returns ``(entry_mm, tip_mm)``
pairs like ``demo_implant``:

- ``axial``: needles in the axial plane (parallel to the slices: a template held coplanar), on a lattice
  perpendicular to the approach -- a needle then lies along one slice, imaged over its whole length by
  one or two slices;
- ``tilted``: the same lattice tilted 30 degrees out of the axial plane towards the feet, so each needle crosses
  many slices obliquely;
- ``crossing``: two fans from approaches 40 degrees apart in the axial plane whose tracks cross over the node
  in the slice plane, 3 mm apart in z (they do not touch; a thick slice shows them as an X);
- ``neighbours``: pairs of parallel axial needles 5 mm apart in the same slices, the pairs 10 mm apart in z.

``seeds_along`` puts seeds on the needles inside the node (along their axes), for post-implant scans.
"""

from __future__ import annotations

import numpy as np

from navigator.errors import InputError

from .cases import Patient, demo_implant
from .motion import rotation_matrix

NEEDLE_GEOMETRIES = ("axial", "tilted", "crossing", "neighbours")
TILT_DEG = 30.0
CROSSING_DEG = 40.0
CROSSING_DZ_MM = 3.0
NEIGHBOUR_GAP_MM = 5.0


def _approach(patient: Patient) -> tuple[np.ndarray, float]:
    """Unit approach direction (in the axial plane, from the skin to the node) and the needle length (mm)."""
    needles, _, _ = demo_implant(patient, n_needles=1)
    entry, tip = needles[0]
    d = tip - entry
    return d / np.linalg.norm(d), float(np.linalg.norm(d))


def _along(c: np.ndarray, u: np.ndarray, length_mm: float, reach_mm: float) -> tuple[np.ndarray, np.ndarray]:
    tip = c + reach_mm * u
    return tip - length_mm * u, tip


def needle_layout(patient: Patient, geometry: str, n_needles: int = 6, pitch_mm: float = 8.0):
    """``n_needles`` needles ``(entry_mm, tip_mm)`` of ``geometry`` (``NEEDLE_GEOMETRIES``) through the node."""
    if geometry not in NEEDLE_GEOMETRIES:
        raise InputError(f"unknown needle geometry {geometry!r}; use one of {', '.join(NEEDLE_GEOMETRIES)}")
    if not 1 <= n_needles <= 40:
        raise InputError(f"n_needles {n_needles} is outside 1-40")
    u, length = _approach(patient)
    c = patient.node_center_mm
    reach = 0.3 * float(patient.options["node_diameter_mm"])
    z = np.array([0.0, 0.0, 1.0])
    e1 = np.cross(u, z)
    e1 /= np.linalg.norm(e1)
    out = []
    if geometry in ("axial", "tilted"):
        if geometry == "tilted":
            u = rotation_matrix(e1, TILT_DEG) @ u
        e2 = np.cross(u, e1)
        cols = int(np.ceil(np.sqrt(n_needles)))
        rows = int(np.ceil(n_needles / cols))
        for n in range(n_needles):
            a = (n % cols - 0.5 * (cols - 1)) * pitch_mm
            b = (n // cols - 0.5 * (rows - 1)) * pitch_mm
            out.append(_along(c + a * e1 + b * e2, u, length, reach))
    elif geometry == "crossing":
        fans = [rotation_matrix(z, sgn * 0.5 * CROSSING_DEG) @ u for sgn in (-1.0, 1.0)]
        for n in range(n_needles):
            level = (n // 2 - 0.5 * ((n_needles - 1) // 2)) * 2 * CROSSING_DZ_MM
            dz = level + (CROSSING_DZ_MM if n % 2 else 0.0)
            out.append(_along(c + dz * z, fans[n % 2], length, reach))
    else:
        n_pairs = int(np.ceil(n_needles / 2))
        for n in range(n_needles):
            level = (n // 2 - 0.5 * (n_pairs - 1)) * 2 * NEIGHBOUR_GAP_MM
            side = (n % 2 - 0.5) * NEIGHBOUR_GAP_MM
            out.append(_along(c + level * z + side * e1, u, length, reach))
    return out


def seeds_along(patient: Patient, needles, per_needle: int = 2, spacing_mm: float = 10.0):
    """Seeds on each needle's track, the deepest 2 mm short of the tip, ``spacing_mm`` apart centre to centre,
    axes along the needle. Returns ``(seeds_mm (N, 3), axes (N, 3))`` in the pre-plan frame."""
    seeds, axes = [], []
    for entry, tip in needles:
        u = np.asarray(tip, float) - np.asarray(entry, float)
        u /= np.linalg.norm(u)
        for s in range(per_needle):
            seeds.append(np.asarray(tip, float) - (2.0 + 2.25 + s * spacing_mm) * u)
            axes.append(u)
    return np.array(seeds).reshape(-1, 3), np.array(axes).reshape(-1, 3)
