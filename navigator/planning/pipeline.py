"""Pre-planning: CTV, needles through a guide template, seeds that reach the prescription, dose.

``make_plan`` runs named stages over options it never changes (``PlanOptions`` is frozen; a derived setting is
a ``dataclasses.replace`` copy):

1. ``_checked_inputs``: prescription, seed model and strength;
2. ``_targets``: the GTV, the organs at risk and their limits (``anatomy.targets``);
3. ``_masks``: body, no-go mask, CTV (GTV + margin, clipped) and skin depth;
4. ``_needle_layout``: insertion direction, template and candidate needles (``planning.needles``), with a
   transpulmonary fallback for deep nodes;
5. ``_candidate_seeds``: the candidate seed positions clear of no-go and deep enough;
6. ``_dose_grid`` and ``_sample_points``: the dose grid over the CTV and the optimiser's sample points;
7. ``_optimise_loading``: which candidates get a seed (``planning.optimize``), in rounds checked on the grid;
8. ``_plan_of``: the needles and seeds of the plan; ``_evaluate``: its metrics (``physics.dvh``) and checks;
   ``_plan_extra``: what ``plan.json`` reports about how the plan was made.
Everything is LPS mm in the planning CT's frame; doses are total doses of the permanent implant (Gy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from navigator.anatomy import targets
from navigator.anatomy.structures import check_target_inside_ct, mask_of
from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.core.sampling import Sampler, sample_nearest
from navigator.core.structure import find_structure
from navigator.core.volume import Volume, grid_volume
from navigator.errors import InputError, PlanError, SeedModelError, StructureError
from navigator.physics import dose as dose_mod
from navigator.physics import tg43
from navigator.physics.kernel import influence_matrix, kernel_table
from navigator.planning.needles import (
    NeedleLayout,
    VERIFY_STEP_MM,
    NeedleOptions,
    PlanningField,
    needle_path_clear,
    plan_needles,
)
from navigator.planning.optimize import (
    OptimizeOptions,
    PointPenalties,
    optimize_loading,
)


@dataclass(frozen=True)
class PlanOptions:
    margin_mm: float = 5.0
    ctv_excludes_oars: bool = True        # the margin (not the GTV) stops at the organs at risk and air
    min_skin_depth_mm: float = 10.0
    v100_goal_pct: float = 95.0
    d90_goal_rx: float = 1.0
    v150_max_pct: float = 60.0
    dose_grid_mm: float | None = None     # None: 1 mm, coarser for big targets (<= max_dose_voxels)
    max_dose_voxels: int = 1_500_000
    grid_margin_mm: float = 15.0
    max_target_points: int = 6000
    max_shell_points: int = 3000
    max_oar_points: int = 1500
    oar_limits_gy: dict | None = None     # {name: D0.1cc limit}; defaults from targets.OAR_CLASS_LIMITS
    needles: NeedleOptions = field(default_factory=NeedleOptions)
    optimizer: OptimizeOptions = field(default_factory=OptimizeOptions)
    rounds: int = 8
    progress: object = None               # callable(str) or None

    @property
    def needle_options(self) -> NeedleOptions:
        """``needles`` with the plan's minimum skin depth: one setting for the needles and the seeds."""
        return replace(self.needles, min_skin_depth_mm=self.min_skin_depth_mm)

    def optimizer_options(self, rx_gy: float) -> OptimizeOptions:
        """``optimizer`` with its move evaluation leaving out seed doses below 0.2 % of the prescription."""
        return replace(self.optimizer, sparse_threshold_gy=0.002 * rx_gy)


@dataclass
class PlanResult:
    plan: Plan
    dose: Volume                 # Gy on the dose grid
    ctv_mask: np.ndarray         # on the CT grid
    ctv_dose_mask: np.ndarray    # on the dose grid
    oar_dose_masks: dict
    gtv_mask: np.ndarray
    masks: dict                  # body, nogo, skin_depth_mm, oars {name: mask} (CT grid)
    layout: object               # needle_planning.NeedleLayout
    checks: dict

    def __iter__(self):
        """``plan, dose = make_plan(...)`` (the form docs/architecture.md names) still works."""
        return iter((self.plan, self.dose))


# --- what the stages hand on ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Targets:
    name: str                    # the target structure's name as the structure set spells it
    gtv: np.ndarray              # CT grid
    oar_masks: dict              # {name: mask} (CT grid)
    oars_skipped: dict           # {name: why} for default OARs that could not be rasterised
    limits: dict                 # {name: {"D0.1cc_gy", "class", "basis"}}


