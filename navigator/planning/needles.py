"""Needle layout: choose an insertion direction and a guide template pose, trace every needle line
through the body and no-go masks, and list candidate seed positions along the needles that are clear.

Inputs are masks on the planning CT grid (k, j, i) and the CT ``Volume`` for geometry; every public
coordinate is LPS mm. A needle line is traced from the template plate (outside the body) to its deepest
allowed point; it is usable when nothing between the plate and the target lies in the no-go mask.
Where the template's parallel lines cannot reach part of the CTV, single non-coplanar needles are
added from other directions (``hole`` None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from navigator.core.sampling import Sampler, sample_nearest
from navigator.core.template import GuideTemplate, hole_id
from navigator.core.volume import Volume
from navigator.errors import PlanError

# Insertion directions tried (unit vectors *into* the patient, LPS): anterior, antero-lateral, lateral;
# posterior and postero-lateral only for prone patients (or when allowed): a supine patient lies on them.
_AXIAL = {  # named after the side the needles come from
    "from anterior": (0, 1, 0),
    "from left-anterior": (-1, 1, 0),
    "from right-anterior": (1, 1, 0),
    "from left": (-1, 0, 0),
    "from right": (1, 0, 0),
    "from left-posterior": (-1, -1, 0),
    "from right-posterior": (1, -1, 0),
    "from posterior": (0, -1, 0),
}


# Step (mm) at which a needle track is finally checked against the no-go mask; the mask is grown for it.
VERIFY_STEP_MM = 0.25


@dataclass
class PlanningField:
    """Masks on the planning CT grid (shape of ``grid.array``)."""

    grid: Volume
    body: np.ndarray
    skin_depth_mm: np.ndarray
    nogo: np.ndarray
    ctv: np.ndarray


@dataclass(frozen=True)
class NeedleOptions:
    needle_spacing_mm: float = 10.0
    min_needles: int = 5               # fewer at the needle spacing: use the 5 mm hole pitch instead
    seed_step_mm: float = 5.0
    min_skin_depth_mm: float = 10.0
    tip_beyond_seed_mm: float = 5.0
    # Every point of a needle track (tip included) keeps at least this distance (mm) from bone, internal air
    # and the organs at risk (their voxels as boxes): the no-go mask is grown for it (anatomy.targets.nogo_mask
    # with track_step_mm=VERIFY_STEP_MM), so a needle is clear when no sample of its track reads no-go.
    clearance_mm: float = 3.0
    template_standoff_mm: float = 10.0  # plate surface above the highest skin point under it
    max_needle_mm: float = 200.0
    trace_step_mm: float = 1.0
    tilts_deg: tuple = (0.0, 20.0, -20.0)
    allow_posterior: bool = False
    single_needles: bool = True
    coverage_radius_mm: float = 8.0     # CTV voxels farther than this from every candidate are "unreached"


@dataclass
class CandidateNeedle:
    id: str
    hole: str | None
    entry_mm: np.ndarray      # depth 0: the template hole's reference point (or the guide point of a single needle)
    axis: np.ndarray          # unit LPS vector into the patient
    seed_depths_mm: np.ndarray  # candidate seed depths along the needle
    skin_depth_mm: float      # depth at which the needle meets the skin
    max_tip_depth_mm: float   # deepest allowed tip (no-go clearance kept)

    @property
    def positions_mm(self) -> np.ndarray:
        return self.entry_mm + self.seed_depths_mm[:, None] * self.axis


@dataclass
class NeedleLayout:
    template: GuideTemplate
    direction: str
    needles: list[CandidateNeedle]
    direction_scores: dict = field(default_factory=dict)
    unreached_cc: float = 0.0

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All candidate seed positions (N, 3) LPS mm, their needle index (N,) and axes (N, 3)."""
        pos = [n.positions_mm for n in self.needles]
        idx = [np.full(len(n.seed_depths_mm), i) for i, n in enumerate(self.needles)]
        ax = [np.repeat(n.axis[None], len(n.seed_depths_mm), axis=0) for n in self.needles]
        if not pos:
            return np.zeros((0, 3)), np.zeros(0, int), np.zeros((0, 3))
        return np.concatenate(pos), np.concatenate(idx), np.concatenate(ax)


