"""Every JSON input, parsed and checked once where it enters (pydantic v2 models with invariants).

``plan.json``, ``registration.json``, ``needles.json`` and ``delivery.json`` are read through these models and
nowhere else; a file that breaks a type or an invariant is refused with ``PlanError`` / ``InputError`` naming the
file, the field (``seeds[3].position_mm``), what is wrong and what to do. Invariants, not only types: finite
numbers, ids unique, every seed on its needle (<= ``SEED_OFF_AXIS_MM``) and between its entry and tip, holes that
exist in the plan's template, sizes > 0 with sane upper bounds, the frame of reference named.

The JSON Schema of ``plan.json`` (``plan_json_schema()``) is published in docs/plan.schema.json for outside tools.
Unknown keys are kept (``extra="allow"``): the contract lets every file grow.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator,
                      model_validator)

from navigator.core.template import parse_hole
from navigator.errors import InputError, PlanError

# A seed further than this from its needle's axis is not on the needle (an I-125 seed is 0.8 mm wide; the
# needle's bore 1.0-1.2 mm): the plan contradicts itself.
SEED_OFF_AXIS_MM = 0.5
# Depth slack at both ends of a needle (rounding of exported coordinates).
DEPTH_SLACK_MM = 0.5
# Two seeds on one needle closer than this would overlap (I-125 seeds are 4.5 mm long; spacing 5-10 mm).
MIN_SEED_PITCH_MM = 4.0
MAX_COORD_MM = 5000.0
MAX_NEEDLE_MM = 400.0

Coord = Annotated[FiniteFloat, Field(ge=-MAX_COORD_MM, le=MAX_COORD_MM)]
Point = tuple[Coord, Coord, Coord]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$")]
Uid = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# --- plan.json ------------------------------------------------------------------------------------------------
class NeedleIn(_Model):
    id: Id
    hole: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    entry_mm: Point
    tip_mm: Point

    @model_validator(mode="after")
    def _length(self):
        length = float(np.linalg.norm(np.subtract(self.tip_mm, self.entry_mm)))
        if not 1.0 <= length <= MAX_NEEDLE_MM:
            raise ValueError(f"needle {self.id}: its tip is {length:.1f} mm from its entry; a needle's depth is "
                             f"1 to {MAX_NEEDLE_MM:g} mm")
        return self


class SeedIn(_Model):
    id: Id
    needle_id: Id
    position_mm: Point


class TemplateIn(_Model):
    """The guide template, when the plan names its size (a plan imported from another system may not)."""

    rows: Annotated[int, Field(ge=1, le=64)] | None = None
    cols: Annotated[int, Field(ge=1, le=64)] | None = None


class PlanFile(_Model):
    """``plan.json`` (cli-contract.md): geometry in LPS mm of the CT series ``ct_series_uid``."""

    frame_of_reference_uid: Uid
    ct_series_uid: Uid | Literal[""] = ""
    target: Annotated[str, Field(min_length=1, max_length=64)]
    prescription_gy: Annotated[FiniteFloat, Field(gt=0, le=1000)]
    seed_model: Annotated[str, Field(min_length=1, max_length=32)]
    seed_sk_u: Annotated[FiniteFloat, Field(gt=0, le=50)]
    needles: Annotated[list[NeedleIn], Field(min_length=1, max_length=200)]
    seeds: Annotated[list[SeedIn], Field(min_length=1, max_length=1000)]
    metrics: dict[str, Any] = Field(default_factory=dict)
    template: TemplateIn | None = None
    revision: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        _unique("needle", [n.id for n in self.needles])
        _unique("seed", [s.id for s in self.seeds])
        holes = [n.hole for n in self.needles if n.hole is not None]
        if self.template is not None and self.template.rows and self.template.cols:
            for n in self.needles:
                if n.hole is not None:
                    _check_hole(n, self.template)
        _unique("template hole", holes)
        needles = {n.id: n for n in self.needles}
        depths: dict[str, list[tuple[float, str]]] = {}
        for s in self.seeds:
            n = needles.get(s.needle_id)
            if n is None:
                raise ValueError(f"seed {s.id} names needle {s.needle_id!r}, which the plan does not have "
                                 f"(needles: {', '.join(needles)})")
            depth, off = _on_needle(n, s.position_mm)
            length = float(np.linalg.norm(np.subtract(n.tip_mm, n.entry_mm)))
            if off > SEED_OFF_AXIS_MM:
                raise ValueError(f"seed {s.id} lies {off:.1f} mm from the axis of its needle {n.id} (at most "
                                 f"{SEED_OFF_AXIS_MM} mm): the seed is not on its needle")
            if depth < -DEPTH_SLACK_MM or depth > length + DEPTH_SLACK_MM:
                where = "beyond the needle's tip" if depth > length else "above the needle's entry"
                raise ValueError(f"seed {s.id} is at depth {depth:.1f} mm on needle {n.id}, whose tip is at "
                                 f"{length:.1f} mm: {where}")
            depths.setdefault(n.id, []).append((depth, s.id))
        for nid, ds in depths.items():
            ds.sort()
            for (d0, a), (d1, b) in itertools.pairwise(ds):
                if d1 - d0 < MIN_SEED_PITCH_MM:
                    raise ValueError(f"seeds {a} and {b} on needle {nid} are {d1 - d0:.1f} mm apart; seeds "
                                     f"4.5 mm long need at least {MIN_SEED_PITCH_MM:g} mm between centres")
        return self


def _unique(what: str, ids: list[str]) -> None:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        raise ValueError(f"{what} id(s) {', '.join(sorted(set(dup)))} appear more than once; each must be unique")


def _check_hole(n: NeedleIn, template: TemplateIn) -> None:
    try:
        row, col = parse_hole(n.hole)
    except (InputError, ValueError):
        raise ValueError(f"needle {n.id}: hole {n.hole!r} is not a template hole (letter row, number column, "
                         "e.g. C4)") from None
    if not (0 <= row < template.rows and 0 <= col < template.cols):
        raise ValueError(f"needle {n.id}: hole {n.hole} is outside the plan's {template.rows}x{template.cols} "
                         "template")


def _on_needle(n: NeedleIn, p) -> tuple[float, float]:
    """(depth along the needle from its entry, distance from its axis), mm."""
    e, t, p = (np.asarray(v, dtype=float) for v in (n.entry_mm, n.tip_mm, p))
    u = (t - e) / np.linalg.norm(t - e)
    d = float(np.dot(p - e, u))
    return d, float(np.linalg.norm(p - e - d * u))


# --- registration.json ----------------------------------------------------------------------------------------
class RegistrationFile(_Model):
    fixed_to_moving: list[list[FiniteFloat]]
    metric: FiniteFloat | None
    converged: bool
    estimated_error_mm: Annotated[FiniteFloat, Field(ge=0)] | None = None
    seconds: Annotated[FiniteFloat, Field(ge=0)] = 0.0

    @field_validator("fixed_to_moving")
    @classmethod
    def _rigid(cls, m):
        a = np.asarray(m, dtype=float)
        if a.shape != (4, 4):
            raise ValueError(f"fixed_to_moving is {a.shape[0]}x{a.shape[1] if a.ndim > 1 else 0}; give a 4x4 matrix")
        r = a[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-3) or np.linalg.det(r) < 0 or \
                not np.allclose(a[3], [0, 0, 0, 1], atol=1e-9):
            raise ValueError("fixed_to_moving is not a rigid transform (rotation + translation, last row 0 0 0 1)")
        if np.abs(a[:3, 3]).max() > MAX_COORD_MM:
            raise ValueError(f"fixed_to_moving translates by more than {MAX_COORD_MM:g} mm")
        return m


# --- needles.json ---------------------------------------------------------------------------------------------
class NeedleResultIn(_Model):
    id: Id
    found: bool
    tip_mm: Point | None = None
    planned_tip_mm: Point
    tip_error_mm: FiniteFloat | None = None
    within_tolerance: bool
    axis: Point | None = None

    @model_validator(mode="after")
    def _found_has_tip(self):
        if self.found and self.tip_mm is None:
            raise ValueError(f"needle {self.id} is found but has no tip_mm")
        if self.axis is not None and not 0.99 < float(np.linalg.norm(self.axis)) < 1.01:
            raise ValueError(f"needle {self.id}: axis is not a unit vector")
        return self


class NeedleCheckFile(_Model):
    """``needles.json``: intraop coordinates; ``registration`` maps the pre-plan frame to them."""

    registration: RegistrationFile
    tolerance_mm: Annotated[FiniteFloat, Field(gt=0, le=50)]
    needles: Annotated[list[NeedleResultIn], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self):
        _unique("needle", [n.id for n in self.needles])
        return self


# --- delivery.json --------------------------------------------------------------------------------------------
class DeliveredSeedIn(_Model):
    seed_id: Id
    hole: str | None = None
    depth_mm: FiniteFloat | None = None
    device_index: Annotated[int, Field(ge=0)] | None = None


class DeliveryFile(_Model):
    released: Annotated[int, Field(ge=0, le=1000)]
    device_released_total: Annotated[int, Field(ge=0)] | None = None
    seeds: list[DeliveredSeedIn] = Field(default_factory=list)
    reconciled: bool | None = None


# --- the seed ledger (delivery/ledger.py), one JSON object per line ---------------------------------------
class LedgerRecord(_Model):
    """One line of the seed ledger: what the applicator was asked to release and what it did."""

    t: str | None = None
    type: Literal["device_epoch", "intent", "released", "not_released", "uncertain"]
    seed_id: Id | None = None
    hole: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    depth_mm: Annotated[FiniteFloat, Field(ge=-10, le=MAX_NEEDLE_MM)] | None = None
    device_index: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _complete(self):
        needs = {"intent": ("seed_id",), "not_released": ("seed_id",), "uncertain": ("seed_id",),
                 "released": ("seed_id", "hole", "depth_mm", "device_index", "epoch"), "device_epoch": ()}
        missing = [k for k in needs[self.type] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a '{self.type}' record needs {', '.join(missing)}")
        return self


# --- reading ------------------------------------------------------------------------------------------------
_KIND = {PlanFile: "plan", RegistrationFile: "registration", NeedleCheckFile: "needle check",
         DeliveryFile: "delivery record"}
_WHAT_TO_DO = {
    PlanFile: "write it with `navigator plan` (or `navigator replan`); docs/plan.schema.json gives every key",
    RegistrationFile: "write it with `navigator register`",
    NeedleCheckFile: "write it with `navigator needles`",
    DeliveryFile: "give the delivery.json that `navigator deliver` wrote beside its journal",
}


def parse(model: type[_Model], data: Any, source: str) -> _Model:
    """``data`` (already parsed JSON) validated as ``model``; ``PlanError`` for plans, else ``InputError``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _error(model, source, explain(exc)) from None


def load(model: type[_Model], path, name: str | None = None) -> tuple[_Model, dict]:
    """(validated model, raw dict) of the JSON file ``path``; ``name`` is how the message names it (an option)."""
    p = Path(path)
    source = f"{name} {p}" if name else str(p)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise _error(model, source, f"{_KIND[model]} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(model, source, f"cannot read it ({exc})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise _error(model, source, f"not JSON ({exc})") from None
    return parse(model, data, source), data


def _no_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def _error(model, source: str, what: str) -> InputError:
    cls = PlanError if model is PlanFile else InputError
    return cls(f"{source}: {what}; {_WHAT_TO_DO[model]}")


def explain(exc: ValidationError, limit: int = 4) -> str:
    """The first errors of a validation as ``field.path: message`` phrases."""
    parts = []
    for e in exc.errors(include_url=False)[:limit]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def plan_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of plan.json, for outside tools."""
    schema = PlanFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = ("plan.json of the CT-guided seed-implant navigator (cli-contract.md). Also checked, "
                             "beyond this schema: ids unique; every seed within 0.5 mm of its needle's axis and "
                             "between its entry and tip; seeds on one needle >= 4 mm apart; holes inside the "
                             "template.")
    return schema
