"""Cohort re-analysis: the delivered dose of many past implants from a PACS export, and what it predicts.

``discover(studies_dir)`` finds the studies (headers only); ``run_cohort(index, outcomes, CohortOptions, runner)``
analyses each study as one task on the runner (``analyse_study``: seeds, delivered dose, metrics; a failing
study is reported, the others go on), joins the outcomes (``read_outcomes``) and analyses the dose-response
(``stats``: ROC and Youden cut-off with bootstrap CI, logistic regression, Kaplan-Meier, Cox).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "CohortOptions": "pipeline", "CohortResult": "pipeline", "discover": "pipeline", "run_cohort": "pipeline",
    "analyse": "pipeline", "cohort_csv": "pipeline",
    "StudyOptions": "study", "StudyTask": "study", "study_tasks": "study", "analyse_study": "study",
    "Outcome": "outcomes", "Outcomes": "outcomes", "read_outcomes": "outcomes", "join": "outcomes",
    "youden": "stats", "roc_analysis": "stats", "metrics_roc": "stats", "logistic_analysis": "stats",
    "km_analysis": "stats", "cox_analysis": "stats",
})
