"""``navigator serve`` killed with SIGKILL in the middle of a procedure and started again on the same
``--session`` folder: the state, the series and the needle checks are back, and nothing is run again."""

from __future__ import annotations

from tests.live.conftest import Service, journal


def test_kill9_and_restart_resumes_without_rerunning(case, users_file, tmp_path):
    session = tmp_path / "session"
    args = ("--plan", str(case["plan"]), "--preplan-ct", str(case["preplan_ct"]), "--users", str(users_file))
    svc = Service(session, *args)
    phil = svc.login("phil")
    assert svc.storescu(case["intraop"]).returncode == 0
    svc.wait_for(lambda: svc.call("GET", "/api/checks/latest", token=phil)[0] == 200, 90, "the needle check")
    before = {p: svc.call("GET", p, token=phil)[1] for p in ("/api/session", "/api/series", "/api/checks/latest")}
    n_before = len(journal(session))
    svc.kill9()

    again = Service(session, *args)
    try:
        phil = again.login("phil")
        after = {p: again.call("GET", p, token=phil)[1] for p in before}
        # state, series and checks are back (the controller and busy flags are per process)
        for key in ("state", "patient_id", "prescription_gy", "checks"):
            assert after["/api/session"][key] == before["/api/session"][key]
        assert after["/api/series"] == before["/api/series"]
        assert after["/api/checks/latest"] == before["/api/checks/latest"]
        new = journal(session)[n_before:]
        kinds = [e["kind"] for e in new]
        assert "session_resumed" in kinds
        for rerun in ("series_received", "series_processed", "needle_check", "needle_check_written", "transition",
                      "preplan_loaded_from"):
            assert rerun not in kinds, f"{rerun} written again after the restart: {kinds}"
        # the same scan sent again: every instance is a duplicate, nothing new is stored or checked
        assert again.storescu(case["intraop"]).returncode == 0
        assert again.call("GET", "/api/series", token=phil)[1] == before["/api/series"]
    finally:
        assert again.stop() == 0
