"""Benchmark: the supplementary-seed proposal (issue #12: the fewest seeds that restore coverage; issue #7:
<= 2 s) on synthetic patients with seeds left out, plus the rest of the post-implant pipeline for context.

Each case: a phantom patient, a pre-plan by ``navigator.planning.pipeline.make_plan``, then per draw ``k``
adjacent seeds left out (a random seed and its k - 1 nearest: one or two needles), a post-implant CT of the
moved patient with the rest (jittered 0.5 mm), and ``run_postimplant`` with the true registration (the
registration's own time, benchmarked in bench_registration.py, is left out) and ``expected_seeds`` = the seeds
released (the ledger). Reported per draw: seeds missing from the ledger, seeds proposed, D90/V100/V150 on the
dose grid before and predicted after, the distance of the largest cold spot's centroid from the left-out seeds,
the time of the proposal (candidates + selection) and of the whole supplementary step (adds the no-go/skin
masks on the pre-plan CT and the dose recomputation with the seeds).

    python bench/bench_supplement.py [--cases neck:3,mediastinum:1] [--missing 5]

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
RX_GY = 140.0


def adjacent_seeds(pos: np.ndarray, rng, k: int) -> np.ndarray:
    """Indices of ``k`` adjacent seeds: a random seed and its k - 1 nearest."""
    first = int(rng.integers(len(pos)))
    return np.argsort(np.linalg.norm(pos - pos[first], axis=1))[:k]


def one_draw(ph, p, plan, ctv, draw: int, k: int) -> dict:
    pos, axes = plan.seed_positions_mm(), plan.seed_axes()
    rng = np.random.default_rng(draw)
    gone = adjacent_seeds(pos, rng, k)
    keep = np.setdiff1d(np.arange(len(pos)), gone)
    m = ph.random_rigid(rng, center_mm=p.node_center_mm, max_translation_mm=8.0, max_rotation_deg=4.0)
    scan = ph.postimplant_scan(p, pos[keep] + rng.normal(0, 0.5, (len(keep), 3)), axes[keep], motion=m)
    truth = np.array(scan.meta["truth"]["preplan_to_scan"])
    reg = RegistrationResult(fixed_to_moving=truth, metric=0.0, converged=True, estimated_error_mm=0.0, seconds=0.0)
    t = time.perf_counter()
    # the plan's own CTV, as `navigator postimplant` reads it from the plan's RTSTRUCT.dcm
    structures = {**p.structures, "CTV": ctv}
    res = run_postimplant(plan, p.ct, scan, structures, PostimplantOptions(expected_seeds=len(keep)), reg)
    r = res.result
    gap = pos[gone].mean(0) @ truth[:3, :3].T + truth[:3, 3]
    cold = np.linalg.norm(np.array(r["cold_spots"][0]["centroid_mm"]) - gap) if r["cold_spots"] else float("nan")
    return {"r": r, "total_s": time.perf_counter() - t, "cold_mm": cold, "found": len(r["seeds"])}


def main() -> None:
    from simulators import phantoms as ph

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="neck:3,mediastinum:1", help="case:draws,...")
    ap.add_argument("--missing", type=int, default=5, help="adjacent seeds left out per draw")
    a = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"python {platform.python_version()}; Rx {RX_GY:.0f} Gy, {a.missing} adjacent seeds left out per draw")
    print(f"{'case':>12} {'draw':>4} {'plan':>4} {'found':>5} {'miss':>4} {'prop':>4} {'D90 b/a Gy':>13} "
          f"{'V100 b/a %':>11} {'V150 b/a %':>11} {'V150 max':>8} {'cold mm':>7} {'cands':>5} "
          f"{'prop s':>6} {'step s':>6} {'all s':>5}  stop")
    for spec in a.cases.split(","):
        case, _, draws = spec.partition(":")
        p = ph.make_patient(case, seed=2)
        pr = make_plan(p.ct, p.structures, "GTV", None, RX_GY, "6711", SK_U)
        plan = pr.plan
        print(f"{case}: plan {len(plan.seeds)} seeds, D90 {plan.metrics['D90_gy']:.1f} Gy, "
              f"V100 {plan.metrics['V100_pct']:.1f} %, V150 {plan.metrics['V150_pct']:.1f} %")
        for draw in range(1, int(draws or 1) + 1):
            o = one_draw(ph, p, plan, pr.ctv_mask, draw, a.missing)
            r = o["r"]
            sup, m = r["supplementary"], r["metrics"]
            pm, ts = sup["predicted_metrics"], r["timing_s"]
            print(f"{case:>12} {draw:4d} {len(plan.seeds):4d} {o['found']:5d} {sup['missing_from_ledger']:4d} "
                  f"{sup['count']:4d} {m['D90_gy']:6.1f}/{pm['D90_gy']:6.1f} {m['V100_pct']:5.1f}/{pm['V100_pct']:5.1f} "
                  f"{m['V150_pct']:5.1f}/{pm['V150_pct']:5.1f} {sup['targets'].get('V150_max_pct', float('nan')):8.1f} "
                  f"{o['cold_mm']:7.1f} {sup['candidates']:5d} {ts['supplement_proposal']:6.2f} "
                  f"{ts['supplement_total']:6.2f} {o['total_s']:5.1f}  {sup['stop_reason']}")
            print(f"{'':>17} why: {sup['why']}")


if __name__ == "__main__":
    main()
