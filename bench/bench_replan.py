"""Benchmark: the intraoperative re-plan (issue #15: <= 2 s for a 20-needle, 40-seed implant on 2 cores) and the
D90 it gains over the pre-plan's loading as placed, on simulated implants with known needle errors.

Cases: synthetic neck patients (simulators.phantoms, 170 x 170 x 40 voxels, ~34 cc CTV), each pre-planned by
``make_plan`` (~19 needles, ~40 seeds), then needles placed by the simulator's operator error model (lateral
1.0 mm, depth 1.5 mm, angle 1.0 deg per axis, 1 SD; ``simulators.phantoms.needles.draw_needles``) with 0-2
needles not found, seen through a random patient motion as ``navigator needles`` reports them (needles.json).
The re-plan (``navigator.planning.replan.replan``: masks, dose grid, optimisation, the three metric sets) is
timed warm; the first call in the process also loads numba's cached kernels and is reported apart ("cold").
D90s are the re-plan's own (TG-43 on its 1 mm dose grid, the CTV's partial volumes); "indep." is the reference
TG-43 point dose (``physics.dose.dose_at_points``, seed by seed) at the CTV's CT voxel centres.

    python bench/bench_replan.py [--patients 4] [--draws 5]

Prints a table with the machine details (platform.processor(), os.cpu_count(), NUMBA_NUM_THREADS, load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from navigator.anatomy.structures import mask_to_contours
from navigator.core.structure import Structure
from navigator.core.transform import RigidTransform
from navigator.physics import tg43
from navigator.physics.dose import dose_at_points
from navigator.planning.as_found import carried_loading, needles_as_found
from navigator.planning.pipeline import make_plan
from navigator.planning.replan import replan
from navigator.planning.replan_field import ReplanAnatomy

RX_GY = 120.0
SK_U = tg43.sk_u_from(activity_mci=0.5)


def _patient(seed: int):
    from simulators.phantoms.cases import make_patient

    p = make_patient("neck", seed, matrix=(170, 170), n_slices=40)
    res = make_plan(p.ct, p.structures, "GTV", None, RX_GY, "6711", SK_U)

    def structure(name, mask):
        return Structure(name, 1, mask_to_contours(mask, p.ct), frame_of_reference_uid=p.ct.frame_of_reference_uid)

    limits = {n: v["D0.1cc_gy"] for n, v in res.plan.extra["oar_limits"].items()}
    anatomy = ReplanAnatomy(ct=p.ct, ctv=structure("CTV", res.ctv_mask),
                            oars={n: structure(n, p.structures[n]) for n in limits}, oar_limits_gy=limits,
                            body=structure("BODY", p.structures["BODY"]), ctv_source="phantom CTV")
    return p, res, anatomy


def _check(p, plan, rng) -> dict:
    """needles.json of needles placed with the operator error model, 0-2 not found, seen through a motion."""
    from simulators.phantoms.motion import random_rigid
    from simulators.phantoms.needles import NeedleErrorModel, draw_needles

    motion = RigidTransform(random_rigid(rng, 10.0, 5.0, center_mm=p.node_center_mm))
    draws = draw_needles([(n.entry_mm, n.tip_mm) for n in plan.needles],
                         NeedleErrorModel(lateral_sd_mm=1.0, depth_sd_mm=1.5, angle_sd_deg=1.0), rng)
    lost = set(rng.choice(len(plan.needles), int(rng.integers(0, 3)), replace=False).tolist())
    needles = []
    for k, (n, d) in enumerate(zip(plan.needles, draws)):
        axis = (d.tip_mm - d.entry_mm) / np.linalg.norm(d.tip_mm - d.entry_mm)
        found = k not in lost
        needles.append({"id": n.id, "found": found, "planned_tip_mm": motion.apply(n.tip_mm).tolist(),
                        "tip_mm": motion.apply(d.tip_mm + rng.normal(0, 0.3, 3)).tolist() if found else None,
                        "axis": motion.rotate(axis).tolist() if found else None, "within_tolerance": False})
    return {"registration": {"fixed_to_moving": motion.to_list(), "metric": -0.5, "converged": True,
                             "fixed_frame_of_reference_uid": plan.frame_of_reference_uid},
            "tolerance_mm": 2.0, "needles": needles}


def _d90_indep(p, res, plan) -> float:
    pts = p.ct.voxel_centers_lps(res.ctv_mask)
    model = tg43.load_seed_model(plan.seed_model)
    return float(np.percentile(dose_at_points(pts, plan.seed_positions_mm(), plan.seed_axes(), plan.seed_sk_u,
                                              model), 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--draws", type=int, default=5, help="needle placements per patient")
    args = ap.parse_args()
    import numba

    rows, cold = [], None
    for ps in range(11, 11 + args.patients):
        p, res, anatomy = _patient(ps)
        plan = res.plan
        for k in range(args.draws):
            rng = np.random.default_rng([ps, k])
            found = needles_as_found(plan, _check(p, plan, rng))
            if cold is None:  # the first call in the process: numba's cached kernels load
                t0 = time.perf_counter()
                replan(plan, found, anatomy)
                cold = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), time.process_time()
            r = replan(plan, found, anatomy)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append((f"neck seed {ps} draw {k}", len(plan.needles), len(found.needles), len(plan.seeds), r,
                         _d90_indep(p, res, carried_loading(plan, found)), _d90_indep(p, res, r.plan), cpu, dt,
                         os.getloadavg()[0]))
            print(f"  {rows[-1][0]}: {dt:.2f} s", file=sys.stderr)

    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"numba threads = {numba.get_num_threads()}, python {platform.python_version()}, "
          f"affinity = {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores, "
          f"load average (1 min) at the end = {os.getloadavg()[0]:.1f}")
    hdr = (f"{'case':22s} {'needles':>9s} {'seeds':>9s} {'D90 pre':>7s} {'as pl.':>7s} {'re-plan':>7s} "
           f"{'gain':>6s} {'indep. as pl./re':>16s} {'V150 pre/re':>11s} {'moved':>5s} {'off':>3s} {'cpu s':>5s} {'s':>5s} "
           f"{'load':>4s}")
    print(hdr)
    print("-" * len(hdr))
    for name, n_planned, n_found, n_seeds, r, ind_as, ind_re, cpu, dt, load in rows:
        m0, m1, m2 = r.metrics_preplan, r.metrics_as_placed, r.metrics_replan
        print(f"{name:22s} {n_found:>4d}/{n_planned:<4d} {len(r.plan.seeds):>4d}/{n_seeds:<4d} {m0['D90_gy']:7.1f} "
              f"{m1['D90_gy']:7.1f} {m2['D90_gy']:7.1f} {m2['D90_gy'] - m1['D90_gy']:+6.1f} "
              f"{ind_as:7.1f}/{ind_re:<8.1f} {m0['V150_pct']:5.1f}/{m2['V150_pct']:<5.1f} {r.seeds_moved:5d} "
              f"{r.places.get('as_placed_too_shallow', 0) + r.places.get('as_placed_in_nogo', 0):3d} "
              f"{cpu:5.2f} {dt:5.2f} {load:4.1f}")
    times = np.array([row[-2] for row in rows])
    cpus = np.array([row[-3] for row in rows])
    gains = np.array([row[4].metrics_replan["D90_gy"] - row[4].metrics_as_placed["D90_gy"] for row in rows])
    short = [row for row in rows if row[5] < RX_GY]
    print(f"\n{len(rows)} cases. Re-plan time (warm): median {np.median(times):.2f} s, max {times.max():.2f} s "
          f"(CPU time, both threads: median {np.median(cpus):.2f} s, max {cpus.max():.2f} s; 'load' is the machine's "
          f"1-min load average: above 2, other processes share the 2 cores); cold first call {cold:.2f} s. D90 gained over the loading as placed: mean {gains.mean():+.1f} Gy, "
          f"min {gains.min():+.1f}, max {gains.max():+.1f} Gy. As placed under Rx (indep.): {len(short)}; of those "
          f"the re-plan reaches Rx in {sum(row[6] >= RX_GY for row in short)}.")
    print("'off': seeds of the loading as placed that break the re-plan's rules (< the minimum skin depth or in the "
          "no-go margin after their needle moved); the re-plan keeps none of those places, so where nothing else is "
          "wrong its D90 can come out a little under the loading as placed (the rehearsal then keeps the pre-plan).")
    print("Goal (issue #15): a 20-needle, 40-seed implant re-planned in <= 2 s on 2 cores.")


if __name__ == "__main__":
    main()
