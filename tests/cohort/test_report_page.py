"""cohort.html from plain cohort.json data: with a dose-response (ROC, Kaplan-Meier, D90 pictures) and without
one (too few of a class), every study listed with its status."""

from __future__ import annotations

import numpy as np

from navigator.cohort import stats
from navigator.report.pages import cohort_page


def _result(analysis: dict) -> dict:
    studies = [{"patient_id": f"P{k}", "study_uid": f"1.{k}", "status": "ok", "seeds_found": 12, "expected_seeds": None,
                "seed_data_from": "options", "seed_sk_u": 0.8, "study_date": "20200101",
                "metrics": {"D90_gy": 70.0 + 10 * k, "V100_pct": 80.0}, "in_analysis": True,
                "outcome": {"response": int(k >= 3), "time_months": 5.0 + k, "event": int(k < 3)}} for k in range(6)]
    studies.append({"patient_id": "P9", "study_uid": "1.9", "status": "error: the CT <b>is</b> truncated",
                    "metrics": None, "in_analysis": False, "outcome": None})
    return {"studies": studies, "analysis": analysis, "warnings": ["patient X has no study"], "studies_ok": 6,
            "studies_failed": 1, "workers": 2, "seconds": 3.0,
            "discovery": {"root": "/export", "patients": 7, "files_seen": 99}}


def test_page_with_the_dose_response():
    d90 = np.array([70.0, 80.0, 90.0, 100.0, 110.0, 120.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    a = {"endpoint": "response", "n": 6, "responders": 3, "non_responders": 3, **stats.roc_analysis(y, d90, 0, 0)}
    a["metrics_roc"] = stats.metrics_roc(y, {"V100_pct": d90 / 2})
    a["logistic"] = stats.logistic_analysis(y, d90)
    a["km"] = stats.km_analysis(d90, 5.0 + np.arange(6), (d90 < 95).astype(float), a["youden_cutoff_d90_gy"])
    a["cox"] = None
    assert a["youden_cutoff_d90_gy"] == 95.0 and a["youden_cutoff_ci95_gy"] is None
    page = cohort_page(_result(a))
    assert page.count("<img") == 3 and "95.0 Gy" in page and "separates" in page
    assert "&lt;b&gt;is&lt;/b&gt;" in page and "<b>is</b>" not in page        # text is escaped
    assert "patient X has no study" in page


def test_page_without_a_dose_response():
    a = {"endpoint": "response", "n": 2, "responders": 1, "non_responders": 1, "roc_auc": None,
         "youden_cutoff_d90_gy": None, "km": None, "cox": None}
    page = cohort_page(_result(a))
    assert "Not analysed" in page and page.count("<img") == 1 and "6 of 7 studies analysed" in page
