"""`navigator rehearse` end to end on the default phantom case (issue #8).

One uninterrupted rehearsal (module fixture, its own simulated applicator spawned by the rehearsal) is shared
by every test: its rehearsal.json (contract keys, sane figures, D90 >= prescription, every planned seed
released once, device counter == released + supplementary), report.html with its pictures, the delivery
ledger and the hash-chained session journal. Then:

- a journal line altered in a copy of the folder: the resume refuses (exit 2) and names the line;
- a resume of the finished rehearsal redoes nothing (one ``session_resumed`` line, same figures, same ledger);
- a short crash test: a rehearsal SIGKILLed at a few random moments (one during the seed delivery), resumed
  each time against one simulated applicator in its own process, ends with the fixture's ledger and figures,
  and the device's own count says no seed left it twice. (bench/bench_rehearsal_crash.py does 50 kills.)
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from navigator.session.journal import Journal
from tests.conftest import REPO

SEED = 1          # the command's default --seed
CASE = "neck"     # the command's default --case
RX_GY = 120.0     # the command's default --rx-gy
KILLS = 4
RUN_TIMEOUT_S = 1800  # a loaded 2-core machine can take minutes per rehearsal

CONTRACT_KEYS = ("case", "seed", "prescription_gy", "preplan_metrics", "postimplant_metrics", "final_metrics",
                 "seeds_planned", "seeds_released", "supplementary_seeds", "device_released_total",
                 "needle_scans", "seconds")
METRIC_KEYS = ("ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI")
FIGURES = ("case", "seed", "prescription_gy", "preplan_metrics", "postimplant_metrics", "final_metrics",
           "seeds_planned", "seeds_released", "supplementary_seeds", "device_released_total", "needle_scans")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _rehearse_cmd(out: Path, device: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "navigator.cli", "rehearse", "--out", str(out), "--seed", str(SEED),
           "--case", CASE, "--json", "--in-process"]
    return cmd + (["--device", device] if device else [])


def _rehearse(out: Path, device: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_rehearse_cmd(out, device), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def _entries(path: Path) -> list[dict]:
    """Journal lines as written so far (a torn last line of a killed writer is skipped)."""
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _deliveries(folder: Path) -> dict[str, dict]:
    """Per delivery (``delivery``, ``supplement_<n>``): (seed id, device index) from delivery.json and from
    the ``released`` lines of its ledger file."""
    out = {}
    for d in sorted(folder.glob("*/delivery.json")):
        name = d.parent.name
        data = json.loads(d.read_text())
        lines = [json.loads(x) for x in (folder / f"{name}.ledger.jsonl").read_text().splitlines() if x.strip()]
        released = [x for x in lines if x["type"] == "released"]
        out[name] = {"data": data,
                     "json": sorted((s["seed_id"], s["device_index"]) for s in data["seeds"]),
                     "ledger": sorted((x["seed_id"], x["device_index"]) for x in released),
                     "booked": Counter(x["seed_id"] for x in released)}
    return out


class Simulator:
    """The simulated applicator in its own process (it outlives a killed rehearsal, as a device does)."""

    def __init__(self, log: Path):
        self.log = log
        self._err = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                                      "--seeds", "500", "--seed", str(SEED)], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, start_new_session=True)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("LISTENING socket://"), line
        self.url = line.split(" ", 1)[1]

    def stop(self) -> int | None:
        """Stop it; the number of seeds that really left it (its own count), or None if it was gone."""
        if self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        m = re.search(r"stopped; (\d+) seeds released", self.log.read_text())
        return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """One uninterrupted rehearsal with the defaults; the rehearsal starts (and stops) its own simulator."""
    out = tmp_path_factory.mktemp("rehearsal") / "run"
    t = time.perf_counter()
    p = _rehearse(out)
    seconds = time.perf_counter() - t
    assert p.returncode == 0, p.stderr[-4000:]
    print(f"uninterrupted rehearsal: {seconds:.0f} s (load average {os.getloadavg()[0]:.1f})")
    return {"out": out, "result": json.loads((out / "rehearsal.json").read_text()), "stdout": p.stdout,
            "seconds": seconds}


def test_rehearsal_json_has_the_contract_keys_and_sane_figures(rehearsal):
    r = rehearsal["result"]
    assert json.loads(rehearsal["stdout"]) == r  # --json prints rehearsal.json
    for key in CONTRACT_KEYS:
        assert key in r, key
    assert (r["case"], r["seed"], r["prescription_gy"]) == (CASE, SEED, RX_GY)
    for name in ("preplan_metrics", "postimplant_metrics", "final_metrics"):
        m = r[name]
        for key in METRIC_KEYS:
            assert isinstance(m[key], (int, float)) and np.isfinite(m[key]), (name, key, m.get(key))
        assert 0 <= m["V200_pct"] <= m["V150_pct"] <= m["V100_pct"] <= m["V90_pct"] <= 100.0, (name, m)
        assert 0 < m["D100_gy"] <= m["D90_gy"], (name, m)
        assert 0.0 <= m["HI"] <= 1.0, (name, m)
        # The same CTV, seen through the post-implant registration: within a few percent of its volume.
        assert m["ctv_cc"] == pytest.approx(r["preplan_metrics"]["ctv_cc"], rel=0.1), (name, m["ctv_cc"])
    # The plan meets its goals; after the supplementary seeds (if any were needed) so does the implant.
    assert r["preplan_metrics"]["D90_gy"] >= RX_GY
    assert r["final_metrics"]["D90_gy"] >= RX_GY
    assert r["final_metrics"]["D90_gy"] >= r["postimplant_metrics"]["D90_gy"] - 1e-6
    if r["supplementary_seeds"] == 0:
        assert r["final_metrics"] == r["postimplant_metrics"]
    # Every planned seed released once; the device counted exactly what the ledger says.
    assert r["seeds_planned"] > 0
    assert r["seeds_released"] == r["seeds_planned"]
    assert r["device_released_total"] == r["seeds_released"] + r["supplementary_seeds"]
    assert r["seeds_found_postimplant"] == r["seeds_released"]
    # Needle scans: reference needles first, then all of the plan's needles; the last scan of each passes
    # or its remaining deviations were accepted (journaled overrides, checked below).
    plan = json.loads((rehearsal["out"] / "plan" / "plan.json").read_text())
    scans = r["needle_scans"]
    assert scans and all(0 <= s["out_of_tolerance"] <= s["needles"] for s in scans)
    assert {s["scan"] for s in scans} == {"reference", "all"}
    assert max(s["needles"] for s in scans) == len(plan["needles"])
    assert r["seconds"] > 0


def test_delivery_is_reconciled_and_matches_the_plan_and_the_ledger(rehearsal):
    out, r = rehearsal["out"], rehearsal["result"]
    plan = json.loads((out / "plan" / "plan.json").read_text())
    deliveries = _deliveries(out)
    d = deliveries["delivery"]
    assert d["data"]["reconciled"] is True
    assert d["data"]["released"] == len(plan["seeds"]) == r["seeds_released"]
    assert sorted(s for s, _ in d["json"]) == sorted(s["id"] for s in plan["seeds"])
    assert sorted(i for _, i in d["json"]) == list(range(1, len(plan["seeds"]) + 1))  # a fresh device
    assert d["ledger"] == d["json"]
    assert max(d["booked"].values()) == 1
    supplements = [v for k, v in deliveries.items() if k.startswith("supplement_")]
    assert sum(v["data"]["released"] for v in supplements) == r["supplementary_seeds"]
    assert all(v["data"]["reconciled"] and v["ledger"] == v["json"] for v in supplements)
    totals = [v["data"]["device_released_total"] for v in deliveries.values()]
    assert max(totals) == r["device_released_total"]


def test_journal_verifies_and_tells_the_whole_procedure(rehearsal):
    out, r = rehearsal["out"], rehearsal["result"]
    entries = Journal.read(out / "session.jsonl")  # raises if the hash chain is broken
    kinds = [e["kind"] for e in entries]
    states = [e["data"]["to"] for e in entries if e["kind"] == "transition"]
    expected = ["preplan_loaded", "registered", "reference_needles_checked", "all_needles_checked",
                "seeds_delivered", "postimplant_evaluated"]
    assert states[: len(expected)] == expected and states[-1] == "closed", states
    supplement_rounds = [e for e in entries if e["kind"] == "step_done"
                         and re.fullmatch(r"supplement_\d+", e["data"]["step"])]
    assert states.count("supplement_delivered") == len(supplement_rounds)
    assert states.count("postimplant_evaluated") == 1 + len(supplement_rounds)
    assert (len(supplement_rounds) > 0) == (r["supplementary_seeds"] > 0)
    # Each seed released is journaled once, after its intent.
    released = [e["data"]["seed_id"] for e in entries if e["kind"] == "seed_released"]
    intents = {e["data"].get("seed_id") for e in entries if e["kind"] == "seed_release_intent"}
    assert len(released) == len(set(released)) == r["seeds_released"] + r["supplementary_seeds"]
    assert set(released) <= intents
    # Each out-of-tolerance needle left after the last correction round was accepted explicitly.
    checks = [e["data"] for e in entries if e["kind"] == "needle_check"]
    overrides = {e["data"]["needle_id"] for e in entries if e["kind"] == "operator_override"}
    for scan in ("reference", "all"):
        last = [c for c in checks if c["scan"] == scan][-1]
        assert set(last["out_of_tolerance"]) <= overrides
    # The device conversation is in the journal; the spawned simulator was journaled and is stopped.
    assert "device_command" in kinds and "device_reply" in kinds
    started = [e["data"]["result"] for e in entries if e["kind"] == "step_done"
               and e["data"]["step"] == "device_started"]
    assert started and started[-1]["url"].startswith("socket://")
    for _ in range(50):  # SIGTERM'ed at the end of the run; give it a moment
        try:
            with open(f"/proc/{started[-1]['pid']}/stat") as f:
                alive = f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            alive = False
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, "the rehearsal's simulated applicator is still running"


def test_report_html_embeds_the_pictures(rehearsal):
    text = (rehearsal["out"] / "report.html").read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(pngs) >= 3, len(pngs)  # the 3D scene, the plan's pictures, the post-implant's pictures
    for b64 in pngs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3D picture unavailable" not in text
    for words in ("pre-plan", "post-implant", "Needle deviations", "Seed ledger", "Timings"):
        assert words in text, words
    r = rehearsal["result"]
    assert f"{r['final_metrics']['D90_gy']:.1f}" in text


def _tamper(line: bytes) -> bytes:
    """The same JSON line with one value of its data changed (a number bumped, else a string edited)."""
    entry = json.loads(line)

    def bump(obj):
        for k, v in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)):
                obj[k] = v + 1
                return True
            if isinstance(v, (dict, list)) and bump(v):
                return True
        return False

    if not bump(entry["data"]):
        entry["data"]["note"] = "edited"
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def test_a_tampered_journal_line_stops_the_resume_and_is_named(rehearsal, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(rehearsal["out"], copy)
    path = copy / "session.jsonl"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    mid = len(lines) // 2  # 0-based index: journal line number mid + 1
    tampered = _tamper(lines[mid])
    assert tampered != lines[mid]
    lines[mid] = tampered
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = path.read_bytes()
    p = _rehearse(copy)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert f"line {mid + 1}" in p.stderr, p.stderr
    assert "altered" in p.stderr and "Traceback" not in p.stderr
    assert path.read_bytes() == before  # nothing appended to a journal that cannot be trusted


def test_resuming_a_finished_rehearsal_changes_nothing(rehearsal):
    out = rehearsal["out"]
    kept = {name: (out / name).read_bytes() for name in
            ("delivery.ledger.jsonl", "delivery/delivery.json", "plan/plan.json")}
    n_before = len(Journal.read(out / "session.jsonl"))
    t = time.perf_counter()
    p = _rehearse(out)
    seconds = time.perf_counter() - t
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads((out / "rehearsal.json").read_text())
    for key in FIGURES:
        assert again[key] == rehearsal["result"][key], key
    for name, data in kept.items():
        assert (out / name).read_bytes() == data, name
    new = [e["kind"] for e in Journal.read(out / "session.jsonl")[n_before:]]
    assert new == ["session_resumed"], new  # no step redone, no device contacted, no seed released
    print(f"resume of a finished rehearsal: {seconds:.1f} s (uninterrupted run {rehearsal['seconds']:.0f} s)")


def _t(entry: dict) -> float:
    return datetime.fromisoformat(entry["t"].replace("Z", "+00:00")).timestamp()


def _intervals(folder: Path) -> list[tuple[str, str | None, float, bool]]:
    """(step, the step before it, seconds it took, whether it is a delivery) from a finished run's journal,
    in order. A delivery is timed from its ``delivery_started`` line (the device conversation itself, not
    the resume's preparations). The spawned simulator's ``device_started`` is not a step (a run with
    ``--device`` has none)."""
    entries = _entries(folder / "session.jsonl")
    start = delivery_start = _t(entries[0])
    out, prev = [], None
    for e in entries:
        if e["kind"] == "delivery_started":
            delivery_start = _t(e)
        if e["kind"] == "step_done" and e["data"]["step"] != "device_started":
            name = e["data"]["step"]
            is_delivery = name == "delivery" or re.fullmatch(r"supplement_\d+", name) is not None
            out.append((name, prev, _t(e) - (delivery_start if is_delivery else start), is_delivery))
            prev, start = name, _t(e)
    return out


def _kill_in(proc, journal: Path, step: str, before: str | None, is_delivery: bool, offset: float) -> bool:
    """SIGKILL the (resuming) run ``offset`` seconds into ``step``: counted from this run's own session line
    and the preceding step's completion (or, for a delivery, from this run's ``delivery_started`` line). It is
    killed at once if the step completes first, so that the next kill still finds the step after it.
    Returns False when the run ended by itself before."""
    def raw():
        return journal.read_bytes() if journal.exists() else b""

    sessions, deliveries = raw().count(b'"kind":"session_'), raw().count(b'"kind":"delivery_started"')
    done_mark = f'"kind":"step_done","data":{{"step":"{step}",'.encode()
    before_mark = f'"kind":"step_done","data":{{"step":"{before}",'.encode()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        r = raw()
        if r.count(b'"kind":"session_') > sessions and (before is None or before_mark in r) and (
                not is_delivery or r.count(b'"kind":"delivery_started"') > deliveries):
            break
        time.sleep(0.005)
    until = time.monotonic() + offset
    while proc.poll() is None and time.monotonic() < until and done_mark not in raw():
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_killed_at_random_moments_and_resumed_ends_with_the_same_ledger(rehearsal, tmp_path):
    ivals = [iv for iv in _intervals(rehearsal["out"]) if iv[2] > 0.5]
    names = [iv[0] for iv in ivals]
    # Kill points drawn from a fixed seed, so CI runs the same test; REHEARSAL_KILL_SEED=<n> explores others
    # (the seed is printed and in every failure message).
    seed_of_kills = int(os.environ.get("REHEARSAL_KILL_SEED") or 20261122)
    rng = np.random.default_rng(seed_of_kills)
    chosen = {names.index("delivery")} | set(rng.choice(len(ivals), size=KILLS - 1, replace=False).tolist())
    while len(chosen) < KILLS:
        chosen.add(int(rng.integers(len(ivals))))
    kills = sorted((i, float(rng.uniform(0.0, ivals[i][2]))) for i in chosen)

    sim = Simulator(tmp_path / "simulator.log")
    out = tmp_path / "crash"
    journal = out / "session.jsonl"
    landed = []
    try:
        for i, offset in kills:
            step, before, _, is_delivery = ivals[i]
            with open(tmp_path / "run.err", "w") as err:
                proc = subprocess.Popen(_rehearse_cmd(out, sim.url), cwd=REPO, env=ENV,
                                        stdout=subprocess.DEVNULL, stderr=err)
            if not _kill_in(proc, journal, step, before, is_delivery, offset):
                # it went faster than the fixture's run and finished: no more kills
                assert proc.returncode == 0, (f"the run ended (exit {proc.returncode}) before its kill in {step} "
                                              f"(seed of the kills {seed_of_kills}): "
                                              f"{(tmp_path / 'run.err').read_text()[-2000:]}")
                break
            entries = _entries(journal)
            done = {e["data"]["step"] for e in entries if e["kind"] == "step_done"}
            landed.append(next((n for n in names if n not in done), "after the last step")
                          + (f" after {entries[-1]['kind']}" if entries else ""))
        p = _rehearse(out, sim.url)
        assert p.returncode == 0, p.stderr[-3000:]
    finally:
        device_count = sim.stop()
    print(f"kills (seed {seed_of_kills}) aimed at {[names[i] for i, _ in kills]}, landed in {landed}")
    assert len(landed) >= KILLS - 1, (landed, seed_of_kills)

    Journal.read(journal)
    crashed, ref = json.loads((out / "rehearsal.json").read_text()), rehearsal["result"]
    for key in FIGURES:
        assert crashed[key] == ref[key], (key, seed_of_kills)
    got, want = _deliveries(out), _deliveries(rehearsal["out"])
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name]["json"] == want[name]["json"], (name, seed_of_kills)
        assert got[name]["ledger"] == want[name]["ledger"], (name, seed_of_kills)
        assert max(got[name]["booked"].values()) == 1, name  # no seed booked twice
        assert got[name]["data"]["reconciled"] is True
    # The device's own count: every seed left it exactly once.
    assert device_count == crashed["seeds_released"] + crashed["supplementary_seeds"] == \
        crashed["device_released_total"], (device_count, seed_of_kills)
