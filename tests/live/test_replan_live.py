"""The intraoperative re-plan on the live path (issue #15): ``navigator serve`` (a subprocess, real HTTP, dcmtk's
storescu) with the simulated applicator as a separate process over TCP (``python -m simulators.applicator
--realtime``, docked by the service's simulated operator).

The conftest case's intraop scan (relabelled "all") misses needle N08. The operator runs the re-plan (200, the
contract's replan.json keys + ``replan``); the operator may not approve it (403), the physicist does (journaled
with his name; the missing needle's deviation is accepted with it). The delivery then releases the revision's
seeds (ids, holes and depths of its plan.json) and journals the projected D90 per needle; stopped after its first
seeds, the projection and the next step offer a re-plan of what is left, which keeps the released seeds and
delivers the rest under its own ledger, no seed twice. The console's re-plan panel (headless Chromium) shows the
pre-plan / as placed / re-plan columns, the operator's approve button disabled with the reason and the
physicist's enabled. A restart of the service keeps the approvals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.live.conftest import MISSING, Service, journal

# One procedure, step after step, in one service: the module's tests run in order in one process (scripts/test
# runs pytest-xdist with --dist loadfile; xdist_group/loadgroup does nothing under pytest 9.2, which no longer reads
# the item's rewritten node id).

REPLAN_KEYS = {"metrics_preplan", "metrics_as_placed", "metrics_replan", "seeds", "seeds_moved", "needles_used",
               "seconds"}
MISSING_ID = f"N{MISSING + 1:02d}"


@pytest.fixture(scope="module")
def device_url():
    """The simulated applicator as its own process on a TCP port, in real time (a seed takes ~0.3 s), so that a
    stop from the console lands in the middle of a delivery."""
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0", "--seeds",
                             "100", "--realtime"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING socket://"), line
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def room(case, users_file, device_url, tmp_path_factory):
    session = tmp_path_factory.mktemp("replan_live") / "session"
    args = ("--plan", str(case["plan"]), "--preplan-ct", str(case["preplan_ct"]), "--users", str(users_file),
            "--allow-ae", "SCANNER", "--device", device_url, "--simulate-operator")
    svc = Service(session, *args)
    r = {"svc": svc, "session": session, "args": args, "case": case}
    try:
        phil = svc.login("phil")
        assert svc.call("POST", "/api/control", {}, token=phil)[0] == 200
        r["before_check"] = svc.call("POST", "/api/replan", {}, token=phil)
        r["latest_before"] = svc.call("GET", "/api/replan/latest", token=phil)
        assert svc.call("POST", "/api/scans/next", {"scan": "all"}, token=phil)[0] == 200
        assert svc.storescu(case["intraop"]).returncode == 0
        svc.wait_for(lambda: svc.call("GET", "/api/checks/latest", token=phil)[0] == 200, 120, "the needle check")
        assert svc.call("DELETE", "/api/control", token=phil)[0] == 200
        yield r
    finally:
        assert r["svc"].stop() == 0


def tokens(room: dict) -> dict:
    """One login per user for the module (per service process)."""
    if room.get("tokens", {}).get("svc") is not room["svc"]:
        room["tokens"] = {"svc": room["svc"], **{n: room["svc"].login(n) for n in ("phil", "otto", "vera")}}
    return room["tokens"]


def control(room: dict, name: str) -> str:
    """``name``'s console takes control (the console holding it releases it first); its token."""
    svc, t = room["svc"], tokens(room)
    holder = svc.call("GET", "/api/session", token=t["vera"])[1]["controller"]
    if holder and holder != name:
        assert svc.call("DELETE", "/api/control", token=t[holder])[0] == 200
    code, body = svc.call("POST", "/api/control", {}, token=t[name])
    assert code == 200, body
    return t[name]


