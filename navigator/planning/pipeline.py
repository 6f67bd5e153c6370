"""Pre-planning: CTV, needles through a guide template, seeds that reach the prescription, dose.

``make_plan`` composes the pieces: ``targets`` (CTV, body, skin depth, no-go masks, OAR limits),
``needle_planning`` (direction, template, candidate seed positions), ``seed_optimize`` (which candidates get
a seed) and ``dose`` (the plan's dose on a grid over the CTV by the TG-43 engine) and ``dvh`` (metrics).
Everything is LPS mm in the planning CT's frame; doses are total doses of the permanent implant (Gy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from navigator.physics import dose as dose_mod
from navigator.anatomy import targets
from navigator.physics import tg43
from navigator.errors import InputError, PlanError, SeedModelError, StructureError
from navigator.core.structure import find_structure
from navigator.core.volume import Volume
from navigator.planning.needles import NeedleOptions, PlanningField, Sampler, needle_path_clear, plan_needles, sample_nearest
from navigator.core.plan import Needle, Plan, PlannedSeed
from navigator.planning.optimize import OptimizeOptions, PointPenalties, influence_matrix, kernel_table, optimize_loading


@dataclass
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


# --- inputs ---------------------------------------------------------------------------------------------
def _to_mask(name: str, s, ct: Volume) -> np.ndarray:
    """A structure (``structures.Structure`` or a bool array on the CT grid) -> bool mask on the CT grid."""
    if isinstance(s, np.ndarray):
        if s.shape != ct.array.shape:
            raise StructureError(f"structure '{name}': mask shape {s.shape} differs from the CT's {ct.array.shape}")
        return s.astype(bool)
    from navigator.anatomy.structures import structure_mask

    if not getattr(s, "contours", None):
        raise StructureError(f"structure '{name}' has no contours (empty); draw it or choose another structure")
    pts = np.concatenate(s.contours)
    if not ct.contains_lps(pts, margin_vox=0.5).any():
        lo, hi = pts.min(0), pts.max(0)
        raise StructureError(f"structure '{name}' lies outside the CT (contours span {np.round(lo, 1).tolist()} .. "
                             f"{np.round(hi, 1).tolist()} mm LPS); check that the structure set belongs to this CT")
    return structure_mask(s, ct)


def _default_oars(structures: dict, target: str) -> list[str]:
    return [n for n in structures if n != target and not targets.is_target_name(n)
            and targets.classify_oar(n) != "skin"]


def _dose_grid(ct: Volume, ctv: np.ndarray, opts: PlanOptions) -> Volume:
    """A grid in the CT's orientation over the CTV + margin, 1 mm (coarser if it would be too big)."""
    kk, jj, ii = np.nonzero(ctv)
    lo_ijk = np.array([ii.min(), jj.min(), kk.min()], float)
    hi_ijk = np.array([ii.max(), jj.max(), kk.max()], float)
    m = opts.grid_margin_mm / ct.spacing_mm
    lo_mm = (lo_ijk - m) * ct.spacing_mm
    hi_mm = (hi_ijk + m) * ct.spacing_mm
    ext = hi_mm - lo_mm
    step = opts.dose_grid_mm
    if step is None:
        step = 1.0
        while np.prod(np.floor(ext / step) + 1) > opts.max_dose_voxels:
            step += 0.5
    n = (np.floor(ext / step) + 1).astype(int)
    origin = ct.origin_mm + ct.direction @ lo_mm
    return Volume(array=np.zeros((n[2], n[1], n[0]), np.float32), origin_mm=origin, spacing_mm=np.full(3, step),
                  direction=ct.direction.copy(), frame_of_reference_uid=ct.frame_of_reference_uid,
                  series_uid=ct.series_uid, study_uid=ct.study_uid, patient_id=ct.patient_id,
                  patient_name=ct.patient_name, meta={"kind": "dose grid"})


def _subsample(pts: np.ndarray, n: int, rng) -> np.ndarray:
    if len(pts) <= n:
        return pts
    return pts[np.sort(rng.choice(len(pts), n, replace=False))]


