"""Biologically effective dose (linear-quadratic model) for permanent seed implants and external beams.

- Permanent LDR implant with exponential decay and mono-exponential repair, complete decay (Dale 1985):
      BED = D · [1 + R0 / ((μ + λ) · α/β)],   R0 = D · λ  (initial dose rate, Gy/h)
  with λ = ln 2 / T½ the decay constant and μ = ln 2 / T_rep the repair constant. For a 1.5 h repair
  half-time μ = ln 2 / 1.5 h = 0.462 h⁻¹ (the reference README rounds it to 0.46 h⁻¹; we use the exact value).
- External beam: BED = N · d · (1 + d / (α/β)).
- Re-irradiation: the BEDs of the courses add (no repopulation or recovery between courses is modelled).
- EQD2 = BED / (1 + 2 / (α/β)).
α/β: 10 Gy (tumour, acute effects) and 3 Gy (late effects), as in the mediastinal-node paper among the seeds.
Doses in Gy, times in hours (half-lives of isotopes in days where the name says so).
"""

from __future__ import annotations

import math

from navigator.errors import InputError

ALPHA_BETA_TUMOUR_GY = 10.0
ALPHA_BETA_LATE_GY = 3.0
REPAIR_HALF_TIME_H = 1.5
I125_HALF_LIFE_D = 59.4


def _positive(name: str, value: float, unit: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} {value} {unit} must be a positive number")
    return value


def ldr_permanent_bed_gy(total_dose_gy: float, alpha_beta_gy: float = ALPHA_BETA_TUMOUR_GY,
                         half_life_d: float = I125_HALF_LIFE_D,
                         repair_half_time_h: float = REPAIR_HALF_TIME_H) -> float:  # fmt: skip
    """Dale's BED (Gy) of a permanent implant delivering ``total_dose_gy`` over complete decay."""
    if total_dose_gy < 0 or not math.isfinite(total_dose_gy):
        raise InputError(f"total dose {total_dose_gy} Gy must be >= 0 Gy")
    ab = _positive("alpha/beta", alpha_beta_gy, "Gy")
    lam = math.log(2.0) / (_positive("half-life", half_life_d, "d") * 24.0)
    mu = math.log(2.0) / _positive("repair half-time", repair_half_time_h, "h")
    r0 = total_dose_gy * lam
    return total_dose_gy * (1.0 + r0 / ((mu + lam) * ab))


def ebrt_bed_gy(n_fractions: int, dose_per_fraction_gy: float, alpha_beta_gy: float = ALPHA_BETA_TUMOUR_GY) -> float:
    """BED (Gy) of N fractions of d Gy: N d (1 + d / (α/β))."""
    if int(n_fractions) != n_fractions or n_fractions < 0:
        raise InputError(f"number of fractions {n_fractions} must be a whole number >= 0")
    if dose_per_fraction_gy < 0 or not math.isfinite(dose_per_fraction_gy):
        raise InputError(f"dose per fraction {dose_per_fraction_gy} Gy must be >= 0 Gy")
    ab = _positive("alpha/beta", alpha_beta_gy, "Gy")
    return n_fractions * dose_per_fraction_gy * (1.0 + dose_per_fraction_gy / ab)


def total_bed_gy(*beds_gy: float) -> float:
    """BED of several courses (re-irradiation): the sum."""
    return float(sum(beds_gy))


def eqd2_gy(bed_gy: float, alpha_beta_gy: float = ALPHA_BETA_TUMOUR_GY) -> float:
    """Equivalent dose in 2 Gy fractions: BED / (1 + 2 / (α/β))."""
    return bed_gy / (1.0 + 2.0 / _positive("alpha/beta", alpha_beta_gy, "Gy"))
