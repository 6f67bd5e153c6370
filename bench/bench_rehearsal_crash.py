"""Crash bench of ``navigator rehearse`` (issue #8): the rehearsal process SIGKILLed at 50 random points,
resumed each time on the same ``--out``, must end with the same ledger as an uninterrupted run and no seed
released twice.

1. An uninterrupted reference rehearsal (or ``--reference DIR``, an earlier finished one of the same
   ``--seed``/``--case``, driven through ``--device`` to a fresh simulator) gives the steps and how long each
   took: the intervals between its journal's ``step_done`` lines, plus the tail after the last one (closing,
   rehearsal.json, report.html).
2. The kill points spread over all steps: each kill picks one of those intervals at random (the delivery
   intervals, where a seed could be released twice, three times as often) and a moment uniformly within
   that interval's reference duration (instantaneous bookkeeping intervals, < 0.5 s, are not aimed at).
   Sorted in procedure order, they are played against one rehearsal folder: a run is started (resuming),
   the bench waits until that run has reached the interval (its own ``session_resumed`` line is written and
   the interval's preceding step is done), sleeps the chosen moment and sends SIGKILL; the step the journal
   shows it was in is counted (a delivery's moment counts from the run's own ``delivery_started`` line, and a
   run whose targeted step completes before the moment is killed right then, so that every kill lands in or
   just after the step it aims at; a kill aimed at a step an earlier run already completed is re-aimed at a
   random moment of the first step still to do). After the last kill the run is left to finish.
3. Both rehearsals drive a simulated applicator that the bench starts itself, in its own process (it
   survives the kills, as a real device does); its counter of seeds that really left it, printed when it is
   stopped, is the independent check that no seed was released twice.

Compared with the reference: the delivery ledgers (seed id, device index) of ``delivery`` and every
``supplement_<n>``, from delivery.json and from the ``*.ledger.jsonl`` files; the rehearsal.json figures
(metrics, seeds, needle scans); the journal's hash chain. Prints a table of kills per step kind and the
time, with the machine details and load average.

    python bench/bench_rehearsal_crash.py --seed 1 --case neck --kills 50 --work /tmp/rehearsal_crash
        [--reference /tmp/finished_rehearsal_of_that_seed] [--rng 2026] [--no-snapshot]

Both rehearsals run from a copy of the code taken at start (WORK/src), so they are the same code even while
others edit the shared tree (``--reference`` must then come from the same code).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CODE = REPO  # where the rehearsals run from: a copy of the code taken at start (see snapshot_source)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rehearsal import snapshot_source  # noqa: E402  (one copy of the code snapshot, shared by the benches)

FIGURES = ("case", "seed", "prescription_gy", "preplan_metrics", "postimplant_metrics", "final_metrics",
           "seeds_planned", "seeds_released", "supplementary_seeds", "device_released_total", "needle_scans",
           "seeds_found_postimplant")




def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_simulator(seed: int, log: Path):
    """The simulated applicator in its own process; returns (process, url). Its stderr (the final count of
    released seeds) goes to ``log``."""
    err = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                             "--seeds", "500", "--seed", str(seed)], cwd=CODE, stdout=subprocess.PIPE,
                            stderr=err, text=True, start_new_session=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING socket://"):
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def stop_simulator(proc, log: Path) -> int:
    """Stop it (SIGTERM) and return the number of seeds it says really left it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    m = re.search(r"stopped; (\d+) seeds released", log.read_text())
    if not m:
        raise RuntimeError(f"simulator did not report its count: {log.read_text()!r}")
    return int(m.group(1))


def rehearse_cmd(out: Path, seed: int, case: str, url: str) -> list[str]:
    return [sys.executable, "-m", "navigator.cli", "rehearse", "--out", str(out), "--seed", str(seed),
            "--case", case, "--device", url, "--json", "--in-process"]


