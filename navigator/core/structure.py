"""``Structure``: one ROI of a structure set as closed axial polygons in LPS mm, and finding one by name.

The model only; reading it from DICOM is ``navigator.io.dicom.rtstruct``, rasterising it onto a grid and margins
are ``navigator.anatomy.structures``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from navigator.core.volume import Volume
from navigator.errors import StructureError

# Contour points of one plane may differ in z by rounding in the export (DS strings); more than this is not axial.
_PLANE_TOL_MM = 0.05


@dataclass
class Structure:
    """One ROI of a structure set. ``contours``: closed axial polygons, each (N, 3) LPS mm."""

    name: str
    number: int
    contours: list = field(default_factory=list)
    color: tuple | None = None  # ROIDisplayColor (r, g, b) 0-255
    frame_of_reference_uid: str = ""
    roi_type: str = ""  # RTROIInterpretedType (GTV, CTV, ORGAN, ...)
    plane_spacing_mm: float | None = None  # slab thickness of one contour plane; None -> inferred
    skipped_contours: int = 0  # POINT / OPEN contours and polygons with < 3 points, not used for masks
    generation_algorithm: str = ""  # ROIGenerationAlgorithm as read (AUTOMATIC, SEMIAUTOMATIC, MANUAL); "" = unknown

    def __post_init__(self) -> None:
        contours = []
        for n, c in enumerate(self.contours):
            a = np.asarray(c, dtype=float)
            if a.ndim != 2 or a.shape[1] != 3 or len(a) < 3 or not np.all(np.isfinite(a)):
                raise StructureError(
                    f"structure '{self.name}': contour {n} has shape {a.shape}; a contour is >= 3 finite LPS points "
                    "(N, 3) in mm"
                )
            contours.append(a)
        self.contours = contours

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounding box (lo, hi) of all contour points, mm, z extended by half the plane spacing."""
        if not self.contours:
            raise StructureError(f"structure '{self.name}' has no contours; draw it or choose another structure")
        pts = np.concatenate(self.contours)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        half = 0.5 * (self._plane_spacing(None) or 0.0)
        lo[2] -= half
        hi[2] += half
        return lo, hi

    # -- planes ------------------------------------------------------------------------------------------
    def _planes(self) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Contour planes sorted by z: (z_mm (P,), polygons (x, y) mm per plane)."""
        if not self.contours:
            return np.zeros(0), []
        zs = []
        for n, c in enumerate(self.contours):
            z = c[:, 2]
            if float(z.max() - z.min()) > _PLANE_TOL_MM:
                raise StructureError(
                    f"structure '{self.name}': contour {n} is not on an axial plane (z from {z.min():.2f} to "
                    f"{z.max():.2f} mm); only axial contours can be rasterised; redraw it on axial slices"
                )
            zs.append(float(z.mean()))
        zs = np.asarray(zs)
        order = np.argsort(zs, kind="stable")
        planes_z: list[float] = []
        planes: list[list[np.ndarray]] = []
        for idx in order:
            if planes_z and zs[idx] - planes_z[-1] <= _PLANE_TOL_MM:
                planes[-1].append(self.contours[idx][:, :2])
            else:
                planes_z.append(zs[idx])
                planes.append([self.contours[idx][:, :2]])
        return np.asarray(planes_z), planes

    def _plane_spacing(self, grid: Volume | None) -> float | None:
        if self.plane_spacing_mm:
            return float(self.plane_spacing_mm)
        z, _ = self._planes()
        if len(z) >= 2:
            # The most common plane-to-plane step (rounded to 0.01 mm; ties -> the smaller): robust to gaps in the
            # drawing (which the minimum would also survive) and to a stray near-duplicate plane (which it would not).
            steps, counts = np.unique(np.round(np.diff(z), 2), return_counts=True)
            return float(steps[np.argmax(counts)])
        return float(grid.spacing_mm[2]) if grid is not None else None


def find_structure(structures: dict[str, Structure], name: str) -> tuple[str, Structure]:
    """``(key, structure)`` for ``name``: the exact key, else the unique case-insensitive match;
    StructureError listing the names otherwise."""
    if name in structures:
        return name, structures[name]
    hits = [k for k in structures if k.lower() == name.lower()]
    if len(hits) == 1:
        return hits[0], structures[hits[0]]
    raise StructureError(
        f"no structure named '{name}' in the structure set; it holds: {', '.join(sorted(structures)) or 'none'}; "
        "give one of these names"
    )


def get_structure(structures: dict[str, Structure], name: str) -> Structure:
    """The structure called ``name`` (see ``find_structure``)."""
    return find_structure(structures, name)[1]
