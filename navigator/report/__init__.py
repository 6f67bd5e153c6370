"""The navigator's reports: self-contained HTML pages (one file each, pictures embedded as PNG, no scripts).

- ``navigator.report.html``: the one HTML kit every page is made with (document skeleton and its stylesheet,
  sections, paragraphs, tables from rows, metric tables, embedded pictures; everything escaped);
- ``navigator.report.plots``: the figures (matplotlib): DVHs, isodose lines on axial slices, needle planes;
- ``navigator.report.render3d``: the 3D picture of an implant (VTK, offscreen);
- ``navigator.report.pages``: one builder per page (plan, needles, post-implant, rehearsal), each taking
  results and returning the HTML text; the commands and the rehearsal write the files.

Pages are built from results, never from another page. Geometry is LPS mm, doses Gy (total dose).
"""

from navigator.report.pages import (
                                    PlanImages,
                                    PostimplantImages,
                                    PostimplantScan,
                                    implant_picture,
                                    needles_page,
                                    plan_page,
                                    postimplant_page,
                                    rehearsal_page,
)
from navigator.report.render3d import render_implant_png

__all__ = [
                                    "PlanImages",
                                    "PostimplantImages",
                                    "PostimplantScan",
                                    "implant_picture",
                                    "needles_page",
                                    "plan_page",
                                    "postimplant_page",
                                    "rehearsal_page",
                                    "render_implant_png",
]