def journal_entries(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a torn last line while the writer is being killed
    return out


def _t(entry: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(entry["t"].replace("Z", "+00:00")).timestamp()


def is_delivery(name: str) -> bool:
    return name == "delivery" or re.fullmatch(r"supplement_\d+", name) is not None


def intervals_of(reference: Path) -> list[tuple[str, str | None, float]]:
    """(step, preceding step or None, seconds) for each step of the reference run, in order; the last one,
    'report', is the tail after the journal's last line (closing, rehearsal.json, report.html). A delivery is
    timed from its ``delivery_started`` line (the device conversation, not the resume's preparations)."""
    entries = journal_entries(reference / "session.jsonl")
    start = delivery_start = _t(entries[0])
    out, prev = [], None
    for e in entries:
        if e["kind"] == "delivery_started":
            delivery_start = _t(e)
        if e["kind"] == "step_done" and e["data"]["step"] != "device_started":  # none with --device
            name = e["data"]["step"]
            out.append((name, prev, max(_t(e) - (delivery_start if is_delivery(name) else start), 0.0)))
            prev, start = name, _t(e)
    end = max((reference / f).stat().st_mtime for f in ("rehearsal.json", "report.html"))
    out.append(("report", prev, max(end - _t(entries[-1]), 0.5)))
    return out


def step_kind(name: str) -> str:
    for prefix in ("needles_reference", "needles_all", "check_journaled", "postimplant", "supplement"):
        if name.startswith(prefix):
            return prefix
    return name


def ledgers(folder: Path) -> dict[str, dict]:
    """Per delivery (``delivery``, ``supplement_<n>``): the seeds of delivery.json and of the ledger file."""
    out = {}
    for d in sorted(folder.glob("*/delivery.json")):
        name = d.parent.name
        data = json.loads(d.read_text())
        lines = [json.loads(x) for x in (folder / f"{name}.ledger.jsonl").read_text().splitlines() if x.strip()]
        out[name] = {
            "json": sorted((s["seed_id"], s["device_index"]) for s in data["seeds"]),
            "ledger": sorted((x["seed_id"], x["device_index"]) for x in lines if x["type"] == "released"),
            "released_lines": Counter(x["seed_id"] for x in lines if x["type"] == "released"),
            "reconciled": data["reconciled"], "released": data["released"],
            "device_released_total": data["device_released_total"],
        }
    return out


def wait_for(pattern_fn, proc, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if pattern_fn():
            return True
        time.sleep(0.01)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--case", default="neck")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--work", default="/tmp/rehearsal_crash")
    ap.add_argument("--reference", help="a finished uninterrupted rehearsal of the same seed/case (run with "
                                        "--device to a fresh simulator) instead of running one")
    ap.add_argument("--rng", type=int, default=2026, help="seed of the kill points")
    ap.add_argument("--delivery-weight", type=float, default=3.0)
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the working tree's code as it is (default: a copy taken at start, so the reference "
                         "and the crash runs are the same code while others edit the tree)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    global CODE
    if not args.no_snapshot:
        CODE, what = snapshot_source(work / "src")
        print(f"running a copy of the code taken at start ({CODE}); {what}")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"python {platform.python_version()}; load average at start {load_avg()}; "
          f"{time.strftime('%H:%M:%S UTC', time.gmtime())}", flush=True)

    # 1. the uninterrupted reference
    if args.reference:
        ref = Path(args.reference)
        ref_wall, ref_device = None, None
    else:
        ref = work / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        proc, url = start_simulator(args.seed, work / "sim_reference.log")
        t = time.perf_counter()
        p = subprocess.run(rehearse_cmd(ref, args.seed, args.case, url), cwd=CODE, env=env,
                           capture_output=True, text=True)
        ref_wall = time.perf_counter() - t
        ref_device = stop_simulator(proc, work / "sim_reference.log")
        if p.returncode != 0:
            print(f"reference rehearsal failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
            return 1
        print(f"reference rehearsal: {ref_wall:.0f} s, device released {ref_device}; load {load_avg()}",
              flush=True)
    ref_json = json.loads((ref / "rehearsal.json").read_text())
    ivals = intervals_of(ref)

    # 2. the kill points
    rng = np.random.default_rng(args.rng)
    weights = np.array([args.delivery_weight if step_kind(n) in ("delivery", "supplement", "device_started")
                        else 1.0 for n, _, d in ivals])
    weights[[d < 0.5 and not is_delivery(n) for n, _, d in ivals]] = 0.0  # instantaneous bookkeeping steps
    weights[[d <= 0.0 for _, _, d in ivals]] = 0.0
    weights /= weights.sum()
    targets = [int(i) for i in rng.choice(len(ivals), size=args.kills, p=weights)]
    per_step = Counter(targets)
    # A killed delivery resumes where it stopped, and its moments count from each run's own start of it:
    # drawn within 2/m of its reference length (m kills aimed at it), the kills walk through the whole of it.
    picks = sorted((i, float(rng.uniform(0.0, ivals[i][2] * (min(1.0, 2.0 / per_step[i])
                                                               if is_delivery(ivals[i][0]) else 1.0))))
                   for i in targets)
    print("steps of the reference run (s): " + ", ".join(f"{n} {d:.1f}" for n, _, d in ivals), flush=True)

    # 3. kill, resume, kill...
    crash = work / "crash"
    shutil.rmtree(crash, ignore_errors=True)
    sim, url = start_simulator(args.seed, work / "sim_crash.log")
    journal = crash / "session.jsonl"
    killed_in: Counter = Counter()
    targeted: Counter = Counter(step_kind(ivals[i][0]) for i, _ in picks)
    retargeted: Counter = Counter()
    mid_release = 0
    runs = []
    t_all = time.perf_counter()
    final = None
    for k in range(len(picks) + 1):
        raw0 = journal.read_bytes() if journal.exists() else b""
        marker_count, started_count = raw0.count(b'"kind":"session_'), raw0.count(b'"kind":"delivery_started"')
        t = time.perf_counter()
        err_path = work / "crash_run.err"  # a file, not a pipe: a killed run's unread output must not block it
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen(rehearse_cmd(crash, args.seed, args.case, url), cwd=CODE, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        if k == len(picks):
            proc.wait(timeout=1800)
            runs.append(("finish", time.perf_counter() - t))
            final = (proc.returncode, err_path.read_text())
            break
        i, offset = picks[k]
        completed = {e["data"]["step"] for e in journal_entries(journal) if e["kind"] == "step_done"} \
            if journal.exists() else set()
        if ivals[i][0] in completed:
            # An earlier run went through this step (it is short, or a kill came late): aim at the first step
            # still to do instead, at a random moment of it (the tail, 'report', is redone by every run).
            i = next((j for j, (n, _, _) in enumerate(ivals) if n not in completed), len(ivals) - 1)
            offset = float(rng.uniform(0.0, ivals[i][2] * (0.5 if is_delivery(ivals[i][0]) else 1.0)))
            retargeted[step_kind(ivals[i][0])] += 1
        step, before, _ = ivals[i]

        def reached(before=before, marker_count=marker_count, started_count=started_count, step=step):
            """This run has opened/resumed the session, the step before is done, and (a delivery) this run
            has started talking to the device."""
            raw = journal.read_bytes() if journal.exists() else b""
            if raw.count(b'"kind":"session_') <= marker_count:
                return False
            if before is not None and f'"kind":"step_done","data":{{"step":"{before}",'.encode() not in raw:
                return False
            return not is_delivery(step) or raw.count(b'"kind":"delivery_started"') > started_count

        if not wait_for(reached, proc, 1800):
            proc.wait()
            err = err_path.read_text()
            print(f"run {k + 1} ended (exit {proc.returncode}) before reaching {step}: {err[-2000:]}")
            final = (proc.returncode, err)
            break
        # The chosen moment, or at once when the step completes first: the next kill must still find the
        # step after it (a short delivery would otherwise be run through by a kill aimed before it).
        done_mark = f'"kind":"step_done","data":{{"step":"{step}",'.encode()
        wait_for(lambda: done_mark in journal.read_bytes(), proc, offset)
        if proc.poll() is not None:
            err = err_path.read_text()
            final = (proc.returncode, err)
            print(f"run {k + 1} finished (exit {proc.returncode}) before its kill in {step}")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        runs.append((step, time.perf_counter() - t))
        entries = journal_entries(journal)
        done = [e["data"]["step"] for e in entries if e["kind"] == "step_done"]
        completed = set(done)
        now = next((n for n, _, _ in ivals if n not in completed), "report")
        killed_in[step_kind(now)] += 1
        if entries and entries[-1]["kind"] in ("seed_release_intent", "device_command"):
            mid_release += 1
        print(f"kill {k + 1:2d}: aimed at {step} +{offset:5.1f} s, killed in {now:22s} after "
              f"{runs[-1][1]:5.1f} s; last journal line {entries[-1]['kind'] if entries else '-'}; "
              f"load {load_avg().split()[0]}", flush=True)
    total = time.perf_counter() - t_all
    device_count = stop_simulator(sim, work / "sim_crash.log")

    # 4. compare
    problems = []
    rc, err = final if final else (None, "")
    if rc != 0:
        problems.append(f"the last run exited {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    kills = sum(killed_in.values())
    if kills != args.kills:
        problems.append(f"only {kills} of {args.kills} kills happened")
    if rc == 0:
        from navigator.session.journal import Journal

        Journal.read(journal)  # raises if the chain is broken
        crash_json = json.loads((crash / "rehearsal.json").read_text())
        for key in FIGURES:
            if crash_json.get(key) != ref_json.get(key):
                problems.append(f"rehearsal.json {key} differs: {crash_json.get(key)} vs reference "
                                f"{ref_json.get(key)}")
        ref_l, crash_l = ledgers(ref), ledgers(crash)
        if set(ref_l) != set(crash_l):
            problems.append(f"deliveries differ: {sorted(crash_l)} vs reference {sorted(ref_l)}")
        for name in sorted(set(ref_l) & set(crash_l)):
            a, b = crash_l[name], ref_l[name]
            if a["json"] != b["json"]:
                problems.append(f"{name}/delivery.json seeds differ from the reference")
            if a["ledger"] != b["ledger"] or a["ledger"] != a["json"]:
                problems.append(f"{name}.ledger.jsonl differs from the reference or from its delivery.json")
            twice = [s for s, c in a["released_lines"].items() if c > 1]
            if twice:
                problems.append(f"{name}: seeds booked released twice in the ledger: {twice}")
            if not a["reconciled"]:
                problems.append(f"{name} not reconciled")
        expected = crash_json["seeds_released"] + crash_json["supplementary_seeds"]
        if device_count != expected:
            problems.append(f"the device released {device_count} seeds, the rehearsal {expected}")
        if crash_json["device_released_total"] != device_count:
            problems.append(f"rehearsal.json device_released_total {crash_json['device_released_total']} "
                            f"!= device's own count {device_count}")

    print()
    print(f"{'step kind':<20} {'kills aimed':>11} {'re-aimed here':>13} {'kills landed':>12}")
    for kind in dict.fromkeys([step_kind(n) for n, _, _ in ivals]):
        print(f"{kind:<20} {targeted.get(kind, 0):>11} {retargeted.get(kind, 0):>13} {killed_in.get(kind, 0):>12}")
    print(f"{'total':<20} {sum(targeted.values()):>11} {sum(retargeted.values()):>13} {kills:>12}   "
          f"({mid_release} right after a device command or a release intent)")
    print(f"runs: {len(runs)}; total time of the killed-and-resumed rehearsal {total:.0f} s"
          + (f" (uninterrupted reference {ref_wall:.0f} s)" if ref_wall else "")
          + f"; the final resume {runs[-1][1]:.0f} s; load average at end {load_avg()}")
    print(f"seeds: planned {ref_json['seeds_planned']}, released {ref_json['seeds_released']}, supplementary "
          f"{ref_json['supplementary_seeds']}; the crash run's device released {device_count}"
          + (f" (reference device {ref_device})" if ref_device is not None else ""))
    if problems:
        print("RESULT: FAIL")
        for p in problems:
            print("  - " + p)
        return 1
    print("RESULT: PASS (same ledger and figures as the uninterrupted run, every seed released once, "
          "journal chain intact)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
