"""The pre-plan (flow 1): CTV and no-go masks, needle layout through the template, seed loading optimised on
a TG-43 influence matrix, and ``make_plan`` as named stages over frozen ``PlanOptions``.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "PlanOptions": "pipeline", "PlanResult": "pipeline", "make_plan": "pipeline",
    "NeedleOptions": "needles", "NeedleLayout": "needles", "plan_needles": "needles",
    "OptimizeOptions": "optimize", "OptimizeResult": "optimize", "optimize_loading": "optimize",
})
