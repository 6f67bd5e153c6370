"""``navigator needles --plan plan.json --preplan-ct DIR --ct DIR --out DIR [--tolerance-mm 2]
[--structures RS.dcm] [--ctv NAME] [--registration registration.json] [--needles ID,...]``

Finds the needles in an intraop CT and compares each with the plan: registration (pre-plan -> intraop),
needle finding along the mapped tracks, deviation per needle (tip error, lateral, depth, angle), the dose
impact on the CTV's D90, and advice. Writes ``needles.json`` (cli-contract.md), ``registration.json`` and
``needles.html``. Exit 3 when a needle is out of tolerance or not found (the JSON is still written).

The CTV for the dose impact is read from ``--structures`` (default: ``RTSTRUCT.dcm`` beside plan.json, as
``navigator plan`` writes it); without one, the plan's prescription isodose stands in for it (said in the JSON).
"""

from __future__ import annotations

from pathlib import Path

from navigator.errors import ClinicalCheckFailed, InputError, RegistrationError
from navigator.commands._common import (Progress, add_ct_option, add_output_options, ctv_structure_set, emit,
                                       number, read_ct, staged_out)
from navigator.io import write_json


PRODUCES = ('registration.json', 'needles.json', 'needles.html')  # every output; an earlier run's are replaced or removed


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="plan.json", help="the pre-plan (navigator plan)")
    add_ct_option(parser, "--preplan-ct", "the CT series the plan was made on")
    add_ct_option(parser, "--ct", "the intraop CT series with the needles")
    parser.add_argument("--tolerance-mm", type=number(0, 20, "mm", above=True), default=2.0, help="tip error tolerance, mm (default 2)")
    parser.add_argument("--structures", metavar="RS.dcm", help="RT Structure Set with the CTV (default: beside plan)")
    parser.add_argument("--ctv", default="CTV", help="CTV structure name (default CTV)")
    parser.add_argument("--registration", metavar="registration.json",
                        help="use this registration (navigator register) instead of registering again")
    parser.add_argument("--metal-hu", type=number(300, 30000, "HU"), default=None, help="needle metal threshold, HU (1500)")
    parser.add_argument("--needles", metavar="ID,ID,...",
                        help="check only these needles (those inserted so far); the dose impact still uses every "
                             "planned seed")
    add_output_options(parser)


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    from navigator.core.plan import Plan
    from navigator.intraop.check import CheckOptions, check_inputs, check_needles, ctv_points, register_to_plan

    wanted = tuple(v.strip() for v in args.needles.split(",") if v.strip()) if args.needles else None
    options = CheckOptions(tolerance_mm=args.tolerance_mm, metal_hu=args.metal_hu, needle_ids=wanted)
    prog = Progress(enabled=not args.json)
    plan = Plan.load(args.plan)
    prog.step(f"loading the pre-plan CT {args.preplan_ct}")
    pre = read_ct(args, "--preplan-ct")
    prog.step(f"loading the intraop CT {args.ct}")
    ct = read_ct(args, "--ct")
    check_inputs(plan, pre, ct, plan_name=f"--plan {args.plan}", preplan_name=f"--preplan-ct {args.preplan_ct}",
                 intraop_name=f"--ct {args.ct}")

    if args.registration:
        reg = _read_registration(args.registration, pre)
    else:
        prog.step("registering the intraop CT to the pre-plan CT around the target")
        try:
            reg = register_to_plan(plan, pre, ct)
        except RegistrationError as exc:
            if getattr(exc, "result", None) is not None:
                write_json(out / "registration.json", exc.result.to_json())
            raise
    write_json(out / "registration.json", reg.to_json())

    prog.step(f"finding {len(plan.needles)} needles; dose impact of each (TG-43, CTV D90)")
    _, ctv, rs = ctv_structure_set(args)
    pts, note = ctv_points(plan, ctv, pre.frame_of_reference_uid)
    check = check_needles(plan, ct, reg, pts, note or f"structure {args.ctv} of {rs}", options,
                          intraop_name=f"--ct {args.ct}")
    data = check.to_json()
    write_json(out / "needles.json", data)
    prog.step("writing needles.html")
    devs = check.deviations
    (out / "needles.html").write_text(_html(data, ct, plan))

    out_of_tol = check.out_of_tolerance
    lines = [f"{d.needle_id:>5}: " + (f"tip error {d.tip_error_mm:4.1f} mm (lateral {d.lateral_mm:.1f}, depth "
                                       f"{d.depth_mm:+.1f}, angle {d.angle_deg:.1f} deg) " if d.found else "")
             + d.advice for d in devs]
    emit(args, data, "\n".join(lines) + f"\n{len(out_of_tol)} of {len(devs)} needles need action; "
                                        f"wrote {final / 'needles.json'} and {final / 'needles.html'}")
    if out_of_tol:
        raise ClinicalCheckFailed(
            f"{len(out_of_tol)} of {len(devs)} needles are out of the {args.tolerance_mm:g} mm tolerance or not found ("
            + ", ".join(d.needle_id for d in out_of_tol) + f"); see {final / 'needles.json'} for the advice")
    return 0


def _read_registration(path, pre):
    from navigator.core.models import RegistrationFile, load
    from navigator.imaging.registration import RegistrationResult

    _, raw = load(RegistrationFile, path, "--registration")
    reg = RegistrationResult.from_json(raw)
    if reg.fixed_frame_of_reference_uid and reg.fixed_frame_of_reference_uid != pre.frame_of_reference_uid:
        raise InputError(f"--registration {path} was made from frame of reference "
                         f"{reg.fixed_frame_of_reference_uid}, not the pre-plan CT's {pre.frame_of_reference_uid}")
    return reg



# --- report -------------------------------------------------------------------------------------------------


def _html(data: dict, ct, plan) -> str:
    """needles.html of this check (``data``: needles.json) on the intraop ``ct``, built by
    ``navigator.report.pages.needles``."""
    from navigator.report.pages import needles_page

    return needles_page(data, ct, plan)
