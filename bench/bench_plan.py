"""Benchmark: pre-planning time of ``make_plan`` for a ~30 cc target (issue #5: <= 10 s on 2 cores).

Cases: synthetic neck patients (simulators.phantoms) whose node size gives a CTV of ~30 cc, and one whose
GTV itself is ~30 cc (CTV ~60 cc); optionally the real STS CTs (--sts). The first plan in a process also
loads numba's cached kernels; it is reported separately ("cold"), then each case is timed warm.

    python bench/bench_plan.py [--repeat 3] [--sts]

Prints a table with the machine details (platform.processor(), os.cpu_count(), NUMBA_NUM_THREADS).
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

RX_GY = 120.0
SK_U = tg43.sk_u_from(activity_mci=0.5)


def _cases(with_sts: bool):
    from simulators import phantoms

    p = phantoms.make_patient("neck", seed=0)  # 30 mm node: GTV 13.8 cc, CTV ~33 cc
    yield "neck 30 mm node (CTV ~30 cc)", p.ct, p.structures, "GTV"
    p = phantoms.make_patient("neck", seed=1, node_diameter_mm=38.5)  # GTV ~30 cc
    yield "neck 38.5 mm node (GTV ~30 cc)", p.ct, p.structures, "GTV"
    if with_sts:
        from navigator.io.dicom import load_ct_series
        from navigator.io.dicom import read_structure_set

        for case in ("STS_001", "STS_004"):
            d = Path(__file__).resolve().parents[2] / "shared/data/ibsi-sts-ct" / case
            ct = load_ct_series(d / "ct")
            yield f"{case} sarcoma (real CT)", ct, read_structure_set(d / "RS.dcm", ct), "GTV_Mass_CT"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sts", action="store_true", help="also the real sarcoma CTs (~500 cc CTVs)")
    args = ap.parse_args()
    import numba

    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"numba threads = {numba.get_num_threads()}, python {platform.python_version()}, "
          f"affinity = {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores")
    rows = []
    cold_done = False
    for name, ct, st, target in _cases(args.sts):
        times = []
        res = None
        for r in range(args.repeat + (0 if cold_done else 1)):
            t0 = time.perf_counter()
            res = make_plan(ct, st, target, None, RX_GY, "6711", SK_U)
            dt = time.perf_counter() - t0
            if not cold_done:
                rows.append((name + " [cold: first call]", res, [dt]))
                cold_done = True
                continue
            times.append(dt)
        rows.append((name, res, times))
    print()
    hdr = f"{'case':44s} {'CTV cc':>7s} {'seeds':>5s} {'needles':>7s} {'D90 Gy':>7s} {'V100%':>6s} {'V150%':>6s} " \
          f"{'all ok':>6s} {'median s':>8s} {'min s':>6s}"
    print(hdr)
    print("-" * len(hdr))
    for name, res, times in rows:
        m = res.plan.metrics
        print(f"{name:44s} {m['ctv_cc']:7.1f} {len(res.plan.seeds):5d} {len(res.plan.needles):7d} "
              f"{m['D90_gy']:7.1f} {m['V100_pct']:6.1f} {m['V150_pct']:6.1f} {str(res.checks['all_ok']):>6s} "
              f"{np.median(times):8.2f} {min(times):6.2f}")
    print("\nGoal (issue #5): a 30 cc target planned in <= 10 s on 2 cores.")


if __name__ == "__main__":
    main()
