"""The navigator's reports: self-contained HTML pages (one file each, pictures embedded as PNG, no scripts).

- ``navigator.report.html``: the one HTML kit every page is made with (document skeleton and its stylesheet,
  sections, paragraphs, tables from rows, metric tables, embedded pictures; everything escaped);
- ``navigator.report.plots``: the figures (matplotlib): DVHs, isodose lines on axial slices, needle planes;
- ``navigator.report.render3d``: the 3D picture of an implant (VTK, offscreen);
- ``navigator.report.pages``: one builder per page (plan, needles, post-implant, rehearsal), each taking
  results and returning the HTML text; the commands and the rehearsal write the files.

Pages are built from results, never from another page. Geometry is LPS mm, doses Gy (total dose).
"""

from navigator._lazy import lazy_api

# Loaded on first use, like every package's API: importing the HTML kit alone must not pay for matplotlib.
__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "PlanImages": "pages", "PostimplantImages": "pages", "PostimplantScan": "pages", "implant_picture": "pages",
    "needles_page": "pages", "plan_page": "pages", "postimplant_page": "pages", "rehearsal_page": "pages",
    "render_implant_png": "render3d",
})
