"""Image analysis of the CT in hand: rigid registration (``register_rigid``), needle finding along mapped tracks
(``find_needles``) and seed finding in the post-implant CT (``find_seeds``).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "RegistrationResult": "registration", "RegistrationSettings": "registration", "register_rigid": "registration", "check_same_patient": "registration",
    "NeedleFindingSettings": "needle_finding", "NeedleSearch": "needle_finding", "find_needles": "needle_finding", "planned_in_intraop": "needle_finding",
    "SeedFindingSettings": "seed_finding", "SeedFindingResult": "seed_finding", "find_seeds": "seed_finding",
})
