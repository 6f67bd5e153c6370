"""Robustness preview of an implant plan: the CTV's D90 and V100 when the needles land with the errors
operators really make (cli-contract.md, "Error model of ``robustness``"; sources in docs/robustness.md).

Error model, per sample and per needle, independently (``ErrorModel``). Each needle has an orthonormal frame
(e1, e2, u): u its axis from entry to tip, e1 and e2 across it (``needle_frames``). With α, β ~ N(0, σ_angle),
s1, s2 ~ N(0, σ_tip), s3 ~ N(0, σ_depth):

    R = Rot(e2, β) · Rot(e1, α)                  rotation about the needle's entry point
    seed' = entry + R · (seed − entry) + R · (s1 e1 + s2 e2 + s3 u)
    axis' = R · u                                  the seeds' axes turn with their needle

i.e. the needle first rotates about its entry by α about e1, then by β about e2, then shifts across its new
direction (s1, s2) and along it (s3). Each seed is then lost with probability ``seed_loss_pct`` / 100.

Dose: TG-43U1 2D (the plan's seed model and strength) from one kernel table (``physics.kernel.kernel_table``,
0.25 mm, bilinear), evaluated in float32 at every CTV sample point for every sample (``_dose_samples``; each
point's sum over the seeds runs in one fixed order, so the numbers do not depend on threads or workers).
D_x and V_x as ``physics.dvh`` defines them, every point standing for the same volume.

Distribution: the samples run in batches of ``BATCH_SAMPLES`` (``_run_batch``, a module-level function that
gets only small arrays) through a runner (``map(fn, items, progress)`` in item order: ``navigator.cluster``'s
Dask runner, or ``InProcessRunner``). Batch b draws its errors from ``SeedSequence(seed, spawn_key=(b,))``:
the same ``seed`` and ``samples`` give the same numbers whatever the number of workers.

Sensitivity of each needle (``needles[].d90_change_gy_per_mm``): the D90 change when that needle alone is
shifted ``SENSITIVITY_SHIFT_MM`` across its axis (seeds with it, no rotation), averaged over
``SENSITIVITY_DIRECTIONS`` directions evenly spaced around it, divided by the shift: the secant slope of D90 in
Gy per mm of lateral misplacement (negative: D90 drops). A plan optimised for coverage sits near a maximum of
D90, where a derivative at zero shift would be ~0 in every direction; the secant over a typical error (2 mm)
measures what a misplaced needle costs. The worst direction's slope is given too.
Units: LPS mm, degrees in the options (radians inside), Gy, % of the CTV.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from navigator.core.plan import Plan
from navigator.core.runner import SerialRunner
from navigator.errors import InputError
from navigator.physics import tg43
from navigator.physics.kernel import kernel_table

BATCH_SAMPLES = 20            # samples per task: fixed, so the numbers never depend on the number of workers
SENSITIVITY_SHIFT_MM = 2.0    # lateral shift of one needle for its D90 sensitivity (the contract's default tip SD)
SENSITIVITY_DIRECTIONS = 8
SENSITIVITY_NEEDLES_PER_TASK = 8
DVH_LEVELS = 151              # DVH band: dose levels 0 .. DVH_MAX_RX x Rx
DVH_MAX_RX = 3.0
PERCENTILES = (5, 10, 50, 90, 95)
MAX_SAMPLES = 1_000_000
_CHUNK = 512                  # CTV points per parallel work item of the dose kernel

# Site presets: SDs of the normal model derived from the mean absolute errors of published CT-guided I-125
# implant series (docs/robustness.md gives the arithmetic): a 2D normal of SD σ per axis has a mean magnitude
# σ·sqrt(π/2) (lateral offset, angle), a 1D normal a mean |x| of σ·sqrt(2/π) (depth).
_RAYLEIGH = math.sqrt(math.pi / 2.0)
_HALF_NORMAL = math.sqrt(2.0 / math.pi)
SITE_PRESETS = {
    "neck": {
        "tip_sd_mm": round(1.18 / _RAYLEIGH, 2),      # entrance deviation 1.18 mm mean (Huang 2016)
        "depth_sd_mm": round(1.68 / _HALF_NORMAL, 2),  # depth deviation 1.68 mm mean (Qiu 2021)
        "angle_sd_deg": round(2.08 / _RAYLEIGH, 2),    # angular deviation 2.08 deg mean (Huang 2016)
        "seed_loss_pct": 0.0,
        "sources": [
            ("Huang MW, Zhang JG, Zheng L, Liu SM, Yu GY. Accuracy evaluation of a 3D-printed individual template "
             "for needle guidance in head and neck brachytherapy. J Radiat Res 2016;57(6):662-667. "
             "doi:10.1093/jrr/rrw033 (619 needles, 25 patients: entrance deviation 1.18 +- 0.81 mm, angular "
             "deviation 2.08 +- 1.07 deg)"),
            ("Qiu B, Jiang Y, Ji Z, et al. The accuracy of individualized 3D-printing template-assisted I125 "
             "radioactive seed implantation for recurrent/metastatic head and neck cancer. Front Oncol "
             "2021;11:664996. doi:10.3389/fonc.2021.664996 (430 needles, 41 patients: depth deviation 1.68 mm)"),
        ],
    },
    "mediastinum": {
        "tip_sd_mm": round(3.4 / _RAYLEIGH, 2),       # insertion point error 3.4 mm mean (Ji 2021)
        "depth_sd_mm": round(5.2 / _HALF_NORMAL, 2),  # depth error 5.2 mm mean (Ji 2021)
        "angle_sd_deg": round(2.8 / _RAYLEIGH, 2),    # angle error 2.8 deg mean (Ji 2021)
        "seed_loss_pct": 0.0,
        "sources": [
            ("Ji Z, Sun H, Jiang Y, Chen Y, Guo F, Fan J, Wang J. Analysis on the accuracy of CT-guided radioactive "
             "I-125 seed implantation with 3D printing template assistance in the treatment of thoracic malignant "
             "tumors. J Radiat Res 2021;62(5):910-917. doi:10.1093/jrr/rrab068 (318 needles, 28 thoracic patients: "
             "depth 5.2 +- 4.8 mm, insertion point 3.4 +- 1.7 mm, tip 4.4 +- 2.9 mm, angle 2.8 +- 1.7 deg)"),
        ],
    },
}
_LIMITS = {"tip_sd_mm": 20.0, "depth_sd_mm": 30.0, "angle_sd_deg": 20.0}


@dataclass(frozen=True)
class ErrorModel:
    """Needle placement errors of the robustness preview (SDs of independent normals; see the module doc)."""

    tip_sd_mm: float = 2.0       # shift across the needle, per perpendicular axis
    depth_sd_mm: float = 1.0     # shift along the needle
    angle_sd_deg: float = 0.0    # rotation about the entry, per perpendicular axis
    seed_loss_pct: float = 0.0   # probability that a seed is lost (%)
    site: str | None = None      # the preset it came from, if any
    sources: tuple = ()

    def __post_init__(self) -> None:
        for name, opt, unit in (("tip_sd_mm", "--tip-sd-mm", "mm"), ("depth_sd_mm", "--depth-sd-mm", "mm"),
                                ("angle_sd_deg", "--angle-sd-deg", "deg")):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v <= _LIMITS[name]:
                raise InputError(f"{opt} {v} {unit}: a standard deviation must be a number from 0 to "
                                 f"{_LIMITS[name]:g} {unit} (published CT-guided series: tip 1-4 mm, depth 1-6 mm, "
                                 "angle 1.5-3 deg); give a value in that range")
        if not _is_number(self.seed_loss_pct) or not 0.0 <= self.seed_loss_pct < 100.0:
            raise InputError(f"--seed-loss-pct {self.seed_loss_pct} %: the probability of losing a seed must be a "
                             "number from 0 to below 100 %; give e.g. 2 for 2 %")

    @classmethod
    def for_site(cls, site: str | None = None, **given) -> ErrorModel:
        """The contract's defaults, or ``site``'s preset; values in ``given`` that are not None override them."""
        base: dict = {}
        if site is not None:
            if site not in SITE_PRESETS:
                raise InputError(f"--site {site!r}: unknown site; the presets are {', '.join(SITE_PRESETS)} "
                                 "(docs/robustness.md gives their sources)")
            preset = SITE_PRESETS[site]
            base = {k: preset[k] for k in ("tip_sd_mm", "depth_sd_mm", "angle_sd_deg", "seed_loss_pct")}
            base.update(site=site, sources=tuple(preset["sources"]))
        base.update({k: float(v) for k, v in given.items() if v is not None})
        return cls(**base)

    def to_json(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        d["definition"] = ("per needle and sample, independently: rotation about the entry point by two normal "
                           "angles (SD angle_sd_deg) about e1 then e2 (the axes across the needle), then a normal "
                           "shift across the rotated needle (SD tip_sd_mm per axis) and along it (SD depth_sd_mm); "
                           "seeds move and turn with their needle; each seed then lost with probability "
                           "seed_loss_pct/100")
        return d


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


# --- geometry -------------------------------------------------------------------------------------------
def needle_frames(axes: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rows e1, e2, u for unit needle axes u (N, 3): e1 from the LPS axis least aligned with u."""
    axes = np.asarray(axes, float).reshape(-1, 3)
    ref = np.eye(3)[np.argmin(np.abs(axes), axis=1)]
    e1 = ref - np.sum(ref * axes, axis=1, keepdims=True) * axes
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(axes, e1)
    return np.stack([e1, e2, axes], axis=1)


