"""What the operator should do with each needle, in the operator's words.

- within tolerance: ``accept (D90 -0.4 Gy)``;
- out of tolerance, mostly in depth (the lateral error alone is within tolerance): ``withdraw 3.5 mm`` or
  ``advance 2.0 mm`` along the needle;
- out of tolerance laterally: ``re-insert through hole C7 (lateral 3.1 mm, correct toward patient left,
  angle 4.2°)``,
  the hole being the template hole nearest to the planned entry shifted against the lateral error;
- not found: ``not found: ...``.

The dose impact (change of the CTV's D90 if the seeds went in where the needle lies now) is always shown.
Hole geometry comes from the plan's guide template (``plan.extra["template"]``, navigator.core.template); without
one it is fitted to the plan's needles' holes and entries (5 mm pitch lattice).
"""

from __future__ import annotations

import numpy as np

from navigator.core.template import MAX_COLS, MAX_ROWS, hole_id, hole_rc

__all__ = ["HoleLocator", "advise", "direction_words"]

_WORDS = (("patient left", "patient right"), ("posterior", "anterior"), ("superior", "inferior"))


def direction_words(v_mm) -> str:
    """The dominant LPS direction(s) of a vector in words (``"patient left and superior"``)."""
    v = np.asarray(v_mm, dtype=float)
    n = np.linalg.norm(v)
    if not n > 0:
        return "nowhere"
    parts = []
    for a in np.argsort(-np.abs(v))[:2]:  # the two main directions: enough to steer by
        if abs(v[a]) >= 0.4 * n:
            parts.append(_WORDS[a][0] if v[a] > 0 else _WORDS[a][1])
    return " and ".join(parts)


class HoleLocator:
    """Template holes in the pre-plan frame: nearest hole to a point, from a GuideTemplate or fitted."""

    def __init__(self, plan):
        self.template = None
        self._fit = None
        tdict = plan.extra.get("template") if isinstance(plan.extra, dict) else None
        if isinstance(tdict, dict):
            try:
                from navigator.core.template import GuideTemplate

                self.template = GuideTemplate.from_dict(tdict)
            except Exception:  # a malformed template description: fall back to the fit below
                self.template = None
        if self.template is None:
            self._fit = _fit_lattice(plan)

    @property
    def available(self) -> bool:
        return self.template is not None or self._fit is not None

    def nearest_hole(self, point_mm) -> str | None:
        """Hole whose needle line passes nearest to ``point_mm`` (pre-plan LPS), or None when unknown."""
        if self.template is not None:
            return self.template.nearest_hole(point_mm)[0]
        if self._fit is None:
            return None
        origin, row_v, col_v = self._fit
        basis = np.stack([row_v, col_v], axis=1)  # 3 x 2
        rc, *_ = np.linalg.lstsq(basis, np.asarray(point_mm, float) - origin, rcond=None)
        r, c = int(np.rint(rc[0])), int(np.rint(rc[1]))
        if not (0 <= r < MAX_ROWS and 0 <= c < MAX_COLS):
            return None
        return hole_id(r, c)


def _fit_lattice(plan):
    """Least-squares hole lattice: entry = origin + row * row_v + col * col_v from the plan's needles."""
    rows, pts = [], []
    for n in plan.needles:
        rc = hole_rc(n.hole)
        if rc is not None:
            rows.append([1.0, rc[0], rc[1]])
            pts.append(n.entry_mm)
    if len(rows) < 3:
        return None
    a = np.array(rows)
    if np.linalg.matrix_rank(a) < 3:
        return None
    sol, *_ = np.linalg.lstsq(a, np.array(pts), rcond=None)
    return sol[0], sol[1], sol[2]


def _fmt_mm(v: float) -> str:
    return f"{round(2 * v) / 2:.1f}"  # the applicator and the operator work in 0.5 mm steps


def advise(dev, holes: HoleLocator | None = None, planned_entry_preplan_mm=None,
           lateral_vector_preplan_mm=None, planned_hole: str | None = None) -> str:
    """Advice for one :class:`navigator.intraop.deviation.NeedleDeviation` (its ``d90_change_gy`` filled if known).

    ``planned_entry_preplan_mm`` and ``lateral_vector_preplan_mm`` (pre-plan LPS) let the advice name the
    hole to re-insert through; ``planned_hole`` is the plan's hole of this needle.
    """
    # round first so a change of -0.03 Gy reads "+0.0", not "-0.0"
    dose = "" if not np.isfinite(dev.d90_change_gy) else f"D90 {round(dev.d90_change_gy, 1) + 0.0:+.1f} Gy"
    if not dev.found:
        where = f" through hole {planned_hole}" if planned_hole else ""
        return ("not found: no needle near the planned track; check that it was inserted, then insert it"
                f"{where} and rescan")
    tol = dev.tolerance_mm
    if dev.within_tolerance:
        return f"accept ({dose})" if dose else "accept"
    shown = f"; as it lies {dose}" if dose else ""
    if dev.lateral_mm < tol:
        # the depth is what is wrong: along the needle, the operator's own move
        if dev.depth_mm > 0:
            return f"withdraw {_fmt_mm(dev.depth_mm)} mm{shown}"
        return f"advance {_fmt_mm(-dev.depth_mm)} mm{shown}"
    lat_vec = dev.lateral_vector_mm if lateral_vector_preplan_mm is None else lateral_vector_preplan_mm
    correction = -np.asarray(lat_vec, float)  # move the entry against the error
    hole = None
    if holes is not None and holes.available and planned_entry_preplan_mm is not None:
        hole = holes.nearest_hole(np.asarray(planned_entry_preplan_mm, float) + correction)
    what = f"re-insert through hole {hole}" if hole else "re-insert"
    if hole and planned_hole and hole == planned_hole:
        what = f"re-insert through the same hole {hole}"
    detail = (f"lateral {dev.lateral_mm:.1f} mm, correct toward {direction_words(correction)}, "
              f"angle {dev.angle_deg:.1f}°")
    depth = ""
    if abs(dev.depth_mm) >= 0.5:
        depth = f", depth {dev.depth_mm:+.1f} mm"
    return f"{what} ({detail}{depth}){shown}"