def _basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template axes for a needle direction: rows run towards the feet (LPS -z) unless the needles do."""
    n = normal / np.linalg.norm(normal)
    hint = np.array([0.0, 0.0, -1.0]) if abs(n[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    r = hint - np.dot(hint, n) * n
    r /= np.linalg.norm(r)
    return r, np.cross(n, r), n


def _directions(opts: NeedleOptions, prone: bool) -> dict[str, np.ndarray]:
    out = {}
    for name, v in _AXIAL.items():
        v = np.asarray(v, float)
        if v[1] < 0 and not (prone or opts.allow_posterior):
            continue  # a supine patient lies on the table: no posterior or postero-oblique entries
        v /= np.linalg.norm(v)
        for t in opts.tilts_deg:
            tr = np.deg2rad(t)
            d = np.cos(tr) * v + np.sin(tr) * np.array([0.0, 0.0, 1.0])
            # t > 0 points the needle superiorly (+z), so it comes in from the caudal side
            key = name if t == 0 else f"{name}, tilted {abs(t):g} deg from {'caudal' if t > 0 else 'cranial'}"
            out[key] = d / np.linalg.norm(d)
    return out


@dataclass
class _Trace:
    """Traced lattice lines for one direction (w = coordinate along the needle)."""
    r: np.ndarray
    c: np.ndarray
    n: np.ndarray
    uv: np.ndarray            # (L, 2) line positions in the plane, mm
    w: np.ndarray             # (S,) sample coordinates along the lines, mm
    body: np.ndarray          # (L, S) bool
    inct: np.ndarray
    nogo: np.ndarray
    ctv: np.ndarray
    skin: np.ndarray          # (L, S) skin depth mm
    first_body: np.ndarray    # (L,) index of first body sample, -1 if the line starts inside the body
    ctv0: np.ndarray          # (L,) first CTV sample index, -1 if none


def _trace(fld: PlanningField, normal: np.ndarray, uv: np.ndarray, w_lo: float, w_hi: float,
           step_mm: float) -> _Trace:
    r, c, n = _basis(normal)
    w = np.arange(w_lo, w_hi + step_mm, step_mm)
    pts = (uv[:, 0, None, None] * r + uv[:, 1, None, None] * c) + w[None, :, None] * n  # (L, S, 3)
    smp = Sampler(fld.grid, pts)
    body, inct = smp.take(fld.body, outside=False)
    nogo, _ = smp.take(fld.nogo, outside=False)
    ctv, _ = smp.take(fld.ctv, outside=False)
    skin, _ = smp.take(fld.skin_depth_mm, outside=0.0)
    body = body.astype(bool)
    has_body = body.any(axis=1)
    first_body = np.where(has_body, np.argmax(body, axis=1), -1)
    first_body[body[:, 0]] = -1  # starts inside the body: the CT does not show where it would enter
    has_ctv = ctv.astype(bool).any(axis=1)
    ctv0 = np.where(has_ctv, np.argmax(ctv, axis=1), -1)
    return _Trace(r, c, n, uv, w, body, inct, nogo.astype(bool), ctv.astype(bool), skin.astype(np.float32),
                  first_body, ctv0)


def _reach(tr: _Trace, plate_w: float, opts: NeedleOptions):
    """Per line: usable?, skin-crossing index, deepest allowed tip w, reachable CTV sample mask."""
    L, S = tr.body.shape
    usable = np.zeros(L, bool)
    skin_idx = np.full(L, -1)
    tip_max_w = np.full(L, -np.inf)
    reach = np.zeros((L, S), bool)
    plate_i = int(np.searchsorted(tr.w, plate_w))
    for l in range(L):
        c0 = tr.ctv0[l]
        if c0 < 0:
            continue
        seg_air = tr.inct[l, :c0] & ~tr.body[l, :c0]
        if not seg_air.any():
            continue  # the line reaches the CT's edge still inside the body: unknown path
        s = int(np.nonzero(seg_air)[0][-1]) + 1
        if tr.nogo[l, plate_i:c0].any() or not tr.inct[l, s:c0].all():
            continue
        after = np.nonzero(tr.nogo[l, c0:] | ~tr.inct[l, c0:])[0]
        block_w = tr.w[c0 + after[0]] if len(after) else tr.w[-1]
        tmax = block_w - opts.trace_step_mm  # the last clear sample: the no-go mask holds the clearance
        tmax = min(tmax, plate_w + opts.max_needle_mm)
        ok = tr.ctv[l] & (tr.w + opts.tip_beyond_seed_mm <= tmax) & (tr.skin[l] >= opts.min_skin_depth_mm)
        if not ok.any():
            continue
        usable[l] = True
        skin_idx[l] = s
        tip_max_w[l] = tmax
        reach[l] = ok
    return usable, skin_idx, tip_max_w, reach


def _lattice_uv(ctv_pts: np.ndarray, r: np.ndarray, c: np.ndarray, pitch: float) -> np.ndarray:
    cells = np.rint(np.stack([ctv_pts @ r, ctv_pts @ c], axis=1) / pitch).astype(np.int64)
    key = np.unique((cells[:, 0] + 100000) * 200001 + (cells[:, 1] + 100000))  # 1-D unique: much faster
    cells = np.stack([key // 200001 - 100000, key % 200001 - 100000], axis=1)
    return cells.astype(float) * pitch


_PITCH_MM = 5.0  # template hole pitch: the lattice the directions are scored on and needles chosen from


def plan_needles(fld: PlanningField, opts: NeedleOptions | None = None, prone: bool = False,
                 template_kw: dict | None = None) -> NeedleLayout:
    """Choose the insertion direction and template pose; return the candidate needles and seed positions.

    Stages: score every direction on the full 5 mm lattice (``_score_directions``); on the best one, choose the
    template lines (``_choose_lines``); place the template over them and list its needles
    (``_template_needles``); add single needles from other directions for CTV the template cannot reach
    (``_add_single_needles``); re-trace every needle finely (``_verify``)."""
    opts = opts or NeedleOptions()
    g = fld.grid
    ctv_pts = g.voxel_centers_lps(fld.ctv)
    if len(ctv_pts) == 0:
        raise PlanError("the CTV is empty; nothing to plan")
    rng = np.random.default_rng(0)
    if len(ctv_pts) > 40000:
        ctv_pts = ctv_pts[rng.choice(len(ctv_pts), 40000, replace=False)]
    scores, traces = _score_directions(fld, ctv_pts, opts, prone)
    best = max(scores, key=scores.get)
    if scores[best] <= 0 or best not in traces:
        raise PlanError("no insertion direction reaches the CTV without crossing bone, air or an organ at risk; "
                        "check the structures (OARs overlapping the target?) or plan single needles by hand")
    tr, _ = traces[best]
    lines = _choose_lines(fld, tr, ctv_pts, opts)
    template, needles = _template_needles(tr, lines, best, opts, template_kw)
    needles, unreached = _add_single_needles(fld, ctv_pts, needles, scores, traces, best, opts, prone)
    needles = _verify(fld, needles, opts)
    full = len(ctv_pts) / max(int(fld.ctv.sum()), 1)
    unreached_cc = len(unreached) * g.voxel_volume_cc / full
    for i, nd in enumerate(needles):
        nd.id = f"N{i + 1:02d}"
    return NeedleLayout(template=template, direction=best, needles=needles, direction_scores=scores,
                        unreached_cc=float(unreached_cc))


def _score_directions(fld: PlanningField, ctv_pts: np.ndarray, opts: NeedleOptions, prone: bool):
    """({direction: score}, {direction: (trace, plate w)}): the share of the CTV the direction's 5 mm lattice
    reaches, less a little for the path length and the tilt; -1 (and no trace) where no line meets the body."""
    back = opts.max_needle_mm
    scores, traces = {}, {}
    for name, d in _directions(opts, prone).items():
        r, c, n = _basis(d)
        uv = _lattice_uv(ctv_pts, r, c, _PITCH_MM)
        wc = ctv_pts @ n
        tr = _trace(fld, n, uv, wc.min() - back, wc.max() + 10.0, opts.trace_step_mm)
        fb = tr.first_body[(tr.first_body >= 0) & (tr.ctv0 >= 0)]
        if len(fb) == 0:
            scores[name] = -1.0
            continue
        plate_w = tr.w[fb.min()] - opts.template_standoff_mm
        usable, _, _, reach = _reach(tr, plate_w, opts)
        total = tr.ctv.sum()
        cover = reach.sum() / max(total, 1)
        path = np.mean([tr.w[tr.ctv0[l]] - plate_w for l in np.nonzero(usable)[0]]) if usable.any() else back
        tilt = float(np.degrees(np.arcsin(min(1.0, abs(n[2])))))
        scores[name] = float(cover - 0.001 * path - 0.002 * tilt)
        traces[name] = (tr, plate_w)
    return scores, traces


@dataclass
class _Lines:
    """The chosen template lines of one direction's trace and what ``_reach`` says of every line."""
    sel: np.ndarray           # (L,) bool: lines that get a needle
    plate_w: float
    skin_idx: np.ndarray
    tip_max_w: np.ndarray
    reach: np.ndarray


