"""Guide template geometry: a flat plate of parallel holes on a square 5 mm pitch.

Hole ids are a row letter and a column number, ``A1`` ... ``Z99`` (rows ``A``-``Z`` along ``row_dir``,
columns ``1``-``99`` along ``col_dir``). Every needle through the template runs along the template normal
``normal_lps`` (pointing into the patient). A hole's *reference point* is where its axis meets the plate's
patient-side surface; it is the needle's ``entry_mm`` in plan.json, i.e. depth 0 of the applicator.

Frame: LPS mm of the planning CT. ``origin_mm`` is the reference point of hole ``A1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from navigator.errors import PlanError

ROW_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_ROWS = len(ROW_LETTERS)
MAX_COLS = 99
_HOLE_RE = re.compile(r"^([A-Z])([0-9]{1,2})$")


def hole_id(row: int, col: int) -> str:
    """Zero-based (row, col) -> hole id (``(0, 0)`` -> ``"A1"``)."""
    if not (0 <= row < MAX_ROWS and 0 <= col < MAX_COLS):
        raise PlanError(f"template hole (row {row}, column {col}) is outside A1..Z99")
    return f"{ROW_LETTERS[row]}{col + 1}"


def hole_rc(hole) -> tuple[int, int] | None:
    """Hole id -> zero-based (row, col), or None when it is not a hole id (case and spaces forgiven)."""
    m = _HOLE_RE.match(str(hole or "").strip().upper())
    if m is None or int(m.group(2)) < 1:
        return None
    return ROW_LETTERS.index(m.group(1)), int(m.group(2)) - 1


def is_hole_id(hole) -> bool:
    """True for a hole id exactly as the applicator takes it (``"C7"``: upper-case letter, column 1-99)."""
    return isinstance(hole, str) and hole == hole.strip().upper() and hole_rc(hole) is not None


def parse_hole(hole: str) -> tuple[int, int]:
    """Hole id -> zero-based (row, col); ``"C12"`` -> ``(2, 11)``; PlanError when it is not one."""
    rc = hole_rc(hole)
    if rc is None:
        raise PlanError(f"template hole {hole!r} is not a hole id; ids are a row letter A-Z and a column 1-99 (e.g. C7)")
    return rc


@dataclass
class GuideTemplate:
    """A guide template placed in the planning CT (LPS mm).

    ``row_dir``, ``col_dir`` and ``normal_lps`` are orthonormal LPS unit vectors: row letters advance
    along ``row_dir``, column numbers along ``col_dir``, needles go along ``normal_lps``.
    """

    origin_mm: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal_lps: np.ndarray
    n_rows: int = 13
    n_cols: int = 13
    pitch_mm: float = 5.0
    number: int = 1
    type: str = "GUIDE TEMPLATE"  # RT Plan TemplateType (CS, <= 16 chars)
    name: str = "5 mm guide template"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.origin_mm = np.asarray(self.origin_mm, dtype=float).reshape(3)
        self.row_dir = _unit(self.row_dir)
        self.col_dir = _unit(self.col_dir)
        self.normal_lps = _unit(self.normal_lps)
        m = np.stack([self.row_dir, self.col_dir, self.normal_lps])
        if not np.allclose(m @ m.T, np.eye(3), atol=1e-6):
            raise PlanError("template axes (row, column, normal) must be orthonormal")
        if not (1 <= self.n_rows <= MAX_ROWS and 1 <= self.n_cols <= MAX_COLS):
            raise PlanError(f"template of {self.n_rows} x {self.n_cols} holes; at most {MAX_ROWS} rows x {MAX_COLS} columns")
        if not self.pitch_mm > 0:
            raise PlanError(f"template pitch {self.pitch_mm} mm; it must be > 0 mm")

    # --- holes ------------------------------------------------------------------------------------------
    def holes(self) -> list[str]:
        return [hole_id(r, c) for r in range(self.n_rows) for c in range(self.n_cols)]

    def has_hole(self, hole: str) -> bool:
        r, c = parse_hole(hole)
        return r < self.n_rows and c < self.n_cols

    def hole_to_lps(self, hole: str) -> np.ndarray:
        """Reference point (LPS mm) of a hole: the needle's entry point, depth 0."""
        r, c = parse_hole(hole)
        if r >= self.n_rows or c >= self.n_cols:
            raise PlanError(f"hole {hole} is outside this {self.n_rows} x {self.n_cols} template "
                            f"(A1..{hole_id(self.n_rows - 1, self.n_cols - 1)})")
        return self.rc_to_lps(r, c)

    def rc_to_lps(self, row, col) -> np.ndarray:
        """Continuous zero-based (row, col) -> LPS mm on the template surface; arrays broadcast."""
        row = np.asarray(row, dtype=float)[..., None]
        col = np.asarray(col, dtype=float)[..., None]
        return self.origin_mm + self.pitch_mm * (row * self.row_dir + col * self.col_dir)

    def lps_to_rc(self, points_mm) -> np.ndarray:
        """LPS mm (..., 3) -> continuous (row, col, height_mm) where height is along the normal from the plate."""
        p = np.asarray(points_mm, dtype=float) - self.origin_mm
        return np.stack([p @ self.row_dir / self.pitch_mm, p @ self.col_dir / self.pitch_mm, p @ self.normal_lps],
                        axis=-1)

    def nearest_hole(self, point_mm) -> tuple[str, float]:
        """The hole whose needle line passes closest to ``point_mm`` and that distance (mm, in the plane)."""
        rch = self.lps_to_rc(point_mm)
        r = int(np.clip(np.rint(rch[0]), 0, self.n_rows - 1))
        c = int(np.clip(np.rint(rch[1]), 0, self.n_cols - 1))
        off = self.pitch_mm * np.hypot(rch[0] - r, rch[1] - c)
        return hole_id(r, c), float(off)

    def needle_point(self, hole: str, depth_mm) -> np.ndarray:
        """LPS mm of the point at ``depth_mm`` along the needle through ``hole`` (depth 0 = the reference point)."""
        d = np.asarray(depth_mm, dtype=float)[..., None]
        return self.hole_to_lps(hole) + d * self.normal_lps

    # --- placement --------------------------------------------------------------------------------------
    @classmethod
    def covering(cls, normal_lps, row_dir, uv_min_mm, uv_max_mm, plane_mm: float, pitch_mm: float = 5.0,
                 margin_holes: int = 1, **kw) -> "GuideTemplate":
        """A template with the given axes whose holes cover the in-plane box [uv_min, uv_max] (mm).

        (u, v) are the coordinates along ``row_dir`` and ``normal x row_dir`` measured from the LPS origin;
        ``plane_mm`` is the plate's position along the normal (LPS origin-based). Hole positions are
        snapped to multiples of the pitch in (u, v), so templates for the same pose share a lattice.
        """
        n = _unit(normal_lps)
        r = _unit(np.asarray(row_dir, float) - np.dot(row_dir, n) * n)
        c = np.cross(n, r)
        lo = np.floor(np.asarray(uv_min_mm, float) / pitch_mm) - margin_holes
        hi = np.ceil(np.asarray(uv_max_mm, float) / pitch_mm) + margin_holes
        n_rows, n_cols = int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1
        if n_rows > MAX_ROWS and n_cols <= MAX_ROWS:
            # long target: turn the template a quarter (rows along the old columns), 99 columns fit more
            umin, umax = np.asarray(uv_min_mm, float), np.asarray(uv_max_mm, float)
            return cls.covering(n, c, (umin[1], -umax[0]), (umax[1], -umin[0]), plane_mm, pitch_mm,
                                margin_holes, **kw)
        if n_rows > MAX_ROWS or n_cols > MAX_COLS:
            raise PlanError(f"the target needs a template of {n_rows} x {n_cols} holes at {pitch_mm} mm; "
                            f"at most {MAX_ROWS} rows x {MAX_COLS} columns exist")
        origin = lo[0] * pitch_mm * r + lo[1] * pitch_mm * c + plane_mm * n
        return cls(origin_mm=origin, row_dir=r, col_dir=c, normal_lps=n, n_rows=n_rows, n_cols=n_cols,
                   pitch_mm=pitch_mm, **kw)

    # --- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "number": int(self.number), "type": self.type, "name": self.name,
            "pitch_mm": float(self.pitch_mm), "rows": int(self.n_rows), "cols": int(self.n_cols),
            "hole_a1_mm": [round(float(x), 3) for x in self.origin_mm],
            "row_dir": [round(float(x), 6) for x in self.row_dir],
            "col_dir": [round(float(x), 6) for x in self.col_dir],
            "normal_lps": [round(float(x), 6) for x in self.normal_lps],
            "hole_ids": f"A1..{hole_id(self.n_rows - 1, self.n_cols - 1)}",
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GuideTemplate":
        try:
            return cls(origin_mm=d["hole_a1_mm"], row_dir=d["row_dir"], col_dir=d["col_dir"],
                       normal_lps=d["normal_lps"], n_rows=int(d["rows"]), n_cols=int(d["cols"]),
                       pitch_mm=float(d.get("pitch_mm", 5.0)), number=int(d.get("number", 1)),
                       type=str(d.get("type", "GUIDE TEMPLATE")), name=str(d.get("name", "5 mm guide template")))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"template description is incomplete ({type(exc).__name__}: {exc}); "
                            "it needs hole_a1_mm, row_dir, col_dir, normal_lps, rows, cols") from None


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float).reshape(3)
    n = np.linalg.norm(v)
    if not n > 0:
        raise PlanError("template axis of zero length")
    return v / n
