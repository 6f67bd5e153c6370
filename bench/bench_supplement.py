"""Benchmark: the supplementary-seed proposal (issue #7: <= 2 s) on synthetic neck patients with an
under-seeded region (a needle's seeds left out), plus the rest of the post-implant pipeline for context.

Each case: a phantom patient, a pre-plan by ``navigator.planning.pipeline.make_plan``, a post-implant CT of the moved
patient with one needle's seeds missing, then ``run_postimplant`` with the true registration (so the
registration's own time, benchmarked in bench_registration.py, is left out). Reported: candidates, seeds
proposed, D90/V100 before and predicted after, time of the proposal (greedy selection) and of the whole
supplementary step. "proposal" = candidate paths + greedy selection (the issue's <= 2 s); "step" adds the
no-go/skin masks on the pre-plan CT (computed once per patient) and the dose recomputation with the seeds.

    python bench/bench_supplement.py [--cases neck,mediastinum]

Prints a table with the machine details (platform.processor(), os.cpu_count()).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from navigator.physics import tg43  # noqa: E402
from navigator.planning.pipeline import make_plan  # noqa: E402
from navigator.postimplant.pipeline import PostimplantOptions, run_postimplant  # noqa: E402
from navigator.imaging.registration import RegistrationResult  # noqa: E402

SK_U = tg43.sk_u_from(activity_mci=0.5)


def main() -> None:
    from simulators import phantoms as ph

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="neck,mediastinum")
    a = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"python {platform.python_version()}")
    print(f"{'case':>12} {'seeds':>5} {'cands':>5} {'added':>5} {'D90 before':>10} {'D90 after':>9} {'Rx':>5} "
          f"{'V100 b/a %':>11} {'masks s':>7} {'cands s':>7} {'select s':>8} {'proposal s':>10} {'step s':>7} {'stop':>s}")
    for case in a.cases.split(","):
        p = ph.make_patient(case, seed=2)
        pr = make_plan(p.ct, p.structures, "GTV", None, 140.0, "6711", SK_U)
        plan = pr.plan
        pos, axes = plan.seed_positions_mm(), plan.seed_axes()
        counts = {n.id: sum(s.needle_id == n.id for s in plan.seeds) for n in plan.needles}
        gone = max(counts, key=counts.get)
        keep = np.array([i for i, s in enumerate(plan.seeds) if s.needle_id != gone])
        rng = np.random.default_rng(3)
        m = ph.random_rigid(rng, center_mm=p.node_center_mm, max_translation_mm=8.0, max_rotation_deg=4.0)
        scan = ph.postimplant_scan(p, pos[keep] + rng.normal(0, 0.5, (len(keep), 3)), axes[keep], motion=m)
        reg = RegistrationResult(fixed_to_moving=np.array(scan.meta["truth"]["preplan_to_scan"]), metric=0.0,
                                 converged=True, estimated_error_mm=0.0, seconds=0.0)
        t = time.perf_counter()
        res = run_postimplant(plan, p.ct, scan, p.structures, PostimplantOptions(expected_seeds=len(keep)), reg)
        total = time.perf_counter() - t
        r = res.result
        sup = r["supplementary"]
        print(f"{case:>12} {len(keep):5d} {sup['candidates']:5d} {len(sup['seeds']):5d} "
              f"{r['metrics']['D90_gy']:10.1f} {sup['predicted_metrics']['D90_gy']:9.1f} {plan.prescription_gy:5.0f} "
              f"{r['metrics']['V100_pct']:5.1f}/{sup['predicted_metrics']['V100_pct']:5.1f} "
              f"{r['timing_s']['supplement_masks']:7.2f} {r['timing_s']['supplement_candidates']:7.2f} "
              f"{r['timing_s']['supplement_selection']:8.2f} {r['timing_s']['supplement_proposal']:10.2f} {r['timing_s']['supplement_total']:7.2f} "
              f"{sup['stop_reason']}  (pipeline {total:.1f} s)")


if __name__ == "__main__":
    main()