def _choose_lines(fld: PlanningField, tr: _Trace, ctv_pts: np.ndarray, opts: NeedleOptions) -> _Lines:
    """Needle lattice at the needle spacing: the lattice phase that reaches most of the CTV (every usable hole
    for a small node), plus in-between holes at the CTV's edges (``_fill_edges``)."""
    step = max(1, int(round(opts.needle_spacing_mm / _PITCH_MM)))
    cell = np.rint(tr.uv / _PITCH_MM).astype(int)
    best_phase, best_val = (0, 0), -1
    fb_all = tr.first_body[(tr.first_body >= 0) & (tr.ctv0 >= 0)]
    plate_w = tr.w[fb_all.min()] - opts.template_standoff_mm
    usable, skin_idx, tip_max_w, reach = _reach(tr, plate_w, opts)
    for pr in range(step):
        for pc in range(step):
            sel = (cell[:, 0] % step == pr) & (cell[:, 1] % step == pc)
            val = reach[sel].sum()
            if val > best_val:
                best_phase, best_val = (pr, pc), val
    sel = (cell[:, 0] % step == best_phase[0]) & (cell[:, 1] % step == best_phase[1]) & usable
    if sel.sum() < opts.min_needles:
        sel = usable.copy()  # a small node: a few needles 1 cm apart leave too few seed positions; use every hole
    sel = _fill_edges(fld, tr, sel, usable, reach, plate_w, ctv_pts, opts)
    return _Lines(sel, plate_w, skin_idx, tip_max_w, reach)


