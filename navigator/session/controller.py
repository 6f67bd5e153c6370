"""The procedure as explicit states, every step journaled before it is acted on.

    NEW -> PREPLAN_LOADED -> REGISTERED -> REFERENCE_NEEDLES_CHECKED -> ALL_NEEDLES_CHECKED
        -> SEEDS_DELIVERED -> POSTIMPLANT_EVALUATED -> (SUPPLEMENT_DELIVERED -> POSTIMPLANT_EVALUATED)* -> CLOSED

A needle check loops (scan, check, correct, scan again) until every needle is within tolerance or the operator
accepts the remaining deviations explicitly (an ``operator_override`` line in the journal). Each transition
checks its preconditions and says what is missing.

The journal (``navigator.session.journal``) is the session's memory: a resumed session replays it to learn where it
stood, which needle checks passed and which seeds left the applicator. Nothing here talks to a device or
reads a file; the rehearsal (or the operator's front end) calls these methods with the results of each step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from navigator.errors import InputError
from navigator.session.journal import Journal


class SessionStateError(InputError):
    """A step was asked for before its preconditions were met (the message says which)."""


class State(str, enum.Enum):
    NEW = "new"
    PREPLAN_LOADED = "preplan_loaded"
    REGISTERED = "registered"
    REFERENCE_NEEDLES_CHECKED = "reference_needles_checked"
    ALL_NEEDLES_CHECKED = "all_needles_checked"
    SEEDS_DELIVERED = "seeds_delivered"
    POSTIMPLANT_EVALUATED = "postimplant_evaluated"
    SUPPLEMENT_DELIVERED = "supplement_delivered"
    CLOSED = "closed"


# The transitions the procedure allows; anything else is refused with the list of allowed next steps.
ALLOWED: dict[State, tuple[State, ...]] = {
    State.NEW: (State.PREPLAN_LOADED,),
    State.PREPLAN_LOADED: (State.REGISTERED,),
    State.REGISTERED: (State.REFERENCE_NEEDLES_CHECKED, State.ALL_NEEDLES_CHECKED),
    State.REFERENCE_NEEDLES_CHECKED: (State.ALL_NEEDLES_CHECKED,),
    State.ALL_NEEDLES_CHECKED: (State.SEEDS_DELIVERED,),
    State.SEEDS_DELIVERED: (State.POSTIMPLANT_EVALUATED,),
    State.POSTIMPLANT_EVALUATED: (State.SUPPLEMENT_DELIVERED, State.CLOSED),
    State.SUPPLEMENT_DELIVERED: (State.POSTIMPLANT_EVALUATED, State.CLOSED),
    State.CLOSED: (),
}


@dataclass
class NeedleCheck:
    """One intraop scan's needle check: which needles were out of tolerance and which were accepted."""

    scan: str  # "reference" or "all"
    out_of_tolerance: list[str]
    accepted: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(n in self.accepted for n in self.out_of_tolerance)


@dataclass
class SessionFacts:
    """What the journal says has happened so far (rebuilt on resume)."""

    state: State = State.NEW
    plan_path: str | None = None
    registration: dict | None = None
    needle_checks: list[NeedleCheck] = field(default_factory=list)
    released_seed_ids: list[str] = field(default_factory=list)
    postimplant: list[dict] = field(default_factory=list)
    steps_done: dict[str, dict] = field(default_factory=dict)