@dataclass(frozen=True)
class _Masks:
    body: np.ndarray             # all on the CT grid
    body_source: str
    nogo: np.ndarray
    nogo_parts: dict
    ctv: np.ndarray
    skin: np.ndarray             # skin depth, mm
    ctv_cc: float


@dataclass(frozen=True)
class _Candidates:
    positions: np.ndarray        # (N, 3) LPS mm
    needle: np.ndarray           # (N,) index into layout.needles
    axes: np.ndarray             # (N, 3) seed axes (= needle axes)


@dataclass(frozen=True)
class _Samples:
    grid: Volume                 # the dose grid
    ctv: np.ndarray              # CTV on the dose grid
    oars: dict                   # {name: mask on the dose grid}
    ctv_points: np.ndarray       # every CTV voxel centre of the dose grid (LPS mm)
    n_target: int                # CTV points per optimisation round
    n_shell: int
    fixed_points: np.ndarray     # shell points, then the OARs' points
    oar_penalties: list          # PointPenalties per OAR with points
    oar_limits: list             # (name, D0.1cc limit Gy) per OAR with points


@dataclass(frozen=True)
class _Loading:
    x: np.ndarray                # bool (N,): which candidates hold a seed
    dose: np.ndarray             # Gy on the dose grid
    kept_round: int
    rounds: list                 # per-round record for plan.extra["optimizer"]["rounds"]
    influence_s: float


# --- the plan -------------------------------------------------------------------------------------------
def make_plan(ct: Volume, structures: dict, target: str, oars: list[str] | None, rx_gy: float,
              seed_model, sk_u: float, options: PlanOptions | None = None) -> PlanResult:
    """Plan needles and seeds so that D90 >= Rx and V100 >= 95 % of the CTV (GTV + margin, in the body).

    ``structures``: {name: Structure or bool mask on the CT grid}. ``oars``: names (None: every structure
    that is not a target and not the skin/body). ``seed_model``: ``"6711"``... or a ``tg43.SeedModel``;
    ``sk_u``: air-kerma strength per seed (U). Raises ``InputError`` subclasses on bad input.
    """
    opts = options or PlanOptions()
    say = opts.progress or (lambda msg: None)
    t_start = time.perf_counter()
    rx_gy, model = _checked_inputs(rx_gy, seed_model, sk_u)
    sk = float(sk_u)
    tg = _targets(ct, structures, target, oars, rx_gy, opts)

    say("masks: body, skin depth, no-go, CTV")
    mk = _masks(ct, structures, tg, opts)

    say(f"needles: CTV {mk.ctv_cc:.1f} cc; choosing the insertion direction and template")
    layout, fld, access = _needle_layout(ct, tg, mk, opts.needle_options)
    cand = _candidate_seeds(layout, ct, mk, opts, tg.name)

    say(f"dose grid and sample points ({len(layout.needles)} candidate needles, {len(cand.positions)} seed positions)")
    smp = _sample_points(ct, _dose_grid(ct, mk.ctv, opts), mk, tg, opts)
    loading = _optimise_loading(cand, smp, model, sk, rx_gy, opts, say)
    dose_vol = smp.grid.with_array(loading.dose.astype(np.float32))
    dose_vol.meta = {"kind": "dose", "units": "GY"}

    plan = _plan_of(ct, tg.name, rx_gy, model, sk, layout, cand, loading.x, opts.needle_options)
    plan.metrics, checks = _evaluate(plan, dose_vol, smp.ctv, ct, tg, fld, model, rx_gy, opts)
    plan.extra = _plan_extra(plan, opts, tg, mk, layout, access, smp, cand, loading, checks, t_start)
    say(f"plan: {len(plan.seeds)} seeds on {len(plan.needles)} needles, {plan.extra['planning_seconds']} s")
    return PlanResult(plan=plan, dose=dose_vol, ctv_mask=mk.ctv, ctv_dose_mask=smp.ctv, oar_dose_masks=smp.oars,
                      gtv_mask=tg.gtv, masks={"body": mk.body, "nogo": mk.nogo, "skin_depth_mm": mk.skin,
                                              "oars": tg.oar_masks},
                      layout=layout, checks=checks)


# --- 1. inputs ------------------------------------------------------------------------------------------
def _checked_inputs(rx_gy, seed_model, sk_u) -> tuple[float, tg43.SeedModel]:
    """The prescription as a float and the seed model; ``InputError``/``SeedModelError`` on bad values."""
    try:
        rx_gy = float(rx_gy)
    except (TypeError, ValueError):
        raise InputError(f"prescription {rx_gy!r} Gy is not a number; give the prescribed dose in Gy (e.g. 120)") from None
    if not np.isfinite(rx_gy) or rx_gy <= 0:
        raise InputError(f"prescription {rx_gy} Gy must be > 0 Gy (I-125 node implants: 110-160 Gy)")
    model = tg43.load_seed_model(seed_model) if isinstance(seed_model, str) else seed_model
    if not (sk_u is not None and np.isfinite(sk_u) and sk_u > 0):
        raise SeedModelError(f"seed strength {sk_u} U must be > 0 U (0.3-0.8 mCi is 0.38-1.02 U)")
    return rx_gy, model


