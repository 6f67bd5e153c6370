"""Benchmark: the robustness preview's Monte Carlo (issue #16: 1000 samples of a 40-seed plan on a 1 mm CTV sample
in <= 10 s on 2 cores).

Case: the synthetic neck patient (simulators.phantoms, seed 0) planned by ``make_plan`` (39 seeds on 21 needles,
CTV ~33 cc: ~33 000 points at 1 mm), the contract's default error model. Timed: the preview in this process
(every core through the kernel's threads), and on a local Dask cluster of 1 and 2 worker processes (cluster
start, a warm-up that loads numba's cached kernels in the workers, then the run). From the two cluster runs,
t(w) = a + b * ceil(tasks / w) gives the fixed cost a and the per-task cost b, hence the per-sample cost and a
projection for a 32-worker cluster (same per-task cost on its cores; each task carries ~1 MB of arrays).

    python bench/bench_robustness.py [--samples 1000] [--repeat 2]

Prints a table with the machine details (processor, cores, numba threads, load average: the machine may be
shared).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from navigator.cluster import open_cluster
from navigator.physics import tg43
from navigator.planning.pipeline import make_plan
from navigator.planning.robustness import (
    BATCH_SAMPLES,
    SENSITIVITY_NEEDLES_PER_TASK,
    ErrorModel,
    InProcessRunner,
    robustness_preview,
)


def _case():
    from simulators import phantoms

    p = phantoms.make_patient("neck", seed=0)
    res = make_plan(p.ct, p.structures, "GTV", None, 120.0, "6711", tg43.sk_u_from(activity_mci=0.5))
    return res.plan, res.dose.voxel_centers_lps(res.ctv_dose_mask), res.dose.spacing_mm


def _timed(plan, pts, samples, runner, repeat):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = robustness_preview(plan, pts, ErrorModel(), samples, seed=1, runner=runner)
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import numba

    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"affinity = {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores, "
          f"numba threads = {numba.get_num_threads()}, python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    plan, pts, spacing = _case()
    n_needles = len({s.needle_id for s in plan.seeds})
    tasks = math.ceil(args.samples / BATCH_SAMPLES) + math.ceil(n_needles / SENSITIVITY_NEEDLES_PER_TASK)
    print(f"case: {len(plan.seeds)} seeds on {n_needles} needles, {len(pts)} CTV points at {spacing[0]:g} mm, "
          f"{args.samples} samples in {tasks} tasks ({BATCH_SAMPLES} samples per batch + sensitivity tasks)")

    rows = []
    robustness_preview(plan, pts, ErrorModel(), 40, seed=0)  # numba's cached kernels, here
    t, r_here = _timed(plan, pts, args.samples, InProcessRunner(), args.repeat)
    rows.append(("in process (kernel threads, no Dask)", None, t, r_here))
    cluster = {}
    for w in (1, 2):
        t0 = time.perf_counter()
        with open_cluster(workers=w) as runner:
            t_start = time.perf_counter() - t0
            robustness_preview(plan, pts, ErrorModel(), 2 * BATCH_SAMPLES * w, seed=0, runner=runner)  # warm-up
            t, r = _timed(plan, pts, args.samples, runner, args.repeat)
        cluster[w] = t
        rows.append((f"local Dask cluster, {w} worker{'s' if w > 1 else ''}", t_start, t, r))
        assert r["D90_gy"] == r_here["D90_gy"], "the numbers must not depend on the runner"

    print()
    hdr = f"{'runner':40s} {'start s':>8s} {'run s':>7s} {'ms/sample':>9s} {'D90 p10':>8s} {'pass %':>7s}"
    print(hdr)
    print("-" * len(hdr))
    for name, t_start, t, r in rows:
        start = f"{t_start:.2f}" if t_start is not None else "-"
        print(f"{name:40s} {start:>8s} {t:7.2f} "
              f"{1000 * t / args.samples:9.2f} {r['D90_gy']['p10']:8.2f} {100 * r['pass_rate']:7.1f}")
    t1, t2 = cluster[1], cluster[2]
    half = math.ceil(tasks / 2)
    b = max((t1 - t2) / max(tasks - half, 1), 1e-9)  # per task
    a = max(t1 - b * tasks, 0.0)                      # fixed: preparing the arrays, scheduling, the summary
    print(f"\nscaling 1 -> 2 workers: {t1 / t2:.2f}x (ideal {tasks / half:.2f}x with {tasks} tasks)")
    print(f"fit t(w) = a + b * ceil(tasks / w): a = {a:.2f} s fixed, b = {1000 * b:.1f} ms per task "
          f"= {1000 * b * tasks / args.samples:.2f} ms per sample")
    for n in (args.samples, 10 * args.samples):
        k = math.ceil(n / BATCH_SAMPLES) + math.ceil(n_needles / SENSITIVITY_NEEDLES_PER_TASK)
        print(f"projection, 32 workers, {n} samples ({k} tasks): {a + b * math.ceil(k / 32):.2f} s "
              f"(1 worker: {a + b * k:.1f} s)")
    print(f"\nGoal (issue #16): {args.samples} samples <= 10 s on 2 cores: "
          f"{'met' if t2 <= 10.0 else 'NOT met'} ({t2:.2f} s on 2 workers, cluster start "
          f"{rows[-1][1]:.2f} s more); load average {os.getloadavg()[0]:.2f} at the end")
    np.testing.assert_allclose(rows[1][3]["D90_gy"]["p10"], rows[2][3]["D90_gy"]["p10"])


if __name__ == "__main__":
    main()
