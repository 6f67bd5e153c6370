"""The post-implant evaluation (flow 5): seeds found, delivered dose, metrics, cold spots and the
supplementary-seed proposal (``run_postimplant``).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "PostimplantOptions": "pipeline", "PostimplantResult": "pipeline", "run_postimplant": "pipeline", "preplan_masks": "pipeline",
    "Evaluation": "pipeline", "evaluate_seeds": "pipeline",
    "ColdSpot": "coldspots", "find_cold_spots": "coldspots",
    "SupplementSettings": "supplement", "Proposal": "supplement", "propose_supplementary": "supplement",
    "coverage_targets": "supplement",
})
