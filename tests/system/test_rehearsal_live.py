"""`navigator rehearse --live`: the whole procedure through the live path (issue #13 item 5).

The rehearsal starts `navigator serve` (a separate process on 127.0.0.1), its simulated scanner sends every
scan by DICOM C-STORE from the AE title SCANNER, and its simulated physicist acts through the HTTP API (login,
control, re-plan, delivery, supplement). The same rehearsal.json and report come out; the service's own journal
(OUT/live/session.jsonl) shows every scan received and processed and every decision with the user's name.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from navigator.session.journal import Journal
from tests.conftest import REPO

CONTRACT_KEYS = ("case", "seed", "prescription_gy", "preplan_metrics", "postimplant_metrics", "final_metrics",
                 "seeds_planned", "seeds_released", "supplementary_seeds", "device_released_total",
                 "needle_scans", "seconds")


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal_live") / "run"
    p = subprocess.run([sys.executable, "-m", "navigator.cli", "rehearse", "--live", "--out", str(out), "--seed", "1",
                        "--json"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, json.loads(p.stdout), p.stderr


def test_same_rehearsal_json_and_report(live_run):
    out, result, _ = live_run
    assert set(CONTRACT_KEYS) <= set(result)
    assert result == json.loads((out / "rehearsal.json").read_text())
    assert result["final_metrics"]["D90_gy"] >= result["prescription_gy"]
    assert result["seeds_released"] == result["seeds_planned"]
    assert result["device_released_total"] == result["seeds_released"] + result["supplementary_seeds"]
    assert (out / "report.html").stat().st_size > 50_000


def test_every_scan_arrived_by_dicom_and_was_processed(live_run):
    out, result, stderr = live_run
    entries = list(Journal.read(out / "live" / "session.jsonl"))
    received = [e["data"] for e in entries if e["kind"] == "series_received" and e["data"].get("modality") == "CT"]
    processed = {e["data"]["series_uid"] for e in entries if e["kind"] == "series_processed"}
    scans = len(result["needle_scans"]) + 1 + result.get("supplementary_rounds", 0)
    assert len(received) >= scans
    assert all(r["calling_ae"] == "SCANNER" for r in received)
    assert {r["series_uid"] for r in received} <= processed
    purposes = [r["purpose"] for r in received]
    assert purposes[0] == "reference" and "all" in purposes and purposes[-1] == "postimplant"
    # each intraop check the rehearsal saw is the service's check of the scan it sent
    for scan in result["needle_scans"]:
        check = json.loads((out / "intraop" / f"needles_{scan['scan']}_{scan['round']}" / "needles.json").read_text())
        assert check["series_uid"] in processed
    assert "console: http://127.0.0.1:" in stderr


def test_the_people_act_through_the_api_and_are_journaled(live_run):
    out, _, _ = live_run
    entries = list(Journal.read(out / "live" / "session.jsonl"))
    decisions = [e["data"] for e in entries if e["kind"] == "decision"]
    assert decisions and all(d["user"] == "rehearsal" and d["role"] == "physicist" for d in decisions)
    actions = [d["action"] for d in decisions]
    assert "start_delivery" in actions
    assert any(e["kind"] == "login" and e["data"].get("user") == "rehearsal" for e in entries)
    finished = [e["data"] for e in entries if e["kind"] == "live_delivery_finished"]
    assert finished and all(f["ok"] and f["reconciled"] for f in finished)


def test_the_service_is_stopped_after_the_rehearsal(live_run):
    out, _, _ = live_run
    entries = list(Journal.read(out / "live" / "session.jsonl"))
    started = next(e["data"] for e in entries if e["kind"] == "service_started")
    assert any(e["kind"] == "service_stopped" for e in entries)
    host, port = started["http"].removeprefix("http://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((host, int(port))) != 0, "the service still listens after the rehearsal"


def test_killed_mid_procedure_the_service_goes_too_and_the_resume_ends_the_same(live_run, tmp_path):
    """SIGKILL the live rehearsal during the needle rounds: its service dies with it (nothing left holding the
    session or the ports); run again on the same folder, it resumes and ends with the same figures."""
    import signal
    import time

    out0, result0, _ = live_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "navigator.cli", "rehearse", "--live", "--out", str(out), "--seed", "1", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "needles_all_2" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    entries = list(Journal.read(out / "live" / "session.jsonl"))
    started = [e["data"] for e in entries if e["kind"] == "service_started"][-1]
    host, port = started["http"].removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, int(port))) != 0:
                break
        time.sleep(0.5)
    else:
        pytest.fail("the service outlived the killed rehearsal")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)
    for key in ("preplan_metrics", "postimplant_metrics", "final_metrics", "seeds_released", "device_released_total"):
        assert result[key] == result0[key], key
