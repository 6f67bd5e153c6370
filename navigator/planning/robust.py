"""Robust seed loading (``navigator plan --robust``): a loading whose D90 still reaches the prescription when the
needles land with realistic errors, at the chosen percentile of D90 over those errors (default the 10th: nine
implants in ten reach D90 >= Rx), with fewer hot spots than raising every seed's strength until it does.

Method (stochastic programming over error scenarios, on the pre-plan's own candidate needles and seeds):

1. the plain plan's loading (``make_plan``) is checked first: when its D90 percentile over ``check_samples``
   Monte Carlo samples of the error model (``planning.robustness``) already reaches Rx, it is kept;
2. otherwise each round draws ``scenarios`` fresh error scenarios: every candidate needle of the layout moved
   by the error model (rotation about its entry, shift across and along it), its candidate seeds with it. The
   optimiser (``planning.optimize``) then sees the CTV sample points once as planned (the pre-plan's penalties:
   coverage, V150/V200 hot spots, shell conformity, OAR limits) and once per scenario with a coverage penalty
   only (a step at Rx and a linear shortfall, weight ``w_robust`` shared by the scenarios): its objective is
   the plan's own plus the expected under-dosage over misplaced implants. Hot spots stay penalised where they
   are measured, on the plan as planned;
3. each round's loading is checked by the Monte Carlo (same seed every round); while the percentile misses
   Rx, ``w_robust`` doubles. The first round that reaches it is kept (else the one that came closest).

The comparison recorded in ``plan.json["robust"]``: the plain plan, the plain plan with every seed's strength
raised by the factor that brings its D90 percentile to Rx (dose is linear in strength, so the percentile scales
exactly), and the robust plan, each with its nominal V100/V150/V200 and (same samples, same seed) its D90
percentile and pass rate.
Units: LPS mm, Gy, % of the CTV.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from navigator.errors import InputError, PlanError
from navigator.physics import dose as dose_mod
from navigator.physics import tg43
from navigator.physics.kernel import influence_matrix, kernel_table
from navigator.planning.needles import PlanningField
from navigator.planning.optimize import PointPenalties, optimize_loading
from navigator.planning.pipeline import (
    PlanOptions,
    PlanResult,
    _candidate_seeds,
    _checks,
    _nogo,
    _oar_metrics_at_voxels,
    _penalties,
    _plan_metrics,
    _plan_of,
    _sample_points,
    _subsample,
    _target_metrics,
)
from navigator.planning.robustness import (
    ErrorModel,
    ImplantGeometry,
    needle_frames,
    robustness_preview,
    summary_stats,
)


@dataclass(frozen=True)
class RobustOptions:
    error_model: ErrorModel = field(default_factory=ErrorModel)
    percentile: float = 10.0        # D90 at this percentile over the errors must reach Rx
    scenarios: int = 10             # error scenarios per optimisation round
    check_samples: int = 200        # Monte Carlo samples checking each round
    report_samples: int = 1000      # samples of the figures in plan.json["robust"]
    rounds: int = 6                 # at most len(SCHEDULE)
    seed: int = 0
    target_points: int = 1500       # CTV points per scenario in the optimiser

    def __post_init__(self) -> None:
        p = self.percentile
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 1.0 <= p <= 50.0:
            raise InputError(f"--robust-percentile {p}: give the percentile of D90 that must reach the prescription "
                             "as a number from 1 to 50 (10: nine implants in ten reach D90 >= Rx)")


def robust_plan(res: PlanResult, ct, opts: PlanOptions, robust: RobustOptions, runner=None, say=None) -> PlanResult:
    """The pre-plan ``res`` (``make_plan`` on ``ct`` with ``opts``) with its loading made robust (module doc).

    Returns a ``PlanResult`` like ``make_plan``'s: the robust plan (its seed strength ``strength_factor`` times
    the plain plan's), its dose, metrics and checks, and ``plan.extra["robust"]`` (the comparison).
    ``runner``: where the Monte Carlo runs (default: here, on every core)."""
    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    plan0 = res.plan
    rx, sk = float(plan0.prescription_gy), float(plan0.seed_sk_u)
    model = tg43.load_seed_model(plan0.seed_model)
    pct = float(robust.percentile)
    cand = _candidate_seeds(res.layout, ct, _View(nogo=res.masks["nogo"], skin=res.masks["skin_depth_mm"]), opts,
                            plan0.target)
    limits = {n: {"D0.1cc_gy": float(v["D0.1cc_gy"])} for n, v in (plan0.extra.get("oar_limits") or {}).items()}
    smp = _sample_points(ct, res.dose, _View(ctv=res.ctv_mask, body=res.masks["body"]),
                         _View(oar_masks=res.masks["oars"], limits=limits), opts)
    smp = replace(smp, n_target=min(len(smp.ctv_points), robust.target_points))
    ctx = _Context(res, ct, opts, robust, runner, cand, smp, model, rx, sk)

    say(f"robust loading: D90 p{pct:g} of the plain plan over {robust.check_samples} misplaced implants")
    plain = ctx.evaluate(_loading_of(plan0, cand.positions), 0, 0.0, 0.0)
    tried = [plain]
    if plain.p_gy < rx:
        tried += _optimise(ctx, plain.x, say)
    # the loading whose hot spots are lowest once its strength brings the percentile to Rx: V150, unless that
    # costs V200 (beyond 0.5 % of the CTV over the plain loading's), then the next
    ok = [t for t in tried if t.scaled["V200_pct"] <= plain.scaled["V200_pct"] + 0.5] or [plain]
    best = plain if plain.p_gy >= rx else min(ok, key=lambda t: (t.scaled["V150_pct"], t.scaled["V200_pct"]))

    say(f"robust loading: figures over {robust.report_samples} misplaced implants (plain, scaled, robust)")
    d90_plain = ctx.d90_samples(plan0, robust.report_samples)
    p_plain, pass_plain = float(np.percentile(d90_plain, pct)), float(np.mean(d90_plain >= rx))
    # dose is linear in the seeds' strength: the chosen loading's samples at the plain strength, scaled
    d90_best = d90_plain if best is plain else ctx.d90_samples(ctx.plan_of(best.x, sk), robust.report_samples)
    factor = 1.0 if best is plain else rx / float(np.percentile(d90_best, pct)) * (1.0 + 1e-4)  # float32 rounds
    d90_rob = d90_best * factor
    p_rob, pass_rob = float(np.percentile(d90_rob, pct)), float(np.mean(d90_rob >= rx))
    plan = ctx.plan_of(best.x, sk * factor)
    dose_vol = smp.grid.with_array((best.dose * np.float32(factor)).astype(np.float32))
    dose_vol.meta = {"kind": "dose", "units": "GY"}
    plan.metrics = _plan_metrics(dose_vol, smp.ctv, {}, rx)
    kt = kernel_table(model, plan.seed_sk_u)
    plan.metrics["oars"] = {n: _oar_metrics_at_voxels(m, ct, plan, kt) for n, m in res.masks["oars"].items()}
    checks = _checks(plan, plan.metrics, limits, _field(res, ct, plan0, opts), opts, rx)
    scaling = max(1.0, rx / p_plain)
    figures = {
        "goal": f"D90 at the {pct:g}th percentile over needle placement errors >= Rx ({rx:g} Gy)",
        "percentile": pct, "met": bool(p_rob >= rx), "error_model": robust.error_model.to_json(),
        "samples": robust.report_samples, "seed": robust.seed,
        "strength_factor": round(factor, 6), "seed_sk_u_given": sk, "seed_sk_u": round(plan.seed_sk_u, 6),
        "plain": _figures(plan0, p_plain, pass_plain, plan0.metrics, pct),
        "uniform_scaling": {**_figures(plan0, p_plain * scaling, float(np.mean(d90_plain * scaling >= rx)),
                                       _target_metrics(res.dose.array * np.float32(scaling), res.ctv_dose_mask,
                                                       res.dose, rx), pct),
                            "factor": round(scaling, 6), "seed_sk_u": round(sk * scaling, 6),
                            "note": "the plain plan with every seed's strength multiplied by factor until its D90 "
                                    "percentile reaches Rx (dose is linear in strength: the percentile scales "
                                    "exactly)"},
        "robust": {**_figures(plan, p_rob, pass_rob, plan.metrics, pct),
                   "D90_gy_distribution": summary_stats(d90_rob)},
        "loadings_tried": [t.record(pct) for t in tried],
        "chosen": "plain plan (already meets the goal)" if best is plain else f"round {best.round}",
        "seconds": round(time.perf_counter() - t0, 2),
        "method": ("scenario optimisation of the loading on the layout's candidate needles, each loading's strength "
                   "then set so that its D90 percentile reaches Rx; the loading with the lowest V150 (then V200) "
                   "is kept (navigator/planning/robust.py, docs/robustness.md)"),
    }
    plan.extra = _extra(plan0, plan, checks, figures)
    return PlanResult(plan=plan, dose=dose_vol, ctv_mask=res.ctv_mask, ctv_dose_mask=res.ctv_dose_mask,
                      oar_dose_masks=res.oar_dose_masks, gtv_mask=res.gtv_mask, masks=res.masks, layout=res.layout,
                      checks=checks)


def scaled_strength(strength: dict, factor: float) -> dict:
    """plan.json's ``source_strength`` for seeds ``factor`` times as strong (the robust plan's)."""
    if factor == 1.0:
        return strength
    out = dict(strength)
    for k in ("sk_u_at_calibration", "sk_u_at_implant"):
        if out.get(k) is not None:
            out[k] = float(out[k]) * factor
    out["note"] = (f"{out.get('note', '')}; robust planning (plan.json robust) multiplied the strength given by "
                   f"{factor:.4f}: order seeds of sk_u_at_calibration").lstrip("; ")
    return out


def _figures(plan, p_gy: float, pass_rate: float, metrics: dict, pct: float) -> dict:
    return {"seeds": len(plan.seeds), f"D90_p{pct:g}_gy": round(p_gy, 3), "pass_rate": round(pass_rate, 4),
            "nominal": {k: round(float(metrics[k]), 3) for k in ("D90_gy", "V100_pct", "V150_pct", "V200_pct")}}


@dataclass
class _Tried:
    """One loading: its D90 percentile (check samples), nominal dose, metrics scaled to the percentile = Rx."""

    round: int
    x: np.ndarray
    p_gy: float
    dose: np.ndarray
    scaled: dict
    w_robust: float
    w_hot: float

    def record(self, pct: float) -> dict:
        return {"round": self.round, "seeds": int(self.x.sum()), f"D90_p{pct:g}_gy": round(self.p_gy, 3),
                "w_robust": self.w_robust, "w_hot": self.w_hot,
                "scaled_to_goal": {k: round(float(v), 3) for k, v in self.scaled.items()}}


class _Context:
    """What every round uses: the plan result, candidates, sample points, and the Monte Carlo settings."""

    def __init__(self, res, ct, opts, robust, runner, cand, smp, model, rx, sk):
        self.res, self.ct, self.opts, self.robust, self.runner = res, ct, opts, robust, runner
        self.cand, self.smp, self.model, self.rx, self.sk = cand, smp, model, rx, sk

    def plan_of(self, x, sk):
        return _plan_of(self.ct, self.res.plan.target, self.rx, self.model, sk, self.res.layout, self.cand, x,
                        self.opts.needle_options)

    def d90_samples(self, plan, samples: int) -> np.ndarray:
        mc = robustness_preview(plan, self.smp.ctv_points, self.robust.error_model, samples, self.robust.seed,
                                self.runner, sensitivity=False)
        return np.asarray(mc["d90_samples_gy"])

    def percentile(self, plan, samples: int) -> tuple[float, float]:
        d90 = self.d90_samples(plan, samples)
        return float(np.percentile(d90, self.robust.percentile)), float(np.mean(d90 >= self.rx))

    def evaluate(self, x, rnd: int, w_robust: float, w_hot: float) -> _Tried:
        p, _ = self.percentile(self.plan_of(x, self.sk), self.robust.check_samples)
        c = self.cand
        dose = dose_mod.dose_on_grid(self.smp.grid, c.positions[x], c.axes[x], self.sk, self.model)
        tm = _target_metrics(dose * np.float32(self.rx / p), self.smp.ctv, self.smp.grid, self.rx)
        return _Tried(rnd, x, p, dose, {k: tm[k] for k in ("V100_pct", "V150_pct", "V200_pct", "D90_gy")},
                      w_robust, w_hot)


class _View:
    """The few mask fields a pipeline stage reads, taken from a ``PlanResult``."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _loading_of(plan, positions: np.ndarray) -> np.ndarray:
    """The candidates holding the plan's seeds (the plan's seeds are candidate positions)."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(positions).query(plan.seed_positions_mm())
    if np.any(dist > 0.01):
        raise PlanError("robust loading: the plan's seeds are not on the layout's candidate positions; "
                        "plan again without --robust or report this")
    x = np.zeros(len(positions), bool)
    x[idx] = True
    return x


def _scenario_seeds(layout, cand, em: ErrorModel, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Candidate seed positions and axes (k, N, 3) with every candidate needle moved by the error model."""
    entries = np.array([n.entry_mm for n in layout.needles], float)
    frames = needle_frames(np.array([n.axis for n in layout.needles], float))
    local = np.einsum("sij,sj->si", frames[cand.needle], cand.positions - entries[cand.needle])
    geom = ImplantGeometry(tuple(n.id for n in layout.needles), entries, frames,
                           np.array([n.max_tip_depth_mm for n in layout.needles], float), cand.needle, local)
    n = len(entries)
    angles = rng.standard_normal((k, n, 2)) * math.radians(em.angle_sd_deg)
    shifts = rng.standard_normal((k, n, 3)) * np.array([em.tip_sd_mm, em.tip_sd_mm, em.depth_sd_mm])
    return geom.moved(angles, shifts)


