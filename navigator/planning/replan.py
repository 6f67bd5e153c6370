"""Intraoperative re-planning on the needles as found (issue #15): once the needles are in and checked, the
seed loading is re-optimised along the needles where they actually lie, before a seed is released. A needle
2.5 mm off but safe is better used than pulled.

1. ``as_found.needles_as_found``: the needle check mapped back to the pre-plan frame through the check's
   registration (its inverse, intraop_to_preplan): each found needle where it was found, entering where its
   line crosses the template plane (depth 0 of the applicator); needles not found dropped.
2. ``as_found.carried_loading``: the pre-plan's loading carried on the needles as found ("as placed").
3. ``replan``: candidate places every ``place_step_mm`` back from each found tip (the deepest ``tip_margin_mm``
   short of it, the pre-plan's rule, so the carried loading lies on them), kept where the seed is clear of the
   no-go mask, >= the minimum skin depth and near the CTV (``replan_field``); the loading (seeds >=
   ``seed_step_mm`` apart on a needle) is chosen by ``planning.exchange`` (the pre-plan's objective, started
   from the carried loading, the cartridge as the seed budget) in rounds checked on the dose grid, each raising
   the coverage or the hot-spot weight, whichever the grid says is short. Goals: D90 >= Rx, V100 >= the plan's
   goal (capped at the pre-plan's own), V150 and V200 within ``hot_slack_pct`` points of the pre-plan's
   (intraop plans gain coverage at the price of hot spots unless those are limited), each OAR's D0.1cc under
   the plan's limit. The carried loading is round 0; the best-ranked round is kept: the OAR limits first, then
   D90 >= ``d90_margin_rx`` x Rx (short of it: the higher D90), then the fewest goals missed, then the D90.
4. The revision: a full plan (the found needles, the seeds deepest first per needle and numbered in delivery
   order, ``revision`` and ``based_on_sop_instance_uid``) with the three metric sets side by side.

Seeds already released (``ReplanOptions.fixed_seeds_mm``: a delivery stopped part-way, re-planned for what is
left): their dose is part of every metric but the pre-plan's and of the optimiser's objective (folded into the
penalty thresholds, ``_with_base``); no place lies closer than the seed spacing to one of them, nor, on the
needle it left, deeper than its shallowest one less the spacing (the applicator retracted past it); the
loading as placed keeps only the carried seeds those rules leave; the revision holds only the seeds to deliver.
Everything is LPS mm in the pre-plan CT's frame; doses are total doses of the permanent implant (Gy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.errors import InputError, PlanError
from navigator.physics import dvh, tg43
from navigator.physics.kernel import influence_matrix, kernel_table
from navigator.planning.as_found import NeedlesAsFound, carried_loading, copy_needle
from navigator.planning.exchange import ExchangeOptions, exchange_loading
from navigator.planning.optimize import PointPenalties
from navigator.planning.replan_field import (
    ReplanAnatomy,
    ReplanField,
    allowed_places,
    build_field,
    d01cc_gy,
    evaluate,
    subsample,
)

# plan.json keys of the pre-plan that still hold for its revision (the rest describe how it was made)
CARRIED_EXTRA = ("ctv", "seed_activity_mci", "template", "insertion_direction", "oars_skipped", "oar_limits",
                 "nogo", "min_skin_depth_mm", "oar_metrics_method", "source_strength")
ON_NEEDLE_MM = 0.5   # a seed farther than this from its needle's axis is not on it


@dataclass(frozen=True)
class ReplanOptions:
    max_seeds: int | None = None          # the cartridge; None: the plan's seed count
    seed_step_mm: float = 5.0             # least spacing of the seeds along a needle (5-10 mm)
    place_step_mm: float = 2.5            # candidate places along a needle (a finer raster than the spacing)
    tip_margin_mm: float = 5.0            # the deepest seed this far short of its needle's tip (the pre-plan's)
    min_skin_depth_mm: float | None = None  # None: the plan's (plan.json min_skin_depth_mm, else 10 mm)
    hot_slack_pct: float = 5.0            # V150 and V200 may exceed the pre-plan's by this many points
    d90_aim_rx: float = 1.03              # rounds go on until D90 >= this x Rx on the grid (or hot spots bind)
    d90_margin_rx: float = 1.02           # a loading under this x Rx ranks as short of the prescription: the
                                          # grid's and the kernel's ~1 % must not take the delivered D90 under Rx
    v100_goal_pct: float = 95.0
    dose_grid_mm: float = 1.0
    grid_margin_mm: float = 10.0
    max_dose_voxels: int = 600_000
    max_target_points: int = 2500         # CTV points per round (a fresh sample each round)
    max_shell_points: int = 1000
    max_oar_points: int = 300
    rounds: int = 5
    mismatch_mm: float = 1.0              # needles.json's planned tips vs this plan's (mapped), at most
    fixed_seeds_mm: tuple = ()            # ((x, y, z), ...) LPS mm: seeds already released; dose counted, kept
    fixed_seed_axes: tuple = ()           # their unit axes (the needle each left), one per fixed seed
    fixed_seed_needles: tuple = ()        # the needle id each left (a needle not found: only the spacing rule)
    exchange: ExchangeOptions = field(default_factory=ExchangeOptions)
    progress: object = None               # callable(str) or None

    def __post_init__(self) -> None:
        if self.max_seeds is not None and not 1 <= int(self.max_seeds) <= 1000:
            raise InputError(f"--max-seeds {self.max_seeds}: the cartridge holds 1 to 1000 seeds")
        if not 5.0 <= self.seed_step_mm <= 10.0:
            raise InputError(f"seed step {self.seed_step_mm} mm: seeds along a needle are 5 to 10 mm apart")
        if not 0.5 <= self.place_step_mm <= self.seed_step_mm:
            raise InputError(f"place step {self.place_step_mm} mm: give 0.5 mm to the seed step")
        if not 0.0 <= self.tip_margin_mm <= 20.0:
            raise InputError(f"tip margin {self.tip_margin_mm} mm: give 0 to 20 mm (the pre-plan's is 5 mm)")
        if not 0.0 <= self.hot_slack_pct <= 50.0:
            raise InputError(f"--hot-slack-pct {self.hot_slack_pct}: give 0 to 50 percentage points")
        k = len(self.fixed_seeds_mm)
        if len(self.fixed_seed_axes) != k or len(self.fixed_seed_needles) not in (0, k):
            raise InputError(f"{k} fixed seeds with {len(self.fixed_seed_axes)} axes and "
                             f"{len(self.fixed_seed_needles)} needle ids: give one axis (and needle id) per seed")
        if k and not (np.isfinite(np.asarray(self.fixed_seeds_mm, float)).all()
                      and np.isfinite(np.asarray(self.fixed_seed_axes, float)).all()):
            raise InputError("fixed seeds: positions and axes must be finite numbers (LPS mm)")


@dataclass(frozen=True)
class _Fixed:
    """The seeds already released (``ReplanOptions.fixed_seeds_mm``) as arrays."""

    positions: np.ndarray    # (K, 3) LPS mm
    axes: np.ndarray         # (K, 3) unit
    needles: tuple           # K needle ids ("" where not given)

    @classmethod
    def of(cls, opts: ReplanOptions) -> _Fixed:
        pos = np.asarray(opts.fixed_seeds_mm, float).reshape(-1, 3)
        axes = np.asarray(opts.fixed_seed_axes, float).reshape(-1, 3)
        axes = axes / np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
        return cls(pos, axes, tuple(opts.fixed_seed_needles) or ("",) * len(pos))

    def __len__(self) -> int:
        return len(self.positions)

    def dose_gy(self, points_mm: np.ndarray, kt) -> np.ndarray:
        """Their total dose (Gy, float64) at the points (N, 3)."""
        if not len(self) or not len(points_mm):
            return np.zeros(len(points_mm))
        return influence_matrix(points_mm, self.positions, self.axes, kt).sum(axis=0, dtype=np.float64)

    def clear(self, found: NeedlesAsFound, positions_mm: np.ndarray, needle_ids, depth_mm: np.ndarray,
              spacing_mm: float) -> np.ndarray:
        """Per place (or seed): True where a seed may still go - at least the spacing from every released seed
        and, on a needle that released seeds, above its shallowest one by the spacing."""
        ok = np.ones(len(positions_mm), bool)
        if not len(self) or not len(positions_mm):
            return ok
        dist = np.linalg.norm(positions_mm[:, None, :] - self.positions[None, :, :], axis=2)
        ok &= dist.min(axis=1) >= spacing_mm - 1e-6
        by_id = {n.id: n for n in found.needles}
        ids = np.asarray(needle_ids)
        for nid in set(self.needles) & set(by_id):
            shallowest = min(by_id[nid].depth_of(p) for p, m in zip(self.positions, self.needles) if m == nid)
            ok &= ~((ids == nid) & (depth_mm > shallowest - spacing_mm + 1e-6))
        return ok

    def with_plan(self, plan: Plan) -> Plan:
        """A copy of ``plan`` holding the released seeds too, each on a short needle along its axis: for the
        dose and metrics only (never saved or delivered)."""
        needles = [copy_needle(n) for n in plan.needles]
        seeds = [PlannedSeed(s.id, s.needle_id, s.position_mm.copy()) for s in plan.seeds]
        for k, (p, u) in enumerate(zip(self.positions, self.axes)):
            needles.append(Needle(id=f"released-{k + 1}", entry_mm=p - 20.0 * u, tip_mm=p + 5.0 * u))
            seeds.append(PlannedSeed(f"released-{k + 1}", f"released-{k + 1}", p.copy()))
        return replace(plan, needles=needles, seeds=seeds, metrics={}, extra={})


# --- 3. the re-plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Places:
    positions: np.ndarray    # (N, 3) LPS mm
    axes: np.ndarray         # (N, 3)
    needle: np.ndarray       # (N,) index into found.needles
    depth_mm: np.ndarray     # (N,) from the needle's entry


@dataclass
class ReplanResult:
    """The revision and what it is compared with; ``to_json()`` is replan.json."""

    plan: Plan                       # the revision
    preplan: Plan
    as_placed: Plan
    found: NeedlesAsFound
    metrics_preplan: dict
    metrics_as_placed: dict
    metrics_replan: dict
    doses: dict                      # {"preplan" | "as_placed" | "replan": Volume (Gy) on the dose grid}
    field: ReplanField
    max_seeds: int
    seeds_moved: int
    checks: dict
    rounds: list
    places: dict                     # counts of candidate places: all, allowed, ...
    seconds: float
    goals: dict
    fixed_seeds: int = 0             # seeds already released, counted in the as-placed and re-plan metrics

    def to_json(self) -> dict:
        m_as, m_re = self.metrics_as_placed, self.metrics_replan
        return {
            "metrics_preplan": self.metrics_preplan, "metrics_as_placed": m_as, "metrics_replan": m_re,
            "seeds": len(self.plan.seeds), "seeds_moved": int(self.seeds_moved), "needles_used": self.found.ids,
            "seconds": round(self.seconds, 3),
            # beyond the contract
            "revision": self.plan.extra.get("revision"),
            "based_on_sop_instance_uid": self.plan.extra.get("based_on_sop_instance_uid"),
            "needles_dropped": self.found.dropped,
            "needles_with_seeds": sorted({s.needle_id for s in self.plan.seeds}),
            "seeds_preplan": len(self.preplan.seeds), "seeds_as_placed": len(self.as_placed.seeds),
            "max_seeds": self.max_seeds,
            "d90_gain_gy": round(float(m_re["D90_gy"] - m_as["D90_gy"]), 3),
            "fixed_seeds": int(self.fixed_seeds),
            "needle_moves": self.found.moves,
            "goals": self.goals, "checks": self.checks, "candidate_places": self.places, "rounds": self.rounds,
            "dose_grid": {"spacing_mm": self.field.grid.spacing_mm.tolist(),
                          "shape_ijk": list(self.field.grid.shape_ijk)},
            "metrics_method": ("the three metric sets on one dose grid with the CTV's partial-volume fraction "
                               "(TG-43 2D, seed axes = needle axes); OARs at their CT voxels near the implant"),
        }


def replan(plan: Plan, found: NeedlesAsFound, anatomy: ReplanAnatomy, options: ReplanOptions | None = None,
           based_on_sop_instance_uid: str = "") -> ReplanResult:
    """Re-optimise ``plan``'s seed loading on the needles ``found`` (see the module docstring)."""
    opts = options or ReplanOptions()
    say = opts.progress or (lambda msg: None)
    t0 = time.perf_counter()
    if not plan.seeds:
        raise PlanError("the plan has no seeds; there is no loading to re-plan")
    model = tg43.load_seed_model(plan.seed_model)
    rx, sk = float(plan.prescription_gy), float(plan.seed_sk_u)
    kt = kernel_table(model, sk)
    min_skin = float(opts.min_skin_depth_mm if opts.min_skin_depth_mm is not None
                     else plan.extra.get("min_skin_depth_mm") or 10.0)
    max_seeds = int(opts.max_seeds or len(plan.seeds))
    fixed = _Fixed.of(opts)
    as_placed = carried_loading(plan, found)
    if len(fixed):  # what is left of the loading as placed: the carried seeds the released ones leave room for
        keep = fixed.clear(found, as_placed.seed_positions_mm(), [s.needle_id for s in as_placed.seeds],
                           np.array([as_placed.needle(s.needle_id).depth_of(s.position_mm) for s in as_placed.seeds]),
                           opts.seed_step_mm)
        as_placed.seeds = [s for s, k in zip(as_placed.seeds, keep) if k]

    say(f"masks and dose grid around the CTV ({len(found.needles)} needles found, {len(found.dropped)} dropped"
        + (f", {len(fixed)} seeds released" if len(fixed) else "") + ")")
    around = np.vstack([[n.tip_mm for n in found.needles], plan.seed_positions_mm(), fixed.positions])
    clearance = float((plan.extra.get("nogo") or {}).get("clearance_mm", 3.0))
    fld = build_field(anatomy, around, clearance, min_skin, opts.dose_grid_mm, opts.grid_margin_mm,
                      opts.max_dose_voxels, opts.max_shell_points, opts.max_oar_points)
    m_pre, dose_pre = evaluate(fld, plan, model, kt, rx)
    m_as, dose_as = evaluate(fld, fixed.with_plan(as_placed) if len(fixed) else as_placed, model, kt, rx)
    goals = _goals(m_pre, rx, opts, anatomy.oar_limits_gy)

    places, counts = _candidate_places(found, fld, opts, min_skin, fixed)
    if as_placed.seeds:  # where the loading as placed breaks the re-plan's rules (it keeps none of those places)
        ok = allowed_places(fld, as_placed.seed_positions_mm(), as_placed.seed_axes(), min_skin)
        counts["as_placed_too_shallow"] = int(np.sum(~ok["deep"]))
        counts["as_placed_in_nogo"] = int(np.sum(~ok["clear"]))
    x0 = _on_places(as_placed, found, places)
    say(f"optimising {max_seeds} seeds over {len(places.positions)} places on {len(found.needles)} needles")
    x, rounds = _optimise(places, fld, x0, max_seeds, goals, kt, rx, opts, fixed)

    rev = _revision(plan, found, places, x, fld, based_on_sop_instance_uid)
    m_re, dose_re = evaluate(fld, fixed.with_plan(rev) if len(fixed) else rev, model, kt, rx)
    rev.metrics = m_re
    checks = _checks(rev, m_re, goals, anatomy.oar_limits_gy, fld, min_skin, max_seeds)
    rev.extra["checks"] = checks
    seconds = time.perf_counter() - t0
    rev.extra["replan"] = {"seconds": round(seconds, 3), "seeds_moved": int(np.sum(x & ~x0)),
                           "needles_dropped": found.dropped, "max_seeds": max_seeds, "fixed_seeds": len(fixed),
                           "d90_as_placed_gy": round(float(m_as["D90_gy"]), 3),
                           "d90_preplan_gy": round(float(m_pre["D90_gy"]), 3), "ctv_source": anatomy.ctv_source}
    say(f"re-plan: {len(rev.seeds)} seeds, D90 {m_re['D90_gy']:.1f} Gy (as placed {m_as['D90_gy']:.1f} Gy), "
        f"{seconds:.2f} s")
    return ReplanResult(plan=rev, preplan=plan, as_placed=as_placed, found=found, metrics_preplan=m_pre,
                        metrics_as_placed=m_as, metrics_replan=m_re,
                        doses={"preplan": dose_pre, "as_placed": dose_as, "replan": dose_re}, field=fld,
                        max_seeds=max_seeds, seeds_moved=int(np.sum(x & ~x0)), checks=checks, rounds=rounds,
                        places=counts, seconds=seconds, goals=goals, fixed_seeds=len(fixed))


