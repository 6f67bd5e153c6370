"""Benchmark of the dose engine: 100 seeds on a 1 mm grid of about 1M voxels (target <= 50 ms on 2 cores).

Run by hand: ``python bench/bench_dose.py [--seeds 100] [--runs 7] [--threads 2] [--model 6711]``. Prints a
table: machine, seeds, voxels, fast time (median of several runs after a warm-up, wall clock and CPU), naive
time (the per-seed numpy reference, one run), their ratio, and the largest difference where the dose exceeds
10 % (and 1 %) of the maximum. The load average is printed too: on a shared machine wall times mean little.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

from navigator.physics import dose, tg43
from navigator.core.volume import grid_volume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="6711")
    ap.add_argument("--isotropic", action="store_true", help="1D formalism (no seed axes)")
    args = ap.parse_args()
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    model = tg43.load_seed_model(args.model)
    rng = np.random.default_rng(2026)
    # An implant-like cluster: seeds 5-10 mm apart in a ~4 cm node, random tilts; grid = seeds + 32 mm, 1 mm.
    seeds = rng.uniform(-18.0, 18.0, (args.seeds, 3)) + np.array([12.0, -30.0, 410.0])
    axes = None
    if not args.isotropic:
        axes = rng.normal(size=(args.seeds, 3))
        axes /= np.linalg.norm(axes, axis=1)[:, None]
    grid = grid_volume(seeds.min(0) - 32.0, seeds.max(0) + 32.0, 1.0)
    sk_u = tg43.sk_u_from(activity_mci=0.5)

    t0 = time.perf_counter()
    dose.dose_on_grid(grid, seeds, axes, sk_u, model)  # compile (or load the cache) and build the kernel tables
    first = time.perf_counter() - t0
    wall, cpu = [], []
    for _ in range(args.runs):
        c0, w0 = time.process_time(), time.perf_counter()
        fast = dose.dose_on_grid(grid, seeds, axes, sk_u, model)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    # One thread: CPU time is the least disturbed measure on a shared machine (others' load barely moves it).
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    cpu1 = []
    for _ in range(args.runs):
        c0 = time.process_time()
        dose.dose_on_grid(grid, seeds, axes, sk_u, model)
        cpu1.append(time.process_time() - c0)
    numba.set_num_threads(threads)
    t0 = time.perf_counter()
    ref = dose.naive_dose_on_grid(grid, seeds, axes, sk_u, model)
    naive = time.perf_counter() - t0

    rel = np.abs(fast.astype(float) - ref) / np.maximum(ref, 1e-30)
    diff10 = 100.0 * rel[ref > 0.1 * ref.max()].max()
    diff1 = 100.0 * rel[ref > 0.01 * ref.max()].max()
    t_fast = float(np.median(wall))
    rows = [
        ("machine", f"{platform.platform()} / {platform.processor() or platform.machine()}"),
        ("cpu count (os) / numba threads used", f"{os.cpu_count()} / {numba.get_num_threads()}"),
        ("load average (1, 5, 15 min)", " ".join(f"{v:.2f}" for v in os.getloadavg())),
        ("seed model / formalism", f"{model.name} / {'1D' if axes is None else '2D'}"),
        ("seeds", f"{args.seeds}"),
        ("voxels", f"{grid.array.size} ({' x '.join(map(str, grid.shape_ijk))} at 1 mm)"),
        ("first call (compile/cache + tables)", f"{first * 1000:.0f} ms"),
        (f"fast, median of {args.runs} (wall)", f"{t_fast * 1000:.1f} ms (min {min(wall) * 1000:.1f} ms)"),
        ("fast, median CPU time (all threads)", f"{np.median(cpu) * 1000:.1f} ms"),
        ("fast, 1 thread, median CPU time", f"{np.median(cpu1) * 1000:.1f} ms (min {min(cpu1) * 1000:.1f} ms)"),
        ("naive (per-seed numpy), 1 run", f"{naive * 1000:.0f} ms"),
        ("ratio naive / fast", f"{naive / t_fast:.0f} x"),
        ("max difference where dose > 10 % max", f"{diff10:.2f} %"),
        ("max difference where dose > 1 % max", f"{diff1:.2f} %"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
