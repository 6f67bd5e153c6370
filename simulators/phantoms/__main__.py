"""``python -m simulators.phantoms write --case NAME --seed N --out DIR`` | ``list`` (cli-contract.md)."""

from __future__ import annotations

import argparse
import sys
import time

from navigator.errors import NavigatorError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.phantoms",
                                     description="Synthetic patients (CT + RT Structure Set + truth.json).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name the catalogue's cases")
    w = sub.add_parser("write", help="write DIR/preplan/ct/, DIR/preplan/RS.dcm and DIR/truth.json")
    w.add_argument("--case", required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True)
    w.add_argument("--node-diameter-mm", type=float, default=None, help="override the case's node size (5-60)")
    w.add_argument("--slice-mm", type=float, default=None, help="override the pre-plan slice spacing")
    w.add_argument("--n-slices", type=int, default=None, help="override the number of pre-plan slices")
    w.add_argument("--scanner", default=None, help="scanner preset of the pre-plan CT (sim_a, vendor_b, ...)")
    args = parser.parse_args(argv)

    from . import CASES, write_case

    if args.command == "list":
        width = max(len(n) for n in CASES)
        for name, spec in CASES.items():
            print(f"{name:<{width}}  {spec.description}")
        return 0
    options = {}
    if args.node_diameter_mm is not None:
        options["node_diameter_mm"] = args.node_diameter_mm
    if args.slice_mm is not None:
        options["slice_mm"] = args.slice_mm
    if args.n_slices is not None:
        options["n_slices"] = args.n_slices
    if args.scanner is not None:
        options["scanner"] = args.scanner
    t0 = time.perf_counter()
    try:
        print(f"making case {args.case!r} seed {args.seed} ...", flush=True)
        written = write_case(args.case, args.seed, args.out, **options)
    except NavigatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    ct = written.patient.ct
    truth = written.patient.truth()
    print(f"wrote {written.ct_dir} ({ct.shape_ijk[2]} slices, {ct.spacing_mm[0]:.3f} x {ct.spacing_mm[1]:.3f} x "
          f"{ct.spacing_mm[2]:.2f} mm), {written.rtstruct_path} ({len(written.patient.structures)} structures), "
          f"{written.truth_path}; GTV {truth['structures']['GTV']['volume_cc']:.2f} cc; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