# --- 2. targets and organs at risk ----------------------------------------------------------------------
def _default_oars(structures: dict, target: str) -> list[str]:
    return [n for n in structures if n != target and not targets.is_target_name(n)
            and targets.classify_oar(n) != "skin"]


def _targets(ct: Volume, structures: dict, target: str, oars: list[str] | None, rx_gy: float,
             opts: PlanOptions) -> _Targets:
    """The GTV mask, the OAR masks (named ones must rasterise; default ones that do not are left out, with
    the reason) and each OAR's D0.1cc limit (by its class, or as given in ``opts.oar_limits_gy``)."""
    target_name, target_s = find_structure(structures, target)
    gtv = mask_of(target_name, target_s, ct)
    check_target_inside_ct(target_name, target_s, ct)
    if not gtv.any():
        raise StructureError(f"target '{target_name}' covers no voxel of the CT (empty or smaller than a voxel); "
                             "check the contours or choose another structure")
    oar_names = _default_oars(structures, target_name) if oars is None else list(oars)
    oar_masks, oars_skipped = {}, {}
    for name in oar_names:
        real, s = find_structure(structures, name)
        if real == target_name:
            raise InputError(f"structure '{real}' is the target and cannot also be an organ at risk")
        try:
            oar_masks[real] = mask_of(real, s, ct)
        except StructureError as exc:
            if oars is not None:  # named by the user: an error; picked by default: left out, with the reason
                raise
            oars_skipped[real] = str(exc)
    limits = {n: targets.oar_limit(n, rx_gy) for n in oar_masks}
    for n, v in (opts.oar_limits_gy or {}).items():
        if n not in limits:
            raise InputError(f"a limit is given for '{n}', which is not an organ at risk of this plan (OARs: "
                             f"{', '.join(sorted(limits)) or 'none'}); name it as an OAR too (--oar {n})")
        limits[n] = {**limits[n], "D0.1cc_gy": float(v), "basis": "given"}
    return _Targets(target_name, gtv, oar_masks, oars_skipped, limits)


# --- 3. body, no-go, CTV, skin depth --------------------------------------------------------------------
def _masks(ct: Volume, structures: dict, tg: _Targets, opts: PlanOptions) -> _Masks:
    """Body (the structure set's outline, else an HU threshold), the no-go mask, the CTV and the skin depth."""
    body_names = [n for n in structures if n != tg.name and targets.is_body_name(n)]
    if body_names:  # the structure set's own outline (BODY / External) beats an HU threshold
        body = mask_of(body_names[0], structures[body_names[0]], ct)
        body_source = f"structure '{body_names[0]}'"
    else:
        body = targets.body_mask(ct)
        body_source = f"CT threshold HU > {targets.BODY_HU:g}"
    nogo, nogo_parts = _nogo(ct, body, tg.oar_masks, opts.needles)
    # where the margin reaches the CT's edge, grow what the CT holds
    ctv = targets.ctv_mask(tg.gtv, ct, opts.margin_mm, body, rule="surface", beyond_grid="clip")
    skin = targets.skin_depth_mm(body, ct, near=ctv, reach_mm=max(40.0, 3 * opts.min_skin_depth_mm))
    if opts.ctv_excludes_oars:
        # the margin is for microscopic spread, which does not cross into air (airway, lung), vessels or the
        # cord: the CTV keeps the whole GTV but its margin stops at the organs at risk and internal air
        barrier = targets.internal_air_mask(ct, body)
        for m in tg.oar_masks.values():
            barrier |= m
        ctv = (ctv & ~barrier) | (tg.gtv & body)
    if not ctv.any():
        raise StructureError(f"target '{tg.name}' lies outside the patient's body contour; check the CT/structures")
    return _Masks(body, body_source, nogo, nogo_parts, ctv, skin, float(ctv.sum()) * ct.voxel_volume_cc)


def _nogo(ct: Volume, body: np.ndarray, oar_masks: dict, nopts: NeedleOptions, include_air: bool = True):
    """The no-go mask grown so that a needle whose track samples (every ``VERIFY_STEP_MM``) are all clear keeps
    ``nopts.clearance_mm`` from bone, internal air and the OARs along its whole length (``targets.nogo_mask``)."""
    return targets.nogo_mask(ct, body, oar_masks, clearance_mm=nopts.clearance_mm, include_air=include_air,
                             track_step_mm=VERIFY_STEP_MM)


