"""How many SGP/1 requests per second the link sustains: driver <-> simulator in a separate process over
``socket://`` (and, for comparison, the in-process ``sgpsim://``).

    python bench/bench_link.py [--seconds 3] [--url socket://HOST:PORT]

Without ``--url`` it starts ``python -m simulators.applicator --listen 127.0.0.1:0`` itself. Requests are
sequential (SGP/1 has one request in flight), so the rate is 1 / round-trip time. Prints a table with
machine details.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_drivers import LinkConfig, SgpApplicator  # noqa: E402


def measure(drv: SgpApplicator, op, seconds: float) -> tuple[int, float, float, float]:
    """(requests, req/s, median ms, p99 ms) of ``op`` repeated for ``seconds``."""
    rtts = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        op()
        rtts.append(time.perf_counter() - t0)
    total = sum(rtts)
    rtts.sort()
    return len(rtts), len(rtts) / total, 1000 * statistics.median(rtts), 1000 * rtts[int(0.99 * (len(rtts) - 1))]


def release_cycle(drv: SgpApplicator, state: dict):
    """One seed: STATUS, RETRACT 0.5 mm, STATUS + ARM + RELEASE (5 requests); re-docks when shallow."""
    def op():
        if state["depth"] < 5.0:
            drv.sim_dock("A1", 60.0)
            state["depth"] = 60.0
        drv.status()
        state["depth"] = drv.retract(0.5)
        drv.release_seed("A1", state["depth"])
    return op


def bench_url(url: str, seconds: float) -> list[tuple]:
    drv = SgpApplicator(url, LinkConfig())
    drv.connect()
    try:
        rows = []
        for name, op in (("PING", drv.ping), ("STATUS", drv.status), ("RECORD,1", None)):
            if op is None:
                continue
            n, rate, med, p99 = measure(drv, op, seconds)
            rows.append((name, n, rate, med, p99))
        drv.enable()
        drv.select("A1")
        drv.sim_dock("A1", 60.0)
        state = {"depth": 60.0}
        n, rate, med, p99 = measure(drv, release_cycle(drv, state), seconds)
        rows.append(("seed cycle (5 requests)", n, rate, med, p99))
        rows.append(("  = requests/s in a seed cycle", 5 * n, 5 * rate, med / 5, p99 / 5))
        rows.append(("retransmissions / timeouts", drv.stats.retransmissions, float("nan"), drv.stats.timeouts,
                     float("nan")))
        return rows
    finally:
        drv.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3 s)")
    p.add_argument("--url", default=None, help="an already running device or simulator")
    p.add_argument("--seeds", type=int, default=100_000, help="cartridge size of the started simulator")
    a = p.parse_args()
    proc = None
    url = a.url
    if url is None:
        proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                                 "--seeds", str(a.seeds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        url = proc.stdout.readline().split()[1]
    print(f"# SGP/1 link benchmark: {platform.platform()}, processor {platform.processor() or '?'}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    try:
        targets = [(url, "separate process")]
        import simulators.applicator  # noqa: F401  (registers sgpsim://)
        targets.append((f"sgpsim://?seeds={a.seeds}", "in-process"))
        print(f"{'link':<38} {'operation':<32} {'n':>7} {'req/s':>9} {'median ms':>10} {'p99 ms':>8}")
        for target, label in targets:
            for name, n, rate, med, p99 in bench_url(target, a.seconds):
                print(f"{label + ' ' + target.split('?')[0]:<38} {name:<32} {n:>7} {rate:>9.0f} {med:>10.2f} {p99:>8.2f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
