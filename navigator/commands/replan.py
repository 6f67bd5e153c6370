"""``navigator replan --plan plan.json --needles needles.json --preplan-ct DIR [--structures RS.dcm] [--ctv NAME]
[--rtplan RP.dcm] [--max-seeds N] [--hot-slack-pct P] --out DIR``

Intraoperative re-plan (issue #15): keeps every needle of the check (``navigator needles``) where it was found,
mapped back to the pre-plan frame through the check's registration, drops the needles not found, and
re-optimises which seeds go where along them (``navigator.planning.replan``). The CTV and the organs at risk
come from ``--structures``, else ``RTSTRUCT.dcm`` beside plan.json (``navigator plan`` writes it, with the
CTV); the plan revised is ``--rtplan``, else ``RTPLAN.dcm`` beside plan.json. Writes ``replan.json``,
``plan.json`` (the revision: a plan.json like any other, ``revision`` and ``based_on_sop_instance_uid``
added; ``navigator deliver`` takes it), ``RTPLAN.dcm`` (referencing the revised plan through
ReferencedRTPlanSequence) and ``replan.html``. Exit 0 when the revision meets its goals, 3 when it was written
but misses one (named on stderr), 2 on bad input (``--out`` untouched).
"""

from __future__ import annotations

import time
from pathlib import Path

from navigator.commands._common import (
    Progress,
    add_ct_option,
    add_output_options,
    ctv_structure_set,
    emit,
    number,
    read_ct,
    staged_out,
)
from navigator.errors import ClinicalCheckFailed, InputError
from navigator.io import write_json, write_text

PRODUCES = ("replan.json", "plan.json", "RTPLAN.dcm", "replan.html")  # an earlier run's are replaced or removed
REVISION_SERIES_STEP = 10   # the revision's series number: the revised plan's + this


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="plan.json", help="the plan to revise (navigator plan)")
    parser.add_argument("--needles", required=True, metavar="needles.json",
                        help="the check of all needles (navigator needles), of this plan")
    add_ct_option(parser, "--preplan-ct", "the CT series the plan was made on")
    parser.add_argument("--structures", metavar="RS.dcm",
                        help="RT Structure Set with the CTV and the organs at risk (default: RTSTRUCT.dcm beside plan)")
    parser.add_argument("--ctv", default="CTV", help="CTV structure name (default CTV)")
    parser.add_argument("--rtplan", metavar="RP.dcm",
                        help="the RT Plan of --plan, which the revision references (default: RTPLAN.dcm beside plan)")
    parser.add_argument("--max-seeds", type=number(1, 1000, integer=True), default=None, metavar="N",
                        help="seeds in the cartridge (default: the plan's count)")
    parser.add_argument("--hot-slack-pct", type=number(0, 50, "%"), default=5.0, metavar="P",
                        help="V150 and V200 may exceed the pre-plan's by this many percentage points (default 5)")
    add_output_options(parser)


def run(args) -> int:
    with staged_out(args, PRODUCES) as out:
        return _run(args, out, Path(args.out))


def _run(args, out: Path, final: Path) -> int:
    from navigator.core.models import NeedleCheckFile, load
    from navigator.core.plan import Plan
    from navigator.planning.as_found import needles_as_found
    from navigator.planning.replan import ReplanOptions, replan

    t0 = time.perf_counter()
    prog = Progress(enabled=not args.json)
    plan = Plan.load(args.plan)
    _, check = load(NeedleCheckFile, args.needles, "--needles")
    found = needles_as_found(plan, check, f"--needles {args.needles}")
    prog.step(f"loading the pre-plan CT {args.preplan_ct}")
    pre = read_ct(args, "--preplan-ct")
    if plan.frame_of_reference_uid != pre.frame_of_reference_uid:
        raise InputError(f"--plan {args.plan} is in frame of reference {plan.frame_of_reference_uid} but --preplan-ct "
                         f"{args.preplan_ct} is in {pre.frame_of_reference_uid}: give the CT the plan was made on")
    original = _original_rtplan(args, plan, pre)
    anatomy, rs = _anatomy(args, plan, pre)
    opts = ReplanOptions(max_seeds=args.max_seeds, hot_slack_pct=args.hot_slack_pct, progress=prog.step)
    res = replan(plan, found, anatomy, opts, based_on_sop_instance_uid=original["sop_instance_uid"])
    rev = res.plan
    rev.check("the revision")

    prog.step("writing RTPLAN.dcm, plan.json, replan.json and replan.html")
    _write_rtplan(out / "RTPLAN.dcm", rev, pre, rs, anatomy.ctv, original)
    rev.extra["files"] = {"rtplan": "RTPLAN.dcm", "based_on": str(original["path"])}
    write_json(out / "plan.json", rev.to_dict())
    data = res.to_json()
    data.update({"ctv_source": anatomy.ctv_source, "plan": str(Path(args.plan)),
                 "needles_json": str(Path(args.needles)), "command_seconds": round(time.perf_counter() - t0, 2)})
    write_json(out / "replan.json", data)
    write_text(out / "replan.html", _html(res, data))

    emit(args, data, _summary(res, final))
    failed = [k for k, v in res.checks.items() if isinstance(v, dict) and not v.get("ok", True)]
    if failed:
        raise ClinicalCheckFailed(f"the revision misses {', '.join(failed)} (see {final / 'replan.json'} checks); "
                                  "review it before delivery, or use the plan as placed")
    return 0


