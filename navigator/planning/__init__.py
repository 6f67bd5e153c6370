"""The pre-plan (flow 1): CTV and no-go masks, needle layout through the template, seed loading optimised on
a TG-43 influence matrix, and ``make_plan`` as named stages over frozen ``PlanOptions``; the intraoperative
re-plan of the seed loading on the needles as found (``replan``, issue #15).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "PlanOptions": "pipeline", "PlanResult": "pipeline", "make_plan": "pipeline",
    "NeedleOptions": "needles", "NeedleLayout": "needles", "plan_needles": "needles",
    "OptimizeOptions": "optimize", "OptimizeResult": "optimize", "optimize_loading": "optimize",
    "ReplanOptions": "replan", "ReplanResult": "replan", "replan": "replan", "ReplanAnatomy": "replan_field",
    "NeedlesAsFound": "as_found", "needles_as_found": "as_found", "carried_loading": "as_found",
    "ExchangeOptions": "exchange", "exchange_loading": "exchange",
    "ErrorModel": "robustness", "SITE_PRESETS": "robustness", "robustness_preview": "robustness",
    "ctv_sample_points": "robustness", "RobustOptions": "robust", "robust_plan": "robust",
})
