"""``navigator serve`` as a subprocess on loopback, fed by dcmtk's storescu and driven over real HTTP:
login, series complete after the quiet period with their files on disk, a calling AE outside --allow-ae
refused and journaled, a CT of another patient refused, the needle check of a real intraop scan with every
planned needle, roles (accept as physicist / operator), one controlling console, Server-Sent Events of the
journal, and OpenIGTLink to a pyigtl client standing in for 3D Slicer."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.live.conftest import MISSING, Service, journal


@pytest.fixture(scope="module")
def served(case, users_file, tmp_path_factory):
    """The service on the case's pre-plan; the intraop scan (relabelled 'all' by the physicist) checked."""
    session = tmp_path_factory.mktemp("serve") / "session"
    svc = Service(session, "--plan", str(case["plan"]), "--preplan-ct", str(case["preplan_ct"]),
                  "--users", str(users_file), "--allow-ae", "SCANNER,ORTHANC", "--device", "sgpsim://?seeds=100")
    phil = svc.login("phil")
    assert svc.call("POST", "/api/control", {}, token=phil)[0] == 200
    assert svc.call("POST", "/api/scans/next", {"scan": "all"}, token=phil)[0] == 200
    sent = svc.storescu(case["intraop"])
    assert sent.returncode == 0, sent.stderr
    svc.wait_for(lambda: svc.call("GET", "/api/checks/latest", token=phil)[0] == 200, 90, "the needle check")
    yield {"svc": svc, "phil": phil, "session": session}
    assert svc.stop() == 0  # SIGTERM: clean exit 0
    assert journal(session)[-1]["kind"] == "service_stopped"


def test_login_good_and_bad_password(served):
    svc = served["svc"]
    code, body = svc.call("POST", "/api/login", {"username": "otto", "password": "otto-secret-pw"})
    assert code == 200 and body["role"] == "operator" and len(body["token"]) >= 32
    req = urllib.request.Request(svc.http + "/api/login", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"username": "vera", "password": "vera-secret-pw"}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert svc.call("POST", "/api/login", {"username": "otto", "password": "wrong-password"})[0] == 401
    assert svc.call("POST", "/api/login", {"username": "nobody", "password": "otto-secret-pw"})[0] == 401
    assert svc.call("GET", "/api/session")[0] == 401
    assert svc.call("GET", "/api/session", token="not-a-token")[0] == 401
    # the cookie alone authenticates
    req = urllib.request.Request(svc.http + "/api/session", headers={"Cookie": cookie.split(";")[0]})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["patient_id"] == "PHANTOM-NECK-11"


def test_no_route_without_login_and_who_am_i(served):
    """FastAPI's own /docs, /redoc and /openapi.json are off; the schema and /api/me need a login."""
    svc = served["svc"]
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert svc.call("GET", path, raw=True)[0] == 404, path
    assert svc.call("GET", "/api/openapi.json")[0] == 401
    assert svc.call("GET", "/api/me")[0] == 401
    token = svc.login("vera")
    code, schema = svc.call("GET", "/api/openapi.json", token=token)
    assert code == 200 and "/api/checks/latest" in schema["paths"]
    assert svc.call("GET", "/api/me", token=token) == (200, {"username": "vera", "role": "viewer"})


def test_plan_and_logout(served, case):
    svc = served["svc"]
    otto = svc.login("otto")
    code, plan = svc.call("GET", "/api/plan", token=otto)
    assert code == 200 and [n["id"] for n in plan["needles"]] == [n.id for n in case["plan_obj"].needles]
    assert all(n["hole"] for n in plan["needles"])
    code, st = svc.call("GET", "/api/structures", token=otto)  # the outlines of the console's 3D view
    assert code == 200 and st["frame_of_reference_uid"] == case["plan_obj"].frame_of_reference_uid
    gtv = next(s for s in st["structures"] if s["name"] == "GTV")
    assert gtv["role"] == "target" and gtv["contours"] and all(len(c) <= 48 and len(c[0]) == 3 for c in gtv["contours"])
    assert svc.call("POST", "/api/logout", {}, token=otto)[0] == 200
    assert svc.call("GET", "/api/session", token=otto)[0] == 401


def test_series_complete_after_quiet_period_with_files_on_disk(served, case):
    svc, phil = served["svc"], served["phil"]
    rows = [r for r in svc.call("GET", "/api/series", token=phil)[1] if r["purpose"] == "all"]
    assert len(rows) == 1
    files = sorted(case["intraop"].glob("*"))
    r = rows[0]
    assert r["complete"] is True and r["modality"] == "CT" and r["instances"] == len(files)
    assert set(r) >= {"series_uid", "modality", "instances", "complete", "purpose", "received_at"}
    stored = list((served["session"] / "incoming" / r["series_uid"]).glob("*.dcm"))
    assert len(stored) == len(files)
    assert all(p.stat().st_size > 1000 for p in stored)


