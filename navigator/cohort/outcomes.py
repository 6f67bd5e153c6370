"""The outcomes CSV of a cohort, checked where it enters, and its join with the analysed studies.

``FILE.csv`` (cli-contract.md, ``navigator cohort --outcomes``): a header row with ``patient_id`` and
``response`` (1 = objective response, 0 = none), optionally ``time_months`` and ``event`` (1 = local
progression or death, 0 = censored; both or neither) and ``study_uid`` (which study of the patient the outcome
belongs to, when a patient has several); other columns are ignored. Header names are matched without regard
to case or surrounding spaces. A bad file is an ``InputError`` naming the line, the column and the value; a
row with an empty time is left out of the survival analysis only (a warning).

``join(rows, outcomes)``: which analysed study each outcome goes with, and warnings for patients of the CSV
without a study, studies without an outcome, outcomes of studies that could not be analysed, and patients
with several studies (the earliest is used unless ``study_uid`` says which).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from navigator.errors import InputError

REQUIRED = ("patient_id", "response")


@dataclass(frozen=True)
class Outcome:
    patient_id: str
    response: int
    time_months: float | None = None
    event: int | None = None
    study_uid: str | None = None
    line: int = 0


@dataclass
class Outcomes:
    path: str
    rows: list[Outcome]
    has_times: bool
    warnings: list[str] = field(default_factory=list)

    def by_patient(self) -> dict[str, Outcome]:
        return {o.patient_id: o for o in self.rows}


def _where(path: Path, line: int) -> str:
    return f"--outcomes {path} line {line}"


def read_outcomes(path) -> Outcomes:
    """The outcomes CSV at ``path``, checked (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"--outcomes {path}: file not found; give the CSV of outcomes (patient_id,response"
                         "[,time_months,event])") from None
    except IsADirectoryError:
        raise InputError(f"--outcomes {path} is a folder; give the outcomes CSV file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--outcomes {path}: cannot read it as text ({exc}); give a CSV file") from None
    lines = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1)
             if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not lines:
        raise InputError(f"--outcomes {path}: the file is empty; it needs a header patient_id,response"
                         "[,time_months,event] and one row per patient")
    head_line, header = lines[0]
    cols = {h.strip().lower(): k for k, h in enumerate(header)}
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise InputError(f"{_where(path, head_line)}: the header lacks column(s) {', '.join(missing)} (found: "
                         f"{', '.join(h.strip() for h in header)}); the outcomes CSV needs patient_id and response "
                         "(1 = objective response, 0 = none), optionally time_months and event")
    if ("time_months" in cols) != ("event" in cols):
        have, lack = ("time_months", "event") if "time_months" in cols else ("event", "time_months")
        raise InputError(f"{_where(path, head_line)}: column {have} without {lack}; give both for the survival "
                         "analysis (event 1 = local progression or death, 0 = censored) or neither")
    has_times = "time_months" in cols
    rows, warnings, seen = [], [], {}

    def cell(row, name):
        k = cols.get(name)
        return row[k].strip() if k is not None and k < len(row) else ""

    for n, row in lines[1:]:
        pid = cell(row, "patient_id")
        if not pid:
            raise InputError(f"{_where(path, n)}: patient_id is empty; every row needs the patient's ID as in the "
                             "DICOM PatientID")
        if pid in seen:
            raise InputError(f"{_where(path, n)}: patient {pid!r} again (first on line {seen[pid]}); give one row per "
                             "patient (add a study_uid column to say which study an outcome belongs to)")
        seen[pid] = n
        response = _binary(cell(row, "response"), "response", path, n, "1 = objective response, 0 = none")
        time_months = event = None
        if has_times:
            t_text = cell(row, "time_months")
            if t_text:
                try:
                    time_months = float(t_text)
                except ValueError:
                    raise InputError(f"{_where(path, n)}: time_months holds {t_text!r}, not a number of months; "
                                     "fix that row or leave the cell empty") from None
                if not math.isfinite(time_months) or time_months < 0:
                    raise InputError(f"{_where(path, n)}: time_months {t_text} is not a time (months >= 0)")
                event = _binary(cell(row, "event"), "event", path, n, "1 = local progression or death, 0 = censored")
            else:
                warnings.append(f"patient {pid} (line {n}) has no time_months: left out of the survival analysis")
        rows.append(Outcome(pid, response, time_months, event, cell(row, "study_uid") or None, n))
    if not rows:
        raise InputError(f"--outcomes {path}: no rows after the header; one row per patient is needed")
    return Outcomes(str(path), rows, has_times, warnings)


def _binary(text: str, name: str, path: Path, line: int, meaning: str) -> int:
    try:
        v = float(text)
    except ValueError:
        v = None
    if v not in (0.0, 1.0):
        what = repr(text) if text else "an empty cell"
        raise InputError(f"{_where(path, line)}: {name} holds {what}; give 0 or 1 ({meaning})")
    return int(v)


@dataclass
class Joined:
    """The studies that go into the analysis (one per patient, with its outcome) and what was left out."""

    pairs: list[tuple[dict, Outcome]]
    warnings: list[str]
    used_study_uids: set[str]


def join(rows: list[dict], outcomes: Outcomes) -> Joined:
    """Each outcome with its patient's analysed study (see the module docstring)."""
    warnings = list(outcomes.warnings)
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    pairs = []
    no_study = [o.patient_id for o in outcomes.rows if o.patient_id not in by_patient]
    if no_study:
        warnings.append(f"{len(no_study)} patient(s) of the outcomes have no study in the export: "
                        f"{', '.join(no_study[:20])}{' ...' if len(no_study) > 20 else ''}")
    for o in outcomes.rows:
        studies = by_patient.get(o.patient_id)
        if not studies:
            continue
        if o.study_uid:
            chosen = [r for r in studies if r["study_uid"] == o.study_uid]
            if not chosen:
                warnings.append(f"patient {o.patient_id}: study_uid {o.study_uid} of the outcomes is not in the "
                                "export; left out")
                continue
            study = chosen[0]
        else:
            ok = [r for r in studies if r["status"] == "ok"]
            if len(studies) > 1:
                pick = min(ok or studies, key=lambda r: (r["study_date"] or "", r["study_time"] or "", r["study_uid"]))
                warnings.append(f"patient {o.patient_id} has {len(studies)} studies ({len(ok)} analysed); the "
                                f"outcome goes with the earliest analysed, {pick['study_uid']} (add a study_uid "
                                "column to the outcomes to choose)")
                study = pick
            else:
                study = studies[0]
        if study["status"] != "ok":
            warnings.append(f"patient {o.patient_id}: study {study['study_uid']} could not be analysed "
                            f"({study['status']}); left out of the analysis")
            continue
        pairs.append((study, o))
    with_outcome = {s["study_uid"] for s, _ in pairs}
    listed = {o.patient_id for o in outcomes.rows}
    orphans = [r for r in rows if r["status"] == "ok" and r["patient_id"] not in listed]
    if orphans:
        warnings.append(f"{len(orphans)} analysed stud(ies) have no outcome (patients "
                        f"{', '.join(sorted({r['patient_id'] for r in orphans})[:20])}); in cohort.csv, not in the "
                        "analysis")
    return Joined(pairs, warnings, with_outcome)