@dataclass(frozen=True)
class ImplantGeometry:
    """The plan's needles and seeds as small arrays (what a batch task needs), LPS mm."""

    needle_ids: tuple
    entries_mm: np.ndarray     # (Nn, 3)
    frames: np.ndarray         # (Nn, 3, 3) rows e1, e2, u
    lengths_mm: np.ndarray     # (Nn,) entry to tip
    seed_needle: np.ndarray    # (S,) index into the needles
    seed_local_mm: np.ndarray  # (S, 3) seed - entry in its needle's frame (e1, e2, u)

    @classmethod
    def of(cls, plan: Plan) -> ImplantGeometry:
        if not plan.seeds:
            raise InputError("the plan has no seeds; a robustness preview needs a plan with seeds "
                             "(write it with `navigator plan`)")
        used = [n for n in plan.needles if any(s.needle_id == n.id for s in plan.seeds)]
        index = {n.id: k for k, n in enumerate(used)}
        entries = np.array([n.entry_mm for n in used], float)
        frames = needle_frames(np.array([n.axis for n in used], float))
        seed_needle = np.array([index[s.needle_id] for s in plan.seeds], np.int64)
        rel = plan.seed_positions_mm() - entries[seed_needle]
        local = np.einsum("sij,sj->si", frames[seed_needle], rel)
        return cls(tuple(n.id for n in used), entries, frames, np.array([n.length_mm for n in used]),
                   seed_needle, local)

    def moved(self, angles_rad: np.ndarray, shifts_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Seed positions and axes (n, S, 3) for per-needle angles (n, Nn, 2) and local shifts (n, Nn, 3)."""
        sn = self.seed_needle
        r = local_rotations(angles_rad)[:, sn]                                # (n, S, 3, 3) in (e1, e2, u)
        local = self.seed_local_mm[None, :, :] + shifts_mm[:, sn, :]          # shift in the needle frame ...
        turned = np.einsum("nsij,nsj->nsi", r, local)                        # ... then rotated: R(c + s)
        world = self.entries_mm[sn][None] + np.einsum("nsj,sjk->nsk", turned, self.frames[sn])
        axes = np.einsum("nsj,sjk->nsk", r[..., 2], self.frames[sn])          # R·u: R's third column
        return world, axes


def local_rotations(angles_rad: np.ndarray) -> np.ndarray:
    """R = Ry(β)·Rx(α) in a needle's frame (x = e1, y = e2, z = u) for angles (..., 2) = (α, β)."""
    a, b = angles_rad[..., 0], angles_rad[..., 1]
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    r = np.empty(angles_rad.shape[:-1] + (3, 3))
    r[..., 0, 0], r[..., 0, 1], r[..., 0, 2] = cb, sb * sa, sb * ca
    r[..., 1, 0], r[..., 1, 1], r[..., 1, 2] = 0.0, ca, -sa
    r[..., 2, 0], r[..., 2, 1], r[..., 2, 2] = -sb, cb * sa, cb * ca
    return r


# --- the dose kernel ------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=True, cache=True)
def _dose_samples(px, py, pz, seeds, axes, alive, table, inv_step, a2, out):
    """out[s, i] = Σ_j alive[s, j] · D_j(point i) for every sample s (float32; points and seeds in one local
    frame). Work items are (sample, chunk of points); in each, every point sums its seeds in index order, so
    the result does not depend on the number of threads. Per seed, a first loop (vectorised) finds each point's
    table cell and weights, a second reads the table (bilinear). Points beyond the table read its last cell,
    which is zero (the kernel's tail beyond ``extent_mm`` is left out)."""
    n, m = alive.shape
    p = px.shape[0]
    ncol = np.int32(table.shape[1])
    flat = table.ravel()
    lim = np.float32(table.shape[0] - 1.001)
    nch = (p + _CHUNK - 1) // _CHUNK
    a2f = np.float32(a2)
    inv = np.float32(inv_step)
    for w in prange(n * nch):
        s = w // nch
        i0 = (w - s * nch) * _CHUNK
        i1 = min(p, i0 + _CHUNK)
        cnt = i1 - i0
        cx, cy, cz = px[i0:i1], py[i0:i1], pz[i0:i1]
        acc = np.zeros(cnt, np.float32)
        tzs = np.empty(cnt, np.float32)
        trs = np.empty(cnt, np.float32)
        wts = np.empty(cnt, np.float32)
        cell = np.empty(cnt, np.int32)
        for j in range(m):
            if not alive[s, j]:
                continue
            sx, sy, sz = seeds[s, j, 0], seeds[s, j, 1], seeds[s, j, 2]
            ux, uy, uz = axes[s, j, 0], axes[s, j, 1], axes[s, j, 2]
            for q in range(cnt):
                dx = cx[q] - sx
                dy = cy[q] - sy
                dz = cz[q] - sz
                r2 = dx * dx + dy * dy + dz * dz
                z = abs(dx * ux + dy * uy + dz * uz)
                rho = math.sqrt(max(r2 - z * z, np.float32(0.0)))
                fz = min(z * inv, lim)
                fr = min(rho * inv, lim)
                iz = np.int32(fz)
                ir = np.int32(fr)
                tzs[q] = fz - np.float32(iz)
                trs[q] = fr - np.float32(ir)
                cell[q] = iz * ncol + ir
                wts[q] = np.float32(1.0) / (r2 + a2f)
            for q in range(cnt):
                tz = tzs[q]
                tr = trs[q]
                b = cell[q]
                t00 = flat[b]
                t01 = flat[b + 1]
                t10 = flat[b + ncol]
                t11 = flat[b + ncol + 1]
                acc[q] += (t00 + tr * (t01 - t00) + tz * ((t10 - t00) + tr * (t11 - t10 - t01 + t00))) * wts[q]
        for q in range(cnt):
            out[s, i0 + q] = acc[q]


@dataclass(frozen=True)
class DoseKernel:
    """What a task needs to compute dose at the CTV points: float32 points and table in a local frame."""

    origin_mm: np.ndarray      # subtracted from points and seeds (float32 keeps ~1e-5 mm at 100 mm)
    points: np.ndarray         # (3, P) float32, points - origin (x, y, z rows)
    table: np.ndarray          # float32 T = D·(r² + a²) for one seed of the plan's strength, Gy mm²
    inv_step: float
    a2_mm2: float

    @classmethod
    def of(cls, plan: Plan, points_mm: np.ndarray, reach_mm: float = 40.0) -> DoseKernel:
        """The kernel of ``plan``'s seeds at ``points_mm``; its table reaches from any point to any seed moved by
        up to ``reach_mm`` (the far tail beyond 160 mm is left out, as in ``physics.kernel``)."""
        model = tg43.load_seed_model(plan.seed_model)
        origin = points_mm.mean(axis=0)
        both = np.concatenate([points_mm, plan.seed_positions_mm()])
        span = float(np.linalg.norm(both.max(0) - both.min(0))) + reach_mm
        extent = float(min(160.0, 20.0 * math.ceil(span / 20.0)))
        kt = kernel_table(model, plan.seed_sk_u, step_mm=0.25, extent_mm=extent)
        table = np.array(kt.table, np.float32)
        table[-1, :] = 0.0  # where lookups beyond the extent land
        table[:, -1] = 0.0
        return cls(origin, np.ascontiguousarray((points_mm - origin).T, np.float32), table, 1.0 / kt.step_mm,
                   kt.a2_mm2)

    @property
    def n_points(self) -> int:
        return self.points.shape[1]

    def dose(self, seeds_mm: np.ndarray, axes: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
        """(n, P) float32 Gy for seeds (n, S, 3) LPS mm and axes (n, S, 3)."""
        n, m = seeds_mm.shape[:2]
        alive = np.ones((n, m), np.bool_) if alive is None else np.ascontiguousarray(alive, np.bool_)
        out = np.empty((n, self.n_points), np.float32)
        seeds = np.ascontiguousarray(seeds_mm - self.origin_mm, np.float32)
        _dose_samples(self.points[0], self.points[1], self.points[2], seeds, np.ascontiguousarray(axes, np.float32),
                      alive, self.table, self.inv_step, self.a2_mm2, out)
        return out


# --- DVH of equal-volume points -------------------------------------------------------------------------
def d_pct(dose: np.ndarray, percent: float) -> np.ndarray:
    """D_x (Gy) of each row of ``dose`` (n, P), every point the same volume: ``physics.dvh.DVH.d_pct``'s
    definition (each point's dose at the middle of its volume step, linear between them), by partition."""
    dose = np.atleast_2d(dose)
    p = dose.shape[1]
    pos = p * percent / 100.0 - 0.5          # position in the hottest-first order
    if pos <= 0:
        return dose.max(axis=1).astype(float)
    if pos >= p - 1:
        return dose.min(axis=1).astype(float)
    i0 = math.floor(pos)
    f = pos - i0
    a0, a1 = p - 1 - i0, p - 2 - i0          # the same two points in ascending order
    part = np.partition(dose, (a1, a0), axis=1)
    return (part[:, a0].astype(float) + f * (part[:, a1].astype(float) - part[:, a0].astype(float)))


def v_pct(dose: np.ndarray, level_gy: float) -> np.ndarray:
    """V at ``level_gy``: % of the points of each row receiving at least that dose."""
    return 100.0 * np.mean(np.atleast_2d(dose) >= np.float32(level_gy), axis=1)


def dvh_rows(dose: np.ndarray, rx_gy: float) -> np.ndarray:
    """(n, DVH_LEVELS) % of the points >= each level of ``dvh_levels_gy`` (cumulative DVH per row)."""
    dose = np.ascontiguousarray(np.atleast_2d(dose), np.float32)
    counts = np.zeros((dose.shape[0], DVH_LEVELS), np.int64)
    _level_counts(dose, np.float32((DVH_LEVELS - 1) / (DVH_MAX_RX * rx_gy)), counts)
    ge = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return (100.0 * ge / dose.shape[1]).astype(np.float32)


@njit(cache=True)
def _level_counts(dose, inv_step, counts):
    """counts[s, l]: points of row s whose dose lies in [l, l + 1) steps (the last level: and above)."""
    top = counts.shape[1] - 1
    for s in range(dose.shape[0]):
        for i in range(dose.shape[1]):
            counts[s, min(int(dose[s, i] * inv_step), top)] += 1


def dvh_levels_gy(rx_gy: float) -> np.ndarray:
    return np.linspace(0.0, DVH_MAX_RX * rx_gy, DVH_LEVELS)


# --- tasks (module level: they run in Dask workers) -----------------------------------------------------
def _set_threads(threads) -> None:
    """Numba threads of this task: ``threads`` (1 in a Dask worker, whose parallelism is the workers), or every
    core when None."""
    import numba

    n = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n if threads is None else max(1, min(int(threads), n)))


def _draws(seed: int, batch: int, n: int, n_needles: int, n_seeds: int):
    """The batch's standard normals and uniforms: always drawn, in this order, whatever the SDs."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(batch),)))
    return rng.standard_normal((n, n_needles, 2)), rng.standard_normal((n, n_needles, 3)), rng.random((n, n_seeds))


def _run_batch(task: dict) -> dict:
    """One batch of samples: draw the errors, move the seeds, dose at the CTV points, the metrics per sample."""
    _set_threads(task.get("threads"))
    geom, kern, em, rx = task["geometry"], task["kernel"], task["error_model"], task["rx_gy"]
    z_ang, z_shift, u_loss = _draws(task["seed"], task["batch"], task["n"], len(geom.entries_mm),
                                    len(geom.seed_needle))
    angles = z_ang * math.radians(em.angle_sd_deg)
    shifts = z_shift * np.array([em.tip_sd_mm, em.tip_sd_mm, em.depth_sd_mm])
    alive = u_loss >= em.seed_loss_pct / 100.0
    seeds, axes = geom.moved(angles, shifts)
    dose = kern.dose(seeds, axes, alive)
    # where each needle's tip ends up, across its planned axis: the lateral tip error the model implies
    tip_local = np.zeros((len(geom.entries_mm), 3))
    tip_local[:, 2] = geom.lengths_mm
    tip = np.einsum("nkij,nkj->nki", local_rotations(angles), tip_local[None] + shifts)
    tip_lateral = np.hypot(tip[..., 0], tip[..., 1])
    return {"batch": task["batch"], "d90_gy": d_pct(dose, 90.0), "d100_gy": d_pct(dose, 100.0),
            "v100_pct": v_pct(dose, rx), "v150_pct": v_pct(dose, 1.5 * rx), "v200_pct": v_pct(dose, 2.0 * rx),
            "dvh_pct": dvh_rows(dose, rx), "tip_lateral_mm_sum": float(tip_lateral.sum()),
            "tip_lateral_n": int(tip_lateral.size), "seeds_lost": int((~alive).sum())}


def _lateral_shifts(frames: np.ndarray, shift_mm: float, k: int) -> np.ndarray:
    """(k, 3) world shifts of ``shift_mm`` across one needle (frame rows e1, e2, u), k directions apart evenly."""
    t = 2.0 * np.pi * np.arange(k) / k
    return shift_mm * (np.cos(t)[:, None] * frames[0][None] + np.sin(t)[:, None] * frames[1][None])


def _run_sensitivity(task: dict) -> dict:
    """For each of the task's needles: D90 with that needle alone shifted across its axis in each direction."""
    _set_threads(task.get("threads"))
    geom, kern, seeds, axes = task["geometry"], task["kernel"], task["seeds_mm"], task["axes"]
    nominal = kern.dose(seeds[None], axes[None])[0]
    out = {}
    for k in task["needles"]:
        mine = geom.seed_needle == k
        own = kern.dose(seeds[None, mine], axes[None, mine])[0]
        shifts = _lateral_shifts(geom.frames[k], task["shift_mm"], task["directions"])
        moved = seeds[mine][None] + shifts[:, None, :]
        dose = (nominal - own)[None] + kern.dose(moved, np.broadcast_to(axes[mine], moved.shape))
        out[k] = (d_pct(dose, 90.0), shifts)
    return {"needles": out, "d90_nominal_gy": float(d_pct(nominal[None], 90.0)[0])}


class InProcessRunner(SerialRunner):
    """Tasks here, one after another, each using every core through the dose kernel's threads."""

    numba_threads = None  # numba's default: all cores


# --- the preview ----------------------------------------------------------------------------------------
def robustness_preview(plan: Plan, ctv_points_mm: np.ndarray, error_model: ErrorModel, samples: int = 1000,
                       seed: int = 0, runner=None, progress=None, sensitivity: bool = True) -> dict:
    """The plan's CTV metrics under random needle placement errors: robustness.json's keys (cli-contract.md)
    and extras (nominal metrics on the same points, V150/V200, DVH band, per-sample D90, sensitivity).

    ``ctv_points_mm``: (P, 3) equal-volume CTV sample points, LPS mm of the plan's frame (``ctv_sample_points``).
    ``runner``: anything with ``map(fn, items, progress)`` returning results in item order (``navigator.cluster``
    opens Dask ones; default ``InProcessRunner``); tasks on a runner without ``numba_threads`` use one thread
    each, the runner's workers being the parallelism. ``progress(done, total)``: tasks done. ``sensitivity``:
    False leaves out the needles' sensitivities (``needles`` is then empty).
    """
    t0 = time.perf_counter()
    samples = _checked_samples(samples)
    seed = _checked_seed(seed)
    pts = np.asarray(ctv_points_mm, float).reshape(-1, 3)
    if len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise InputError("the CTV sample is empty or not finite; check that the CTV structure covers the target")
    runner = runner or InProcessRunner()
    threads = getattr(runner, "numba_threads", 1)
    rx = float(plan.prescription_gy)
    geom = ImplantGeometry.of(plan)
    reach = 5.0 * max(error_model.tip_sd_mm, error_model.depth_sd_mm) + float(geom.lengths_mm.max()) * math.sin(
        math.radians(min(90.0, 5.0 * error_model.angle_sd_deg)))
    kern = DoseKernel.of(plan, pts, reach_mm=reach)
    common = {"geometry": geom, "kernel": kern, "threads": threads}
    sizes = [min(BATCH_SAMPLES, samples - b) for b in range(0, samples, BATCH_SAMPLES)]
    batches = [{**common, "batch": i, "n": n, "seed": seed, "error_model": error_model, "rx_gy": rx}
               for i, n in enumerate(sizes)]
    seeds, axes = plan.seed_positions_mm(), plan.seed_axes()
    sens = [{**common, "needles": list(range(k, min(k + SENSITIVITY_NEEDLES_PER_TASK, len(geom.entries_mm)))),
             "seeds_mm": seeds, "axes": axes, "shift_mm": SENSITIVITY_SHIFT_MM, "directions": SENSITIVITY_DIRECTIONS}
            for k in range(0, len(geom.entries_mm) if sensitivity else 0, SENSITIVITY_NEEDLES_PER_TASK)]
    total = len(batches) + len(sens)
    done = [0]

    def tick(_d, _t):
        done[0] += 1
        if progress:
            progress(done[0], total)

    results = runner.map(_run_batch, batches, progress=tick)
    sens_results = runner.map(_run_sensitivity, sens, progress=tick) if sens else []
    nominal_dose = kern.dose(seeds[None], axes[None])
    return _summary(plan, geom, error_model, samples, seed, results, sens_results, nominal_dose, pts, rx,
                    getattr(runner, "workers", 1), time.perf_counter() - t0)


def _checked_samples(samples) -> int:
    if isinstance(samples, float) and samples.is_integer():
        samples = int(samples)
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
        raise InputError(f"--samples {samples}: give a whole number of samples from 1 to {MAX_SAMPLES} "
                         "(1000 gives the 10th percentile of D90 to about +-1 %)")
    return int(samples)


def _checked_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"--seed {seed}: give a whole number >= 0 (the same seed gives the same numbers)")
    return int(seed)