def release(room: dict) -> None:
    t = tokens(room)
    holder = room["svc"].call("GET", "/api/session", token=t["vera"])[1]["controller"]
    if holder:
        assert room["svc"].call("DELETE", "/api/control", token=t[holder])[0] == 200


def kinds(session: Path, kind: str) -> list[dict]:
    return [e["data"] for e in journal(session) if e["kind"] == kind]


def decisions(session: Path, action: str) -> list[dict]:
    return [d for d in kinds(session, "decision") if d.get("action") == action]


def seed_depths(plan_path: Path) -> dict:
    """seed id -> (hole, depth along its needle in mm) of a plan.json."""
    plan = json.loads(Path(plan_path).read_text())
    needles = {n["id"]: n for n in plan["needles"]}
    out = {}
    for s in plan["seeds"]:
        n = needles[s["needle_id"]]
        entry, tip = np.array(n["entry_mm"]), np.array(n["tip_mm"])
        u = (tip - entry) / np.linalg.norm(tip - entry)
        out[s["id"]] = (n["hole"], float(np.dot(np.array(s["position_mm"]) - entry, u)))
    return out


def test_replan_refused_before_a_check_of_all_needles(room):
    code, body = room["before_check"]
    assert code == 409 and "no check of all needles yet" in body["detail"]
    assert room["latest_before"][0] == 404


def test_operator_runs_the_replan(room):
    svc, session = room["svc"], room["session"]
    t = tokens(room)
    assert svc.call("POST", "/api/replan", {}, token=t["vera"])[0] == 403   # a viewer reads only
    control(room, "otto")
    t0 = time.monotonic()
    code, body = svc.call("POST", "/api/replan", {}, token=t["otto"])
    room["replan_s"] = time.monotonic() - t0
    assert code == 200, body
    assert REPLAN_KEYS <= set(body) and body["replan"] == 1 and body["revision"] == 1
    assert MISSING_ID not in body["needles_used"] and body["needles_dropped"] == [MISSING_ID]
    out = session / "replan" / "1"
    for name in ("replan.json", "plan.json", "RTPLAN.dcm"):
        assert (out / name).is_file(), name
    assert json.loads((out / "replan.json").read_text())["metrics_replan"] == body["metrics_replan"]
    rev = json.loads((out / "plan.json").read_text())
    assert rev["revision"] == 1 and len(rev["seeds"]) == body["seeds"]
    assert {s["needle_id"] for s in rev["seeds"]} <= set(body["needles_used"])
    assert decisions(session, "run_replan")[-1]["user"] == "otto"
    written = kinds(session, "replan_written")[-1]
    assert written["n"] == 1 and written["user"] == "otto" and written["plan"] == str(out / "plan.json")
    code, latest = svc.call("GET", "/api/replan/latest", token=t["vera"])
    assert code == 200 and latest["replan"] == 1 and latest["approved"] is False and latest["current"] is True
    assert latest["metrics_as_placed"] == body["metrics_as_placed"]
    code, s = svc.call("GET", "/api/session", token=t["vera"])
    assert "approves re-plan 1" in s["next_step"], s["next_step"]
    svc.wait_for(lambda: (out / "replan.html").is_file(), 60, "replan.html")
    code, page = svc.call("GET", "/api/replan/latest/html", token=t["vera"], raw=True)
    assert code == 200 and "Re-plan" in page


