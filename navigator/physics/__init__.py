"""Dosimetry: AAPM TG-43U1 (``tg43``: g_L, F, G_L, Lambda; cm inside, mm outside), dose on grids and points
and influence matrices from one kernel table (``dose``, ``kernel``), DVH metrics (``dvh``) and BED (``bed``).
Never imports pydicom or io.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "SeedModel": "tg43", "load_seed_model": "tg43", "known_models": "tg43", "sk_u_from": "tg43", "dose_rate_cgy_h": "tg43",
    "dose_on_grid": "dose", "dose_at_points": "dose", "naive_dose_on_grid": "dose",
    "KernelTable": "kernel", "kernel_table": "kernel", "influence_matrix": "kernel",
    "DVH": "dvh", "target_metrics": "dvh", "oar_metrics": "dvh", "plan_metrics": "dvh", "conformity_index": "dvh",
    "ldr_permanent_bed_gy": "bed", "ebrt_bed_gy": "bed", "total_bed_gy": "bed", "eqd2_gy": "bed",
})