# --- the plan -------------------------------------------------------------------------------------------
def make_plan(ct: Volume, structures: dict, target: str, oars: list[str] | None, rx_gy: float,
              seed_model, sk_u: float, options: PlanOptions | None = None) -> PlanResult:
    """Plan needles and seeds so that D90 >= Rx and V100 >= 95 % of the CTV (GTV + margin, in the body).

    ``structures``: {name: Structure or bool mask on the CT grid}. ``oars``: names (None: every structure
    that is not a target and not the skin/body). ``seed_model``: ``"6711"``... or a ``tg43.SeedModel``;
    ``sk_u``: air-kerma strength per seed (U). Raises ``InputError`` subclasses on bad input.
    """
    opts = options or PlanOptions()
    _say = opts.progress or (lambda msg: None)

    def say(msg):
        _say(msg)
    t_start = time.perf_counter()
    try:
        rx_gy = float(rx_gy)
    except (TypeError, ValueError):
        raise InputError(f"prescription {rx_gy!r} Gy is not a number; give the prescribed dose in Gy (e.g. 120)") from None
    if not np.isfinite(rx_gy) or rx_gy <= 0:
        raise InputError(f"prescription {rx_gy} Gy must be > 0 Gy (I-125 node implants: 110-160 Gy)")
    model = tg43.load_seed_model(seed_model) if isinstance(seed_model, str) else seed_model
    if not (sk_u is not None and np.isfinite(sk_u) and sk_u > 0):
        raise SeedModelError(f"seed strength {sk_u} U must be > 0 U (0.3-0.8 mCi is 0.38-1.02 U)")

    target_name, target_s = find_structure(structures, target)
    gtv = _to_mask(target_name, target_s, ct)
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
            oar_masks[real] = _to_mask(real, s, ct)
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

    say("masks: body, skin depth, no-go, CTV")
    body_names = [n for n in structures if n != target_name and targets.is_body_name(n)]
    if body_names:  # the structure set's own outline (BODY / External) beats an HU threshold
        body = _to_mask(body_names[0], structures[body_names[0]], ct)
        body_source = f"structure '{body_names[0]}'"
    else:
        body = targets.body_mask(ct)
        body_source = f"CT threshold HU > {targets.BODY_HU:g}"
    nogo, nogo_parts = targets.nogo_mask(ct, body, oar_masks)
    try:
        from navigator.anatomy.structures import expand_margin

        ctv = targets.ctv_mask(gtv, ct, opts.margin_mm, body, expand=expand_margin)
    except StructureError:  # the margin reaches the CT's edge: grow what the CT holds
        ctv = targets.ctv_mask(gtv, ct, opts.margin_mm, body)
    skin = targets.skin_depth_mm(body, ct, near=ctv, reach_mm=max(40.0, 3 * opts.min_skin_depth_mm))
    if opts.ctv_excludes_oars:
        # the margin is for microscopic spread, which does not cross into air (airway, lung), vessels or the
        # cord: the CTV keeps the whole GTV but its margin stops at the organs at risk and internal air
        barrier = targets.internal_air_mask(ct, body)
        for m in oar_masks.values():
            barrier |= m
        ctv = (ctv & ~barrier) | (gtv & body)
    if not ctv.any():
        raise StructureError(f"target '{target_name}' lies outside the patient's body contour; check the CT/structures")
    ctv_cc = float(ctv.sum()) * ct.voxel_volume_cc
    fld = PlanningField(grid=ct, body=body, skin_depth_mm=skin, nogo=nogo, ctv=ctv)

    say(f"needles: CTV {ctv_cc:.1f} cc; choosing the insertion direction and template")
    prone = str(ct.meta.get("patient_position", "")).upper() in ("HFP", "FFP")
    nopts = opts.needles
    nopts.min_skin_depth_mm = opts.min_skin_depth_mm
    access = "no needle crosses bone, internal air (airway, lung) or an organ at risk"
    try:
        layout = plan_needles(fld, nopts, prone=prone)
        strict_score = max(layout.direction_scores.values())
    except PlanError:
        layout, strict_score = None, -1.0
    if strict_score < 0.6 and (any(targets.classify_oar(n) == "airway" for n in oar_masks) or nogo_parts.get("internal_air")):
        # Deep mediastinal nodes are often out of reach without crossing lung: CT-guided practice then goes
        # transpulmonary. Needles may cross lung (not trachea/bronchi or any other OAR); seeds never lie in it.
        passable = {n for n in oar_masks if "lung" in n.lower()}
        nogo_path, _ = targets.nogo_mask(ct, body, {n: m for n, m in oar_masks.items() if n not in passable},
                                         include_air=False)
        fld_lung = PlanningField(grid=ct, body=body, skin_depth_mm=skin, nogo=nogo_path, ctv=ctv)
        try:
            alt = plan_needles(fld_lung, nopts, prone=prone)
            if max(alt.direction_scores.values()) > 1.5 * max(strict_score, 0.0):
                layout, fld = alt, fld_lung
                access = ("transpulmonary: needles may cross lung (" + (", ".join(sorted(passable)) or
                          "internal air not named as an airway") + "); no needle crosses bone, trachea/bronchi "
                          "or another organ at risk; no seed lies in lung")
        except PlanError:
            pass
    if layout is None:
        raise PlanError(f"no insertion direction reaches the CTV of '{target_name}' without crossing bone, air or an "
                        "organ at risk (anterior, oblique and lateral approaches tried, tilted up to 20 deg); check "
                        "that the OARs do not cover the target, or plan this node by hand")
    cand, cand_needle, cand_axes = layout.candidates()
    # each candidate seed (4.5 mm long) must be clear of no-go at both ends and deep enough below the skin
    ok = np.ones(len(cand), bool)
    for off in (-2.25, 0.0, 2.25):
        v, inside = sample_nearest(nogo, ct, cand + off * cand_axes, outside=True)
        ok &= ~v.astype(bool)
    sd, _ = sample_nearest(skin, ct, cand, outside=0.0)
    ok &= sd >= opts.min_skin_depth_mm
    cand, cand_needle, cand_axes = cand[ok], cand_needle[ok], cand_axes[ok]
    if len(cand) == 0:
        raise StructureError(f"no seed position in target '{target_name}' is >= {opts.min_skin_depth_mm} mm below the "
                             "skin and clear of bone/air/OARs; the target cannot be implanted as drawn")

    say(f"dose grid and sample points ({len(layout.needles)} candidate needles, {len(cand)} seed positions)")
    dgrid = _dose_grid(ct, ctv, opts)
    to_d = Sampler(ct, dgrid.voxel_centers_lps())
    ctv_d = to_d.take(ctv, False)[0].reshape(dgrid.array.shape).astype(bool)
    body_d = to_d.take(body, False)[0].reshape(dgrid.array.shape).astype(bool)
    oar_d = {n: to_d.take(m, False)[0].reshape(dgrid.array.shape).astype(bool) for n, m in oar_masks.items()}
    rng = np.random.default_rng(1)
    ctv_all = dgrid.voxel_centers_lps(ctv_d)
    from scipy import ndimage

    sampling = tuple(dgrid.spacing_mm[::-1])
    dist_out = ndimage.distance_transform_edt(~ctv_d, sampling=sampling)
    shell = body_d & ~ctv_d & (dist_out > 2.0) & (dist_out <= 12.0)
    for m in oar_d.values():
        shell &= ~m
    s_pts = _subsample(dgrid.voxel_centers_lps(shell), opts.max_shell_points, rng)
    o_pts, o_pen, o_lim = [], [], []
    for n, m in oar_d.items():
        near = m & (dist_out <= 25.0)
        p = _subsample(dgrid.voxel_centers_lps(near), opts.max_oar_points, rng)
        if len(p):
            lim = limits[n]["D0.1cc_gy"]
            o_pts.append(p)
            # per-point weight as if the OAR had 300 points: its hottest 0.1 cc must weigh like the target
            o_pen.append(PointPenalties.uniform(len(p), over1=0.95 * lim, w_over1=3.0, over2=1.1 * lim,
                                                w_over2=10.0, weight=1.0 / 300.0))
            o_lim.append((n, lim))
    fixed_pts = np.concatenate([s_pts] + o_pts) if (len(s_pts) or o_pts) else np.zeros((0, 3))
    ns = len(s_pts)
    nt = min(len(ctv_all), opts.max_target_points)

    say(f"influence matrix: {len(cand)} candidates x {nt + len(fixed_pts)} points")
    t0 = time.perf_counter()
    kt = kernel_table(model, sk_u)
    A_fixed = influence_matrix(fixed_pts, cand, cand_axes, kt)
    t_influence = time.perf_counter() - t0

    def penalties(w_step: float, w_hot: float) -> PointPenalties:
        parts = [PointPenalties.uniform(nt, under=rx_gy, w_step=w_step, w_under=2.0, over1=1.5 * rx_gy,
                                        w_over1=w_hot, over2=2.0 * rx_gy, w_over2=0.5 * w_hot, weight=1.0 / nt)]
        if ns:
            parts.append(PointPenalties.uniform(ns, over1=rx_gy, w_over1=0.05, over2=1.5 * rx_gy, w_over2=0.1,
                                                weight=1.0 / ns))
        # OAR weights rise with the coverage weight, so a push for coverage does not overrun the limits
        scale = max(1.0, w_step)
        return PointPenalties.concat(parts + [_scaled(p, scale) for p in o_pen])

    # Optimise on sample points, check on the whole grid, and repeat from the current loading with a fresh
    # sample of CTV points (a fixed sample gets over-fitted: its points covered, the voxels between not)
    # and a stronger coverage or hot-spot weight, whichever the grid says is short.
    x = None
    w_step, w_hot = 1.0, 0.3
    rounds = []
    sk = float(sk_u)
    oopts = opts.optimizer
    oopts.sparse_threshold_gy = 0.002 * rx_gy
    dose_arr = None
    best = None
    for rnd in range(opts.rounds):
        say(f"optimising seeds (round {rnd + 1})")
        t_pts = _subsample(ctv_all, nt, np.random.default_rng(100 + rnd))
        t0 = time.perf_counter()
        A = np.concatenate([influence_matrix(t_pts, cand, cand_axes, kt), A_fixed], axis=1)
        t_influence += time.perf_counter() - t0
        res = optimize_loading(A, penalties(w_step, w_hot), cand, x0=x, opts=oopts)
        x = res.loading
        v100_s = 100.0 * float(np.mean(res.dose_gy[:nt] >= rx_gy))
        t0 = time.perf_counter()
        dose_arr = dose_mod.dose_on_grid(dgrid, cand[x], cand_axes[x], sk, model)
        t_dose = time.perf_counter() - t0
        tm = _target_metrics(dose_arr, ctv_d, dgrid, rx_gy)
        rounds.append({"round": rnd + 1, "seeds": int(x.sum()), "sample_V100_pct": round(v100_s, 2),
                       "V100_pct": round(float(tm["V100_pct"]), 2), "D90_gy": round(float(tm["D90_gy"]), 2),
                       "V150_pct": round(float(tm["V150_pct"]), 2), "iterations": res.iterations,
                       "adds": res.adds, "removes": res.removes,
                       "optimise_s": round(res.seconds, 3), "dose_s": round(t_dose, 3), "stop": res.stop})
        say(f"  {int(x.sum())} seeds: V100 {tm['V100_pct']:.1f} %, D90 {tm['D90_gy']:.1f} Gy, "
            f"V150 {tm['V150_pct']:.1f} %")
        missed = int(tm["V100_pct"] < opts.v100_goal_pct) + int(tm["D90_gy"] < opts.d90_goal_rx * rx_gy) + \
            int(tm["V150_pct"] > opts.v150_max_pct)
        for n, lim in o_lim:
            dd = np.sort(dose_arr[oar_d[n]])[::-1]
            k = int(np.ceil(0.1 / dgrid.voxel_volume_cc))
            missed += int(len(dd) >= k and dd[k - 1] > lim)
        rank = (missed, -float(tm["V100_pct"]))
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
    _, x, dose_arr, kept_round = best  # the round that met most goals (then: highest V100)
    dose_vol = dgrid.with_array(dose_arr.astype(np.float32))
    dose_vol.meta = {"kind": "dose", "units": "GY"}

    # the plan: needles with seeds, tip 5 mm beyond the deepest seed; seeds numbered in delivery order
    plan = Plan(frame_of_reference_uid=ct.frame_of_reference_uid, ct_series_uid=ct.series_uid, target=target_name,
                prescription_gy=rx_gy, seed_model=model.name, seed_sk_u=sk)
    sel_pos, sel_needle = cand[x], cand_needle[x]
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

    metrics = _plan_metrics(dose_vol, ctv_d, {}, rx_gy)
    metrics["oars"] = {n: _oar_metrics_at_voxels(m, ct, plan, kt) for n, m in oar_masks.items()}
    checks = _checks(plan, metrics, limits, fld, opts, rx_gy)
    plan.metrics = metrics
    tpl = layout.template.to_dict()
    plan.extra = {
        "ctv": {"name": "CTV", "margin_mm": opts.margin_mm,
                "clipped_to": f"body contour ({body_source})" + (
                    ", the organs at risk and internal air (HU < -500); the GTV itself is kept whole"
                    if opts.ctv_excludes_oars else ""),
                "cc": round(ctv_cc, 3)},
        "seed_count": len(plan.seeds), "needle_count": len(plan.needles),
        "seed_activity_mci": round(sk / tg43.MCI_TO_U, 4),
        "total_activity_mci": round(len(plan.seeds) * sk / tg43.MCI_TO_U, 3),
        "seeds_per_cc": round(len(plan.seeds) / max(metrics["ctv_cc"], 1e-9), 3),
        "template": tpl, "insertion_direction": layout.direction,
        "oars_skipped": oars_skipped,
        "oar_limits": {n: {"D0.1cc_gy": round(v["D0.1cc_gy"], 2), "class": v["class"], "basis": v["basis"]}
                       for n, v in limits.items()},
        "nogo": {"components_voxels": nogo_parts, "clearance_mm": 1.0 + nopts.nogo_clearance_mm,
                 "needle_access": access},
        "min_skin_depth_mm": opts.min_skin_depth_mm,
        "oar_metrics_method": ("TG-43 2D dose (0.25 mm kernel table of navigator.physics.tg43, bilinear) at the OAR's CT "
                               "voxel centres (the 30000 nearest the seeds); D2cc null when the OAR is < 2 cc"),
        "dose_grid": {"spacing_mm": dgrid.spacing_mm.tolist(), "shape_ijk": list(dgrid.shape_ijk),
                      "origin_mm": [round(float(v), 3) for v in dgrid.origin_mm]},
        "optimizer": {"candidates": int(len(cand)), "candidate_needles": len(layout.needles),
                      "sample_points": {"ctv": nt, "shell": ns, "oar": int(len(fixed_pts) - ns)},
                      "influence_s": round(t_influence, 3), "rounds": rounds, "kept_round": kept_round,
                      "unreached_ctv_cc": round(layout.unreached_cc, 3)},
        "checks": checks,
        "planning_seconds": round(time.perf_counter() - t_start, 2),
    }
    say(f"plan: {len(plan.seeds)} seeds on {len(plan.needles)} needles, {plan.extra['planning_seconds']} s")
    return PlanResult(plan=plan, dose=dose_vol, ctv_mask=ctv, ctv_dose_mask=ctv_d, oar_dose_masks=oar_d,
                      gtv_mask=gtv, masks={"body": body, "nogo": nogo, "skin_depth_mm": skin, "oars": oar_masks}, layout=layout,
                      checks=checks)


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
    blocked = [n.id for n in plan.needles if not needle_path_clear(fld, n.entry_mm, n.tip_mm, step_mm=0.25)[0]]
    c["needles_clear_of_nogo"] = {"blocked": blocked, "ok": not blocked}
    c["all_ok"] = bool(all(v["ok"] for v in c.values()))
    return c