def test_operator_may_not_approve_and_the_physicist_does(room):
    svc, session = room["svc"], room["session"]
    t = tokens(room)
    control(room, "otto")
    code, body = svc.call("POST", "/api/replan/approve", {}, token=t["otto"])
    assert code == 403 and "may not approve (physicist only)" in body["detail"]
    assert not decisions(session, "approve_replan")
    control(room, "phil")
    code, body = svc.call("POST", "/api/replan/approve", {}, token=t["phil"])
    assert code == 200, body
    assert body["approved"] == 1 and body["name"] == "delivery" and body["accepted"] == [MISSING_ID]
    assert body["state"] == "all_needles_checked"
    d = decisions(session, "approve_replan")
    assert len(d) == 1 and d[0]["user"] == "phil" and d[0]["role"] == "physicist" and d[0]["replan"] == 1
    overrides = kinds(session, "operator_override")
    assert overrides[-1]["needle_id"] == MISSING_ID and "approved by phil" in overrides[-1]["reason"]
    assert svc.call("POST", "/api/replan/approve", {}, token=t["phil"])[0] == 409   # once
    code, latest = svc.call("GET", "/api/replan/latest", token=t["otto"])
    assert latest["approved"] is True and latest["approved_by"] == "phil" and latest["delivery_name"] == "delivery"
    code, s = svc.call("GET", "/api/session", token=t["otto"])
    assert s["next_step"] == "start the seed delivery of re-plan 1" and s["replan_approved"] == 1
    code, d = svc.call("GET", "/api/delivery", token=t["otto"])
    rev = json.loads((session / "replan" / "1" / "plan.json").read_text())
    assert d["planned"] == len(rev["seeds"]) and d["projected"]["remaining"] == len(rev["seeds"])
    assert d["projected"]["released"] == 0 and d["projected"]["D90_gy"] > 0


def test_delivery_releases_the_revision_and_projects_per_needle(room):
    svc, session = room["svc"], room["session"]
    t = tokens(room)
    control(room, "phil")
    code, body = svc.call("POST", "/api/delivery/start", {}, token=t["phil"])
    assert code == 200 and body["started"] == "delivery", body
    svc.wait_for(lambda: kinds(session, "seed_released"), 90, "the first seed")
    code, body = svc.call("POST", "/api/delivery/stop", {}, token=t["phil"])
    assert code == 200, body
    svc.wait_for(lambda: not svc.call("GET", "/api/delivery", token=t["vera"])[1]["running"], 60, "the stop")
    code, d = svc.call("GET", "/api/delivery", token=t["vera"])
    rev_plan = session / "replan" / "1" / "plan.json"
    planned = seed_depths(rev_plan)
    released = d["released"]
    assert 0 < released < len(planned) and d["reconciled"] is True
    # the delivered seeds are the revision's: its ids, its needles' holes, its depths along the needles as found
    assert json.loads((session / "delivery" / "plan.json").read_text())["revision"] == 1
    for s in d["seeds"]:
        hole, depth = planned[s["seed_id"]]
        assert s["hole"] == hole and s["depth_mm"] == pytest.approx(depth, abs=0.051), s
    p = d["projected"]
    assert p["released"] == released and p["remaining"] == len(planned) - released
    assert p["stopped_with_seeds_left"] and p["replan_offered"]
    assert p["D90_released_gy"] < p["prescription_gy"] and p["D90_gy"] > p["D90_released_gy"]
    code, s = svc.call("GET", "/api/session", token=t["vera"])
    assert "re-plan what is left" in s["next_step"] and f"{p['remaining']} seeds left" in s["next_step"]
    lines = kinds(session, "live_dosimetry")
    assert lines[-1]["at"] == "stopped" and lines[-1]["seeds_released"] == released
    rev = json.loads(rev_plan.read_text())
    out = {x["seed_id"] for x in d["seeds"]}
    done = [n["id"] for n in rev["needles"]
            if (mine := {x["id"] for x in rev["seeds"] if x["needle_id"] == n["id"]}) and mine <= out]
    assert [x["needle_id"] for x in lines if x["at"] == "needle done"] == done
    for x in lines:
        assert x["D90_gy"] > 0 and 0 <= x["V100_pct"] <= 100 and x["prescription_gy"] == p["prescription_gy"]
    room["released_first"] = sorted(out)
    room["first_seeds"] = d["seeds"]
    release(room)