# --- 4. needle layout -----------------------------------------------------------------------------------
_STRICT_ACCESS = "no needle crosses bone, internal air (airway, lung) or an organ at risk"


def _needle_layout(ct: Volume, tg: _Targets, mk: _Masks,
                   nopts: NeedleOptions) -> tuple[NeedleLayout, PlanningField, str]:
    """Direction, template and candidate needles; the field they were planned in; how needles reach the CTV."""
    fld = PlanningField(grid=ct, body=mk.body, skin_depth_mm=mk.skin, nogo=mk.nogo, ctv=mk.ctv)
    prone = str(ct.meta.get("patient_position", "")).upper() in ("HFP", "FFP")
    try:
        layout = plan_needles(fld, nopts, prone=prone)
        strict_score = max(layout.direction_scores.values())
    except PlanError:
        layout, strict_score = None, -1.0
    access = _STRICT_ACCESS
    if strict_score < 0.6 and (any(targets.classify_oar(n) == "airway" for n in tg.oar_masks)
                               or mk.nogo_parts.get("internal_air")):
        alt = _transpulmonary_layout(ct, tg, mk, nopts, prone, strict_score)
        if alt is not None:
            layout, fld, access = alt
    if layout is None:
        raise PlanError(f"no insertion direction reaches the CTV of '{tg.name}' without crossing bone, air or an "
                        "organ at risk (anterior, oblique and lateral approaches tried, tilted up to 20 deg); check "
                        "that the OARs do not cover the target, or plan this node by hand")
    return layout, fld, access


def _transpulmonary_layout(ct: Volume, tg: _Targets, mk: _Masks, nopts: NeedleOptions, prone: bool,
                           strict_score: float):
    """(layout, field, access) with needles allowed through lung when that reaches the CTV clearly better
    (score > 1.5x the strict one); None otherwise.

    Deep mediastinal nodes are often out of reach without crossing lung: CT-guided practice then goes
    transpulmonary. Needles may cross lung (not trachea/bronchi or any other OAR); seeds never lie in it."""
    passable = {n for n in tg.oar_masks if "lung" in n.lower()}
    nogo_path, _ = _nogo(ct, mk.body, {n: m for n, m in tg.oar_masks.items() if n not in passable}, nopts,
                         include_air=False)
    fld_lung = PlanningField(grid=ct, body=mk.body, skin_depth_mm=mk.skin, nogo=nogo_path, ctv=mk.ctv)
    try:
        alt = plan_needles(fld_lung, nopts, prone=prone)
    except PlanError:
        return None
    if max(alt.direction_scores.values()) <= 1.5 * max(strict_score, 0.0):
        return None
    access = ("transpulmonary: needles may cross lung (" + (", ".join(sorted(passable)) or
              "internal air not named as an airway") + "); no needle crosses bone, trachea/bronchi "
              "or another organ at risk; no seed lies in lung")
    return alt, fld_lung, access


# --- 5. candidate seed positions ------------------------------------------------------------------------
def _candidate_seeds(layout: NeedleLayout, ct: Volume, mk: _Masks, opts: PlanOptions, target_name: str) -> _Candidates:
    """The layout's candidate seed positions whose seed (4.5 mm long) is clear of no-go at both ends and in
    its middle and lies at least ``min_skin_depth_mm`` below the skin."""
    cand, cand_needle, cand_axes = layout.candidates()
    ok = np.ones(len(cand), bool)
    for off in (-2.25, 0.0, 2.25):
        v, _ = sample_nearest(mk.nogo, ct, cand + off * cand_axes, outside=True)
        ok &= ~v.astype(bool)
    sd, _ = sample_nearest(mk.skin, ct, cand, outside=0.0)
    ok &= sd >= opts.min_skin_depth_mm
    if not ok.any():
        raise StructureError(f"no seed position in target '{target_name}' is >= {opts.min_skin_depth_mm} mm below the "
                             "skin and clear of bone/air/OARs; the target cannot be implanted as drawn")
    return _Candidates(cand[ok], cand_needle[ok], cand_axes[ok])


