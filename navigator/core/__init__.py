"""The value objects every layer shares, in DICOM patient coordinates (LPS, mm) of a named frame: ``Volume``
(an image or grid), ``RigidTransform`` (``a_to_b``), the plan (``Plan``, ``Needle``, ``PlannedSeed``), a
structure's contours (``Structure``), the guide template (``GuideTemplate``, hole ids) and grid sampling.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "Volume": "volume", "grid_volume": "volume", "crop": "volume", "voxel_box": "volume", "index_box": "volume",
    "box_slices": "volume",
    "RigidTransform": "transform",
    "Plan": "plan", "Needle": "plan", "PlannedSeed": "plan", "target_region": "plan",
    "Structure": "structure", "find_structure": "structure", "get_structure": "structure",
    "GuideTemplate": "template", "hole_id": "template", "hole_rc": "template", "is_hole_id": "template", "parse_hole": "template",
    "sample_nearest": "sampling", "Sampler": "sampling",
})
