"""AAPM TG-43U1 dose rate of one I-125 seed in water (the only module that works in cm).

Formalism (Rivard et al., Med Phys 31:633 (2004), eqs. 1, 4 and 11):

    2D:  Ḋ(r, θ) = S_K · Λ · [G_L(r, θ) / G_L(r0, θ0)] · g_L(r) · F(r, θ)
    1D:  Ḋ(r)    = S_K · Λ · [G_L(r, θ0) / G_L(r0, θ0)] · g_L(r) · φ_an(r)        r0 = 1 cm, θ0 = 90°

with the line-source geometry function G_L(r, θ) = β / (L r sinθ) (β the angle the active length L subtends at
the point) and G_L = 1 / (r² − L²/4) on the seed axis. The symbols keep the report's names: ``g_L``, ``F``,
``G_L``, ``phi_an``, ``Lambda`` (a ``SeedModel`` field, ``Lambda_cgy_h_u``).

Table conventions (TG-43U1 appendix C, stated here because every number depends on them):
- g_L: linear interpolation in r between table points (the report: linear interpolation is adequate at the
  tabulated spacing); below the first point the first value (nearest neighbour, eq. C1); beyond the last point
  linear extrapolation through the last two points (eq. C1), floored at 0 (the linear fit crosses zero near
  13 cm for the 6711, where the dose is < 0.1 % of the 1 cm dose anyway).
- F: bilinear interpolation, linear in r and linear in θ; outside the tabulated r range the value at the
  nearest tabulated r (constant, as the report recommends); F(r, 180° − θ) = F(r, θ).
- φ_an: linear in r inside the table, nearest tabulated value outside it.

Close to the seed (our choice, the report leaves it to the user): the seed's own capsule (outer radius 0.04 cm,
half length 0.225 cm for the 4.5 mm x 0.8 mm seeds here) holds no tissue. A point inside the capsule cylinder
is moved out along its ray from the seed centre onto the capsule surface and gets the dose there, so the dose
is finite, never NaN, and continuous across the capsule surface (the centre itself gets the side wall's value);
outside the capsule the formula is used unchanged, including on the axis beyond the capsule ends (where
G_L = 1/(r² − L²/4) is finite since r >= 0.225 cm > L/2). In the 1D formalism, which has no axis, r is
clamped at the capsule radius 0.04 cm.

Units: r in cm, θ in degrees (from the seed's long axis), S_K in U (1 U = 1 cGy cm² h⁻¹), dose rate in cGy/h.
Total dose of a permanent implant D = Ḋ0 · τ with τ = T½ / ln 2 (2056.7 h for I-125).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from navigator.errors import SeedModelError

MCI_TO_U = 1.270  # U per mCi of apparent activity (I-125), as in the seed papers
MBQ_TO_U = 0.03432  # U per MBq of apparent activity (I-125)
R0_CM = 1.0  # TG-43 reference distance
THETA0_DEG = 90.0  # TG-43 reference angle


@dataclass(frozen=True, eq=False)
class TG43Tables:
    """Consensus tables of one seed model, as published (r in cm, θ in degrees)."""

    gL_r_cm: np.ndarray
    gL: np.ndarray
    F_r_cm: np.ndarray
    F_theta_deg: np.ndarray
    F: np.ndarray  # (n_theta, n_r)
    phi_an_r_cm: np.ndarray
    phi_an: np.ndarray

    def checksum(self) -> int:
        """A hash of the numbers, so caches of derived kernels follow the data, not the model's name."""
        parts = (self.gL_r_cm, self.gL, self.F_r_cm, self.F_theta_deg, self.F, self.phi_an_r_cm, self.phi_an)
        return hash(b"".join(np.ascontiguousarray(p, dtype=float).tobytes() for p in parts))


@dataclass(frozen=True, eq=False)
class SeedModel:
    """One seed model: TG-43U1 parameters, its consensus tables and the publication they come from."""

    name: str
    Lambda_cgy_h_u: float  # dose-rate constant Λ, cGy h⁻¹ U⁻¹
    L_cm: float  # active length used in G_L
    half_life_d: float
    tables: TG43Tables
    source: str  # citation of the consensus dataset
    capsule_radius_cm: float = 0.04  # 0.8 mm outer diameter
    capsule_half_length_cm: float = 0.225  # 4.5 mm long
    description: str = ""

    @property
    def tau_h(self) -> float:
        """Mean life τ = T½ / ln 2 in hours (the factor from initial dose rate to total dose)."""
        return self.half_life_d * 24.0 / math.log(2.0)

    @property
    def decay_per_h(self) -> float:
        """Decay constant λ = ln 2 / T½ in h⁻¹."""
        return 1.0 / self.tau_h