def _goals(m_pre: dict, rx: float, opts: ReplanOptions, oar_limits: dict) -> dict:
    """The re-plan's goals: coverage as the plan's, hot spots held near the pre-plan's, OARs as in the plan."""
    return {"D90_min_gy": rx, "V100_min_pct": round(min(opts.v100_goal_pct, float(m_pre["V100_pct"])), 3),
            "V150_max_pct": round(float(m_pre["V150_pct"]) + opts.hot_slack_pct, 3),
            "V200_max_pct": round(float(m_pre["V200_pct"]) + opts.hot_slack_pct, 3),
            "oar_D0.1cc_max_gy": {n: float(v) for n, v in oar_limits.items()}}


def _candidate_places(found: NeedlesAsFound, fld: ReplanField, opts: ReplanOptions,
                      min_skin: float, fixed: _Fixed | None = None) -> tuple[_Places, dict]:
    """Places every ``place_step_mm`` back from each found tip (the deepest ``tip_margin_mm`` short of it, none
    above the entry), kept where allowed (``replan_field.allowed_places``) and clear of the seeds released."""
    pos, axes, idx, depth = [], [], [], []
    for i, n in enumerate(found.needles):
        d = np.arange(n.length_mm - opts.tip_margin_mm, 0.5 * opts.seed_step_mm, -opts.place_step_mm)
        pos.append(n.entry_mm + d[:, None] * n.axis)
        axes.append(np.repeat(n.axis[None], len(d), axis=0))
        idx.append(np.full(len(d), i))
        depth.append(d)
    pos, axes = np.concatenate(pos), np.concatenate(axes)
    ok = allowed_places(fld, pos, axes, min_skin)
    keep = ok["clear"] & ok["deep"] & ok["near"]
    counts = {"on_needles": len(pos), "near_ctv": int(ok["near"].sum()),
              "clear_of_nogo": int((ok["near"] & ok["clear"]).sum()), "allowed": int(keep.sum()),
              "place_step_mm": opts.place_step_mm, "seed_spacing_min_mm": opts.seed_step_mm}
    if fixed is not None and len(fixed):
        ids = [found.needles[i].id for i in np.concatenate(idx)]
        keep &= fixed.clear(found, pos, ids, np.concatenate(depth), opts.seed_step_mm)
        counts["clear_of_released"] = counts["allowed"] = int(keep.sum())
    if not keep.any():
        raise InputError(f"none of the {len(pos)} seed places along the {len(found.needles)} found needles lies near "
                         f"the CTV, clear of bone/air/OARs and >= {min_skin:g} mm below the skin; the needles as "
                         "found cannot carry seeds: re-insert them")
    return _Places(pos[keep], axes[keep], np.concatenate(idx)[keep], np.concatenate(depth)[keep]), counts


