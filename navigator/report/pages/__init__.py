"""One builder per HTML page: each takes results (data dicts, result objects and the Volumes its pictures
need) and returns the page's text; the caller writes the file.

- ``plan_page(plan, PlanImages)``: plan.html of ``navigator plan``;
- ``needles_page(needles_json, intraop_ct, plan)``: needles.html of ``navigator needles``;
- ``postimplant_page(postimplant_json, PostimplantImages)``: postimplant.html of ``navigator postimplant``;
- ``rehearsal_page(result, steps, plan, PlanImages, [PostimplantScan], scene_png)``: a rehearsal's report.html.
- ``cohort_page(cohort_json)``: cohort.html of ``navigator cohort`` (plain data only).
- ``replan_page(ReplanResult, replan_json)``: replan.html of ``navigator replan``.
- ``robustness_page(robustness_json)``: robustness.html of ``navigator robustness`` (plain data only).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "needles_page": "needles", "PlanImages": "plan", "plan_page": "plan", "PostimplantImages": "postimplant",
    "postimplant_page": "postimplant", "PostimplantScan": "rehearsal", "implant_picture": "rehearsal",
    "rehearsal_page": "rehearsal",
    "cohort_page": "cohort",
    "replan_page": "replan",
    "robustness_page": "robustness",
})