# --- 6. dose grid and sample points ---------------------------------------------------------------------
def _dose_grid(ct: Volume, ctv: np.ndarray, opts: PlanOptions) -> Volume:
    """A grid in the CT's orientation over the CTV + ``grid_margin_mm``: ``dose_grid_mm`` when given, else 1 mm
    made coarser (by 0.5 mm) until it holds at most ``max_dose_voxels``."""
    kk, jj, ii = np.nonzero(ctv)
    lo_ijk = np.array([ii.min(), jj.min(), kk.min()], float)
    hi_ijk = np.array([ii.max(), jj.max(), kk.max()], float)
    m = opts.grid_margin_mm / ct.spacing_mm
    lo_mm = (lo_ijk - m) * ct.spacing_mm       # mm along the CT's i, j, k axes from its origin
    hi_mm = (hi_ijk + m) * ct.spacing_mm
    if opts.dose_grid_mm is not None:
        return grid_volume(lo_mm, hi_mm, opts.dose_grid_mm, like=ct, cover=False)
    return grid_volume(lo_mm, hi_mm, 1.0, like=ct, max_voxels=opts.max_dose_voxels, cover=False)


def _subsample(pts: np.ndarray, n: int, rng) -> np.ndarray:
    if len(pts) <= n:
        return pts
    return pts[np.sort(rng.choice(len(pts), n, replace=False))]


def _sample_points(ct: Volume, dgrid: Volume, mk: _Masks, tg: _Targets, opts: PlanOptions) -> _Samples:
    """The CTV and OARs on the dose grid and the optimiser's fixed sample points: a shell 2-12 mm outside the
    CTV (conformity) and the OAR voxels within 25 mm of it, each OAR with its D0.1cc penalty."""
    from scipy import ndimage

    to_d = Sampler(ct, dgrid.voxel_centers_lps())
    ctv_d = to_d.take(mk.ctv, False)[0].reshape(dgrid.array.shape).astype(bool)
    body_d = to_d.take(mk.body, False)[0].reshape(dgrid.array.shape).astype(bool)
    oar_d = {n: to_d.take(m, False)[0].reshape(dgrid.array.shape).astype(bool) for n, m in tg.oar_masks.items()}
    rng = np.random.default_rng(1)
    ctv_all = dgrid.voxel_centers_lps(ctv_d)
    dist_out = ndimage.distance_transform_edt(~ctv_d, sampling=tuple(dgrid.spacing_mm[::-1]))
    shell = body_d & ~ctv_d & (dist_out > 2.0) & (dist_out <= 12.0)
    for m in oar_d.values():
        shell &= ~m
    s_pts = _subsample(dgrid.voxel_centers_lps(shell), opts.max_shell_points, rng)
    o_pts, o_pen, o_lim = [], [], []
    for n, m in oar_d.items():
        near = m & (dist_out <= 25.0)
        p = _subsample(dgrid.voxel_centers_lps(near), opts.max_oar_points, rng)
        if len(p):
            lim = tg.limits[n]["D0.1cc_gy"]
            o_pts.append(p)
            # per-point weight as if the OAR had 300 points: its hottest 0.1 cc must weigh like the target
            o_pen.append(PointPenalties.uniform(len(p), over1=0.95 * lim, w_over1=3.0, over2=1.1 * lim,
                                                w_over2=10.0, weight=1.0 / 300.0))
            o_lim.append((n, lim))
    fixed_pts = np.concatenate([s_pts] + o_pts) if (len(s_pts) or o_pts) else np.zeros((0, 3))
    return _Samples(grid=dgrid, ctv=ctv_d, oars=oar_d, ctv_points=ctv_all,
                    n_target=min(len(ctv_all), opts.max_target_points), n_shell=len(s_pts), fixed_points=fixed_pts,
                    oar_penalties=o_pen, oar_limits=o_lim)