def _template_needles(tr: _Trace, lines: _Lines, direction: str, opts: NeedleOptions,
                      template_kw: dict | None) -> tuple[GuideTemplate, list[CandidateNeedle]]:
    """The template covering the chosen lines (its plate above every skin point under it) and a needle
    through the hole of each line that has a seed position, in hole order."""
    uv_sel = tr.uv[lines.sel]
    if len(uv_sel) == 0:
        raise PlanError("no needle through the template reaches the CTV")
    plate_w = lines.plate_w
    tkw = dict(template_kw or {})
    template = GuideTemplate.covering(tr.n, tr.r, uv_sel.min(0), uv_sel.max(0), plane_mm=plate_w,
                                      pitch_mm=_PITCH_MM, **tkw)
    template.meta.update({"direction": direction})
    needles = []
    for l in np.nonzero(lines.sel)[0]:
        rc = template.lps_to_rc(tr.uv[l, 0] * tr.r + tr.uv[l, 1] * tr.c + plate_w * tr.n)
        row, col = int(np.rint(rc[0])), int(np.rint(rc[1]))
        hole = hole_id(row, col)
        entry = template.hole_to_lps(hole)
        depths = _seed_depths(tr.w, lines.reach[l], plate_w, opts.seed_step_mm)
        if len(depths) == 0:
            continue
        needles.append(CandidateNeedle(id="", hole=hole, entry_mm=entry, axis=tr.n.copy(), seed_depths_mm=depths,
                                       skin_depth_mm=float(tr.w[lines.skin_idx[l]] - plate_w),
                                       max_tip_depth_mm=float(lines.tip_max_w[l] - plate_w)))
    needles.sort(key=lambda nd: (nd.hole[0], int(nd.hole[1:])))
    return template, needles