# name -> (file stem, Λ, L, T½, dataset citation, description); numbers from navigator/data/tg43/README.md
_MODELS = {
    "6711": (
        "6711",
        0.965,
        0.30,
        59.40,
        "AAPM TG-43U1, Rivard et al., Med Phys 31:633 (2004)",
        "Amersham/Oncura/GE 6711 OncoSeed (4.5 mm x 0.8 mm Ti capsule, Ag rod) and 6711-type seeds",
    ),
    "IAI-125A": (
        "IAI125A",
        0.981,
        0.30,
        59.40,
        "AAPM TG-43U1S1, Rivard et al., Med Phys 34:2187 (2007)",
        "IsoAid Advantage IAI-125A (4.5 mm x 0.8 mm)",
    ),
}
_LOADED: dict[str, SeedModel] = {}


def known_models() -> list[str]:
    return list(_MODELS)


def _read_csv(stem: str, kind: str) -> tuple[list[str], np.ndarray]:
    text = resources.files("navigator").joinpath("data", "tg43", f"{stem}_{kind}.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(v) for v in row] for row in rows[1:] if row], dtype=float)
    return header, data


def load_seed_model(name: str) -> SeedModel:
    """The seed model ``"6711"`` or ``"IAI-125A"`` with its consensus tables (package data)."""
    if name not in _MODELS:
        raise SeedModelError(
            f"unknown seed model {name!r}; known models: {', '.join(_MODELS)}. "
            "Use one of these identifiers (a new model needs its TG-43 consensus data added first)."
        )
    if name not in _LOADED:
        stem, lam, L, t_half, source, description = _MODELS[name]
        _, g = _read_csv(stem, "gL")
        header, f = _read_csv(stem, "F")
        _, phi = _read_csv(stem, "phi_an")
        tables = TG43Tables(
            gL_r_cm=g[:, 0], gL=g[:, 1],
            F_r_cm=np.array([float(h) for h in header[1:]]), F_theta_deg=f[:, 0], F=f[:, 1:],
            phi_an_r_cm=phi[:, 0], phi_an=phi[:, 1],
        )  # fmt: skip
        _LOADED[name] = SeedModel(name, lam, L, t_half, tables, source, description=description)
    return _LOADED[name]


def sk_u_from(activity_mci: float | None = None, activity_mbq: float | None = None, sk_u: float | None = None) -> float:
    """Air-kerma strength (U) from exactly one of: apparent activity in mCi, in MBq, or S_K in U."""
    given = {k: v for k, v in (("activity_mci", activity_mci), ("activity_mbq", activity_mbq), ("sk_u", sk_u))
             if v is not None}  # fmt: skip
    if len(given) != 1:
        raise SeedModelError(
            f"seed strength: give exactly one of activity in mCi, activity in MBq or air-kerma strength in U "
            f"(got {len(given)}: {', '.join(given) or 'none'})"
        )
    key, value = next(iter(given.items()))
    unit = {"activity_mci": "mCi", "activity_mbq": "MBq", "sk_u": "U"}[key]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SeedModelError(f"seed strength {value!r} {unit} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SeedModelError(f"seed strength {value} {unit} must be a positive finite number (I-125 seeds: 0.3-0.8 mCi)")
    return value * {"activity_mci": MCI_TO_U, "activity_mbq": MBQ_TO_U, "sk_u": 1.0}[key]


# --- the report's functions ---------------------------------------------------------------------------
def G_L(r_cm, theta_deg, L_cm: float) -> np.ndarray:
    """Line-source geometry function (cm⁻²) at (r, θ); on the axis (sinθ = 0) 1/(r² − L²/4).

    β is computed as atan2(L ρ, r² − L²/4) with ρ = r sinθ (the angle between the rays to the two ends), which
    stays accurate as ρ -> 0. Callers keep points off the active segment itself (see module docstring).
    """
    r = np.asarray(r_cm, dtype=float)
    th = np.deg2rad(np.asarray(theta_deg, dtype=float))
    z = r * np.cos(th)
    rho = np.abs(r * np.sin(th))
    return _G_L_cyl(z, rho, L_cm)


def _G_L_cyl(z, rho, L_cm):
    r2 = z * z + rho * rho
    on_axis = rho < 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.arctan2(L_cm * rho, r2 - 0.25 * L_cm * L_cm)
        g = np.where(on_axis, 1.0 / (r2 - 0.25 * L_cm * L_cm), beta / (L_cm * np.where(on_axis, 1.0, rho)))
    return g


def G_L_ref(L_cm: float) -> float:
    """G_L(r0 = 1 cm, θ0 = 90°) = 2 atan(L/2) / L (cm⁻²)."""
    return 2.0 * math.atan(L_cm / (2.0 * R0_CM)) / (L_cm * R0_CM)


def g_L(model: SeedModel, r_cm) -> np.ndarray:
    """Radial dose function: linear inside the table, nearest below, linear extrapolation (>= 0) beyond."""
    t = model.tables
    r = np.asarray(r_cm, dtype=float)
    out = np.interp(r, t.gL_r_cm, t.gL)  # np.interp holds the end values outside the table
    slope = (t.gL[-1] - t.gL[-2]) / (t.gL_r_cm[-1] - t.gL_r_cm[-2])
    beyond = r > t.gL_r_cm[-1]
    return np.where(beyond, np.maximum(t.gL[-1] + slope * (r - t.gL_r_cm[-1]), 0.0), out)


def F(model: SeedModel, r_cm, theta_deg) -> np.ndarray:
    """2D anisotropy function, bilinear in (r, θ); r held at the table's ends outside it; F(180°−θ) = F(θ)."""
    t = model.tables
    r = np.asarray(r_cm, dtype=float)
    th = np.abs(np.asarray(theta_deg, dtype=float)) % 360.0
    th = np.where(th > 180.0, 360.0 - th, th)
    th = np.where(th > 90.0, 180.0 - th, th)
    r, th = np.broadcast_arrays(r, th)
    rr = np.clip(r, t.F_r_cm[0], t.F_r_cm[-1])
    ir = np.clip(np.searchsorted(t.F_r_cm, rr, side="right") - 1, 0, len(t.F_r_cm) - 2)
    it = np.clip(np.searchsorted(t.F_theta_deg, th, side="right") - 1, 0, len(t.F_theta_deg) - 2)
    fr = (rr - t.F_r_cm[ir]) / (t.F_r_cm[ir + 1] - t.F_r_cm[ir])
    ft = (th - t.F_theta_deg[it]) / (t.F_theta_deg[it + 1] - t.F_theta_deg[it])
    f = t.F
    return ((1 - ft) * ((1 - fr) * f[it, ir] + fr * f[it, ir + 1])
            + ft * ((1 - fr) * f[it + 1, ir] + fr * f[it + 1, ir + 1]))  # fmt: skip


def phi_an(model: SeedModel, r_cm) -> np.ndarray:
    """1D anisotropy function: linear inside the table, nearest tabulated value outside it."""
    t = model.tables
    return np.interp(np.asarray(r_cm, dtype=float), t.phi_an_r_cm, t.phi_an)


# --- dose rate -----------------------------------------------------------------------------------------
def dose_rate_cyl_cgy_h(model: SeedModel, sk_u, z_cm, rho_cm, formalism: str = "2D") -> np.ndarray:
    """Dose rate (cGy/h) at axial offset z and distance ρ from the seed axis (cm, seed centre at 0).

    The same as ``dose_rate_cgy_h`` in cylindrical coordinates, the form the dose engine uses.
    """
    z = np.asarray(z_cm, dtype=float)
    rho = np.abs(np.asarray(rho_cm, dtype=float))
    z, rho = np.broadcast_arrays(z, rho)
    L = model.L_cm
    if formalism == "2D":
        # Inside the capsule: move the point out along its ray from the seed centre onto the capsule surface
        # (module docstring); continuous everywhere but at the centre itself, which gets the side wall's value.
        with np.errstate(divide="ignore"):
            scale = np.minimum(model.capsule_radius_cm / rho, model.capsule_half_length_cm / np.abs(z))
        centre = ~np.isfinite(scale)
        scale = np.where(centre, 1.0, np.maximum(scale, 1.0))
        z = np.where(centre, 0.0, z * scale)
        rho = np.where(centre, model.capsule_radius_cm, rho * scale)
        r = np.sqrt(z * z + rho * rho)
        theta = np.degrees(np.arctan2(rho, np.abs(z)))
        shape = _G_L_cyl(z, rho, L) / G_L_ref(L) * g_L(model, r) * F(model, r, theta)
    elif formalism == "1D":
        r = np.maximum(np.sqrt(z * z + rho * rho), model.capsule_radius_cm)
        shape = _G_L_cyl(np.zeros_like(r), r, L) / G_L_ref(L) * g_L(model, r) * phi_an(model, r)
    else:
        raise SeedModelError(f"TG-43 formalism {formalism!r} is not one of '2D' (seed axis known) or '1D'")
    return np.asarray(sk_u, dtype=float) * model.Lambda_cgy_h_u * shape


def dose_rate_cgy_h(model: SeedModel, sk_u, r_cm, theta_deg, formalism: str = "2D") -> np.ndarray:
    """TG-43U1 dose rate (cGy/h) of one seed of strength ``sk_u`` (U) at distance r (cm) and polar angle θ (deg).

    θ is measured from the seed's long axis (0-180°); ignored in the 1D formalism. Arrays broadcast.
    """
    r = np.asarray(r_cm, dtype=float)
    th = np.deg2rad(np.asarray(theta_deg, dtype=float))
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise SeedModelError("TG-43 distance r must be finite and >= 0 cm")
    return dose_rate_cyl_cgy_h(model, sk_u, r * np.cos(th), r * np.sin(th), formalism)


def total_dose_factor_h(model: SeedModel, t_h: float | None = None) -> float:
    """Hours that turn an initial dose rate into dose: τ for the whole decay, τ (1 − e^(−t/τ)) up to time t."""
    tau = model.tau_h
    if t_h is None:
        return tau
    if not math.isfinite(t_h) or t_h < 0:
        raise SeedModelError(f"time since implant {t_h} h must be >= 0 h (None for the total dose)")
    return tau * (-math.expm1(-t_h / tau))
