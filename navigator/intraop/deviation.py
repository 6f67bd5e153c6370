"""How far each inserted needle is from its plan, and what that does to the CTV's D90.

Geometry is in the intraop CT's LPS frame (mm): the planned needle is mapped there by the registration
(pre-plan -> intraop) and compared with the needle found in the scan.

- ``tip_error_mm``: |found tip - planned tip|;
- ``depth_mm``: the error's component along the planned axis (+ too deep, - too shallow);
- ``lateral_mm``: the component perpendicular to the planned axis;
- ``angle_deg``: between the found and planned axes;
- ``within_tolerance``: tip error below the tolerance (2 mm by default);
- ``tip_sd_mm``: the finder's standard error of the found tip (mm, 3D): how sure it is (a needle lying inside
  one thick slice is uncertain through it; a clipped end's bias rests on the scan's measured blur).

Dose impact (``d90_change_gy``): the needle's planned seeds are moved with the needle's rigid deviation
(rotated about the planned tip from the planned to the found axis, then carried to the found tip), the other
seeds stay as planned, and the CTV's D90 is recomputed by TG-43 at CTV sample points (pre-plan frame).
That is what the implant would give if the seeds were released along the needle where it lies now.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["NeedleDeviation", "needle_deviation", "deviations_from_search", "minimal_rotation", "DoseImpact",
           "d90_gy"]


@dataclass
class NeedleDeviation:
    """One planned needle against what was found (intraop LPS mm)."""

    needle_id: str
    found: bool
    planned_entry_mm: np.ndarray
    planned_tip_mm: np.ndarray
    tolerance_mm: float
    tip_mm: np.ndarray | None = None
    found_axis: np.ndarray | None = None
    tip_error_mm: float = float("nan")
    lateral_mm: float = float("nan")
    depth_mm: float = float("nan")
    angle_deg: float = float("nan")
    lateral_vector_mm: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    far_off_track: bool = False
    d90_change_gy: float = float("nan")
    advice: str = ""
    tip_sd_mm: float = float("nan")

    @property
    def planned_axis(self) -> np.ndarray:
        d = self.planned_tip_mm - self.planned_entry_mm
        return d / np.linalg.norm(d)

    @property
    def within_tolerance(self) -> bool:
        return bool(self.found and self.tip_error_mm < self.tolerance_mm)

    def to_json(self) -> dict:
        """One entry of needles.json's ``needles`` (cli-contract.md), plus extra keys."""
        f = _num
        return {
            "id": self.needle_id,
            "found": bool(self.found),
            "tip_mm": None if self.tip_mm is None else _vec(self.tip_mm),
            "planned_tip_mm": _vec(self.planned_tip_mm),
            "tip_error_mm": f(self.tip_error_mm),
            "lateral_mm": f(self.lateral_mm),
            "depth_mm": f(self.depth_mm),
            "angle_deg": f(self.angle_deg),
            "within_tolerance": self.within_tolerance,
            "advice": self.advice,
            "d90_change_gy": f(self.d90_change_gy),
            "far_off_track": bool(self.far_off_track),
            "planned_entry_mm": _vec(self.planned_entry_mm),
            "axis": None if self.found_axis is None else _vec(self.found_axis, 5),
            "lateral_vector_mm": None if not self.found else _vec(self.lateral_vector_mm),
            "tip_sd_mm": f(self.tip_sd_mm),
        }


def _num(v, nd: int = 3):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _vec(v, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in v]


def needle_deviation(needle_id: str, planned_entry_mm, planned_tip_mm, tip_mm=None, axis=None,
                     tolerance_mm: float = 2.0, far_off_track: bool = False,
                     tip_sd_mm: float = float("nan")) -> NeedleDeviation:
    """Deviation of a found needle (``tip_mm``, unit ``axis`` towards the tip) from its plan, same LPS frame.
    ``tip_mm`` None: the needle was not found."""
    e = np.asarray(planned_entry_mm, dtype=float)
    p = np.asarray(planned_tip_mm, dtype=float)
    dev = NeedleDeviation(needle_id, tip_mm is not None, e, p, float(tolerance_mm), far_off_track=far_off_track,
                          tip_sd_mm=float(tip_sd_mm))
    if tip_mm is None:
        return dev
    u = dev.planned_axis
    t = np.asarray(tip_mm, dtype=float)
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    err = t - p
    depth = float(np.dot(err, u))
    lat = err - depth * u
    dev.tip_mm, dev.found_axis = t, a
    dev.tip_error_mm = float(np.linalg.norm(err))
    dev.depth_mm = depth
    dev.lateral_vector_mm = lat
    dev.lateral_mm = float(np.linalg.norm(lat))
    dev.angle_deg = float(np.degrees(np.arccos(np.clip(np.dot(a, u), -1.0, 1.0))))
    return dev