# --- 7. seed loading ------------------------------------------------------------------------------------
def _optimise_loading(cand: _Candidates, smp: _Samples, model, sk: float, rx_gy: float, opts: PlanOptions,
                      say) -> _Loading:
    """Which candidates get a seed.

    Optimise on sample points, check on the whole grid, and repeat from the current loading with a fresh
    sample of CTV points (a fixed sample gets over-fitted: its points covered, the voxels between not) and a
    stronger coverage or hot-spot weight, whichever the grid says is short. Keeps the round that met most
    goals (then: the highest V100)."""
    nt = smp.n_target
    say(f"influence matrix: {len(cand.positions)} candidates x {nt + len(smp.fixed_points)} points")
    t0 = time.perf_counter()
    kt = kernel_table(model, sk)
    A_fixed = influence_matrix(smp.fixed_points, cand.positions, cand.axes, kt)
    t_influence = time.perf_counter() - t0
    oopts = opts.optimizer_options(rx_gy)
    x, best, rounds = None, None, []
    w_step, w_hot = 1.0, 0.3
    for rnd in range(opts.rounds):
        say(f"optimising seeds (round {rnd + 1})")
        t_pts = _subsample(smp.ctv_points, nt, np.random.default_rng(100 + rnd))
        t0 = time.perf_counter()
        A = np.concatenate([influence_matrix(t_pts, cand.positions, cand.axes, kt), A_fixed], axis=1)
        t_influence += time.perf_counter() - t0
        res = optimize_loading(A, _penalties(smp, rx_gy, w_step, w_hot), cand.positions, x0=x, opts=oopts)
        x = res.loading
        v100_s = 100.0 * float(np.mean(res.dose_gy[:nt] >= rx_gy))
        t0 = time.perf_counter()
        dose_arr = dose_mod.dose_on_grid(smp.grid, cand.positions[x], cand.axes[x], sk, model)
        t_dose = time.perf_counter() - t0
        tm = _target_metrics(dose_arr, smp.ctv, smp.grid, rx_gy)
        rounds.append({"round": rnd + 1, "seeds": int(x.sum()), "sample_V100_pct": round(v100_s, 2),
                       "V100_pct": round(float(tm["V100_pct"]), 2), "D90_gy": round(float(tm["D90_gy"]), 2),
                       "V150_pct": round(float(tm["V150_pct"]), 2), "iterations": res.iterations,
                       "adds": res.adds, "removes": res.removes,
                       "optimise_s": round(res.seconds, 3), "dose_s": round(t_dose, 3), "stop": res.stop})
        say(f"  {int(x.sum())} seeds: V100 {tm['V100_pct']:.1f} %, D90 {tm['D90_gy']:.1f} Gy, "
            f"V150 {tm['V150_pct']:.1f} %")
        rank = (_goals_missed(tm, dose_arr, smp, rx_gy, opts), -float(tm["V100_pct"]))
        if best is None or rank < best[0]:
            best = (rank, x.copy(), dose_arr, rnd + 1)
        cover_ok = tm["V100_pct"] >= opts.v100_goal_pct + 0.5 and tm["D90_gy"] >= opts.d90_goal_rx * rx_gy * 1.01
        hot_ok = tm["V150_pct"] <= opts.v150_max_pct - 1.0
        if cover_ok and hot_ok:
            break
        # coverage is the primary goal: raise its weight first; the hot-spot weight follows more gently
        if not cover_ok:
            w_step *= 2.0
        if not hot_ok:
            w_hot *= 1.6 if cover_ok else 1.25
    _, x, dose_arr, kept_round = best
    return _Loading(x=x, dose=dose_arr, kept_round=kept_round, rounds=rounds, influence_s=t_influence)


def _penalties(smp: _Samples, rx_gy: float, w_step: float, w_hot: float) -> PointPenalties:
    """The points' penalties for one round: CTV (coverage step, hot spots), shell (conformity), OARs."""
    nt, ns = smp.n_target, smp.n_shell
    parts = [PointPenalties.uniform(nt, under=rx_gy, w_step=w_step, w_under=2.0, over1=1.5 * rx_gy,
                                    w_over1=w_hot, over2=2.0 * rx_gy, w_over2=0.5 * w_hot, weight=1.0 / nt)]
    if ns:
        parts.append(PointPenalties.uniform(ns, over1=rx_gy, w_over1=0.05, over2=1.5 * rx_gy, w_over2=0.1,
                                            weight=1.0 / ns))
    # OAR weights rise with the coverage weight, so a push for coverage does not overrun the limits
    scale = max(1.0, w_step)
    return PointPenalties.concat(parts + [_scaled(p, scale) for p in smp.oar_penalties])


def _goals_missed(tm: dict, dose_arr: np.ndarray, smp: _Samples, rx_gy: float, opts: PlanOptions) -> int:
    """How many of the plan's goals (V100, D90, V150, each OAR's D0.1cc on the grid) a round's dose misses."""
    missed = int(tm["V100_pct"] < opts.v100_goal_pct) + int(tm["D90_gy"] < opts.d90_goal_rx * rx_gy) + \
        int(tm["V150_pct"] > opts.v150_max_pct)
    for n, lim in smp.oar_limits:
        dd = np.sort(dose_arr[smp.oars[n]])[::-1]
        k = int(np.ceil(0.1 / smp.grid.voxel_volume_cc))
        missed += int(len(dd) >= k and dd[k - 1] > lim)
    return missed


