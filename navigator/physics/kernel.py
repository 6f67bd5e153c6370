"""TG-43U1 kernel tables: the one place where one seed's dose is tabulated on a cylindrical (|z|, ρ) raster
(z along the seed axis, ρ away from it, mm), and the lookups that read them back.

Every table holds T = D(z, ρ)·(r² + a²) (a = the capsule radius): the 1/r² taken out, T varies slowly, so
bilinear lookup stays well inside 0.1 % beyond a few tenths of a millimetre from the seed. Tables are built
from ``tg43`` once per seed model (and formalism or strength) and cached.

- grid tables (``grid_kernel_tables``): the near and far shares of a 1 U seed's dose rate (cGy/h·mm²), split
  by the smooth window s(e) of ``dose.dose_on_grid``'s near/far decomposition (see ``navigator.physics.dose``);
- the influence table (``kernel_table``): one seed's total dose (Gy·mm², 2D formalism) at the plan's strength,
  read by ``influence_matrix`` for the dose of every candidate seed at every sample point (the seed-loading
  optimiser, the post-implant supplement and the plan's OAR metrics).
Units: mm and Gy (cGy/h for the grid tables' rates); the cm of ``tg43`` are converted where the tables are built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from navigator.physics import tg43

# The grid engine's near ellipsoid (its accuracy is set by the ratios semi-axis / ``dose.COARSE_STEP_MM``, ≈ 4
# across, 9 along the axis; its cost by the ellipsoid's volume in voxels) and the grid tables' steps.
NEAR_RADIAL_MM = 16.0  # semi-axis across the seed axis
NEAR_AXIAL_MM = 36.0  # semi-axis along the seed axis
NEAR_TABLE_STEP_MM = 0.05
FAR_TABLE_STEP_MM = 0.25
_GRID_TABLES: dict = {}


# --- grid tables (near / far shares) -------------------------------------------------------------------
def near_radii(formalism: str) -> tuple[float, float]:
    """(across, along) semi-axes of the near region in mm; a sphere for the isotropic 1D kernel."""
    return (NEAR_RADIAL_MM, NEAR_AXIAL_MM) if formalism == "2D" else (NEAR_RADIAL_MM, NEAR_RADIAL_MM)


def ellipsoidal_distance(z_mm, rho_mm, formalism: str):
    r_rad, r_ax = near_radii(formalism)
    return np.sqrt((np.asarray(z_mm) / r_ax) ** 2 + (np.asarray(rho_mm) / r_rad) ** 2)


def grid_kernel_tables(model: tg43.SeedModel, formalism: str, extent_mm: float):
    """(near, far) float32 tables of T[iz, iρ] = Ḋ(z, ρ)·(r² + a²) for 1 U (cGy/h·mm²), z, ρ = index·step mm.

    a is the capsule radius (keeps T finite and slowly varying down to r = 0). The window is built in:
    near = T·(1 − s(e)) at NEAR_TABLE_STEP_MM, far = T·s(e) at FAR_TABLE_STEP_MM up to extent_mm, with
    e = sqrt((z/NEAR_AXIAL_MM)² + (ρ/NEAR_RADIAL_MM)²) the ellipsoidal distance (e < 1: near region).
    """
    key = (model.name, model.tables.checksum(), model.Lambda_cgy_h_u, model.L_cm, formalism,
           NEAR_RADIAL_MM, NEAR_AXIAL_MM, NEAR_TABLE_STEP_MM, FAR_TABLE_STEP_MM, extent_mm)  # fmt: skip
    tables = _GRID_TABLES.get(key)
    if tables is None:
        a_mm = model.capsule_radius_cm * 10.0
        tables = []
        r_rad, r_ax = near_radii(formalism)
        for step_mm, reach_z, reach_rho, near in ((NEAR_TABLE_STEP_MM, r_ax, r_rad, True),
                                                  (FAR_TABLE_STEP_MM, extent_mm, extent_mm, False)):  # fmt: skip
            # the near table only spans the near ellipsoid's box (z <= its axial, ρ <= its radial semi-axis)
            z_mm = np.arange(int(math.ceil(reach_z / step_mm)) + 2) * step_mm
            rho_mm = np.arange(int(math.ceil(reach_rho / step_mm)) + 2) * step_mm
            z_mm, rho_mm = np.meshgrid(z_mm, rho_mm, indexing="ij")
            rate = tg43.dose_rate_cyl_cgy_h(model, 1.0, z_mm / 10.0, rho_mm / 10.0, formalism)
            r2 = z_mm**2 + rho_mm**2
            s = far_share(ellipsoidal_distance(z_mm, rho_mm, formalism))
            tables.append(np.ascontiguousarray(rate * (r2 + a_mm**2) * ((1.0 - s) if near else s), dtype=np.float32))
        tables = tuple(tables)
        _GRID_TABLES[key] = tables
    return tables


def far_share(t):
    """s(e): the far field's share of a seed's kernel; 0 at the seed, 1 from e = 1 on (C³ smoothstep, ~35 e⁴)."""
    t = np.clip(t, 0.0, 1.0)
    return t**4 * (35.0 + t * (-84.0 + t * (70.0 - 20.0 * t)))


@njit(inline="always", cache=True)
def lookup(table, inv_step, z, rho):
    """Bilinear lookup at (z, ρ) mm >= 0; beyond the table the last row/column (callers keep inside it)."""
    fz = min(z * inv_step, table.shape[0] - 1.0001)
    fr = min(rho * inv_step, table.shape[1] - 1.0001)
    iz = int(fz)
    ir = int(fr)
    tz = fz - iz
    tr = fr - ir
    return (1.0 - tz) * ((1.0 - tr) * table[iz, ir] + tr * table[iz, ir + 1]) + tz * (
        (1.0 - tr) * table[iz + 1, ir] + tr * table[iz + 1, ir + 1]
    )


@njit(inline="always", cache=True)
def lookup32(table, inv_step, z, rho):
    """``lookup`` in float32 arithmetic (table float32)."""
    one = np.float32(1.0)
    fz = min(z * inv_step, np.float32(table.shape[0] - 1.0001))
    fr = min(rho * inv_step, np.float32(table.shape[1] - 1.0001))
    iz = int(fz)
    ir = int(fr)
    tz = fz - np.float32(iz)
    tr = fr - np.float32(ir)
    return (one - tz) * ((one - tr) * table[iz, ir] + tr * table[iz, ir + 1]) + tz * (
        (one - tr) * table[iz + 1, ir] + tr * table[iz + 1, ir + 1]
    )


# --- the influence table and matrix -------------------------------------------------------------------
_INFLUENCE_TABLES: dict = {}


@dataclass
class KernelTable:
    """T[iz, irho] = D(z, rho) * (r^2 + a^2) for one seed of the plan's strength, Gy mm^2 (total dose)."""

    table: np.ndarray
    step_mm: float
    a2_mm2: float


