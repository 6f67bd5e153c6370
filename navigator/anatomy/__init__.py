"""Anatomy on a grid: structure masks and fractional occupancy, the one margin algorithm (``expand_margin``),
CTV, body, skin depth and the no-go masks needles must avoid.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "structure_mask": "structures", "mask_of": "structures", "contour_warnings": "structures", "beyond_ct_mm": "structures", "check_target_inside_ct": "structures", "structure_fraction": "structures", "expand_margin": "structures", "shrink_margin": "structures", "mask_volume_cc": "structures", "mask_to_contours": "structures",
    "ctv_mask": "targets", "body_mask": "targets", "skin_depth_mm": "targets", "nogo_mask": "targets", "classify_oar": "targets", "oar_limit": "targets",
})
