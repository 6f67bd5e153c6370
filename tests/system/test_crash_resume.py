"""Crash test of delivery: `navigator deliver` SIGKILLed at 50 random moments against a simulated applicator
in its own process (it outlives the host, as a real device does), resumed each time from the same journal.

It must end with the same ledger as an uninterrupted run (the same seeds, in the same device order) and the
device must have released every seed exactly once (its counter equals the plan's seed count).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from navigator.core.plan import Needle, Plan, PlannedSeed

KILLS = 50


def _plan(path) -> int:
    needles, seeds = [], []
    holes = ["C4", "C6", "E4", "E6", "D5", "G4", "G6", "F5"]
    for n, hole in enumerate(holes):
        entry = np.array([10.0 * n, -80.0, 20.0])
        tip = entry + [0.0, 62.0, 0.0]
        nid = f"N{n + 1:02d}"
        needles.append(Needle(nid, entry, tip, hole))
        for k, back in enumerate((5.0, 12.5, 20.0, 27.5, 35.0)):
            seeds.append(PlannedSeed(f"S{len(seeds) + 1:03d}", nid, tip - [0.0, back, 0.0]))
    Plan("1.2.3", "1.2.3.4", "GTV", 120.0, "6711", 0.635, needles, seeds).save(path)
    return len(seeds)


def _simulator():
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                             "--seeds", "100"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("LISTENING socket://"), line
    return proc, line.split(" ", 1)[1]


def _deliver_cmd(plan, url, journal):
    return [sys.executable, "-m", "navigator.cli", "deliver", "--plan", str(plan), "--device", url,
            "--journal", str(journal), "--simulate-operator", "--json"]


def _ledger(folder):
    d = json.loads((folder / "delivery.json").read_text())
    return d, [(s["seed_id"], s["device_index"]) for s in d["seeds"]]


@pytest.fixture
def simulator():
    procs = []

    def start():
        proc, url = _simulator()
        procs.append(proc)
        return url

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def _journal_kinds(path):
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line)["kind"])
        except (ValueError, KeyError):
            pass  # a torn last line while the writer is being killed
    return out


def test_delivery_killed_50_times_ends_with_the_uninterrupted_ledger(tmp_path, simulator):
    plan = tmp_path / "plan.json"
    n_seeds = _plan(plan)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref = tmp_path / "reference"
    ref.mkdir()
    done = subprocess.run(_deliver_cmd(plan, simulator(), ref / "session.jsonl"), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ref_json, ref_ledger = _ledger(ref)
    assert ref_json["released"] == n_seeds and ref_json["reconciled"]

    crash = tmp_path / "crash"
    crash.mkdir()
    journal = crash / "session.jsonl"
    url = simulator()
    rng = np.random.default_rng(2026)
    kills = kills_mid_release = runs = 0
    while True:
        runs += 1
        assert runs <= KILLS + 1, "delivery did not finish after the last kill"
        started_before = _journal_kinds(journal).count("delivery_started")
        proc = subprocess.Popen(_deliver_cmd(plan, url, journal), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kills < KILLS:
            # Wait for this run to reach the device, then kill it at a random moment of the delivery: during
            # reconciliation, docking, retraction, between a release's intent and its outcome...
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if _journal_kinds(journal).count("delivery_started") > started_before:
                    break
                time.sleep(0.002)
            released = _journal_kinds(journal).count("seed_released")
            time.sleep(rng.uniform(0.0, 0.05 + 0.004 * released))
            if proc.poll() is None:
                intents_before = _journal_kinds(journal)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                kinds = _journal_kinds(journal)
                if kinds and kinds[-1] in ("seed_release_intent", "device_command"):
                    kills_mid_release += 1
                continue
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        break
    crash_json, crash_ledger = _ledger(crash)
    print(f"kills {kills} ({kills_mid_release} right after a command or release intent), runs {runs}; "
          f"seeds booked by: {sorted(set(s.get('how') for s in crash_json['seeds']))}")
    assert kills == KILLS
    assert crash_json["reconciled"] is True
    assert crash_json["released"] == n_seeds
    assert crash_json["device_released_total"] == n_seeds  # the device released each seed exactly once
    assert sorted(crash_ledger) == sorted(ref_ledger)
    assert len({s for s, _ in crash_ledger}) == n_seeds
