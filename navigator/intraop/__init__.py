"""The intraoperative needle check (flow 2-3): registration to the pre-plan, needles found and compared with
the plan (``check_needles``: tip error, lateral, depth, angle, D90 change), and advice in words.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "CheckOptions": "check", "NeedleCheck": "check", "check_inputs": "check", "register_to_plan": "check", "check_needles": "check", "ctv_points": "check",
    "NeedleDeviation": "deviation", "DoseImpact": "deviation",
    "advise": "advice", "HoleLocator": "advice",
})