def summary_stats(values: np.ndarray, digits: int = 3) -> dict:
    out = {"mean": round(float(np.mean(values)), digits)}
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        out[f"p{q}"] = round(float(v), digits)
    return out


def _summary(plan, geom, em, samples, seed, results, sens_results, nominal_dose, pts, rx, workers, seconds) -> dict:
    cat = {k: np.concatenate([r[k] for r in results]) for k in
           ("d90_gy", "d100_gy", "v100_pct", "v150_pct", "v200_pct", "dvh_pct")}
    d90 = cat["d90_gy"]
    band = cat["dvh_pct"].astype(float)
    levels = dvh_levels_gy(rx)
    q = np.percentile(band, (5, 50, 95), axis=0)
    needles = []
    for r in sens_results:
        d90_nom = r["d90_nominal_gy"]
        for k, (d90_moved, shifts) in r["needles"].items():
            slope = (d90_moved - d90_nom) / SENSITIVITY_SHIFT_MM
            worst = int(np.argmin(slope))
            needles.append({"id": geom.needle_ids[k], "d90_change_gy_per_mm": round(float(slope.mean()), 4),
                            "d90_change_worst_gy_per_mm": round(float(slope[worst]), 4),
                            "worst_direction_lps": [round(float(v), 4) for v in shifts[worst] / SENSITIVITY_SHIFT_MM],
                            "seeds": int(np.sum(geom.seed_needle == k))})
    n_tip = sum(r["tip_lateral_n"] for r in results)
    return {
        "samples": samples, "seed": seed, "error_model": em.to_json(), "prescription_gy": rx,
        "D90_gy": summary_stats(d90), "V100_pct": summary_stats(cat["v100_pct"]),
        "V150_pct": summary_stats(cat["v150_pct"]), "V200_pct": summary_stats(cat["v200_pct"]),
        "D100_gy": summary_stats(cat["d100_gy"]),
        "pass_rate": round(float(np.mean(d90 >= rx)), 6),
        "nominal": {"D90_gy": round(float(d_pct(nominal_dose, 90.0)[0]), 3),
                    "V100_pct": round(float(v_pct(nominal_dose, rx)[0]), 3),
                    "V150_pct": round(float(v_pct(nominal_dose, 1.5 * rx)[0]), 3),
                    "V200_pct": round(float(v_pct(nominal_dose, 2.0 * rx)[0]), 3),
                    "note": "the plan as planned, on the same CTV sample and dose kernel as the samples"},
        "needles": needles,
        "sensitivity": {"shift_mm": SENSITIVITY_SHIFT_MM, "directions": SENSITIVITY_DIRECTIONS,
                        "definition": "d90_change_gy_per_mm: (D90 with this needle alone shifted shift_mm across "
                                      "its axis - nominal D90) / shift_mm, averaged over the directions evenly spaced "
                                      "around the needle; d90_change_worst_gy_per_mm: the same in the worst "
                                      "direction (worst_direction_lps). Negative: D90 drops."},
        "dvh_band": {"dose_gy": [round(float(v), 3) for v in levels],
                     "volume_pct": {"p5": _rounded(q[0]), "p50": _rounded(q[1]), "p95": _rounded(q[2]),
                                    "nominal": _rounded(dvh_rows(nominal_dose, rx)[0])}},
        "d90_samples_gy": [round(float(v), 3) for v in d90],
        "implied_mean_tip_lateral_error_mm": round(sum(r["tip_lateral_mm_sum"] for r in results) / max(n_tip, 1), 3),
        "seeds_lost_mean": round(sum(r["seeds_lost"] for r in results) / samples, 4),
        "ctv": {"points": len(pts)},
        "batches": len(results), "batch_samples": BATCH_SAMPLES,
        "method": ("Monte Carlo over needle placement errors (error_model.definition); TG-43U1 2D dose of the plan's "
                   "seed model and strength (0.25 mm kernel table, bilinear, float32) at equal-volume CTV points; "
                   "D_x, V_x as in plan.json; batch b seeded by numpy SeedSequence(seed, spawn_key=(b,))"),
        "seconds": round(seconds, 3), "workers": int(workers),
    }


def _rounded(values) -> list:
    return [round(float(v), 3) for v in values]


# --- CTV sample -----------------------------------------------------------------------------------------
def ctv_sample_points(ctv, spacing_mm: float = 1.0, frame_of_reference_uid: str = "") -> np.ndarray:
    """Equal-volume sample of a CTV ``core.Structure``: the voxel centres inside it of an axis-aligned
    ``spacing_mm`` grid over its bounds (LPS mm; ``anatomy.structures.structure_mask``'s rules)."""
    from navigator.anatomy.structures import structure_mask
    from navigator.core.volume import grid_volume

    lo, hi = ctv.bounds_mm()
    grid = grid_volume(lo - spacing_mm, hi + spacing_mm, spacing_mm, frame_of_reference_uid=frame_of_reference_uid)
    return grid.voxel_centers_lps(structure_mask(ctv, grid))
