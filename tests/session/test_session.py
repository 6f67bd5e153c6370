"""The procedure's state machine: transitions, preconditions, journal-before-action, resume, tampering."""

import json

import pytest

from navigator.errors import JournalError
from navigator.session.journal import Journal
from navigator.session.controller import Session, SessionStateError, State


def _needles(*out):
    return [{"id": f"N{i}", "found": True, "tip_error_mm": 3.0 if f"N{i}" in out else 0.5,
             "within_tolerance": f"N{i}" not in out, "advice": "accept"} for i in range(1, 4)]


def _to_all_needles_checked(s: Session, plan_path):
    s.load_preplan(str(plan_path), {"seeds": 10})
    s.accept_registration({"converged": True, "estimated_error_mm": 0.2})
    s.needle_check("reference", _needles())
    s.needles_checked("reference")
    s.needle_check("all", _needles())
    s.needles_checked("all")


def _journal_at_all_needles_checked(tmp_path):
    """A journal of a session that reached ALL_NEEDLES_CHECKED; returns (session, journal path)."""
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    path = tmp_path / "session.jsonl"
    s = Session.open(path)
    _to_all_needles_checked(s, plan)
    return s, path


def test_full_procedure_in_order(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    s = Session.open(tmp_path / "session.jsonl")
    _to_all_needles_checked(s, plan)
    s.seeds_delivered({"reconciled": True, "released": 10})
    s.postimplant_evaluated({"D90_gy": 110})
    s.supplement_delivered({"reconciled": True, "released": 2})
    s.postimplant_evaluated({"D90_gy": 125})
    s.close({})
    assert s.state == State.CLOSED
    kinds = [e["kind"] for e in Journal.read(tmp_path / "session.jsonl")]
    assert kinds.count("transition") == 9


def test_preconditions_say_what_is_missing(tmp_path):
    s = Session.open(tmp_path / "session.jsonl")
    with pytest.raises(SessionStateError, match="allowed next steps: preplan_loaded"):
        s.accept_registration({"converged": True})
    with pytest.raises(SessionStateError, match="does not exist"):
        s.load_preplan(str(tmp_path / "missing.json"), {})
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    s.load_preplan(str(plan), {})
    with pytest.raises(SessionStateError, match="did not converge"):
        s.accept_registration({"converged": False})
    s.accept_registration({"converged": True})
    s.needle_check("reference", _needles("N2"))
    with pytest.raises(SessionStateError, match="N2 are out of tolerance"):
        s.needles_checked("reference")
    with pytest.raises(SessionStateError, match="nothing to accept"):
        s.operator_override("N1", "fine")
    s.operator_override("N2", "deviation towards the centre of the node; dose impact -0.5 Gy")
    s.needles_checked("reference")
    assert s.state == State.REFERENCE_NEEDLES_CHECKED


def test_unreconciled_delivery_is_refused(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    s = Session.open(tmp_path / "session.jsonl")
    _to_all_needles_checked(s, plan)
    with pytest.raises(SessionStateError, match="not reconciled"):
        s.seeds_delivered({"reconciled": False})
    assert s.state == State.ALL_NEEDLES_CHECKED


def test_resume_rebuilds_state_and_steps(tmp_path):
    s, path = _journal_at_all_needles_checked(tmp_path)
    s.complete_step("delivery", {"released": 10})
    s.journal.close()

    resumed = Session.open(path)
    assert resumed.state == State.ALL_NEEDLES_CHECKED
    assert resumed.step_done("delivery") == {"released": 10}
    assert [c.scan for c in resumed.facts.needle_checks] == ["reference", "all"]
    assert Journal.read(path)[-1]["kind"] == "session_resumed"


def test_tampered_journal_line_is_detected_on_resume(tmp_path):
    s, path = _journal_at_all_needles_checked(tmp_path)
    s.journal.close()
    lines = path.read_bytes().split(b"\n")
    entry = json.loads(lines[3])
    entry["data"]["registration"] = {"converged": True, "estimated_error_mm": 0.01}  # a quiet edit
    lines[3] = json.dumps(entry, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="line 4"):
        Session.open(path)


def test_a_torn_last_line_is_cut_on_resume(tmp_path):
    s, path = _journal_at_all_needles_checked(tmp_path)
    s.journal.close()
    with open(path, "ab") as f:
        f.write(b'{"n":99,"t":"2026-11-22T10:00:00Z","kind":"seed_rel')  # killed in mid-write
    resumed = Session.open(path)
    assert resumed.state == State.ALL_NEEDLES_CHECKED
    kinds = [e["kind"] for e in Journal.read(path)]
    assert kinds[-2:] == ["journal_repaired", "session_resumed"]


def test_undone_step_is_a_journal_line_and_replays_as_live(tmp_path):
    """A step that no longer holds (the device it started has gone) is undone by a journal line, so the resumed
    session sees the same steps, in the same order, as the live one did."""
    path = tmp_path / "session.jsonl"
    s = Session.open(path)
    s.complete_step("plan", {"seconds": 1.0})
    s.complete_step("device_started", {"url": "socket://127.0.0.1:1", "pid": 1})
    s.complete_step("needles", {"seconds": 2.0})
    s.undo_step("device_started", "the simulated applicator it started is no longer running")
    assert s.step_done("device_started") is None
    s.complete_step("device_started", {"url": "socket://127.0.0.1:2", "pid": 2})
    live = list(s.facts.steps_done.items())
    resumed = Session.open(path)
    assert list(resumed.facts.steps_done.items()) == live
    assert [k for k, _ in live] == ["plan", "needles", "device_started"]
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert "step_undone" in kinds