def test_slicer_shows_the_revision_and_the_seeds_where_they_went(room):
    """OpenIGTLink (a pyigtl client as 3D Slicer): ``PlannedSeeds`` are the approved revision's seeds, and
    ``Seeds`` the seeds released so far at the revision's positions (not at the pre-plan's), in RAS."""
    import pyigtl

    svc, session = room["svc"], room["session"]
    vera = tokens(room)["vera"]
    latest = svc.call("GET", "/api/replan/latest", token=vera)[1]
    assert latest["approved"], latest
    revision = json.loads(Path(latest["revision_plan"]).read_text())
    released = [s["seed_id"] for s in svc.call("GET", "/api/delivery", token=vera)[1]["seeds"]]
    assert released
    delivered = {s["id"]: s["position_mm"]
                 for s in json.loads((session / "delivery" / "plan.json").read_text())["seeds"]}
    client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=svc.igtl_port)
    try:
        planned = client.wait_for_message("PlannedSeeds", timeout=15)
        seeds = client.wait_for_message("Seeds", timeout=15)
    finally:
        client.stop()
    assert planned is not None and seeds is not None
    assert list(planned.names) == [s["id"] for s in revision["seeds"]]
    assert np.allclose(np.array(planned.positions, float) * [-1, -1, 1],
                       [s["position_mm"] for s in revision["seeds"]], atol=1e-2)
    assert list(seeds.names) == released
    assert np.allclose(np.array(seeds.positions, float) * [-1, -1, 1], [delivered[i] for i in released], atol=1e-2)
    pre = {s["id"]: s["position_mm"] for s in json.loads(room["case"]["plan"].read_text())["seeds"]}
    moved = [i for i in released if i not in pre or np.linalg.norm(np.subtract(pre[i], delivered[i])) > 0.05]
    assert moved, "the revision moved none of the released seeds: the test shows nothing"


def test_console_replan_panel(room, tmp_path_factory):
    """Headless Chromium: the operator runs the re-plan of what is left from the delivery screen; the panel shows
    pre-plan / as placed / re-plan; the operator's approve button is disabled with the reason, the physicist's
    works."""
    from selenium.webdriver.common.by import By

    from tests.live.test_console import chromium, js_errors, log_in, tab, text, wait

    svc = room["svc"]
    release(room)
    oper = chromium(tmp_path_factory, 1600, 1000)
    phys = None
    try:
        log_in(oper, svc, "otto")
        wait(oper, lambda d: d.find_element(By.ID, "app").is_displayed(), "the console after login")
        oper.find_element(By.ID, "take-control").click()
        wait(oper, lambda d: "has control" in text(d, "control-message"), "control taken")
        tab(oper, "delivery")
        wait(oper, lambda d: "seeds left" in text(d, "projected-warning"), "the projection's warning")
        assert "re-plan what is left" in text(oper, "projected-warning")
        d = svc.call("GET", "/api/delivery", token=tokens(room)["vera"])[1]
        assert text(oper, "projected-d90").startswith(f"{d['projected']['D90_gy']:.1f} Gy")
        assert text(oper, "projected-seeds") == f"{d['projected']['released']} / {d['projected']['remaining']}"
        oper.find_element(By.ID, "replan-run").click()
        wait(oper, lambda d: text(d, "replan-status").startswith("Re-plan 2 "), "the re-plan of what is left", 120)
        heads = oper.execute_script("return [...document.querySelectorAll('#replan-table th')].map(t => t.textContent);")
        assert heads == ["Quantity", "Pre-plan", "As placed", "Re-plan"]
        latest = svc.call("GET", "/api/replan/latest", token=tokens(room)["vera"])[1]
        assert latest["replan"] == 2 and latest["fixed_seeds"] == len(room["released_first"])
        row = oper.execute_script("return [...document.querySelector('#replan-body tr[data-quantity=D90]').cells]"
                                  ".map(td => td.textContent);")
        for cell, key in zip(row[1:], ("metrics_preplan", "metrics_as_placed", "metrics_replan")):
            assert cell.startswith(f"{latest[key]['D90_gy']:.1f}"), (row, key)
        assert not oper.find_element(By.ID, "replan-approve").is_enabled()
        assert "Only a physicist approves a re-plan" in text(oper, "replan-approve-note")
        oper.find_element(By.ID, "release-control").click()
        wait(oper, lambda d: "released" in text(d, "control-message"), "control released")

        phys = chromium(tmp_path_factory, 1600, 1000)
        log_in(phys, svc, "phil")
        wait(phys, lambda d: d.find_element(By.ID, "app").is_displayed(), "the physicist's console")
        phys.find_element(By.ID, "take-control").click()
        wait(phys, lambda d: "has control" in text(d, "control-message"), "control taken")
        tab(phys, "delivery")
        wait(phys, lambda d: d.find_element(By.ID, "replan-approve").is_enabled(), "the physicist's approve button")
        assert text(phys, "replan-approve-note") == ""
        phys.find_element(By.ID, "replan-approve").click()
        wait(phys, lambda d: "approved by phil" in text(d, "replan-status"), "the approval")
        wait(phys, lambda d: "Re-plan 2 of what is left is approved" in text(d, "projected-warning"),
             "the warning to say what is approved")
        latest = svc.call("GET", "/api/replan/latest", token=tokens(room)["vera"])[1]
        assert latest["approved_by"] == "phil" and latest["delivery_name"] == "delivery_r2"
        assert js_errors(oper) == [] and js_errors(phys) == []
        shots = tmp_path_factory.mktemp("shots")
        oper.save_screenshot(str(shots / "console_replan_operator.png"))
        phys.save_screenshot(str(shots / "console_replan_physicist.png"))
        phys.find_element(By.ID, "release-control").click()
        wait(phys, lambda d: "released" in text(d, "control-message"), "control released")
    finally:
        oper.quit()
        if phys is not None:
            phys.quit()


