"""``python -m simulators.cohort write --patients N --seed S --out DIR [options]``: a synthetic cohort on disk
(DIR/studies/, DIR/outcomes.csv, DIR/truth.json) and the ``navigator cohort`` command that analyses it."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    from .model import CohortSpec

    d = CohortSpec()
    parser = argparse.ArgumentParser(prog="python -m simulators.cohort",
                                     description="Synthetic cohort: a messy PACS export + truth.json + outcomes.csv")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write DIR/studies/, DIR/outcomes.csv and DIR/truth.json")
    w.add_argument("--patients", type=int, default=d.patients)
    w.add_argument("--seed", type=int, default=d.seed)
    w.add_argument("--out", required=True)
    w.add_argument("--cutoff-gy", type=float, default=d.cutoff_d90_gy, help="the true D90 cut-off (Gy)")
    w.add_argument("--width-gy", type=float, default=d.response_width_gy, help="logistic scale of the response")
    w.add_argument("--node-mm", type=float, nargs=2, default=d.node_diameter_mm, metavar=("MIN", "MAX"),
                   help="node diameters drawn uniformly in this range (mm)")
    w.add_argument("--slices", type=int, default=d.n_slices, help="slices of each post-implant CT")
    w.add_argument("--matrix", type=int, default=d.matrix, help="columns = rows of each CT slice")
    w.add_argument("--plan-fraction", type=float, default=d.plan_fraction, help="share of studies with an RT Plan")
    w.add_argument("--broken", default="", help="comma list of truncated_ct, no_target, no_structures")
    w.add_argument("--orphans", type=int, default=0, help="outcome rows of patients with no study")
    args = parser.parse_args(argv)

    from .writer import write_cohort

    try:
        spec = CohortSpec(patients=args.patients, seed=args.seed, cutoff_d90_gy=args.cutoff_gy,
                          response_width_gy=args.width_gy, node_diameter_mm=tuple(args.node_mm), n_slices=args.slices,
                          matrix=args.matrix, plan_fraction=args.plan_fraction,
                          broken=tuple(b for b in args.broken.split(",") if b), orphan_outcomes=args.orphans)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    written = write_cohort(spec, args.out, progress=lambda i, n: print(f"  patient {i}/{n}", flush=True))
    ps = written.truth["patients"]
    d90 = sorted(p["d90_gy"] for p in ps)
    print(f"wrote {len(ps)} studies under {written.studies_dir} ({sum(p['has_rt_plan'] for p in ps)} with an RT Plan, "
          f"{sum(p['broken'] is not None for p in ps)} broken), {written.outcomes_path}, {written.truth_path}; "
          f"true D90 {d90[0]:.1f}-{d90[-1]:.1f} Gy around the cut-off {spec.cutoff_d90_gy:g} Gy; "
          f"{time.perf_counter() - t0:.1f} s")
    print("analyse with: navigator cohort --studies " + str(written.studies_dir) + " --outcomes "
          + str(written.outcomes_path) + " " + " ".join(written.command_options()) + " --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