def _original_rtplan(args, plan, pre) -> dict:
    """The RT Plan the revision revises: ``--rtplan``, else RTPLAN.dcm beside plan.json; of this patient/frame."""
    from navigator.io.dicom.rtplan import rtplan_identity

    path = Path(args.rtplan) if args.rtplan else Path(args.plan).resolve().parent / "RTPLAN.dcm"
    if not path.exists():
        raise InputError(f"{'--rtplan ' if args.rtplan else ''}{path}: RT Plan not found; the revision must reference "
                         "the RT Plan it revises: give --rtplan (the RTPLAN.dcm `navigator plan` wrote)")
    ident = rtplan_identity(path)
    if ident["frame_of_reference_uid"] and ident["frame_of_reference_uid"] != plan.frame_of_reference_uid:
        raise InputError(f"--rtplan {path} is in frame of reference {ident['frame_of_reference_uid']}, the plan in "
                         f"{plan.frame_of_reference_uid}: give the RT Plan of --plan {args.plan}")
    if ident["patient_id"] and pre.patient_id and ident["patient_id"] != pre.patient_id:
        raise InputError(f"--rtplan {path} is of patient id {ident['patient_id']!r}, the pre-plan CT of "
                         f"{pre.patient_id!r}: give the RT Plan of this patient")
    return {**ident, "path": path}


def _anatomy(args, plan, pre):
    """The re-plan's anatomy: the CTV, the plan's OARs (and limits) and the body outline of the structure set."""
    from navigator.anatomy import targets
    from navigator.planning.replan_field import ReplanAnatomy

    if args.structures and not Path(args.structures).exists():
        raise InputError(f"--structures {args.structures}: file not found; give the RT Structure Set with the CTV")
    structures, ctv, rs = ctv_structure_set(args, pre)
    if ctv is None:
        where = f"{rs} has no structure {args.ctv!r}" if rs else \
            f"no RTSTRUCT.dcm beside {args.plan} and no --structures"
        raise InputError(f"the re-plan needs the CTV: {where}; give --structures RS.dcm with the CTV (--ctv NAME), "
                         "e.g. the RTSTRUCT.dcm `navigator plan` wrote")
    limits = {n: float(v["D0.1cc_gy"]) for n, v in (plan.extra.get("oar_limits") or {}).items()}
    if not limits:  # a plan from elsewhere: its OARs' class limits
        limits = {n: targets.oar_limit(n, plan.prescription_gy)["D0.1cc_gy"]
                  for n in (plan.metrics.get("oars") or {})}
    missing = sorted(n for n in limits if n not in structures)
    if missing:
        raise InputError(f"{rs}: the plan's organ(s) at risk {', '.join(missing)} are not in it, so their limits "
                         "cannot be held; give the structure set the plan was made on (its RTSTRUCT.dcm)")
    body = next((s for n, s in structures.items() if s is not ctv and targets.is_body_name(n)), None)
    anatomy = ReplanAnatomy(ct=pre, ctv=ctv, oars={n: structures[n] for n in limits}, oar_limits_gy=limits,
                            body=body, ctv_source=f"structure {ctv.name} of {rs}")
    return anatomy, rs


def _write_rtplan(path: Path, rev, pre, rs: Path, ctv, original: dict) -> None:
    """The revision's RT Plan: the pre-plan CT's patient and study, the structure set's CTV as the prescription's
    ROI, numbered above the revised plan's series, referencing it (PREDECESSOR)."""
    from navigator.io.dicom import PatientInfo, sop_instance_uid_of, write_rtplan

    n = int(rev.extra["revision"])
    series = original.get("series_number")
    write_rtplan(path, rev, pre, PatientInfo.from_volume(pre), label=f"I125 LDR rev{n}",
                 structure_set_sop_uid=sop_instance_uid_of(rs), target_roi_number=ctv.number,
                 target_roi_name=ctv.name, referenced_rtplan_uid=original["sop_instance_uid"],
                 series_number=None if series is None else series + REVISION_SERIES_STEP,
                 series_description=f"navigator re-plan (revision {n}): I-125 seeds")


def _summary(res, final: Path) -> str:
    m_pre, m_as, m_re = res.metrics_preplan, res.metrics_as_placed, res.metrics_replan
    found = res.found
    return (f"re-plan (revision {res.plan.extra['revision']}): {len(res.plan.seeds)} seeds (cartridge "
            f"{res.max_seeds}) on {len(found.needles)} needles as found"
            + (f", {len(found.dropped)} not found and dropped ({', '.join(found.dropped)})" if found.dropped else "")
            + f"; {res.seeds_moved} seeds moved\n"
            f"CTV D90: pre-plan {m_pre['D90_gy']:.1f} Gy, as placed {m_as['D90_gy']:.1f} Gy, re-plan "
            f"{m_re['D90_gy']:.1f} Gy (Rx {res.plan.prescription_gy:g} Gy); V100 {m_as['V100_pct']:.1f} -> "
            f"{m_re['V100_pct']:.1f} %, V150 {m_re['V150_pct']:.1f} %, V200 {m_re['V200_pct']:.1f} %\n"
            f"{res.seconds:.2f} s; written to {final}: replan.json, plan.json, RTPLAN.dcm, replan.html")


def _html(res, data: dict) -> str:
    """replan.html, built by ``navigator.report.pages.replan``."""
    from navigator.report.pages import replan_page

    return replan_page(res, data)
