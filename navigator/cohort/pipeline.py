"""The cohort re-analysis: many past implants, one by one on a cluster, then what their D90 predicts.

Stages: ``discover`` (the studies of a PACS export: ``io.dicom.find_studies``, headers only, read on the
runner's workers), ``run_cohort``:
``study_tasks`` (file paths per study) -> ``runner.map(analyse_study, tasks)`` (each study a task: the worker
reads its files, finds the seeds, computes the delivered dose and metrics, and returns a small row; a study
that fails is a row with its reason) -> ``outcomes.join`` -> ``analyse`` (ROC and Youden cut-off with bootstrap
CI, the other metrics' ROC, logistic regression, Kaplan-Meier with log-rank and Cox when times are given) ->
``cohort.json`` (cli-contract.md; more keys added) and ``cohort.csv`` (one row per study).

The runner is anything with ``map(fn, items, progress)`` returning results in the items' order
(``navigator.cluster``: a Dask cluster, or ``SerialRunner``); this module never imports Dask. Every number is
the same whatever the runner and its number of workers: a study's analysis is deterministic and the bootstrap
has its own seed.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from navigator.cohort import stats
from navigator.cohort.outcomes import Outcomes, join
from navigator.cohort.study import StudyOptions, analyse_study, study_lost, study_tasks
from navigator.errors import InputError

METRIC_COLUMNS = ("ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI")


@dataclass(frozen=True)
class CohortOptions:
    study: StudyOptions = field(default_factory=StudyOptions)
    bootstrap: int = 1000        # resamples for the confidence intervals
    seed: int = 0                # of the bootstrap


@dataclass
class CohortResult:
    result: dict                 # cohort.json
    rows: list[dict]             # one per study, in the export's order (patient, date)
    csv_text: str                # cohort.csv


def discover(studies_dir, runner=None, progress=None):
    """The studies of the export at ``studies_dir`` (``StudyIndex``; the headers read by the ``runner``'s
    workers in chunks of files when one is given); InputError when it holds none."""
    from navigator.io.dicom import find_studies

    index = find_studies(studies_dir, progress=progress, mapper=None if runner is None else runner.map)
    if not index.studies:
        raise InputError(f"--studies {studies_dir}: no DICOM study found among {index.files_seen} file(s) "
                         f"({len(index.skipped)} not DICOM); give the folder of the PACS export")
    return index


def run_cohort(index, outcomes: Outcomes, options: CohortOptions, runner, progress=None) -> CohortResult:
    """Analyse every study of ``index`` on ``runner``, join ``outcomes`` and analyse the dose-response.
    ``progress(done, total)`` as studies complete."""
    t0 = time.perf_counter()
    tasks = study_tasks(index, options.study)
    rows = runner.map(analyse_study, tasks, progress=progress, on_error=study_lost)
    joined = join(rows, outcomes)
    outcome_of = {s["study_uid"]: o for s, o in joined.pairs}
    for r in rows:
        o = outcome_of.get(r["study_uid"])
        r["in_analysis"] = o is not None
        r["outcome"] = None if o is None else {"response": o.response, "time_months": o.time_months, "event": o.event}
    analysis, notes = analyse(joined.pairs, outcomes.has_times, options)
    warnings = joined.warnings + notes
    failed = [r for r in rows if r["status"] != "ok"]
    result = {
        "studies": [_study_json(r) for r in rows],
        "analysis": analysis,
        "warnings": warnings,
        "studies_ok": len(rows) - len(failed),
        "studies_failed": len(failed),
        "discovery": index.summary(),
        "outcomes": {"path": outcomes.path, "patients": len(outcomes.rows), "times": outcomes.has_times},
        "options": {**asdict(options.study), "bootstrap": options.bootstrap, "seed": options.seed},
        "workers": int(getattr(runner, "workers", 1)),
        "seconds": round(time.perf_counter() - t0, 3),
        "study_seconds_total": round(sum(r.get("seconds") or 0.0 for r in rows), 3),
    }
    return CohortResult(result=result, rows=rows, csv_text=cohort_csv(rows))


def analyse(pairs: list, has_times: bool, options: CohortOptions) -> tuple[dict, list[str]]:
    """The "analysis" of cohort.json from (study row, outcome) pairs, and warnings."""
    notes: list[str] = []
    y = np.array([o.response for _, o in pairs], int)
    d90 = np.array([s["metrics"]["D90_gy"] for s, _ in pairs], float)
    out = {"endpoint": "response", "n": len(y), "responders": int(y.sum()), "non_responders": len(y) - int(y.sum()),
           "roc_auc": None, "youden_cutoff_d90_gy": None, "sensitivity": None, "specificity": None,
           "km": None, "cox": None}
    if min(out["responders"], out["non_responders"]) < stats.MIN_PER_CLASS:
        notes.append(f"dose-response not analysed: {out['responders']} responder(s) and {out['non_responders']} "
                     f"non-responder(s) among the {len(y)} analysed studies with an outcome; at least "
                     f"{stats.MIN_PER_CLASS} of each are needed")
        return out, notes
    out.update(stats.roc_analysis(y, d90, options.bootstrap, options.seed))
    table = {k: [s["metrics"].get(k) if s["metrics"].get(k) is not None else np.nan for s, _ in pairs]
             for k in stats.OTHER_METRICS}
    out["metrics_roc"] = stats.metrics_roc(y, table)
    out["logistic"] = stats.logistic_analysis(y, d90)
    if has_times:
        timed = [(s, o) for s, o in pairs if o.time_months is not None]
        if len(timed) >= 2:
            td90 = np.array([s["metrics"]["D90_gy"] for s, _ in timed], float)
            t = np.array([o.time_months for _, o in timed], float)
            e = np.array([o.event for _, o in timed], float)
            out["km"] = stats.km_analysis(td90, t, e, out["youden_cutoff_d90_gy"])
            if e.sum() >= 1:
                out["cox"], cox_notes = stats.cox_analysis(td90, t, e, out["youden_cutoff_d90_gy"])
                notes += cox_notes
            else:
                notes.append("no events among the timed patients: no Cox model")
        else:
            notes.append("fewer than 2 patients with times: no survival analysis")
    return out, notes


def _study_json(r: dict) -> dict:
    keys = ("patient_id", "study_uid", "status", "seeds_found", "metrics", "study_date", "ct_series_uid",
            "expected_seeds", "seed_model", "seed_sk_u", "seed_data_from", "prescription_gy", "target", "in_analysis",
            "outcome", "warnings", "seconds", "ct_files", "ct_slices", "dose_grid_mm", "seeds_mm")
    return {k: r.get(k) for k in keys}


def cohort_csv(rows: list[dict]) -> str:
    """cohort.csv: one row per study (identity, status, seeds, seed data, metrics, worst OAR D0.1cc, outcome)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "study_uid", "study_date", "status", "seeds_found", "expected_seeds", "seed_model",
                "seed_sk_u", "seed_data_from", "prescription_gy", *METRIC_COLUMNS, "oar_max_D0.1cc_gy", "oar_max_name",
                "in_analysis", "response", "time_months", "event"])
    for r in rows:
        m = r.get("metrics") or {}
        oars = {n: v.get("D0.1cc_gy") for n, v in (m.get("oars") or {}).items() if v.get("D0.1cc_gy") is not None}
        worst = max(oars, key=oars.get) if oars else None
        o = r.get("outcome") or {}
        w.writerow([r["patient_id"], r["study_uid"], r.get("study_date") or "", r["status"], _c(r.get("seeds_found")),
                    _c(r.get("expected_seeds")), r.get("seed_model") or "", _c(r.get("seed_sk_u")),
                    r.get("seed_data_from") or "", _c(r.get("prescription_gy")), *(_c(m.get(k)) for k in METRIC_COLUMNS),
                    _c(oars.get(worst)), worst or "", int(bool(r.get("in_analysis"))), _c(o.get("response")),
                    _c(o.get("time_months")), _c(o.get("event"))])
    return buf.getvalue()


def _c(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if np.isfinite(v) else ""
    return str(v)