def test_intraop_scan_gives_a_check_of_every_planned_needle(served, case):
    svc, phil = served["svc"], served["phil"]
    code, check = svc.call("GET", "/api/checks/latest", token=phil)
    assert code == 200 and check["scan"] == "all"
    planned = [n.id for n in case["plan_obj"].needles]
    assert [n["id"] for n in check["needles"]] == planned
    for key in ("registration", "tolerance_mm", "needles", "out_of_tolerance", "not_found", "series_uid"):
        assert key in check
    missing = check["needles"][MISSING]
    assert missing["found"] is False and missing["within_tolerance"] is False
    found = [n for k, n in enumerate(check["needles"]) if k != MISSING]
    assert all(n["found"] for n in found)
    assert (served["session"] / "checks" / str(check["check"]) / "needles.json").exists()
    lines = [e for e in journal(served["session"]) if e["kind"] == "needle_check"]
    assert lines and lines[-1]["data"]["scan"] == "all"


def test_calling_ae_not_allowed_is_refused_and_journaled(served, case):
    svc = served["svc"]
    before = set((served["session"] / "incoming").iterdir())
    sent = svc.storescu(case["other"], calling_ae="INTRUDER")
    assert sent.returncode != 0
    refused = [e for e in journal(served["session"]) if e["kind"] == "association_rejected"]
    assert refused and refused[-1]["data"]["calling_ae"] == "INTRUDER"
    assert set((served["session"] / "incoming").iterdir()) == before  # nothing stored


def test_ct_of_another_patient_is_refused_and_journaled(served, case):
    svc, phil = served["svc"], served["phil"]
    assert svc.storescu(case["other"], calling_ae="ORTHANC").returncode == 0
    rows = svc.wait_for(lambda: [r for r in svc.call("GET", "/api/series", token=phil)[1]
                                 if r["purpose"] == "refused"], 30, "the refused series")
    assert "PHANTOM-NECK-12" in rows[0]["reason"]
    lines = [e for e in journal(served["session"]) if e["kind"] == "series_received"
             and e["data"]["purpose"] == "refused"]
    assert lines and lines[-1]["data"]["patient_id"] == "PHANTOM-NECK-12"
    assert svc.call("GET", "/api/checks/latest", token=phil)[1]["scan"] == "all"  # no check of it


def test_roles_control_and_accepting_deviations(served, case):
    svc, phil = served["svc"], served["phil"]
    otto, vera = svc.login("otto"), svc.login("vera")
    missing = case["plan_obj"].needles[MISSING].id
    body = {"needle_ids": [missing], "reason": "needle abandoned: vessel in the way"}
    assert svc.call("POST", "/api/checks/latest/accept", body, token=otto)[0] == 403   # operator may not
    assert svc.call("POST", "/api/checks/latest/accept", body, token=vera)[0] == 403   # viewer may not
    assert svc.call("POST", "/api/control", {}, token=vera)[0] == 403
    assert svc.call("POST", "/api/control", {}, token=phil)[0] == 200
    code, detail = svc.call("POST", "/api/control", {}, token=otto)                    # a second console
    assert code == 409 and "phil" in detail["detail"]
    assert svc.call("POST", "/api/delivery/stop", {}, token=otto)[0] == 409            # changing needs control
    assert svc.call("GET", "/api/session", token=otto)[1]["controller"] == "phil"
    assert svc.call("POST", "/api/checks/latest/accept", {"needle_ids": [missing], "reason": ""}, token=phil)[0] == 400
    code, out = svc.call("POST", "/api/checks/latest/accept", body, token=phil)
    assert code == 200, out
    assert svc.call("GET", "/api/session", token=phil)[1]["state"] == "all_needles_checked"
    decision = [e["data"] for e in journal(served["session"]) if e["kind"] == "decision"
                and e["data"]["action"] == "accept_deviations"]
    assert decision[-1]["user"] == "phil" and decision[-1]["needle_ids"] == [missing]
    # the re-plan is served (tests/live/test_replan_live.py); none was run here, so there is nothing to approve
    assert svc.call("POST", "/api/replan/approve", {}, token=phil)[0] == 409