class Session:
    """The procedure's state machine on top of a journal.

    Every public method appends its journal line (flushed and fsynced) *before* it changes the state it
    records, so a crash between the two leaves the journal ahead, never behind, of what was done.
    """

    def __init__(self, journal: Journal, facts: SessionFacts | None = None):
        self.journal = journal
        self.facts = facts or SessionFacts()

    # --- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> "Session":
        """Start a new session, or resume the one journaled at ``path`` (verifying its hash chain)."""
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            # A torn last line (power lost or the process killed in mid-write) is cut off: the journal is
            # written before the action it records, so what it said was never acted on. Any other damage
            # (an altered, removed or inserted line) stops the resume with the line's number.
            torn = not path.read_bytes().endswith(b"\n")
            entries = Journal.read(path, repair=torn)
            facts = replay(entries)
            session = cls(Journal(path), facts)
            if torn:
                session.journal.append("journal_repaired", {"cut": "torn last line", "line": len(entries) + 1})
            session.journal.append("session_resumed", {"state": facts.state.value,
                                                       "released_seeds": len(facts.released_seed_ids)})
            return session
        session = cls(Journal(path))
        session.journal.append("session_opened", {})
        return session

    @property
    def state(self) -> State:
        return self.facts.state

    # --- generic bookkeeping --------------------------------------------------------------------------
    def record(self, kind: str, data: dict) -> None:
        """Journal an event that does not change the state (scan received, device reply, timing...)."""
        self.journal.append(kind, data)
        _apply(self.facts, kind, data)

    def step_done(self, name: str) -> dict | None:
        """The journaled result of a named step, or None when it has not completed (used to resume)."""
        return self.facts.steps_done.get(name)

    def complete_step(self, name: str, result: dict) -> None:
        self.record("step_done", {"step": name, "result": result})

    def undo_step(self, name: str, reason: str) -> None:
        """Journal that a completed step no longer holds (e.g. the device it started has gone) and must be
        done again; replay forgets its result just as the live session does."""
        self.record("step_undone", {"step": name, "reason": reason})

    def _transition(self, to: State, data: dict, missing: list[str]) -> None:
        if to not in ALLOWED[self.state]:
            allowed = ", ".join(s.value for s in ALLOWED[self.state]) or "none (the session is closed)"
            raise SessionStateError(
                f"cannot go from '{self.state.value}' to '{to.value}'; allowed next steps: {allowed}")
        if missing:
            raise SessionStateError(
                f"cannot go to '{to.value}' yet: " + "; ".join(missing))
        self.record("transition", {"from": self.state.value, "to": to.value, **data})

    # --- the procedure --------------------------------------------------------------------------------
    def load_preplan(self, plan_path: str, summary: dict) -> None:
        missing = [] if Path(plan_path).exists() else [f"plan file {plan_path} does not exist"]
        self._transition(State.PREPLAN_LOADED, {"plan": str(plan_path), "summary": summary}, missing)

    def accept_registration(self, registration: dict) -> None:
        missing = []
        if not registration.get("converged", False):
            missing.append("the registration did not converge: rescan or register again")
        self._transition(State.REGISTERED, {"registration": registration}, missing)

    def needle_check(self, scan: str, needles: list[dict]) -> NeedleCheck:
        """Journal one needle check (a list of needles.json entries); returns what is out of tolerance."""
        out = [n["id"] for n in needles if not n.get("within_tolerance", False)]
        self.record("needle_check", {"scan": scan, "out_of_tolerance": out,
                                     "needles": [{k: n.get(k) for k in ("id", "found", "tip_error_mm",
                                                                        "lateral_mm", "depth_mm", "angle_deg",
                                                                        "within_tolerance", "advice",
                                                                        "d90_change_gy")} for n in needles]})
        return self.facts.needle_checks[-1]

    def operator_override(self, needle_id: str, reason: str) -> None:
        """The operator accepts a needle that is out of tolerance (journaled with the reason)."""
        check = self._last_check()
        if check is None or needle_id not in check.out_of_tolerance:
            raise SessionStateError(f"needle {needle_id} is not out of tolerance in the last needle check; "
                                    "nothing to accept")
        self.record("operator_override", {"needle_id": needle_id, "reason": reason})

    def needles_checked(self, scan: str) -> None:
        to = State.REFERENCE_NEEDLES_CHECKED if scan == "reference" else State.ALL_NEEDLES_CHECKED
        check = self._last_check(scan)
        missing = []
        if check is None:
            missing.append(f"no '{scan}' needle check has been journaled")
        elif not check.passed:
            pending = [n for n in check.out_of_tolerance if n not in check.accepted]
            missing.append(f"needles {', '.join(pending)} are out of tolerance: correct them and rescan, "
                           "or accept each explicitly")
        self._transition(to, {"scan": scan}, missing)

    def seed_released(self, seed_id: str, data: dict) -> None:
        self.record("seed_released", {"seed_id": seed_id, **data})

    def seeds_delivered(self, delivery: dict) -> None:
        missing = [] if delivery.get("reconciled") else [
            "the delivery is not reconciled (ledger, device counter and RECORD list disagree): reconcile first"]
        self._transition(State.SEEDS_DELIVERED, {"delivery": delivery}, missing)

    def postimplant_evaluated(self, summary: dict) -> None:
        self._transition(State.POSTIMPLANT_EVALUATED, {"postimplant": summary}, [])

    def supplement_delivered(self, delivery: dict) -> None:
        missing = [] if delivery.get("reconciled") else ["the supplementary delivery is not reconciled"]
        self._transition(State.SUPPLEMENT_DELIVERED, {"delivery": delivery}, missing)

    def close(self, summary: dict) -> None:
        self._transition(State.CLOSED, {"summary": summary}, [])

    def _last_check(self, scan: str | None = None) -> NeedleCheck | None:
        checks = [c for c in self.facts.needle_checks if scan is None or c.scan == scan]
        return checks[-1] if checks else None


def _apply(facts: SessionFacts, kind: str, data: dict) -> None:
    """Fold one journal line into the facts (used live and on replay, so both agree)."""
    if kind == "transition":
        facts.state = State(data["to"])
        if "plan" in data:
            facts.plan_path = data["plan"]
        if "registration" in data:
            facts.registration = data["registration"]
        if "postimplant" in data:
            facts.postimplant.append(data["postimplant"])
    elif kind == "needle_check":
        facts.needle_checks.append(NeedleCheck(scan=data["scan"], out_of_tolerance=list(data["out_of_tolerance"])))
    elif kind == "operator_override":
        if facts.needle_checks:
            facts.needle_checks[-1].accepted.append(data["needle_id"])
    elif kind == "seed_released":
        if data["seed_id"] not in facts.released_seed_ids:
            facts.released_seed_ids.append(data["seed_id"])
    elif kind == "step_done":
        facts.steps_done[data["step"]] = data["result"]
    elif kind == "step_undone":
        facts.steps_done.pop(data["step"], None)


def replay(entries) -> SessionFacts:
    """Rebuild the facts from journal entries (dicts with ``kind`` and ``data``)."""
    facts = SessionFacts()
    for e in entries:
        _apply(facts, e["kind"], e["data"])
    return facts
