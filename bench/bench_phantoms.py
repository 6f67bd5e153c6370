"""How long one synthetic case takes: pre-plan CT (+ structures) + intraop CT with 20 needles + post-implant CT
with 60 seeds, with rigid motion and a smooth deformation. Run by hand:

    python bench/bench_phantoms.py [--cases neck mediastinum] [--repeat 2] [--pictures docs/img]

The first call of a process also loads the compiled kernels from numba's cache (compiles them if the cache is
cold); it is reported apart. ``--pictures DIR`` writes an axial slice through the node of each CT kind.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulators import phantoms as ph  # noqa: E402


def one_case(case: str, seed: int):
    times = {}
    t0, c0 = time.perf_counter(), time.process_time()
    p = ph.make_patient(case, seed)
    times["preplan"] = (time.perf_counter() - t0, time.process_time() - c0)
    rng = np.random.default_rng(seed)
    needles, seeds, axes = ph.demo_implant(p, n_needles=20, seeds_per_needle=3)
    draws = ph.draw_needles(needles, ph.NeedleErrorModel(1.0, 1.5, 2.0), rng)
    motion = ph.Motion(ph.random_rigid(rng, 15.0, 8.0, center_mm=p.node_center_mm),
                       ph.random_deformation(rng, p.node_center_mm))
    t0, c0 = time.perf_counter(), time.process_time()
    io = ph.intraop_scan(p, [(d.entry_mm, d.tip_mm) for d in draws], motion=motion)
    times["intraop (20 needles)"] = (time.perf_counter() - t0, time.process_time() - c0)
    motion2 = ph.Motion(ph.random_rigid(rng, 15.0, 8.0, center_mm=p.node_center_mm),
                        ph.random_deformation(rng, p.node_center_mm))
    t0, c0 = time.perf_counter(), time.process_time()
    post = ph.postimplant_scan(p, seeds, axes, motion=motion2)
    times["postimplant (60 seeds)"] = (time.perf_counter() - t0, time.process_time() - c0)
    times["total"] = tuple(sum(v[i] for v in times.values()) for i in range(2))
    return times, (p, io, post)


def pictures(case: str, scans, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, io, post = scans
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, vol in (("preplan", p.ct), ("intraop", io), ("postimplant", post)):
        c = np.asarray(vol.meta.get("truth", {}).get("node_center_mm", p.node_center_mm))
        k0 = int(round(vol.lps_to_ijk(c)[2]))
        k = k0
        if kind != "preplan":   # the slice near the node centre showing the most metal
            near = range(max(0, k0 - 3), min(vol.array.shape[0], k0 + 4))
            k = max(near, key=lambda kk: int((vol.array[kk] > 2500).sum()))
        fig, ax = plt.subplots(figsize=(6.4, 6.4 * vol.array.shape[1] / vol.array.shape[2]), dpi=100)
        ax.imshow(vol.array[k], cmap="gray", vmin=-160, vmax=240, interpolation="nearest")
        if kind == "preplan":
            ax.contour(p.structures["GTV"][k], levels=[0.5], colors="r", linewidths=0.8)
        z = vol.ijk_to_lps([0, 0, k])[2]
        ax.set_title(f"{case} {kind}: slice {k}, z = {z:.1f} mm, {vol.spacing_mm[0]:.2f} x {vol.spacing_mm[1]:.2f} x "
                     f"{vol.spacing_mm[2]:.2f} mm (W400 L40)", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        path = out_dir / f"phantom_{case}_{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["neck", "mediastinum"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pictures", type=Path, default=None)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"affinity={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}, python {platform.python_version()}")
    t0 = time.perf_counter()
    ph.make_patient("neck_small", 0, n_slices=4)
    print(f"first call (loads/compiles the kernels): {time.perf_counter() - t0:.1f} s")
    print(f"{'case':<14}{'run':>4}  {'step':<24}{'wall s':>8}{'cpu s':>8}")
    for case in args.cases:
        for r in range(args.repeat):
            times, scans = one_case(case, args.seed)
            for step, (wall, cpu) in times.items():
                print(f"{case:<14}{r:>4}  {step:<24}{wall:>8.2f}{cpu:>8.2f}")
        if args.pictures:
            for path in pictures(case, scans, args.pictures):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