def _rows(p: PointPenalties, sl: slice) -> PointPenalties:
    return PointPenalties(*[getattr(p, f)[sl] for f in ("under", "w_step", "w_under", "over1", "w_over1", "over2",
                                                          "w_over2")])


SCHEDULE = ((1.0, 0.3), (2.0, 0.6), (4.0, 0.6), (4.0, 1.2), (8.0, 1.2), (8.0, 2.4))
"""(robust weight, hot-spot weight) of the rounds; 0.3 is the pre-plan's first-round hot-spot weight."""


def _optimise(ctx: _Context, x, say) -> list[_Tried]:
    """Scenario optimisation rounds from loading ``x`` (each round from the previous round's loading) with the
    weights of ``SCHEDULE``, at most ``rounds`` of them; each loading evaluated (``_Context.evaluate``)."""
    robust, smp, cand, rx = ctx.robust, ctx.smp, ctx.cand, ctx.rx
    pct, k, nt = float(robust.percentile), robust.scenarios, smp.n_target
    kt = kernel_table(ctx.model, ctx.sk)
    a_fixed = influence_matrix(smp.fixed_points, cand.positions, cand.axes, kt)
    oopts = ctx.opts.optimizer_options(rx)
    tried = []
    for rnd, (w_robust, w_hot) in enumerate(SCHEDULE[:robust.rounds], start=1):
        rng = np.random.default_rng(np.random.SeedSequence(robust.seed, spawn_key=(7, rnd)))
        pts = _subsample(smp.ctv_points, nt, rng)
        pos_k, axes_k = _scenario_seeds(ctx.res.layout, cand, robust.error_model, k, rng)
        a = np.concatenate([influence_matrix(pts, cand.positions, cand.axes, kt)]
                           + [influence_matrix(pts, pos_k[s], axes_k[s], kt) for s in range(k)] + [a_fixed], axis=1)
        plain = _penalties(smp, rx, 1.0, w_hot)  # the pre-plan's penalties: CTV points, shell, OARs
        scen = PointPenalties.uniform(nt * k, under=rx, w_step=w_robust, w_under=2.0 * w_robust, weight=1.0 / (nt * k))
        pen = PointPenalties.concat([_rows(plain, slice(0, nt)), scen, _rows(plain, slice(nt, None))])
        say(f"robust loading round {rnd}: {k} error scenarios x {nt} CTV points, weights robust {w_robust:g}, "
            f"hot spots {w_hot:g}")
        x = optimize_loading(a, pen, cand.positions, x0=x, opts=oopts).loading
        t = ctx.evaluate(x, rnd, w_robust, w_hot)
        tried.append(t)
        say(f"  {int(x.sum())} seeds: D90 p{pct:g} {t.p_gy:.1f} Gy; at strength x{rx / t.p_gy:.3f} (p{pct:g} = Rx) "
            f"V150 {t.scaled['V150_pct']:.1f} %, V200 {t.scaled['V200_pct']:.1f} %")
    return tried


def _field(res, ct, plan0, opts: PlanOptions) -> PlanningField:
    """The field the plan's needles were laid out in: strict, or with lung passable for a transpulmonary plan."""
    nogo = res.masks["nogo"]
    access = str(((plan0.extra.get("nogo") or {}).get("needle_access")) or "")
    if access.startswith("transpulmonary"):
        oars = {n: m for n, m in res.masks["oars"].items() if "lung" not in n.lower()}
        nogo, _ = _nogo(ct, res.masks["body"], oars, opts.needle_options, include_air=False)
    return PlanningField(grid=ct, body=res.masks["body"], skin_depth_mm=res.masks["skin_depth_mm"], nogo=nogo,
                         ctv=res.ctv_mask)


def _extra(plan0, plan, checks: dict, robust: dict) -> dict:
    extra = dict(plan0.extra)
    sk = plan.seed_sk_u
    extra.update({"seed_count": len(plan.seeds), "needle_count": len(plan.needles),
                  "total_activity_mci": round(len(plan.seeds) * sk / tg43.MCI_TO_U, 3),
                  "seeds_per_cc": round(len(plan.seeds) / max(plan.metrics["ctv_cc"], 1e-9), 3),
                  "checks": checks, "robust": robust})
    return extra
