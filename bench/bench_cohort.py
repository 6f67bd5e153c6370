"""Benchmark: ``navigator cohort`` per-study cost on 1 and 2 Dask workers, and a projection for a large cohort.

A synthetic cohort (``simulators.cohort``) of ``--studies`` post-implant studies, each a 100-slice CT (256 x 256,
2.5 mm) with ~40 seeds and an RT Plan, in the messy PACS layout, is analysed as the command does: discovery
(headers only, read by the workers in chunks of files), then every study as one task on a local Dask cluster
of 1 and then 2 worker processes (``navigator.cluster.open_cluster``; the cluster's start is timed apart). Reported: seconds per study
(wall time of the tasks / studies), the scaling ratio t(1 worker) / t(2 workers), the D90 recovery against the
truth, and the projection of a 500-study cohort on a 32-worker cluster from the measured per-study cost:

    T(500, 32) = discovery(500) + start + 500 x (t1 per study) / (32 x e),  e = the 2-worker efficiency measured
    here (t1 / (2 t2)), discovery(500) = the 1-worker header time per file x 500 studies' files / (32 x e).

``--coverage REPS``: also the empirical coverage of the Youden cut-off's 95 % bootstrap interval over REPS
cohorts drawn from the generator's dose-response (no imaging: true D90 and response only), for 12, 40 and 100
patients.

    python bench/bench_cohort.py [--studies 8] [--cohort DIR] [--coverage 100] [--worker-threads 1]

Prints a table with the machine details (platform.processor(), os.cpu_count(), numba threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from navigator.cluster import open_cluster
from navigator.cohort import StudyOptions, analyse_study, discover, study_tasks
from simulators.cohort import CohortSpec, write_cohort


def _cohort(args) -> Path:
    root = Path(args.cohort) if args.cohort else Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    if (root / "truth.json").exists():
        print(f"reusing the cohort in {root}")
        return root
    spec = CohortSpec(patients=args.studies, seed=11, n_slices=100, matrix=256, node_diameter_mm=(34.0, 35.0),
                      plan_fraction=1.0, max_lost_fraction=0.0, d90_range=(0.8, 1.4))
    t0 = time.perf_counter()
    write_cohort(spec, root, progress=lambda i, n: print(f"  writing study {i}/{n}", flush=True))
    print(f"wrote {args.studies} studies to {root} in {time.perf_counter() - t0:.0f} s")
    return root


def _run(root: Path, workers: int):
    """(cluster start s, discovery s, tasks wall s, index, rows) on a local cluster of ``workers``."""
    t0 = time.perf_counter()
    with open_cluster(workers=workers) as runner:
        start = time.perf_counter() - t0
        discover(root / "studies", runner)                  # warm-up: each worker imports pydicom
        t1 = time.perf_counter()
        index = discover(root / "studies", runner)
        t_discover = time.perf_counter() - t1
        tasks = study_tasks(index, StudyOptions())
        runner.map(analyse_study, tasks[:workers])           # each worker imports and compiles once (warm-up)
        t1 = time.perf_counter()
        rows = runner.map(analyse_study, tasks)
        wall = time.perf_counter() - t1
    return start, t_discover, wall, index, rows


def _coverage(reps: int) -> list[str]:
    from navigator.cohort.stats import roc_analysis

    spec, rng, out = CohortSpec(), np.random.default_rng(0), []
    lo, hi = spec.d90_range
    truth = spec.population_youden_cutoff_gy()
    for n in (12, 40, 100):
        hits, widths, est, used = 0, [], [], 0
        for _ in range(reps):
            d90 = rng.uniform(lo, hi, n) * spec.cutoff_d90_gy
            y = (rng.uniform(size=n) < spec.response_probability(d90)).astype(int)
            if min(y.sum(), n - y.sum()) < 2:
                continue
            a = roc_analysis(y, d90, 300, 0)
            c = a["youden_cutoff_ci95_gy"]
            hits += c[0] <= truth <= c[1]
            widths.append(c[1] - c[0])
            est.append(a["youden_cutoff_d90_gy"])
            used += 1
        out.append(f"{n:>8d} {used:>6d} {hits / used:>9.2f} {np.mean(est):>9.1f} {np.std(est):>7.1f} "
                   f"{np.median(widths):>11.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--cohort", help="folder of a cohort written before (reused) or to write")
    ap.add_argument("--coverage", type=int, default=0, help="cohorts per size for the CI coverage (0: skip)")
    ap.add_argument("--worker-threads", type=int, default=0,
                    help="NUMBA_NUM_THREADS of the worker processes (0: numba's default, one per core)")
    args = ap.parse_args()
    if args.worker_threads:
        os.environ["NUMBA_NUM_THREADS"] = str(args.worker_threads)   # the workers, spawned later, inherit it
    import numba

    root = _cohort(args)
    truth = json.loads((root / "truth.json").read_text())
    start1, disc1, wall1, index, rows1 = _run(root, 1)
    start2, disc2, wall2, _, rows2 = _run(root, 2)
    n = len(rows1)
    assert [r["metrics"] for r in rows1] == [r["metrics"] for r in rows2], "1 and 2 workers differ"
    tp = {p["study_uid"]: p for p in truth["patients"]}
    err = np.array([r["metrics"]["D90_gy"] / tp[r["study_uid"]]["d90_gy"] - 1 for r in rows1 if r["status"] == "ok"])
    seeds = [r["seeds_found"] for r in rows1 if r["status"] == "ok"]
    ok_seeds = sum(r["seeds_found"] == tp[r["study_uid"]]["seeds_implanted"] for r in rows1 if r["status"] == "ok")
    per1, per2 = wall1 / n, wall2 / n
    efficiency = per1 / (2 * per2)
    files_per_study = index.files_seen / n
    disc_500 = 500 * files_per_study * disc1 / index.files_seen / (32 * efficiency)
    project = disc_500 + start2 + 500 * per1 / (32 * efficiency)

    print(f"\nmachine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"affinity = {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores, "
          f"numba threads per worker = {args.worker_threads or numba.config.NUMBA_DEFAULT_NUM_THREADS}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} (other jobs share the cores)")
    print(f"cohort: {n} studies, {truth['spec']['n_slices']} slices of {truth['spec']['matrix']}^2 each, "
          f"{np.mean(seeds):.1f} seeds per study (found = implanted in {ok_seeds}/{len(seeds)}), {index.files_seen} "
          f"files; D90 vs truth: mean {100 * err.mean():+.2f} %, max |error| {100 * np.abs(err).max():.2f} %")
    hdr = (f"{'workers':>7s} {'cluster start s':>15s} {'discovery s':>11s} {'tasks wall s':>12s} {'s per study':>11s} "
           f"{'scaling':>8s}")
    print(hdr)
    print("-" * len(hdr))
    print(f"{1:>7d} {start1:>15.1f} {disc1:>11.2f} {wall1:>12.1f} {per1:>11.2f} {1.0:>8.2f}")
    print(f"{2:>7d} {start2:>15.1f} {disc2:>11.2f} {wall2:>12.1f} {per2:>11.2f} {per1 / per2:>8.2f}")
    print(f"discovery (headers only, on the workers): {1000 * disc1 / index.files_seen:.2f} ms per file on 1 worker")
    print(f"projection, 500 studies on 32 workers: {project / 60:.1f} min (= {disc_500:.0f} s discovery + {start2:.0f} s "
          f"start + 500 x {per1:.2f} s / (32 x {efficiency:.2f} efficiency))")
    if args.coverage:
        print(f"\ncoverage of the Youden cut-off's 95 % CI (300 bootstrap resamples, {args.coverage} cohorts per size, "
              "generator defaults: D90 uniform 50-160 Gy, logistic width 5 Gy, cut-off 100 Gy)")
        print(f"{'patients':>8s} {'used':>6s} {'coverage':>9s} {'mean cut':>9s} {'sd cut':>7s} {'median width':>11s}")
        for line in _coverage(args.coverage):
            print(line)


if __name__ == "__main__":
    main()
