"""``navigator register --fixed DIR --moving DIR --out DIR [--plan plan.json | --region-centre-mm X,Y,Z]
[--region-half-mm R] [--metal-hu H]``

Rigid registration of the intraop CT (moving) to the pre-plan CT (fixed) around the target. The target
region is the plan's needle tips and seeds when ``--plan`` is given, else ``--region-centre-mm``, else the
centre of the fixed scan. Writes ``registration.json`` (cli-contract.md), also when the registration is
refused (``converged``/``refusal`` say why; exit 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from navigator.errors import InputError, RegistrationError
from navigator.commands._common import Progress, add_ct_option, add_output_options, emit, number, read_ct, staged_out
from navigator.io import write_json


PRODUCES = ('registration.json',)  # every output; an earlier run's are replaced or removed


def add_arguments(parser) -> None:
    add_ct_option(parser, "--fixed", "pre-plan CT series folder (fixed)")
    add_ct_option(parser, "--moving", "intraop CT series folder (moving)")
    parser.add_argument("--plan", metavar="plan.json", help="plan on the fixed CT: registers around its target")
    parser.add_argument("--region-centre-mm", metavar="X,Y,Z", help="target region centre, fixed LPS mm")
    parser.add_argument("--region-half-mm", type=number(10, 250, "mm"), default=None, help="target region half-size, mm (45)")
    parser.add_argument("--metal-hu", type=number(300, 30000, "HU"), default=None, help="metal threshold masked out of the metric (2000)")
    add_output_options(parser)


def parse_xyz(text: str, option: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in str(text).split(",")])
    except ValueError:
        v = np.zeros(0)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError(f"{option} {text!r}: give three numbers in mm separated by commas, e.g. 12.5,-40,110")
    return v


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    from navigator.core.plan import Plan, target_region
    from navigator.imaging.registration import register_rigid

    prog = Progress(enabled=not args.json)
    prog.step(f"loading the pre-plan CT {args.fixed}")
    fixed = read_ct(args, "--fixed")
    prog.step(f"loading the intraop CT {args.moving}")
    moving = read_ct(args, "--moving")
    region = None
    if args.plan:
        plan = Plan.load(args.plan)
        if plan.frame_of_reference_uid and fixed.frame_of_reference_uid \
                and plan.frame_of_reference_uid != fixed.frame_of_reference_uid:
            raise InputError(
                f"--plan {args.plan} is in frame of reference {plan.frame_of_reference_uid} but --fixed {args.fixed} "
                f"is in {fixed.frame_of_reference_uid}; give the pre-plan CT the plan was made on")
        centre, half = target_region(plan)
        region = (centre, args.region_half_mm or half)
    elif args.region_centre_mm:
        region = (parse_xyz(args.region_centre_mm, "--region-centre-mm"), args.region_half_mm or 45.0)
    prog.step("registering (rigid, around the target)")
    try:
        result = register_rigid(fixed, moving, region_mm=region, metal_hu=args.metal_hu)
    except RegistrationError as exc:
        res = getattr(exc, "result", None)
        if res is not None:
            write_json(out / "registration.json", res.to_json())
        raise
    data = result.to_json()
    write_json(out / "registration.json", data)
    t = result.translation_at_centre_mm  # the patient's shift at the target (not at the DICOM origin)
    emit(args, data,
         f"registration: rotation {result.rotation_deg:.2f} deg, shift at the target [{t[0]:.2f}, {t[1]:.2f}, "
         f"{t[2]:.2f}] mm, "
         f"estimated error {result.estimated_error_mm:.2f} mm, {result.seconds:.1f} s\n"
         f"wrote {final / 'registration.json'}")
    return 0
