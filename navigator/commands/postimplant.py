"""``navigator postimplant --plan plan.json --preplan-ct DIR --ct DIR --out DIR [--expected-seeds N]
[--structures RS.dcm] [--delivery delivery.json] [--cold-spot-min-cc V] [--slice-profile box|gaussian]``

Finds the seeds in the post-implant CT, computes the delivered dose (TG-43 from the found seeds and their
axes), the metrics and cold spots, and proposes supplementary seeds (``navigator.postimplant.pipeline``).

The pre-plan structures: ``--structures RS.dcm``, else ``RTSTRUCT.dcm`` beside plan.json (``navigator plan``
writes it, with the CTV), else ``RS.dcm`` beside the pre-plan CT folder (a phantom case's layout). The
expected seed count: ``--expected-seeds``, else the ``released`` count of ``--delivery delivery.json``, else
the plan's seed count. Writes ``postimplant.json``, ``RTDOSE.dcm`` (delivered dose on the post-implant CT's
frame) and ``postimplant.html`` (comparison table, DVH pre vs post, isodoses on the CT with the cold spots
outlined and the proposed seeds marked).
"""

from __future__ import annotations

from pathlib import Path

from navigator.errors import InputError
from navigator.commands._common import Progress, add_ct_option, add_output_options, emit, number, read_ct, staged_out, warn
from navigator.io import write_json


PRODUCES = ('postimplant.json', 'RTDOSE.dcm', 'postimplant.html')  # every output; an earlier run's are replaced or removed


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="plan.json", help="the pre-plan (navigator plan)")
    add_ct_option(parser, "--preplan-ct", "the CT series the plan was made on")
    add_ct_option(parser, "--ct", "the post-implant CT series")
    parser.add_argument("--expected-seeds", type=number(1, 1000, integer=True), metavar="N", help="seeds delivered (default: the plan's count)")
    parser.add_argument("--delivery", metavar="delivery.json", help="delivery record: its 'released' count is expected")
    parser.add_argument("--structures", metavar="RS.dcm",
                        help="pre-plan RT Structure Set (default: RTSTRUCT.dcm beside plan.json)")
    parser.add_argument("--cold-spot-min-cc", type=number(0, 100, "cc", above=True), default=0.05,
                        help="cold regions smaller than this are dropped (cc, default 0.05)")
    parser.add_argument("--slice-profile", choices=("box", "gaussian"), default=None,
                        help="the scanner's slice sensitivity profile for seed z fitting (default: measured on "
                             "the scan's isolated seeds; given, it wins over the measurement)")
    add_output_options(parser)


def _structures_path(args) -> Path:
    if args.structures:
        return Path(args.structures)
    for cand in (Path(args.plan).parent / "RTSTRUCT.dcm", Path(args.preplan_ct).parent / "RS.dcm"):
        if cand.exists():
            return cand
    raise InputError(f"no pre-plan structure set: give --structures RS.dcm (looked for RTSTRUCT.dcm beside "
                     f"{args.plan} and RS.dcm beside {args.preplan_ct}); the CTV and OARs come from it")


def _expected(args, plan) -> int | None:
    if args.expected_seeds is not None:
        if args.expected_seeds < 1:
            raise InputError(f"--expected-seeds {args.expected_seeds}: give the number of seeds released (>= 1)")
        return int(args.expected_seeds)
    if args.delivery:
        from navigator.core.models import DeliveryFile, load

        record, _ = load(DeliveryFile, args.delivery, "--delivery")
        return int(record.released)
    return None    # no ledger count: the pipeline expects the plan's count and reports no ledger shortfall


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    from navigator.io.dicom import write_rtdose
    from navigator.core.plan import Plan
    from navigator.postimplant.pipeline import PostimplantOptions, run_postimplant
    from navigator.imaging.seed_finding import SeedFindingSettings
    from navigator.io.dicom import read_structure_set

    if not args.cold_spot_min_cc >= 0:
        raise InputError(f"--cold-spot-min-cc {args.cold_spot_min_cc} cc must be >= 0")
    plan = Plan.load(args.plan)
    progress = Progress(enabled=not args.json)
    progress.step("loading the CT series")
    preplan_ct = read_ct(args, "--preplan-ct")
    post_ct = read_ct(args, "--ct")
    structures = read_structure_set(_structures_path(args), ct=preplan_ct)
    opts = PostimplantOptions(expected_seeds=_expected(args, plan), cold_spot_min_cc=args.cold_spot_min_cc,
                              seed_finding=SeedFindingSettings(slice_profile=args.slice_profile),
                              progress=progress.step)
    from navigator.anatomy.structures import contour_warnings

    warnings = warn("postimplant", contour_warnings(structures, preplan_ct))
    res = run_postimplant(plan, preplan_ct, post_ct, structures, opts)
    r = res.result
    r["warnings"] = warnings + list(r.get("warnings", []))

    progress.step("writing RTDOSE.dcm and postimplant.html")
    write_rtdose(out / "RTDOSE.dcm", res.dose, post_ct, comment="post-implant dose, found seeds")
    write_json(out / "postimplant.json", r)
    (out / "postimplant.html").write_text(render_html(res, post_ct))

    m, pm = r["metrics"], r["supplementary"]["predicted_metrics"]
    lines = [f"postimplant: {len(r['seeds'])} seeds found (expected {r['expected_seeds']}), "
             f"D90 {m['D90_gy']:.1f} Gy, V100 {m['V100_pct']:.1f} % (Rx {r['prescription_gy']:.0f} Gy)",
             f"cold spots: {len(r['cold_spots'])} (>= {r['cold_spot_threshold_cc']} cc)"
             + (f", largest {r['cold_spots'][0]['volume_cc']:.2f} cc" if r["cold_spots"] else ""),
             f"supplementary: {len(r['supplementary']['seeds'])} seed(s) -> D90 {pm['D90_gy']:.1f} Gy, "
             f"V100 {pm['V100_pct']:.1f} %, V150 {pm['V150_pct']:.1f} % ({r['supplementary']['stop_reason']})",
             f"  why: {r['supplementary']['why']}"]
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines.append(f"written: {final / 'postimplant.json'}, {final / 'RTDOSE.dcm'}, {final / 'postimplant.html'}")
    emit(args, r, "\n".join(lines))
    return 0


# --- report ---------------------------------------------------------------------------------------------
def render_html(res, post_ct) -> str:
    """postimplant.html of this evaluation on the post-implant CT ``post_ct``, built by
    ``navigator.report.pages.postimplant``."""
    from navigator.report.pages import PostimplantImages, postimplant_page

    return postimplant_page(res.result, PostimplantImages.from_result(res, post_ct))