# --- 8. the plan, its metrics and report ----------------------------------------------------------------
def _plan_of(ct: Volume, target_name: str, rx_gy: float, model, sk: float, layout: NeedleLayout,
             cand: _Candidates, x: np.ndarray, nopts: NeedleOptions) -> Plan:
    """Needles with seeds, tip ``tip_beyond_seed_mm`` beyond the deepest seed; seeds numbered in delivery order
    (deepest first on each needle)."""
    plan = Plan(frame_of_reference_uid=ct.frame_of_reference_uid, ct_series_uid=ct.series_uid, target=target_name,
                prescription_gy=rx_gy, seed_model=model.name, seed_sk_u=sk)
    sel_pos, sel_needle = cand.positions[x], cand.needle[x]
    n_id = 0
    for i, cn in enumerate(layout.needles):
        mine = sel_pos[sel_needle == i]
        if len(mine) == 0:
            continue
        n_id += 1
        depths = (mine - cn.entry_mm) @ cn.axis
        order = np.argsort(-depths)
        tip_depth = min(float(depths.max()) + nopts.tip_beyond_seed_mm, cn.max_tip_depth_mm)
        nid = f"N{n_id:02d}"
        plan.needles.append(Needle(id=nid, entry_mm=cn.entry_mm, tip_mm=cn.entry_mm + tip_depth * cn.axis,
                                   hole=cn.hole))
        for p in mine[order]:
            plan.seeds.append(PlannedSeed(id=f"S{len(plan.seeds) + 1:03d}", needle_id=nid, position_mm=p))
    return plan


def _evaluate(plan: Plan, dose_vol: Volume, ctv_d: np.ndarray, ct: Volume, tg: _Targets, fld: PlanningField,
              model, rx_gy: float, opts: PlanOptions) -> tuple[dict, dict]:
    """(metrics, checks): the CTV's on the dose grid, each OAR's at its CT voxels; the clinical goals."""
    metrics = _plan_metrics(dose_vol, ctv_d, {}, rx_gy)
    kt = kernel_table(model, plan.seed_sk_u)
    metrics["oars"] = {n: _oar_metrics_at_voxels(m, ct, plan, kt) for n, m in tg.oar_masks.items()}
    return metrics, _checks(plan, metrics, tg.limits, fld, opts, rx_gy)


def _plan_extra(plan: Plan, opts: PlanOptions, tg: _Targets, mk: _Masks, layout: NeedleLayout, access: str,
                smp: _Samples, cand: _Candidates, loading: _Loading, checks: dict, t_start: float) -> dict:
    """``plan.extra``: the CTV, counts and activity, template, OAR limits, no-go, dose grid, optimiser, checks."""
    sk, dgrid, nopts = plan.seed_sk_u, smp.grid, opts.needle_options
    return {
        "ctv": {"name": "CTV", "margin_mm": opts.margin_mm,
                "clipped_to": f"body contour ({mk.body_source})" + (
                    ", the organs at risk and internal air (HU < -500); the GTV itself is kept whole"
                    if opts.ctv_excludes_oars else ""),
                "cc": round(mk.ctv_cc, 3)},
        "seed_count": len(plan.seeds), "needle_count": len(plan.needles),
        "seed_activity_mci": round(sk / tg43.MCI_TO_U, 4),
        "total_activity_mci": round(len(plan.seeds) * sk / tg43.MCI_TO_U, 3),
        "seeds_per_cc": round(len(plan.seeds) / max(plan.metrics["ctv_cc"], 1e-9), 3),
        "template": layout.template.to_dict(), "insertion_direction": layout.direction,
        "oars_skipped": tg.oars_skipped,
        "oar_limits": {n: {"D0.1cc_gy": round(v["D0.1cc_gy"], 2), "class": v["class"], "basis": v["basis"]}
                       for n, v in tg.limits.items()},
        "nogo": {"components_voxels": mk.nogo_parts, "clearance_mm": nopts.clearance_mm,
                 "clearance_rule": (f"every point of every needle track, tip included, >= {nopts.clearance_mm:g} mm "
                                    "from the voxels (as boxes) of bone, internal air and the organs at risk: the "
                                    f"no-go mask is grown by {nopts.clearance_mm + 0.5 * VERIFY_STEP_MM:g} mm (voxel "
                                    "centres) and one voxel, and each track is checked every "
                                    f"{VERIFY_STEP_MM:g} mm"),
                 "needle_access": access},
        "min_skin_depth_mm": opts.min_skin_depth_mm,
        "oar_metrics_method": ("TG-43 2D dose (0.25 mm kernel table of navigator.physics.tg43, bilinear) at the OAR's CT "
                               "voxel centres (the 30000 nearest the seeds); D2cc null when the OAR is < 2 cc"),
        "dose_grid": {"spacing_mm": dgrid.spacing_mm.tolist(), "shape_ijk": list(dgrid.shape_ijk),
                      "origin_mm": [round(float(v), 3) for v in dgrid.origin_mm]},
        "optimizer": {"candidates": int(len(cand.positions)), "candidate_needles": len(layout.needles),
                      "sample_points": {"ctv": smp.n_target, "shell": smp.n_shell,
                                        "oar": int(len(smp.fixed_points) - smp.n_shell)},
                      "influence_s": round(loading.influence_s, 3), "rounds": loading.rounds,
                      "kept_round": loading.kept_round, "unreached_ctv_cc": round(layout.unreached_cc, 3)},
        "checks": checks,
        "planning_seconds": round(time.perf_counter() - t_start, 2),
    }


