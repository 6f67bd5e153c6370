"""``navigator rehearse [--out DIR] [--seed N] [--case NAME] [--device URL]``: the main job.

A whole simulated procedure on a synthetic patient, through the live path by default
(``navigator.rehearsal.live_path``: the service receives every scan by DICOM and the simulated physicist acts
through its HTTP API); ``--in-process`` calls each step in this process instead (``navigator.rehearsal.driver``).
Running it again on the same ``--out`` resumes from the journal (after a crash or a kill): the device is
reconciled first and no seed is released twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

from navigator.errors import InputError
from navigator.commands._common import Progress, emit, number
from navigator.io import write_json


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="out/rehearsal", help="output folder (default out/rehearsal)")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=1, help="random seed: same seed, same rehearsal (default 1)")
    parser.add_argument("--case", default="neck", help="phantom case (python -m simulators.phantoms list)")
    parser.add_argument("--device", metavar="URL", default=None,
                        help="drive this applicator instead of the built-in simulator (socket://HOST:PORT, ...)")
    parser.add_argument("--rx-gy", type=number(0, 1000, "Gy", above=True), default=120.0, help="prescription (matched peripheral dose), Gy")
    parser.add_argument("--seed-activity-mci", type=number(0, 20, "mCi", above=True), default=0.5, dest="activity_mci",
                        help="apparent activity per seed, mCi (default 0.5)")
    parser.add_argument("--seed-model", default="6711", help="seed model (6711 or IAI-125A)")
    parser.add_argument("--skip-needles", type=number(0, 50, integer=True), default=0, metavar="N",
                        help="rehearse abandoned needles: leave out the N needles with the most seeds (a cold region "
                             "for the supplementary-seed loop; default 0)")
    path = parser.add_mutually_exclusive_group()
    path.add_argument("--live", action="store_true",
                      help="through the live path (the default): `navigator serve` receives every scan by DICOM "
                           "C-STORE and the simulated physicist acts through its HTTP API (OUT/live/)")
    path.add_argument("--in-process", action="store_true",
                      help="without the service: each step called in this process on the scans' folders (no DICOM "
                           "network, no HTTP; faster, and the path the journal's crash tests kill at random)")
    parser.add_argument("--watch", action="store_true",
                        help="--live at a human pace, printing the console's URL and login so a team can follow "
                             "the rehearsal in a browser")
    parser.add_argument("--pace-s", type=number(0, 600, "s"), default=None,
                        help="with --watch: seconds before each step (default 4)")
    parser.add_argument("--http-port", type=number(0, 65535, integer=True), default=None,
                        help="with --live/--watch: the console's port on 127.0.0.1 (default: 8080 with --watch, else any "
                             "free port)")
    parser.add_argument("--json", action="store_true", help="print rehearsal.json to stdout instead of a summary")


def run(args) -> int:
    from simulators.phantoms import list_cases

    from navigator.rehearsal.driver import Rehearsal, RehearsalOptions
    from navigator.rehearsal.report import write_report

    if args.case not in list_cases():
        raise InputError(f"--case {args.case!r}: no such phantom case; choose one of {', '.join(list_cases())}")
    if args.rx_gy <= 0:
        raise InputError(f"--rx-gy {args.rx_gy}: the prescription must be > 0 Gy (typically 110-160 Gy)")
    out = Path(args.out)
    progress = Progress(enabled=True)
    opts = RehearsalOptions(out=out, case=args.case, seed=args.seed, device_url=args.device, rx_gy=args.rx_gy,
                            activity_mci=args.activity_mci, seed_model=args.seed_model, progress=progress.step,
                            skip_needles=max(0, args.skip_needles))
    if args.watch and args.in_process:
        raise InputError("--watch follows the rehearsal in the console of the live service: leave out --in-process")
    if not args.in_process:
        from navigator.rehearsal.live_path import LiveRehearsal

        def announce(text: str) -> None:  # on stderr with the progress: stdout stays for the result (--json)
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

        rehearsal = LiveRehearsal(opts, pace_s=(4.0 if args.pace_s is None else args.pace_s) if args.watch else 0.0,
                                  http_port=args.http_port if args.http_port is not None else (8080 if args.watch else 0),
                                  series_quiet_s=1.0 if args.watch else 0.5,
                                  announce=announce if args.watch else None)
    else:
        rehearsal = Rehearsal(opts)
    try:
        result = rehearsal.run()
    finally:
        rehearsal.stop_device()
    write_json(out / "rehearsal.json", result)
    progress.step("writing report.html ...")
    write_report(out, result)
    pre, post, final = result["preplan_metrics"], result["postimplant_metrics"], result["final_metrics"]
    summary = (
        f"rehearsal of case {result['case']} (seed {result['seed']}), prescription {result['prescription_gy']:.0f} Gy\n"
        f"  seeds: {result['seeds_planned']} planned, {result['seeds_released']} released, "
        f"{result['supplementary_seeds']} supplementary; device counted {result['device_released_total']}\n"
        f"  D90: pre-plan {pre['D90_gy']:.1f} Gy -> post-implant {post['D90_gy']:.1f} Gy -> "
        f"final {final['D90_gy']:.1f} Gy\n"
        f"  V100: {pre['V100_pct']:.1f} % -> {post['V100_pct']:.1f} % -> {final['V100_pct']:.1f} %\n"
        f"  needle scans: " + ", ".join(f"{s['scan']} #{s['round']}: {s['out_of_tolerance']}/{s['needles']} out"
                                        for s in result["needle_scans"]) + "\n"
        f"  {result['seconds']:.0f} s; report: {out / 'report.html'}")
    emit(args, result, summary)
    return 0