def _conflicts(places: _Places, spacing_mm: float) -> np.ndarray:
    """(N, N) True where two places are on one needle closer than the seed spacing (a place and itself too)."""
    same = places.needle[:, None] == places.needle[None, :]
    return same & (np.abs(places.depth_mm[:, None] - places.depth_mm[None, :]) < spacing_mm - 1e-6)


def _on_places(carried: Plan, found: NeedlesAsFound, places: _Places) -> np.ndarray:
    """The carried loading as a loading of the places (a carried seed on no allowed place is left out)."""
    x = np.zeros(len(places.positions), bool)
    index = {nid: i for i, nid in enumerate(found.ids)}
    for s in carried.seeds:
        i = index[s.needle_id]
        d = found.needles[i].depth_of(s.position_mm)
        on = np.nonzero((places.needle == i) & (np.abs(places.depth_mm - d) <= 0.5))[0]
        if len(on):
            x[on[0]] = True
    return x


def _optimise(places: _Places, fld: ReplanField, x0: np.ndarray, max_seeds: int, goals: dict, kt, rx: float,
              opts: ReplanOptions, fixed: _Fixed | None = None) -> tuple[np.ndarray, list]:
    """Rounds of ``exchange_loading`` on fresh CTV samples, each checked by the TG-43 dose at every CTV voxel of
    the dose grid (with its fraction) and at the OARs' voxels; the best round's loading. The released seeds'
    dose (``fixed``) is added to every judgement and folded into the optimiser's penalties."""
    a_ctv = influence_matrix(fld.ctv_points, places.positions, places.axes, kt)
    a_oar = {n: influence_matrix(p, places.positions, places.axes, kt) for n, p in fld.oar_points.items()}
    a_fixed = influence_matrix(fld.fixed_points, places.positions, places.axes, kt)
    fixed = fixed if fixed is not None else _Fixed.of(ReplanOptions())
    b_ctv = fixed.dose_gy(fld.ctv_points, kt)
    b_oar = {n: fixed.dose_gy(p, kt) for n, p in fld.oar_points.items()}
    b_fixed = fixed.dose_gy(fld.fixed_points, kt)
    core = np.nonzero(fld.ctv_weights >= 0.5)[0]
    nt = min(len(core), opts.max_target_points)
    conflicts = _conflicts(places, opts.seed_step_mm)
    voxel_cc = fld.grid.voxel_volume_cc
    x, rounds = x0.copy(), []

    def judge(x, record: dict) -> tuple:
        """The loading's rank on the grid (the OAR limits first, then the prescription with its margin - short
        of it: the higher D90 - then the other goals, then the D90) and its metrics, recorded in ``rounds``."""
        xf = x.astype(np.float32)
        tm = dvh.target_metrics(xf @ a_ctv + b_ctv, fld.ctv_weights, voxel_cc, rx)
        missed = _missed(tm, {n: d01cc_gy(xf @ a_o + b_oar[n], voxel_cc) for n, a_o in a_oar.items()}, goals)
        rounds.append({**record, "seeds": int(x.sum()), "D90_gy": round(float(tm["D90_gy"]), 2),
                       "V100_pct": round(float(tm["V100_pct"]), 2), "V150_pct": round(float(tm["V150_pct"]), 2),
                       "V200_pct": round(float(tm["V200_pct"]), 2), "goals_missed": missed})
        short = float(tm["D90_gy"]) < opts.d90_margin_rx * rx
        return (sum(m.startswith("oar ") for m in missed), short, -float(tm["D90_gy"]) if short else 0.0,
                len(missed), -float(tm["D90_gy"])), tm, missed

    # round 0: the pre-plan's loading as placed (on its allowed places): the re-plan never ranks below it
    rank0 = judge(x0, {"round": 0, "stop": "the pre-plan loading as placed"})[0]
    best = (rank0, x0.copy()) if x0.sum() <= max_seeds else None
    w_step, w_hot, stall = 1.0, 0.3, 0
    for rnd in range(opts.rounds):
        pick = subsample(core, nt, np.random.default_rng(100 + rnd))
        a = np.concatenate([a_ctv[:, pick], a_fixed], axis=1)
        pen = _penalties(fld, nt, rx, w_step, w_hot)
        if len(fixed):
            pen = _with_base(pen, np.concatenate([b_ctv[pick], b_fixed]))
        res = exchange_loading(a, pen, conflicts, x, max_seeds, places.positions, opts.exchange)
        x = res.loading
        rank, tm, missed = judge(x, {"round": rnd + 1, "adds": res.adds, "removes": res.removes,
                                     "exchanges": res.exchanges, "budget_removals": res.budget_removals,
                                     "optimise_s": round(res.seconds, 3), "stop": res.stop})
        stall = 0 if best is None or rank < best[0] else stall + 1
        if stall == 0:
            best = (rank, x.copy())
        elif stall >= 2:  # two rounds without a better loading: the weights no longer help
            break
        cover_ok = tm["D90_gy"] >= opts.d90_aim_rx * rx and tm["V100_pct"] >= goals["V100_min_pct"]
        hot_ok = tm["V150_pct"] <= goals["V150_max_pct"] - 1.0 and tm["V200_pct"] <= goals["V200_max_pct"] - 1.0
        if cover_ok and hot_ok and not any(m.startswith("oar ") for m in missed):
            break
        if not cover_ok:
            w_step *= 2.0
        if not hot_ok:
            w_hot *= 1.6 if cover_ok else 1.25
    return best[1], rounds


