"""Soak test of exactly-once delivery over a hostile link (issue #4's definition of done).

    python bench/bench_soak.py [--requests 10000] [--corrupt-rate 0.01] [--loss-rate 0.02]
                               [--disconnect-every 2000] [--seed 1] [--url socket://...]

Delivers a large synthetic plan through the simulated applicator (in-process ``sgpsim://`` unless ``--url``
names a separate-process simulator) until the host has issued ``--requests`` requests, then checks against
the simulator's ground truth: no seed released twice, no release unaccounted for, ledger == device counter.
Prints a table with machine details.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from navigator.delivery.run import Delivery  # noqa: E402
from navigator.delivery.ledger import SeedLedger  # noqa: E402
from navigator.core.plan import Needle, Plan, PlannedSeed  # noqa: E402
from navigator.wiring import open_applicator  # noqa: E402

REQUESTS_PER_SEED = 5.3  # STATUS, RETRACT, STATUS, ARM, RELEASE + per-needle SELECT/DOCK/UNDOCK


def soak_plan(n_seeds: int, seeds_per_needle: int = 20, spacing_mm: float = 2.5, tip_mm: float = 60.0) -> Plan:
    """Needles in holes A1, A2, ... each with seeds every ``spacing_mm`` from 2 mm above the tip outwards."""
    needles, seeds = [], []
    axis = np.array([0.0, 0.6, -0.8])
    for i in range((n_seeds + seeds_per_needle - 1) // seeds_per_needle):
        hole = f"{chr(ord('A') + i // 99)}{i % 99 + 1}"
        entry = np.array([5.0 * (i % 20), 5.0 * (i // 20), 0.0])
        needles.append(Needle(f"N{i + 1}", entry, entry + tip_mm * axis, hole))
        for j in range(min(seeds_per_needle, n_seeds - i * seeds_per_needle)):
            depth = tip_mm - 2.0 - spacing_mm * j
            seeds.append(PlannedSeed(f"S{i + 1}.{j + 1}", f"N{i + 1}", entry + depth * axis))
    return Plan("1.2.3", "1.2.3.4", "GTV", 140.0, "6711", 0.5, needles, seeds)


def run_soak(requests: int = 10_000, corrupt_rate: float = 0.01, loss_rate: float = 0.02,
             disconnect_every: int = 2000, seed: int = 1, timeout_scale: float = 0.02, url: str | None = None,
             workdir: Path | None = None) -> dict:
    n_seeds = max(1, int(requests / REQUESTS_PER_SEED))
    plan = soak_plan(n_seeds)
    device = None
    if url is None:
        import simulators.applicator as sim
        name = f"soak-{os.getpid()}-{time.monotonic_ns()}"
        url = (f"sgpsim://{name}?seeds={n_seeds + 10}&seed={seed}&corrupt_rate={corrupt_rate}"
               f"&loss_rate={loss_rate}&disconnect_every={disconnect_every}")
        sim.device_from_url(url)
        device = sim.DEVICES[name]
    workdir = Path(workdir or tempfile.mkdtemp(prefix="soak-"))
    ledger = SeedLedger(workdir / "soak.ledger.jsonl")
    app = open_applicator(url, timeout_scale=timeout_scale)
    t0 = time.perf_counter()
    try:
        result = Delivery(plan, app, ledger, simulate_operator=True, dock_timeout_s=5.0,
                          max_link_losses=50).run()
    finally:
        app.close()
        ledger.close()
    seconds = time.perf_counter() - t0
    stats = app.stats
    out = {"planned": n_seeds, "released_ledger": len(ledger.released), "device_released_total":
           result.device_released_total, "device_counter": result.device_counter, "reconciled": result.reconciled,
           "stopped": result.stopped_reason, "requests": stats.requests, "retransmissions": stats.retransmissions,
           "timeouts": stats.timeouts, "link_lost": stats.link_lost, "reconnects": stats.reconnects,
           "event_gaps": stats.event_gaps, "seconds": seconds}
    booked = Counter((s.hole, round(s.depth_mm, 1)) for s in ledger.released.values())
    out["ledger_duplicates"] = sum(c - 1 for c in booked.values() if c > 1)
    if device is not None:
        truth = Counter((r.hole, round(r.depth_mm, 1)) for r in device.truth)
        out["true_releases"] = len(device.truth)
        out["released_twice"] = sum(c - 1 for c in truth.values() if c > 1)
        out["unaccounted"] = sum((truth - booked).values()) + sum((booked - truth).values())
        out["bytes_corrupted"] = device.inject.bytes_corrupted
        out["frames_lost"] = device.inject.frames_lost
        out["device_frames_received"] = device.frames_received
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--corrupt-rate", type=float, default=0.01)
    p.add_argument("--loss-rate", type=float, default=0.02)
    p.add_argument("--disconnect-every", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout-scale", type=float, default=0.02,
                   help="reply timeouts as a fraction of SGP/1's (instant simulator; default 0.02 = 5 ms)")
    p.add_argument("--url", default=None, help="a separate-process simulator (its faults are its own options)")
    a = p.parse_args()
    r = run_soak(a.requests, a.corrupt_rate, a.loss_rate, a.disconnect_every, a.seed, a.timeout_scale, a.url)
    print(f"# SGP/1 soak: {platform.platform()}, processor {platform.processor() or '?'}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    if a.url:
        print(f"# device {a.url} (its faults are its own options); timeout scale {a.timeout_scale}")
    else:
        print(f"# in-process sgpsim://, faults: corrupt_rate={a.corrupt_rate}, loss_rate={a.loss_rate}, "
              f"disconnect_every={a.disconnect_every}, seed={a.seed}; timeout scale {a.timeout_scale}")
    width = max(len(k) for k in r)
    for k, v in r.items():
        print(f"{k:<{width}}  {v:.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    ok = (r["reconciled"] and r.get("released_twice", 0) == 0 and r.get("unaccounted", 0) == 0
          and r["released_ledger"] == r["device_released_total"] and r["stopped"] is None)
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