def test_the_rest_is_delivered_exactly_once(room):
    svc, session = room["svc"], room["session"]
    t = tokens(room)
    control(room, "phil")
    latest = svc.call("GET", "/api/replan/latest", token=t["phil"])[1]
    if not latest["approved"]:  # the console test did not get there
        assert svc.call("POST", "/api/replan/approve", {}, token=t["phil"])[0] == 200
    s = svc.call("GET", "/api/session", token=t["vera"])[1]
    assert s["next_step"] == "start the seed delivery of re-plan 2", s["next_step"]
    p = svc.call("GET", "/api/delivery", token=t["vera"])[1]["projected"]
    assert p["rest_replan_approved"] == 2 and not p["replan_offered"] and p["plan"] == "delivery_r2"
    code, body = svc.call("POST", "/api/delivery/start", {}, token=t["phil"])
    assert code == 200 and body["started"] == "delivery_r2", body
    svc.wait_for(lambda: svc.call("GET", "/api/session", token=t["vera"])[1]["state"] == "seeds_delivered", 150,
                 "the rest delivered")
    rest = seed_depths(session / "replan" / "2" / "plan.json")
    assert all(sid.startswith("R2-S") for sid in rest)
    data = json.loads((session / "delivery_r2" / "delivery.json").read_text())
    assert data["reconciled"] and sorted(s["seed_id"] for s in data["seeds"]) == sorted(rest)
    for s in data["seeds"]:
        hole, depth = rest[s["seed_id"]]
        assert s["hole"] == hole and s["depth_mm"] == pytest.approx(depth, abs=0.051)
    for first in room.get("first_seeds", []):  # the needle was retracted past its released seeds: none deeper
        assert all(depth <= first["depth_mm"] - 5.0 + 0.051 for hole, depth in rest.values() if hole == first["hole"])
    ids = [x["seed_id"] for x in kinds(session, "seed_released")]
    assert len(ids) == len(set(ids)) == len(room.get("released_first", [])) + len(rest)  # no seed twice
    final = kinds(session, "live_dosimetry")[-1]
    assert final["at"] == "finished" and final["remaining"] == 0 and final["seeds_released"] == len(ids)
    m = json.loads((session / "replan" / "2" / "replan.json").read_text())["metrics_replan"]
    assert final["D90_gy"] == pytest.approx(m["D90_gy"], rel=0.05)  # CTV points vs the re-plan's dose grid
    room["final_d90"] = final["D90_gy"]