def kernel_table(model: tg43.SeedModel, sk_u: float, step_mm: float = 0.25, extent_mm: float = 160.0) -> KernelTable:
    """Tabulate one seed's total dose on a cylindrical (|z|, rho) raster with ``tg43`` (2D formalism).

    D * (r^2 + a^2) varies slowly (the 1/r^2 is taken out), so bilinear lookup stays well under 1 %
    beyond a few mm from the seed; closer in the dose is many times the prescription anyway.
    """
    key = (model.name, model.tables.checksum(), float(sk_u), step_mm, extent_mm)
    if key in _INFLUENCE_TABLES:
        return _INFLUENCE_TABLES[key]
    x = np.arange(int(np.ceil(extent_mm / step_mm)) + 2) * step_mm
    z, rho = np.meshgrid(x, x, indexing="ij")
    rate = tg43.dose_rate_cyl_cgy_h(model, sk_u, z / 10.0, rho / 10.0, "2D")
    gy = rate * tg43.total_dose_factor_h(model, None) / 100.0
    a2 = (model.capsule_radius_cm * 10.0) ** 2
    _INFLUENCE_TABLES[key] = KernelTable(np.ascontiguousarray(gy * (z * z + rho * rho + a2)), step_mm, a2)
    return _INFLUENCE_TABLES[key]


@njit(parallel=True, cache=True)
def _influence(points, seeds, axes, table, inv_step, a2, out):
    n = table.shape[0] - 1
    for j in prange(seeds.shape[0]):
        sx, sy, sz = seeds[j, 0], seeds[j, 1], seeds[j, 2]
        ax, ay, az = axes[j, 0], axes[j, 1], axes[j, 2]
        for i in range(points.shape[0]):
            dx = points[i, 0] - sx
            dy = points[i, 1] - sy
            dz = points[i, 2] - sz
            r2 = dx * dx + dy * dy + dz * dz
            z = abs(dx * ax + dy * ay + dz * az)
            rho = np.sqrt(max(r2 - z * z, 0.0))
            fz = z * inv_step
            fr = rho * inv_step
            if fz >= n or fr >= n:
                out[j, i] = 0.0  # beyond the table (> 16 cm): negligible for I-125
                continue
            iz = int(fz)
            ir = int(fr)
            tz = fz - iz
            tr = fr - ir
            v = (1.0 - tz) * ((1.0 - tr) * table[iz, ir] + tr * table[iz, ir + 1]) + tz * (
                (1.0 - tr) * table[iz + 1, ir] + tr * table[iz + 1, ir + 1])
            out[j, i] = v / (r2 + a2)


def influence_matrix(points_mm: np.ndarray, seeds_mm: np.ndarray, axes: np.ndarray, kt: KernelTable) -> np.ndarray:
    """A[j, i]: total dose (Gy, float32) of candidate seed j at point i. Shapes (N, 3), (M, 3), (M, 3)."""
    out = np.empty((len(seeds_mm), len(points_mm)), dtype=np.float32)
    if out.size:
        _influence(np.ascontiguousarray(points_mm, float), np.ascontiguousarray(seeds_mm, float),
                   np.ascontiguousarray(axes, float), kt.table, 1.0 / kt.step_mm, kt.a2_mm2, out)
    return out
