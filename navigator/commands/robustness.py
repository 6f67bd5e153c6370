"""``navigator robustness --plan plan.json --ct DIR --structures RS.dcm [--ctv NAME] [--samples N]
[--tip-sd-mm S] [--depth-sd-mm S] [--angle-sd-deg A] [--seed-loss-pct P] [--seed N] [--site neck|mediastinum]
[--workers K | --scheduler ADDRESS] --out DIR``

Robustness preview (cli-contract.md): the plan's CTV D90 and V100 over random needle placement errors (the
contract's error model; ``navigator.planning.robustness``), the pass rate (D90 >= Rx) and each needle's D90
sensitivity. The CTV is the structure ``--ctv`` (default ``CTV``, as ``navigator plan`` writes it in its
RTSTRUCT.dcm), sampled on a 1 mm grid. ``--site`` takes the error model's SDs from a published series
(docs/robustness.md); options given explicitly override them. The samples run in batches on a Dask cluster:
a local one of ``--workers`` processes (default one per core) or the existing one at ``--scheduler``; the same
``--seed`` gives the same numbers whatever the number of workers. Writes ``robustness.json`` and
``robustness.html``; exit 0 (a low pass rate is a finding of the preview, not a failed check), 2 on bad input.
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
from navigator.errors import InputError
from navigator.io import write_json

PRODUCES = ("robustness.json", "robustness.html")
CTV_SPACING_MM = 1.0


def add_arguments(p) -> None:
    p.add_argument("--plan", required=True, metavar="plan.json", help="the plan (navigator plan)")
    add_ct_option(p, "--ct", "folder of the CT series the plan was made on (DICOM)")
    p.add_argument("--structures", required=True, metavar="RS.dcm",
                   help="RT Structure Set with the CTV (the RTSTRUCT.dcm navigator plan writes)")
    p.add_argument("--ctv", default="CTV", help="name of the CTV structure (default CTV)")
    p.add_argument("--samples", type=number(1, 1_000_000, integer=True), default=1000,
                   help="Monte Carlo samples (default 1000)")
    p.add_argument("--site", choices=("neck", "mediastinum"), default=None,
                   help="error model preset from published CT-guided series (docs/robustness.md); explicit options "
                        "below override it")
    p.add_argument("--tip-sd-mm", type=number(0, 20, "mm"), default=None,
                   help="SD of the shift across each needle, per perpendicular axis (mm; default 2, or the site's)")
    p.add_argument("--depth-sd-mm", type=number(0, 30, "mm"), default=None,
                   help="SD of the shift along each needle (mm; default 1, or the site's)")
    p.add_argument("--angle-sd-deg", type=number(0, 20, "deg"), default=None,
                   help="SD of each of the two rotations about the needle's entry (deg; default 0, or the site's)")
    p.add_argument("--seed-loss-pct", type=number(0, 99, "%"), default=None,
                   help="probability that a seed is lost, %% (default 0)")
    p.add_argument("--seed", type=number(0, 2**63 - 1, integer=True), default=0,
                   help="random seed: the same seed, the same numbers (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=number(1, 512, "workers", integer=True), default=None,
                   help="local Dask cluster of this many worker processes (default: one per core)")
    g.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on the existing Dask cluster whose scheduler listens here (tcp://HOST:PORT)")
    add_output_options(p)


def run(args) -> int:
    from navigator.cluster import open_cluster
    from navigator.core.plan import Plan
    from navigator.planning.robustness import (
        ErrorModel,
        ctv_sample_points,
        robustness_preview,
    )

    prog = Progress(enabled=not args.json)
    t0 = time.perf_counter()
    model = ErrorModel.for_site(args.site, tip_sd_mm=args.tip_sd_mm, depth_sd_mm=args.depth_sd_mm,
                                angle_sd_deg=args.angle_sd_deg, seed_loss_pct=args.seed_loss_pct)
    plan = Plan.load(args.plan)
    if not plan.seeds:
        raise InputError(f"--plan {args.plan}: the plan has no seeds; a robustness preview needs a plan with seeds")
    prog.step(f"reading CT {args.ct}")
    ct = read_ct(args, "--ct")
    if plan.frame_of_reference_uid != ct.frame_of_reference_uid:
        raise InputError(f"--plan {args.plan} is in frame of reference {plan.frame_of_reference_uid} but --ct "
                         f"{args.ct} in {ct.frame_of_reference_uid}; give the CT the plan was made on")
    _, ctv, rs = ctv_structure_set(args, ct)
    points = ctv_sample_points(ctv, CTV_SPACING_MM, ct.frame_of_reference_uid)
    if len(points) == 0:
        raise InputError(f"--structures {rs}: the CTV {args.ctv!r} holds no point of a {CTV_SPACING_MM:g} mm grid; "
                         "check its contours")

    with staged_out(args, PRODUCES) as out:
        where = f"the Dask cluster at {args.scheduler}" if args.scheduler else "a local Dask cluster"
        prog.step(f"starting {where}")
        with open_cluster(workers=args.workers, scheduler=args.scheduler) as runner:
            prog.step(f"{args.samples} samples of {len(plan.seeds)} seeds on {len(plan.needles)} needles at "
                      f"{len(points)} CTV points ({CTV_SPACING_MM:g} mm), {runner.workers} workers")
            t_run = time.perf_counter()
            data = robustness_preview(plan, points, model, args.samples, args.seed, runner,
                                      progress=_progress(prog))
            data["workers"] = int(runner.workers)
        data["seconds"] = round(time.perf_counter() - t0, 3)
        data["compute_seconds"] = round(time.perf_counter() - t_run, 3)
        data["ctv"].update({"structure": ctv.name, "file": str(rs), "spacing_mm": CTV_SPACING_MM,
                            "cc": round(len(points) * CTV_SPACING_MM ** 3 / 1000.0, 3)})
        data["plan"] = {"file": str(Path(args.plan)), "seeds": len(plan.seeds), "needles": len(plan.needles),
                        "target": plan.target, "seed_model": plan.seed_model, "seed_sk_u": plan.seed_sk_u}
        write_json(out / "robustness.json", data)
        prog.step("writing robustness.html")
        (out / "robustness.html").write_text(_html(data))
    emit(args, data, _summary(data, Path(args.out)))
    return 0


def _progress(prog: Progress):
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // total
        if tenth != last[0]:
            last[0] = tenth
            prog.step(f"  {done}/{total} tasks")
    return report


def _html(data: dict) -> str:
    from navigator.report.pages import robustness_page

    return robustness_page(data)


def _summary(d: dict, out: Path) -> str:
    rx, d90 = d["prescription_gy"], d["D90_gy"]
    worst = sorted(d["needles"], key=lambda n: n["d90_change_gy_per_mm"])[:3]
    return (f"robustness: {d['samples']} samples on {d['workers']} workers in {d['seconds']:.1f} s\n"
            f"D90 (Rx {rx:g} Gy): nominal {d['nominal']['D90_gy']:.1f} Gy; p5 {d90['p5']:.1f}, p10 {d90['p10']:.1f}, "
            f"p50 {d90['p50']:.1f}, p95 {d90['p95']:.1f} Gy; pass rate (D90 >= Rx) {100 * d['pass_rate']:.1f} %\n"
            f"V100 p10 {d['V100_pct']['p10']:.1f} %, p50 {d['V100_pct']['p50']:.1f} %\n"
            "most sensitive needles: " + ", ".join(f"{n['id']} ({n['d90_change_gy_per_mm']:+.2f} Gy/mm)"
                                                   for n in worst) + "\n"
            f"written to {out}: robustness.json, robustness.html")