def _add_single_needles(fld: PlanningField, ctv_pts: np.ndarray, needles: list[CandidateNeedle], scores: dict,
                        traces: dict, best: str, opts: NeedleOptions, prone: bool):
    """(needles, unreached CTV points): single needles from the other directions, best score first, for CTV
    the template cannot reach, until less than 0.3 cc is left."""
    unreached = _unreached(fld, ctv_pts, needles, opts)
    if opts.single_needles and len(unreached) > 0:
        for name in sorted(scores, key=scores.get, reverse=True):
            if len(unreached) * fld.grid.voxel_volume_cc < 0.3:
                break
            if name == best or name not in traces:
                continue
            added = _single_needles(fld, np.asarray(_directions(opts, prone)[name]), unreached, opts)
            if added:
                needles.extend(added)
                unreached = _unreached(fld, ctv_pts, needles, opts)
    return needles, unreached


def _fill_edges(fld, tr: _Trace, sel, usable, reach, plate_w, ctv_pts, opts: NeedleOptions) -> np.ndarray:
    """Add in-between template holes (5 mm lattice) where the needle-spacing lattice leaves reachable CTV
    farther than ``coverage_radius_mm`` from every candidate seed (the edges of the CTV's projection)."""
    sel = sel.copy()
    line_pos = {}
    for l in np.nonzero(usable)[0]:
        d = _seed_depths(tr.w, reach[l], plate_w, opts.seed_step_mm)
        base = tr.uv[l, 0] * tr.r + tr.uv[l, 1] * tr.c + plate_w * tr.n
        line_pos[l] = base + d[:, None] * tr.n
    chosen = [line_pos[l] for l in np.nonzero(sel)[0] if len(line_pos[l])]
    for _ in range(50):
        cand_pts = np.concatenate(chosen) if chosen else np.zeros((0, 3))
        gap = _unreached_pts(fld, ctv_pts, cand_pts, opts)
        if len(gap) < 3:
            break
        tree = cKDTree(gap)
        best_l, best_n = -1, 2
        for l, pos in line_pos.items():
            if sel[l] or len(pos) == 0:
                continue
            hits = tree.query_ball_point(pos, opts.coverage_radius_mm)
            n = len(set(i for h in hits for i in h))
            if n > best_n:
                best_l, best_n = l, n
        if best_l < 0:
            break
        sel[best_l] = True
        chosen.append(line_pos[best_l])
    return sel


def _unreached_pts(fld: PlanningField, ctv_pts: np.ndarray, cand_pts: np.ndarray, opts: NeedleOptions) -> np.ndarray:
    sd, _ = sample_nearest(fld.skin_depth_mm, fld.grid, ctv_pts, outside=0.0)
    ng, _ = sample_nearest(fld.nogo, fld.grid, ctv_pts, outside=True)
    pts = ctv_pts[(sd >= opts.min_skin_depth_mm) & ~ng.astype(bool)]
    if len(cand_pts) == 0 or len(pts) == 0:
        return pts
    dist, _ = cKDTree(cand_pts).query(pts, distance_upper_bound=opts.coverage_radius_mm)
    return pts[~np.isfinite(dist)]


def _seed_depths(w: np.ndarray, ok: np.ndarray, plate_w: float, step_mm: float) -> np.ndarray:
    """Candidate seed depths on a ``step_mm`` raster centred on the reachable CTV run of one line."""
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return np.zeros(0)
    w0, w1 = w[idx[0]], w[idx[-1]]
    n = int(np.floor((w1 - w0) / step_mm)) + 1
    start = 0.5 * (w0 + w1) - 0.5 * (n - 1) * step_mm
    cand = start + step_mm * np.arange(n)
    keep = ok[np.clip(np.rint((cand - w[0]) / (w[1] - w[0])).astype(int), 0, len(w) - 1)]
    return cand[keep] - plate_w


def _unreached(fld: PlanningField, ctv_pts: np.ndarray, needles: list[CandidateNeedle],
               opts: NeedleOptions) -> np.ndarray:
    """CTV points that no candidate seed comes within ``coverage_radius_mm`` of, among those a seed could
    serve at all (at least the minimum depth below the skin and outside the no-go mask)."""
    cand = np.concatenate([n.positions_mm for n in needles]) if needles else np.zeros((0, 3))
    return _unreached_pts(fld, ctv_pts, cand, opts)