def _penalties(fld: ReplanField, nt: int, rx: float, w_step: float, w_hot: float) -> PointPenalties:
    """As the pre-plan's: CTV (coverage step, hot spots), shell (conformity), OARs (weights rising with the
    coverage weight, so a push for coverage does not overrun their limits)."""
    parts = [PointPenalties.uniform(nt, under=rx, w_step=w_step, w_under=2.0, over1=1.5 * rx, w_over1=w_hot,
                                    over2=2.0 * rx, w_over2=0.5 * w_hot, weight=1.0 / nt)]
    if fld.n_shell:
        parts.append(PointPenalties.uniform(fld.n_shell, over1=rx, w_over1=0.05, over2=1.5 * rx, w_over2=0.1,
                                            weight=1.0 / fld.n_shell))
    f = max(1.0, w_step)
    parts += [PointPenalties(p.under, p.w_step * f, p.w_under * f, p.over1, p.w_over1 * f, p.over2, p.w_over2 * f)
              for p in fld.oar_penalties]
    return PointPenalties.concat(parts)


def _with_base(pen: PointPenalties, base_gy: np.ndarray) -> PointPenalties:
    """The penalties of the dose ``d + base_gy`` written as penalties of ``d`` (the optimiser's own dose): each
    threshold lowered by the point's fixed dose, each weight scaled so that the penalty per Gy is unchanged. A
    coverage threshold the fixed dose already reaches goes to 0 (never short); a hot-spot threshold it already
    passes sits just above 0, where the penalty differs from the true one by a constant that no move changes."""
    base = np.asarray(base_gy, np.float64)
    eps = 1e-6

    def scaled(thr: np.ndarray, w: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        finite = np.isfinite(thr) & (thr > 0)
        new = np.where(finite, np.maximum(thr - base, floor), thr)
        return new, np.where(finite, w * new / np.where(finite, thr, 1.0), w)

    under, w_under = scaled(pen.under, pen.w_under, 0.0)
    over1, w_over1 = scaled(pen.over1, pen.w_over1, eps)
    over2, w_over2 = scaled(pen.over2, pen.w_over2, eps)
    return PointPenalties(under, pen.w_step, w_under, over1, w_over1, over2, w_over2)


def _missed(tm: dict, hot: dict, goals: dict) -> list[str]:
    out = [k for k, bad in (("D90", tm["D90_gy"] < goals["D90_min_gy"]),
                            ("V100", tm["V100_pct"] < goals["V100_min_pct"]),
                            ("V150", tm["V150_pct"] > goals["V150_max_pct"]),
                            ("V200", tm["V200_pct"] > goals["V200_max_pct"])) if bad]
    return out + [f"oar {n}" for n, d in hot.items() if d > goals["oar_D0.1cc_max_gy"].get(n, np.inf)]


# --- 4. the revision ------------------------------------------------------------------------------------
def _revision(plan: Plan, found: NeedlesAsFound, places: _Places, x: np.ndarray, fld: ReplanField,
              based_on: str) -> Plan:
    """The revised plan: every found needle, the chosen seeds numbered in delivery order (deepest first per
    needle, needles in the plan's order)."""
    rev = Plan(frame_of_reference_uid=plan.frame_of_reference_uid, ct_series_uid=plan.ct_series_uid,
               target=plan.target, prescription_gy=plan.prescription_gy, seed_model=plan.seed_model,
               seed_sk_u=plan.seed_sk_u, needles=[copy_needle(n) for n in found.needles])
    for i, n in enumerate(found.needles):
        mine = np.nonzero(x & (places.needle == i))[0]
        for j in mine[np.argsort(-places.depth_mm[mine])]:
            rev.seeds.append(PlannedSeed(f"S{len(rev.seeds) + 1:03d}", n.id, places.positions[j]))
    revision = int(plan.extra.get("revision") or 0) + 1
    rev.extra = {k: plan.extra[k] for k in CARRIED_EXTRA if k in plan.extra}
    rev.extra.update({
        "revision": revision, "based_on_sop_instance_uid": str(based_on),
        "seed_count": len(rev.seeds), "needle_count": len(rev.needles),
        "total_activity_mci": round(len(rev.seeds) * plan.seed_sk_u / tg43.MCI_TO_U, 3),
        "dose_grid": {"spacing_mm": fld.grid.spacing_mm.tolist(), "shape_ijk": list(fld.grid.shape_ijk),
                      "origin_mm": [round(float(v), 3) for v in fld.grid.origin_mm]},
    })
    return rev


def _checks(rev: Plan, m: dict, goals: dict, oar_limits: dict, fld: ReplanField, min_skin: float,
            max_seeds: int) -> dict:
    """The revision's goals, each with its value, the limit and whether it is met; and its geometry."""
    c = {"D90_ge_rx": {"value_gy": m["D90_gy"], "limit_gy": goals["D90_min_gy"],
                       "ok": bool(m["D90_gy"] >= goals["D90_min_gy"])},
         "V100_ge_goal": {"value_pct": m["V100_pct"], "limit_pct": goals["V100_min_pct"],
                          "ok": bool(m["V100_pct"] >= goals["V100_min_pct"])},
         "V150_held": {"value_pct": m["V150_pct"], "limit_pct": goals["V150_max_pct"],
                       "ok": bool(m["V150_pct"] <= goals["V150_max_pct"])},
         "V200_held": {"value_pct": m["V200_pct"], "limit_pct": goals["V200_max_pct"],
                       "ok": bool(m["V200_pct"] <= goals["V200_max_pct"])}}
    for n, lim in oar_limits.items():
        got = (m.get("oars", {}).get(n) or {}).get("D0.1cc_gy")
        c[f"oar {n}"] = {"value_gy": got, "limit_gy": float(lim), "ok": bool(got is None or got <= lim)}
    pos = rev.seed_positions_mm()
    sd = allowed_places(fld, pos, rev.seed_axes(), min_skin)["skin_depth_mm"] if len(pos) else np.array([np.inf])
    c["seeds_below_skin"] = {"min_depth_mm": float(sd.min()), "limit_mm": min_skin, "ok": bool(sd.min() >= min_skin)}
    off, out = 0.0, []
    for s in rev.seeds:
        n = rev.needle(s.needle_id)
        d = n.depth_of(s.position_mm)
        off = max(off, float(np.linalg.norm(s.position_mm - n.point_at_depth(d))))
        if not 0.0 < d <= n.length_mm:
            out.append(s.id)
    c["seeds_on_found_needles"] = {"max_off_axis_mm": off, "limit_mm": ON_NEEDLE_MM, "outside_entry_tip": out,
                                   "ok": bool(off <= ON_NEEDLE_MM and not out)}
    c["seeds_within_cartridge"] = {"seeds": len(rev.seeds), "limit": max_seeds, "ok": len(rev.seeds) <= max_seeds}
    c["all_ok"] = bool(all(v["ok"] for v in c.values()))
    return c