def deviations_from_search(search, tolerance_mm: float = 2.0) -> list[NeedleDeviation]:
    """A :class:`NeedleDeviation` for every planned needle of a ``needle_finding.NeedleSearch``."""
    out = []
    for m in search.matches:
        f = m.found
        out.append(needle_deviation(m.needle_id, m.planned_entry_mm, m.planned_tip_mm,
                                    None if f is None else f.tip_mm, None if f is None else f.axis,
                                    tolerance_mm, m.far_off_track,
                                    float("nan") if f is None else f.tip_sd_mm))
    return out


# --- dose impact --------------------------------------------------------------------------------------------


def minimal_rotation(a, b) -> np.ndarray:
    """The smallest rotation (3x3) turning unit vector ``a`` into unit vector ``b``."""
    a = np.asarray(a, float) / np.linalg.norm(a)
    b = np.asarray(b, float) / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # opposite: 180 degrees about any perpendicular axis
        p = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        p /= np.linalg.norm(p)
        return 2 * np.outer(p, p) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * ((1 - c) / s ** 2)


def d90_gy(dose_gy: np.ndarray) -> float:
    """D90 of equal-volume dose samples: the dose that 90 % of the volume receives at least (Gy)."""
    d = np.asarray(dose_gy, dtype=float).ravel()
    return float(np.percentile(d, 10.0)) if d.size else float("nan")


class DoseImpact:
    """CTV D90 with one needle's seeds moved to where that needle actually lies (pre-plan frame, Gy).

    ``ctv_points_mm``: equal-volume sample points of the CTV in pre-plan LPS; ``seeds_mm``/``axes``/
    ``needle_of_seed``: the plan's seeds; ``model``/``sk_u``: TG-43 seed model and strength.
    """

    def __init__(self, ctv_points_mm, seeds_mm, axes, needle_of_seed, sk_u: float, model):
        from navigator.physics.dose import dose_at_points

        self._dose_at_points = dose_at_points
        self.points = np.asarray(ctv_points_mm, dtype=float).reshape(-1, 3)
        self.seeds = np.asarray(seeds_mm, dtype=float).reshape(-1, 3)
        self.axes = np.asarray(axes, dtype=float).reshape(-1, 3)
        self.needle_of_seed = np.asarray(list(needle_of_seed))
        self.sk_u = float(sk_u)
        self.model = model
        self.per_seed = np.zeros((len(self.seeds), len(self.points)))
        for i in range(len(self.seeds)):
            self.per_seed[i] = self._dose_at_points(self.points, self.seeds[i:i + 1], self.axes[i:i + 1],
                                                    self.sk_u, self.model)
        self.total = self.per_seed.sum(0)
        self.planned_d90_gy = d90_gy(self.total)

    def moved_seeds(self, needle_id: str, planned_tip_mm, planned_axis, found_tip_mm, found_axis):
        """The needle's seeds carried by its rigid deviation (all pre-plan LPS): positions, axes."""
        sel = self.needle_of_seed == needle_id
        rot = minimal_rotation(planned_axis, found_axis)
        pos = np.asarray(found_tip_mm, float) + (self.seeds[sel] - np.asarray(planned_tip_mm, float)) @ rot.T
        return pos, self.axes[sel] @ rot.T, sel

    def d90_change_gy(self, needle_id: str, planned_tip_mm, planned_axis, found_tip_mm, found_axis) -> float:
        pos, ax, sel = self.moved_seeds(needle_id, planned_tip_mm, planned_axis, found_tip_mm, found_axis)
        if not sel.any():
            return 0.0
        moved = self._dose_at_points(self.points, pos, ax, self.sk_u, self.model)
        dose = self.total - self.per_seed[sel].sum(0) + moved
        return d90_gy(dose) - self.planned_d90_gy

    def all_moved_d90_gy(self, moves: dict) -> float:
        """D90 with every needle in ``moves`` (id -> (planned_tip, planned_axis, found_tip, found_axis)) moved."""
        dose = self.total.copy()
        for nid, args in moves.items():
            pos, ax, sel = self.moved_seeds(nid, *args)
            if sel.any():
                dose += self._dose_at_points(self.points, pos, ax, self.sk_u, self.model) - self.per_seed[sel].sum(0)
        return d90_gy(dose)
