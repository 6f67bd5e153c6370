"""One builder per HTML page: each takes results (data dicts, result objects and the Volumes its pictures
need) and returns the page's text; the caller writes the file.

- ``plan_page(plan, PlanImages)``: plan.html of ``navigator plan``;
- ``needles_page(needles_json, intraop_ct, plan)``: needles.html of ``navigator needles``;
- ``postimplant_page(postimplant_json, PostimplantImages)``: postimplant.html of ``navigator postimplant``;
- ``rehearsal_page(result, steps, plan, PlanImages, [PostimplantScan], scene_png)``: a rehearsal's report.html.
"""

from navigator.report.pages.needles import needles_page
from navigator.report.pages.plan import PlanImages, plan_page
from navigator.report.pages.postimplant import PostimplantImages, postimplant_page
from navigator.report.pages.rehearsal import (
           PostimplantScan,
           implant_picture,
           rehearsal_page,
)

__all__ = [
           "PlanImages",
           "PostimplantImages",
           "PostimplantScan",
           "implant_picture",
           "needles_page",
           "plan_page",
           "postimplant_page",
           "rehearsal_page",
]