def _single_needles(fld: PlanningField, d: np.ndarray, unreached: np.ndarray,
                    opts: NeedleOptions) -> list[CandidateNeedle]:
    """Free-hand needles along ``d`` on a needle-spacing lattice through the unreached CTV points."""
    r, c, n = _basis(d)
    uv = _lattice_uv(unreached, r, c, opts.needle_spacing_mm)
    wc = unreached @ n
    tr = _trace(fld, n, uv, wc.min() - opts.max_needle_mm, wc.max() + 10.0, opts.trace_step_mm)
    out = []
    for l in range(len(uv)):
        if tr.first_body[l] < 0 or tr.ctv0[l] < 0:
            continue
        plate_w = tr.w[tr.first_body[l]] - opts.template_standoff_mm
        usable, skin_idx, tip_max_w, reach = _reach(_sub(tr, l), plate_w, opts)
        if not usable[0]:
            continue
        depths = _seed_depths(tr.w, reach[0], plate_w, opts.seed_step_mm)
        entry = uv[l, 0] * r + uv[l, 1] * c + plate_w * n
        pos = entry + depths[:, None] * n
        near = cKDTree(unreached).query(pos, distance_upper_bound=opts.coverage_radius_mm)[0]
        if len(depths) == 0 or np.isfinite(near).sum() < 2:
            continue  # a needle for one seed position near the gap is not worth its puncture
        out.append(CandidateNeedle(id="", hole=None, entry_mm=entry, axis=n.copy(), seed_depths_mm=depths,
                                   skin_depth_mm=float(tr.w[skin_idx[0]] - plate_w),
                                   max_tip_depth_mm=float(tip_max_w[0] - plate_w)))
    return out


def _verify(fld: PlanningField, needles: list[CandidateNeedle], opts: NeedleOptions) -> list[CandidateNeedle]:
    """Re-trace each needle every ``VERIFY_STEP_MM`` (the direction search samples every ``trace_step_mm`` and
    can step over the corner of a thin no-go voxel): shorten a needle that meets no-go before its deepest tip
    to its last clear sample, drop it when that leaves no seed position."""
    out = []
    for nd in needles:
        clear, hit = needle_path_clear(fld, nd.entry_mm, nd.entry_mm + nd.max_tip_depth_mm * nd.axis,
                                       step_mm=VERIFY_STEP_MM)
        if not clear:
            nd.max_tip_depth_mm = hit - VERIFY_STEP_MM
            nd.seed_depths_mm = nd.seed_depths_mm[nd.seed_depths_mm + opts.tip_beyond_seed_mm <= nd.max_tip_depth_mm]
        if len(nd.seed_depths_mm):
            out.append(nd)
    return out


def _sub(tr: _Trace, l: int) -> _Trace:
    s = slice(l, l + 1)
    return _Trace(tr.r, tr.c, tr.n, tr.uv[s], tr.w, tr.body[s], tr.inct[s], tr.nogo[s], tr.ctv[s], tr.skin[s],
                  tr.first_body[s], tr.ctv0[s])


def needle_path_clear(fld: PlanningField, entry_mm, tip_mm, step_mm: float = VERIFY_STEP_MM) -> tuple[bool, float]:
    """Whether the segment entry -> tip avoids the no-go mask, sampled every ``step_mm`` and at the tip (so every
    point lies within ``step_mm / 2`` of a sample); returns (clear, first no-go depth mm or inf)."""
    entry = np.asarray(entry_mm, float)
    tip = np.asarray(tip_mm, float)
    length = float(np.linalg.norm(tip - entry))
    t = np.arange(0.0, length + 1e-9, step_mm)
    if length - t[-1] > 1e-6:
        t = np.append(t, length)
    pts = entry + t[:, None] * (tip - entry) / max(length, 1e-9)
    nogo, _ = sample_nearest(fld.nogo, fld.grid, pts, outside=False)
    hit = np.nonzero(nogo)[0]
    return (len(hit) == 0, float(t[hit[0]]) if len(hit) else float("inf"))
