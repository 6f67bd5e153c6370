"""18G steel needles: where they really go (an error model whose draws are recorded) and how they look in CT.

A needle runs from ``entry_mm`` (the reference point of its template hole, depth 0) to ``tip_mm`` (plan.json's
convention); it is rendered as a solid steel cylinder of diameter 1.27 mm with a flat end at the tip, over
the whole entry -> tip length. Coordinates are LPS mm of the frame named by the caller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from navigator.core.volume import Volume

from . import _kernels as K
from .motion import rotation_matrix
from .scanner import ScannerModel, add_metal

NEEDLE_18G_DIAMETER_MM = 1.27
STEEL_HU = 25000.0   # effective HU of stainless steel at CT energies (before the scanner clips it)


@dataclass(frozen=True)
class NeedleErrorModel:
    """Placement error of a needle relative to its plan, drawn independently per needle.

    - ``lateral_sd_mm``: whole-needle shift perpendicular to the planned axis (template-hole play, tissue
      push), per perpendicular axis;
    - ``depth_sd_mm``: insertion depth error along the needle (+ deeper);
    - ``angle_sd_deg``: tilt about the entry, per perpendicular axis.
    """

    lateral_sd_mm: float = 1.0
    depth_sd_mm: float = 1.0
    angle_sd_deg: float = 1.0


@dataclass
class NeedleDraw:
    """One needle's planned and actual geometry with the drawn errors (all LPS mm in the plan's frame)."""

    planned_entry_mm: np.ndarray
    planned_tip_mm: np.ndarray
    entry_mm: np.ndarray
    tip_mm: np.ndarray
    lateral_offset_mm: np.ndarray      # the drawn perpendicular shift (3-vector)
    depth_error_mm: float
    tilt_deg: np.ndarray               # drawn tilts about the two perpendicular axes (2-vector)

    @property
    def angle_deg(self) -> float:
        a = self.planned_tip_mm - self.planned_entry_mm
        b = self.tip_mm - self.entry_mm
        c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        return float(np.degrees(np.arccos(np.clip(c, -1, 1))))

    @property
    def tip_error_mm(self) -> float:
        return float(np.linalg.norm(self.tip_mm - self.planned_tip_mm))

    def to_dict(self) -> dict:
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        d["angle_deg"] = self.angle_deg
        d["tip_error_mm"] = self.tip_error_mm
        return d


def _perpendicular_basis(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(u, a)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


def draw_needles(planned, model: NeedleErrorModel, rng: np.random.Generator) -> list[NeedleDraw]:
    """Actual needles from planned ``(entry_mm, tip_mm)`` pairs: tilt about the entry, depth error, then a
    lateral shift of the whole needle."""
    out = []
    for entry, tip in planned:
        entry = np.asarray(entry, dtype=float)
        tip = np.asarray(tip, dtype=float)
        d = tip - entry
        depth = float(np.linalg.norm(d))
        u = d / depth
        e1, e2 = _perpendicular_basis(u)
        tilt = rng.normal(scale=model.angle_sd_deg, size=2)
        R = rotation_matrix(e1, tilt[0]) @ rotation_matrix(e2, tilt[1])
        u_act = R @ u
        dz = float(rng.normal(scale=model.depth_sd_mm))
        lat = rng.normal(scale=model.lateral_sd_mm, size=2)
        shift = lat[0] * e1 + lat[1] * e2
        out.append(NeedleDraw(entry, tip, entry + shift, entry + shift + (depth + dz) * u_act, shift, dz, tilt))
    return out


def needle_occupancy(grid: Volume, needles, diameter_mm: float = NEEDLE_18G_DIAMETER_MM,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume occupancy (k, j, i) float32 of steel cylinders ``(entry_mm, tip_mm)`` given in the
    grid's own LPS frame; the whole slice thickness is averaged (box slice profile)."""
    occ = np.zeros(grid.array.shape, dtype=np.float32) if out is None else out
    if len(needles) == 0:
        return occ
    e = np.array([np.asarray(n[0], dtype=float) for n in needles]).reshape(-1, 3)
    t = np.array([np.asarray(n[1], dtype=float) for n in needles]).reshape(-1, 3)
    lengths = np.linalg.norm(t - e, axis=1)
    units = (t - e) / lengths[:, None]
    radii = np.full(len(e), 0.5 * diameter_mm)
    K.rods_occupancy(occ, grid.origin_mm, grid.direction, grid.spacing_mm, e, units, lengths, radii, False,
                     *_nsub(grid))
    return occ


def _nsub(grid: Volume, step_mm: float = 0.1) -> tuple[int, int]:
    """Supersampling of metal: ~0.1 mm in-plane (the needle is under two pixels wide) and through the slice."""
    nxy = max(4, int(np.ceil(grid.spacing_mm[0] / step_mm)))
    nz = max(4, int(np.ceil(grid.spacing_mm[2] / (2 * step_mm))))
    return nxy, nz


def render_needles(ct: Volume, needles, rng: np.random.Generator | int | None = 0,
                   scanner: ScannerModel = ScannerModel(), steel_hu: float = STEEL_HU,
                   diameter_mm: float = NEEDLE_18G_DIAMETER_MM) -> Volume:
    """``ct`` with steel needles ``(entry_mm, tip_mm)`` (in ct's LPS frame) imaged into it: partial volume,
    PSF blur, blooming, metal streaks, clipped to the scanner's range. Returns a new Volume (same geometry
    and identity); ``meta['truth']['needles_mm']`` lists the needles."""
    rng = np.random.default_rng(rng)
    occ = needle_occupancy(ct, needles, diameter_mm)
    img = add_metal(ct, occ * np.float32(steel_hu), occ, rng, scanner)
    vol = ct.with_array(img.astype(np.float32))
    truth = dict(vol.meta.get("truth", {}))
    truth["needles_mm"] = [[np.asarray(a, float).tolist(), np.asarray(b, float).tolist()] for a, b in needles]
    vol.meta["truth"] = truth
    return vol
