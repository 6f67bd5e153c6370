"""The implant plan as value objects, and its ``plan.json`` form (cli-contract.md).

Geometry: LPS mm in the frame of reference ``frame_of_reference_uid`` of the CT series ``ct_series_uid``.
A needle runs from ``entry_mm`` (the reference point of its template hole, depth 0) to ``tip_mm``;
a seed's depth is its distance from the needle's entry along the needle. These are the depths the
applicator reports (SGP/1 ``depth_mm``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from navigator.errors import InputError, PlanError


@dataclass
class Needle:
    id: str
    entry_mm: np.ndarray
    tip_mm: np.ndarray
    hole: str | None = None

    def __post_init__(self) -> None:
        self.entry_mm = np.asarray(self.entry_mm, dtype=float).reshape(3)
        self.tip_mm = np.asarray(self.tip_mm, dtype=float).reshape(3)

    @property
    def length_mm(self) -> float:
        """Tip depth: distance from the entry reference point to the tip."""
        return float(np.linalg.norm(self.tip_mm - self.entry_mm))

    @property
    def axis(self) -> np.ndarray:
        """Unit vector from entry to tip (LPS)."""
        d = self.tip_mm - self.entry_mm
        n = np.linalg.norm(d)
        if n == 0:
            raise PlanError(f"needle {self.id} has entry == tip; a needle needs a length > 0 mm")
        return d / n

    def depth_of(self, point_mm) -> float:
        """Depth (mm from the entry along the needle) of a point's projection on the needle axis."""
        return float(np.dot(np.asarray(point_mm, dtype=float) - self.entry_mm, self.axis))

    def point_at_depth(self, depth_mm: float) -> np.ndarray:
        return self.entry_mm + depth_mm * self.axis


@dataclass
class PlannedSeed:
    id: str
    needle_id: str
    position_mm: np.ndarray

    def __post_init__(self) -> None:
        self.position_mm = np.asarray(self.position_mm, dtype=float).reshape(3)


@dataclass
class Plan:
    frame_of_reference_uid: str
    ct_series_uid: str
    target: str
    prescription_gy: float
    seed_model: str
    seed_sk_u: float
    needles: list[Needle] = field(default_factory=list)
    seeds: list[PlannedSeed] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # keys beyond the contract (template, OARs, provenance...)

    # --- queries ----------------------------------------------------------------------------------------
    def needle(self, needle_id: str) -> Needle:
        for n in self.needles:
            if n.id == needle_id:
                return n
        raise PlanError(f"plan has no needle {needle_id!r}; needles are {[n.id for n in self.needles]}")

    def seeds_of(self, needle_id: str) -> list[PlannedSeed]:
        """The needle's seeds in delivery order: deepest first (receding loading)."""
        needle = self.needle(needle_id)
        seeds = [s for s in self.seeds if s.needle_id == needle_id]
        return sorted(seeds, key=lambda s: -needle.depth_of(s.position_mm))

    def seed_positions_mm(self) -> np.ndarray:
        return np.array([s.position_mm for s in self.seeds], dtype=float).reshape(-1, 3)

    def seed_axes(self) -> np.ndarray:
        """Each seed's long axis: the axis of its needle."""
        by_id = {n.id: n.axis for n in self.needles}
        return np.array([by_id[s.needle_id] for s in self.seeds], dtype=float).reshape(-1, 3)

    # --- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "ct_series_uid": self.ct_series_uid,
            "target": self.target,
            "prescription_gy": float(self.prescription_gy),
            "seed_model": self.seed_model,
            "seed_sk_u": float(self.seed_sk_u),
            "needles": [
                {"id": n.id, "hole": n.hole, "entry_mm": _r(n.entry_mm), "tip_mm": _r(n.tip_mm)}
                for n in self.needles
            ],
            "seeds": [
                {"id": s.id, "needle_id": s.needle_id, "position_mm": _r(s.position_mm)} for s in self.seeds
            ],
            "metrics": self.metrics,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=_json_default, allow_nan=False))

    @classmethod
    def from_dict(cls, d: dict, source: str = "plan") -> "Plan":
        """A plan from plan.json's dict, checked by ``navigator.core.models.PlanFile`` (types and invariants:
        ids unique, every seed on its needle between entry and tip, holes in the template); ``PlanError``."""
        from navigator.core.models import PlanFile, parse

        m = parse(PlanFile, d, source)
        known = {"frame_of_reference_uid", "ct_series_uid", "target", "prescription_gy", "seed_model",
                 "seed_sk_u", "needles", "seeds", "metrics"}
        return cls(
            frame_of_reference_uid=m.frame_of_reference_uid,
            ct_series_uid=m.ct_series_uid,
            target=m.target,
            prescription_gy=m.prescription_gy,
            seed_model=m.seed_model,
            seed_sk_u=m.seed_sk_u,
            needles=[Needle(id=n.id, hole=n.hole, entry_mm=n.entry_mm, tip_mm=n.tip_mm) for n in m.needles],
            seeds=[PlannedSeed(id=s.id, needle_id=s.needle_id, position_mm=s.position_mm) for s in m.seeds],
            metrics=dict(m.metrics),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def load(cls, path, name: str = "--plan") -> "Plan":
        from navigator.core.models import PlanFile, load

        _, d = load(PlanFile, path, name)
        return cls.from_dict(d, source=f"{name} {path}")

    def check(self, source: str = "plan") -> None:
        """Re-check the invariants of a plan built in memory (before it is saved or delivered)."""
        from navigator.core.models import PlanFile, parse

        parse(PlanFile, self.to_dict(), source)


def _r(v) -> list[float]:
    return [round(float(x), 3) for x in v]


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def target_region(plan: Plan, default_half_mm: float = 45.0) -> tuple[np.ndarray, float]:
    """Centre (plan frame, LPS mm) and half-size (mm) of the region around a plan's needle tips and seeds."""
    pts = [n.tip_mm for n in plan.needles] + [s.position_mm for s in plan.seeds]
    if not pts:
        raise InputError("the plan has no needles and no seeds; it cannot say where the target is")
    pts = np.array(pts, dtype=float)
    centre = 0.5 * (pts.min(0) + pts.max(0))
    half = float(np.clip(np.abs(pts - centre).max() + 20.0, 35.0, 45.0)) if len(pts) > 1 else default_half_mm
    return centre, half