def test_a_restart_keeps_the_approvals(room):
    assert room["svc"].stop() == 0
    svc = room["svc"] = Service(room["session"], *room["args"])
    vera = tokens(room)["vera"]
    code, latest = svc.call("GET", "/api/replan/latest", token=vera)
    assert code == 200 and latest["replan"] == 2 and latest["approved"] is True and latest["approved_by"] == "phil"
    assert [d["user"] for d in decisions(room["session"], "approve_replan")] == ["phil", "phil"]
    code, s = svc.call("GET", "/api/session", token=vera)
    assert s["state"] == "seeds_delivered" and s["replans"] == 2 and s["replan_approved"] == 2
    code, d = svc.call("GET", "/api/delivery", token=vera)
    assert d["projected"]["remaining"] == 0 and d["projected"]["D90_gy"] == room.get("final_d90", d["projected"]["D90_gy"])
    assert "session_resumed" in [e["kind"] for e in journal(room["session"])]


def test_the_session_report_lists_the_replans(room):
    """GET /api/report: a row per re-plan with its D90 (pre-plan / as placed / re-plan), who made and approved it
    and the delivery it became; the delivery's projected dose."""
    import re

    svc = room["svc"]
    vera = tokens(room)["vera"]
    code, page = svc.call("GET", "/api/report", token=vera, raw=True)
    assert code == 200 and "Re-plans on the needles as found" in page
    latest = svc.call("GET", "/api/replan/latest", token=vera)[1]
    m = latest["metrics_replan"]
    assert f"{m['D90_gy']:.1f}" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page.split("Re-plans on the needles as found")[1].split("</table>")[0], re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    cells = [c for c in cells if c]
    assert [c[0] for c in cells] == [str(n) for n in range(1, latest["replan"] + 1)]
    assert all(c[6] == "phil" for c in cells) and cells[0][7] == "delivery"
    assert "projected D90 (Gy), released + still planned" in page


def test_released_dose_folded_into_the_penalties_changes_no_move():
    """``planning.replan._with_base``: the optimiser's penalty of dose d with the thresholds lowered by the released
    seeds' dose b differs from the true penalty of d + b by a constant per point (so every move compares alike)."""
    from navigator.planning.optimize import PointPenalties
    from navigator.planning.replan import _with_base

    def phi(d, p):
        v = np.zeros_like(d)
        short = d < p.under
        v += np.where(short, p.w_step + p.w_under * (p.under - d) / np.where(p.under > 0, p.under, 1), 0)
        for thr, w in ((p.over1, p.w_over1), (p.over2, p.w_over2)):
            v += np.where(d > thr, w * (d - thr) / np.where(np.isfinite(thr), thr, 1), 0)
        return v

    rng = np.random.default_rng(7)
    m = 400
    pen = PointPenalties.concat([PointPenalties.uniform(m, under=140, w_step=1.0, w_under=2.0, over1=210, w_over1=0.3,
                                                        over2=280, w_over2=0.15, weight=1 / m),
                                 PointPenalties.uniform(m, over1=140, w_over1=0.05, over2=210, w_over2=0.1)])
    base = rng.uniform(0, 400, 2 * m)           # some points already past every threshold
    folded = _with_base(pen, base)
    d1, d2 = rng.uniform(0, 300, 2 * m), rng.uniform(0, 300, 2 * m)
    true_change = phi(d1 + base, pen) - phi(d2 + base, pen)
    assert np.allclose(phi(d1, folded) - phi(d2, folded), true_change, atol=1e-6)
