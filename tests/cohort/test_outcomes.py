"""The outcomes CSV checked where it enters (clear InputErrors naming line, column and value) and its join with
the analysed studies (warnings for patients without studies, studies without outcomes, failed studies, several
studies of one patient)."""

from __future__ import annotations

import pytest

from navigator.cohort.outcomes import join, read_outcomes
from navigator.errors import InputError


def _csv(tmp_path, text: str):
    p = tmp_path / "outcomes.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_reads_responses_times_and_ignores_other_columns(tmp_path):
    p = _csv(tmp_path, "\ufeff Patient_ID , Response,Time_Months,EVENT,age\n# a comment\nP1,1,12.5,0,61\n"
                       "P2,0,3,1,70\n\nP3,1.0,,,55\n")
    o = read_outcomes(p)
    assert o.has_times and [r.patient_id for r in o.rows] == ["P1", "P2", "P3"]
    assert [(r.response, r.time_months, r.event) for r in o.rows] == [(1, 12.5, 0), (0, 3.0, 1), (1, None, None)]
    assert o.rows[1].line == 4
    assert len(o.warnings) == 1 and "P3" in o.warnings[0] and "survival" in o.warnings[0]


@pytest.mark.parametrize("text, says", [
    ("", "the file is empty"),
    ("patient_id,response\n", "no rows after the header"),
    ("id,response\nP1,1\n", "lacks column(s) patient_id"),
    ("patient_id,response\nP1,yes\n", "line 2: response holds 'yes'; give 0 or 1"),
    ("patient_id,response\nP1,\n", "response holds an empty cell"),
    ("patient_id,response,event\nP1,1,1\n", "column event without time_months"),
    ("patient_id,response,time_months,event\nP1,1,12,2\n", "event holds '2'"),
    ("patient_id,response,time_months,event\nP1,1,-3,1\n", "time_months -3 is not a time"),
    ("patient_id,response,time_months,event\nP1,1,soon,1\n", "time_months holds 'soon'"),
    ("patient_id,response\nP1,1\n,0\n", "line 3: patient_id is empty"),
    ("patient_id,response\nP1,1\nP2,0\nP1,0\n", "line 4: patient 'P1' again (first on line 2)"),
])
def test_bad_files_are_input_errors_naming_what_and_where(tmp_path, text, says):
    with pytest.raises(InputError) as e:
        read_outcomes(_csv(tmp_path, text))
    assert says in str(e.value) and "outcomes.csv" in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_outcomes(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a folder"):
        read_outcomes(tmp_path)


def _row(pid, uid, status="ok", date="20200101", d90=100.0):
    return {"patient_id": pid, "study_uid": uid, "status": status, "study_date": date, "study_time": "",
            "metrics": {"D90_gy": d90} if status == "ok" else None}


def test_join_pairs_each_outcome_with_its_study_and_says_what_is_left_out(tmp_path):
    o = read_outcomes(_csv(tmp_path, "patient_id,response,study_uid\nA,1,\nB,0,\nC,1,\nD,0,\nE,1,2.9\n"))
    rows = [_row("A", "1.1"),
            _row("B", "2.1", date="20210301"), _row("B", "2.2", date="20200101"),   # two studies: the earliest
            _row("C", "3.1", status="error: the CT is truncated"),
            _row("E", "5.1"),                                                      # its outcome names 2.9
            _row("F", "6.1")]                                                      # no outcome
    j = join(rows, o)
    assert [(s["study_uid"], out.patient_id) for s, out in j.pairs] == [("1.1", "A"), ("2.2", "B")]
    text = " | ".join(j.warnings)
    assert "1 patient(s) of the outcomes have no study in the export: D" in text
    assert "patient B has 2 studies" in text and "2.2" in text
    assert "patient C: study 3.1 could not be analysed (error: the CT is truncated)" in text
    assert "patient E: study_uid 2.9 of the outcomes is not in the export" in text
    assert "have no outcome (patients F)" in text


def test_join_uses_the_study_the_outcome_names(tmp_path):
    o = read_outcomes(_csv(tmp_path, "patient_id,response,study_uid\nB,0,2.1\n"))
    j = join([_row("B", "2.1", date="20210301"), _row("B", "2.2", date="20200101")], o)
    assert [s["study_uid"] for s, _ in j.pairs] == ["2.1"] and not j.warnings
