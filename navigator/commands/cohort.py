"""``navigator cohort --studies DIR --outcomes FILE.csv [--target NAME] [--seed-model M --seed-sk-u S]
[--rx-gy D] [--workers K | --scheduler ADDRESS] [--bootstrap N] [--seed N] --out DIR``

Re-analyses many past implants from a PACS export: finds the studies in ``--studies`` (any layout and depth,
headers only, read by the workers), analyses each as one task on a Dask cluster (a local one of ``--workers`` processes, default one
per core, or the existing cluster at ``--scheduler``): the seeds on the post-implant CT, the delivered dose, the
metrics of the target and organs at risk; a study that cannot be analysed is reported with its reason and the
others go on. Then, with the outcomes CSV, what D90 predicts: ROC and AUC, the Youden cut-off with its
sensitivity, specificity and bootstrap confidence interval, logistic regression, and with times Kaplan-Meier by
the cut-off (log-rank) and Cox models (``navigator.cohort``). Writes ``cohort.json``, ``cohort.csv`` (one row
per study) and ``cohort.html`` (ROC, Kaplan-Meier, the D90 distribution, every study), all or nothing.

The seed model, strength and count of a study come from its brachy RT Plan when it has one, else from
``--seed-model`` and ``--seed-sk-u`` (or ``--seed-activity-mci``/``-mbq``); the prescription for the V-values
likewise from the plan, else ``--rx-gy``.
"""

from __future__ import annotations

from pathlib import Path

from navigator.commands._common import (
    Progress,
    add_output_options,
    add_strength_options,
    emit,
    number,
    staged_out,
)
from navigator.errors import InputError
from navigator.io import write_json, write_text

PRODUCES = ("cohort.json", "cohort.csv", "cohort.html")


def add_arguments(parser) -> None:
    parser.add_argument("--studies", required=True, metavar="DIR", help="PACS export: DICOM files in any layout")
    parser.add_argument("--outcomes", required=True, metavar="FILE.csv",
                        help="patient_id,response[,time_months,event][,study_uid]")
    parser.add_argument("--target", default="GTV", metavar="NAME", help="target structure name (default GTV, any case)")
    parser.add_argument("--seed-model", metavar="M", help="seed model of studies without an RT Plan (6711, IAI-125A)")
    add_strength_options(parser)
    parser.add_argument("--rx-gy", type=number(0, 1000, "Gy", above=True), metavar="D",
                        help="prescription for the V-values of studies without an RT Plan, Gy")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=number(1, 512, integer=True), metavar="K",
                       help="worker processes of a local Dask cluster (default: one per core)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--bootstrap", type=number(0, 100000, integer=True), default=1000, metavar="N",
                        help="bootstrap resamples for the confidence intervals (default 1000)")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0, metavar="N",
                        help="random seed of the bootstrap (default 0)")
    add_output_options(parser)


def _study_options(args):
    from navigator.cohort import StudyOptions
    from navigator.physics import tg43

    strength_given = any(getattr(args, k, None) is not None for k in ("sk_u", "activity_mci", "activity_mbq"))
    if bool(args.seed_model) != strength_given:
        raise InputError("--seed-model and the seed strength (--seed-sk-u, --seed-activity-mci or "
                         "--seed-activity-mbq) go together: studies without an RT Plan need both")
    model = sk = None
    if args.seed_model:
        model = tg43.load_seed_model(args.seed_model).name
        sk = tg43.sk_u_from(activity_mci=args.activity_mci, activity_mbq=args.activity_mbq, sk_u=args.sk_u)
    if not args.target.strip():
        raise InputError("--target is empty; give the target structure's name (e.g. GTV)")
    return StudyOptions(target=args.target.strip(), seed_model=model, seed_sk_u=sk, rx_gy=args.rx_gy)


def run(args) -> int:
    from navigator.cluster import open_cluster
    from navigator.cohort import CohortOptions, discover, read_outcomes, run_cohort
    from navigator.report.pages import cohort_page

    study_options = _study_options(args)
    outcomes = read_outcomes(args.outcomes)          # a bad CSV stops here, before any cluster starts
    studies = Path(args.studies)
    if not studies.is_dir():
        what = "does not exist" if not studies.exists() else "is a file, not a folder"
        raise InputError(f"--studies {studies} {what}; give the folder of the PACS export (DICOM files in any layout)")
    progress = Progress(enabled=not args.json)
    options = CohortOptions(study=study_options, bootstrap=args.bootstrap, seed=args.seed)

    def headers_read(done: int, total: int) -> None:
        if total > 10 and (done % max(1, total // 10) == 0 or done == total):
            progress.step(f"headers read: {done}/{total} chunks of files")

    def studies_done(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            progress.step(f"studies analysed: {done}/{total}")

    with staged_out(args, PRODUCES) as out:
        where = f"the Dask cluster at {args.scheduler}" if args.scheduler else \
            f"a local Dask cluster ({args.workers or 'one per core'} workers)"
        progress.step(f"starting {where}")
        with open_cluster(workers=args.workers, scheduler=args.scheduler) as runner:
            progress.step(f"{runner.workers} worker(s) ready; looking for DICOM studies under {studies}")
            index = discover(studies, runner, progress=headers_read)
            progress.step(f"{len(index.studies)} studies of {len({s.patient_id for s in index.studies})} patients "
                          f"in {index.files_seen} files ({len(index.skipped)} not DICOM, {index.duplicates} "
                          f"duplicates) in {index.seconds:.1f} s; analysing them")
            res = run_cohort(index, outcomes, options, runner, progress=studies_done)
        progress.step("statistics done; writing cohort.json, cohort.csv and cohort.html")
        r = res.result
        write_json(out / "cohort.json", r)
        write_text(out / "cohort.csv", res.csv_text)
        write_text(out / "cohort.html", cohort_page(r))
    emit(args, r, _summary(r, Path(args.out)))
    return 0


def _summary(r: dict, out: Path) -> str:
    a = r["analysis"]
    lines = [(f"cohort: {r['studies_ok']} of {len(r['studies'])} studies analysed ({r['studies_failed']} could not "
              f"be) on {r['workers']} worker(s) in {r['seconds']:.1f} s")]
    for s in r["studies"]:
        if s["status"] != "ok":
            lines.append(f"  {s['patient_id']} {s['study_uid']}: {s['status']}")
    if a.get("roc_auc") is not None:
        ci = a.get("youden_cutoff_ci95_gy")
        lines.append(f"D90 for response (n {a['n']}, {a['responders']} responders): AUC {a['roc_auc']:.3f}, Youden "
                     f"cut-off {a['youden_cutoff_d90_gy']:.1f} Gy" + (f" (95 % CI {ci[0]:.1f}-{ci[1]:.1f})" if ci else "")
                     + f", sensitivity {a['sensitivity']:.2f}, specificity {a['specificity']:.2f}")
        if a.get("km") and a["km"].get("logrank"):
            lines.append(f"local control by the cut-off: log-rank p = {a['km']['logrank']['p']:.3g}")
        cox = (a.get("cox") or {}).get("d90_per_10gy")
        if cox:
            lines.append(f"Cox: hazard ratio {cox['hazard_ratio']:.2f} per 10 Gy of D90 (p = {cox['p']:.3g})")
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines.append(f"written: {out / 'cohort.json'}, {out / 'cohort.csv'}, {out / 'cohort.html'}")
    return "\n".join(lines)