def test_events_stream_journal_lines(served):
    svc, phil = served["svc"], served["phil"]
    req = urllib.request.Request(svc.http + "/api/events", headers={"Authorization": f"Bearer {phil}"})
    lines = []
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        while len(lines) < 5:
            line = r.readline().decode().strip()
            if line.startswith("data: "):
                lines.append(json.loads(line[6:]))
    assert [e["n"] for e in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["kind"] == "session_opened"
    # a line written now arrives too
    since = journal(served["session"])[-1]["n"]
    req = urllib.request.Request(svc.http + f"/api/events?since={since}", headers={"Authorization": f"Bearer {phil}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        svc.call("POST", "/api/login", {"username": "vera", "password": "vera-secret-pw"})
        line = ""
        while not line.startswith("data: "):
            line = r.readline().decode().strip()
    event = json.loads(line[6:])
    assert event["n"] == since + 1 and event["kind"] == "login" and event["data"]["user"] == "vera"


def test_openigtlink_client_receives_planned_seeds_needles_and_status(served, case):
    import pyigtl

    svc = served["svc"]
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=svc.igtl_port)
    try:
        planned = client.wait_for_message("PlannedSeeds", timeout=15)
        status = client.wait_for_message("Status", timeout=15)
        needle = client.wait_for_message("Needle_N01", timeout=15)
    finally:
        client.stop()
    assert planned is not None and status is not None and needle is not None
    plan = case["plan_obj"]
    lps = np.array(planned.positions, float) * [-1, -1, 1]
    assert np.allclose(lps, plan.seed_positions_mm(), atol=1e-2)
    assert status.string.split(":")[0] in ("registered", "all_needles_checked", "seeds_delivered")
    m = np.array(needle.matrix, float)
    planned_n = plan.needles[0]
    tip_lps = m[:3, 3] * [-1, -1, 1]
    assert np.linalg.norm(tip_lps - planned_n.tip_mm) < 3.0  # found tip in the pre-plan frame
    towards_entry = (planned_n.entry_mm - planned_n.tip_mm) / np.linalg.norm(planned_n.entry_mm - planned_n.tip_mm)
    assert np.dot(m[:3, 2] * [-1, -1, 1], towards_entry) > 0.99
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)


def test_console_page_is_served(served):
    with urllib.request.urlopen(served["svc"].http + "/", timeout=10) as r:
        assert r.status == 200 and "html" in r.headers["Content-Type"]
    code, page = served["svc"].call("GET", "/api/report", token=served["phil"], raw=True)
    assert code == 200 and "Latest needle check" in page


def _needles_accepted(served, missing: str) -> None:
    """The state after the accept test (which pytest-xdist may have run in another worker's service)."""
    svc, phil = served["svc"], served["phil"]
    if svc.call("GET", "/api/session", token=phil)[1]["state"] == "registered":
        assert svc.call("POST", "/api/control", {}, token=phil)[0] == 200
        body = {"needle_ids": [missing], "reason": "needle abandoned"}
        assert svc.call("POST", "/api/checks/latest/accept", body, token=phil)[0] == 200


def test_delivery_through_the_simulated_applicator(served, case):
    svc, phil = served["svc"], served["phil"]
    _needles_accepted(served, case["plan_obj"].needles[MISSING].id)
    assert svc.call("GET", "/api/delivery", token=phil)[1]["running"] is False
    assert svc.call("POST", "/api/control", {}, token=phil)[0] == 200
    code, started = svc.call("POST", "/api/delivery/start", {}, token=phil)
    assert code == 200, started
    planned = len(case["plan_obj"].seeds)
    done = svc.wait_for(lambda: (lambda d: d if not d["running"] and d["released"] else None)(
        svc.call("GET", "/api/delivery", token=phil)[1]), 120, "the delivery")
    assert done["released"] == done["planned"] == planned and done["reconciled"] is True
    assert {"released", "device_released_total", "seeds", "reconciled", "planned", "running", "device"} <= set(done)
    assert svc.call("GET", "/api/session", token=phil)[1]["state"] == "seeds_delivered"
    entries = journal(served["session"])
    assert len({e["data"]["seed_id"] for e in entries if e["kind"] == "seed_released"}) == planned
    start = [e["data"] for e in entries if e["kind"] == "decision" and e["data"]["action"] == "start_delivery"]
    assert start[-1]["user"] == "phil"
    code, again = svc.call("POST", "/api/delivery/start", {}, token=phil)
    assert code == 409 and "nothing to deliver" in again["detail"]
    assert svc.call("POST", "/api/delivery/stop", {}, token=phil)[0] == 409