# --- metrics and checks ---------------------------------------------------------------------------------
def _target_metrics(dose_arr: np.ndarray, mask: np.ndarray, grid: Volume, rx_gy: float) -> dict:
    from navigator.physics import dvh

    return dvh.target_metrics(dose_arr, mask, grid.voxel_volume_cc, rx_gy)


def _plan_metrics(dose_vol: Volume, ctv_d: np.ndarray, oar_d: dict, rx_gy: float) -> dict:
    from navigator.physics import dvh

    return dvh.plan_metrics(dose_vol, ctv_d, oar_d, rx_gy)


def _scaled(p: PointPenalties, f: float) -> PointPenalties:
    return PointPenalties(p.under, p.w_step * f, p.w_under * f, p.over1, p.w_over1 * f, p.over2, p.w_over2 * f)


def _oar_metrics_at_voxels(mask: np.ndarray, ct: Volume, plan: Plan, kt, max_voxels: int = 30000) -> dict:
    """OAR metrics from the TG-43 dose (the optimiser's kernel table) at the OAR's CT voxel centres (the
    ``max_voxels`` nearest the seeds, which hold its hottest part): independent of how much of the OAR
    the dose grid covers."""
    from scipy.spatial import cKDTree

    from navigator.physics import dvh

    pts = ct.voxel_centers_lps(mask)
    seeds = plan.seed_positions_mm()
    if len(pts) == 0 or len(seeds) == 0:
        return {"Dmax_gy": 0.0, "D2cc_gy": None, "D0.1cc_gy": 0.0}
    total_cc = len(pts) * ct.voxel_volume_cc
    if len(pts) > max_voxels:
        dist, _ = cKDTree(seeds).query(pts)
        pts = pts[np.argpartition(dist, max_voxels)[:max_voxels]]
    dose_gy = influence_matrix(pts, seeds, plan.seed_axes(), kt).sum(axis=0, dtype=np.float64)
    m = dvh.oar_metrics(dose_gy, np.ones(len(dose_gy), bool), ct.voxel_volume_cc)
    if total_cc >= 2.0 and m["D2cc_gy"] is None:
        m["D2cc_gy"] = 0.0  # the nearest voxels hold < 2 cc: the structure's D2cc is below their minimum
    return {k: (None if v is None else round(float(v), 3)) for k, v in m.items()}


def _checks(plan: Plan, metrics: dict, limits: dict, fld: PlanningField, opts: PlanOptions, rx_gy: float) -> dict:
    """The plan's clinical goals, each with its value, the limit and whether it is met."""
    c = {
        "D90_ge_rx": {"value_gy": metrics["D90_gy"], "limit_gy": rx_gy * opts.d90_goal_rx,
                      "ok": bool(metrics["D90_gy"] >= rx_gy * opts.d90_goal_rx)},
        "V100_ge_goal": {"value_pct": metrics["V100_pct"], "limit_pct": opts.v100_goal_pct,
                         "ok": bool(metrics["V100_pct"] >= opts.v100_goal_pct)},
        "V150_le_max": {"value_pct": metrics["V150_pct"], "limit_pct": opts.v150_max_pct,
                        "ok": bool(metrics["V150_pct"] <= opts.v150_max_pct)},
    }
    for n, lim in limits.items():
        got = (metrics.get("oars", {}).get(n) or {}).get("D0.1cc_gy")
        c[f"oar {n}"] = {"value_gy": got, "limit_gy": lim["D0.1cc_gy"],
                         "ok": bool(got is None or got <= lim["D0.1cc_gy"])}
    pos = plan.seed_positions_mm()
    sd, _ = sample_nearest(fld.skin_depth_mm, fld.grid, pos, outside=0.0) if len(pos) else (np.zeros(0), None)
    c["seeds_below_skin"] = {"min_depth_mm": float(sd.min()) if len(sd) else None,
                             "limit_mm": opts.min_skin_depth_mm, "ok": bool(len(sd) > 0 and sd.min() >= opts.min_skin_depth_mm)}
    blocked = [n.id for n in plan.needles
               if not needle_path_clear(fld, n.entry_mm, n.tip_mm, step_mm=VERIFY_STEP_MM)[0]]
    c["needles_clear_of_nogo"] = {"blocked": blocked, "clearance_mm": opts.needles.clearance_mm, "ok": not blocked}
    c["all_ok"] = bool(all(v["ok"] for v in c.values()))
    return c
