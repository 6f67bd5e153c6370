"""Find the inserted needles in an intraop CT, guided by the plan.

Frame: everything here is the intraop CT's LPS (mm). The caller maps the planned needles into it with the
registration (``planned_in_intraop``).

Method, and why (every level is measured on the scan in hand, ``metal_appearance``; nothing is a constant
fitted to one simulator or scanner):
0. How metal looks here: the clip level (a plateau at the array's maximum: 3071, 4095, or none), the tissue
   level, the dimmest stretch of steel along the planned tracks, the in-plane blur of a steel edge (a clipped
   Gaussian across the lines found) and the unclipped contrast of a rod lying in one slice (the partial
   volume of neighbouring slices). The metal threshold is half-way from the tissue to the dimmest steel.
1. Metal: voxels above that threshold in a box around the mapped tracks.
2. Every steel line in the box is found before any matching: each 26-connected metal component is a
   candidate; its axis is the intensity-weighted principal axis (PCA) of its voxels in mm, so anisotropic
   voxels do not tilt it. Short (< ``min_length_mm``: seeds), thick or dim (bone) components are not
   needles; a thick component is split along the planned tracks through it or into k = 2-3 lines (needles
   that touch). Collinear pieces of one needle broken by partial volume are merged; a line with a gap on
   its axis is seeds in a row, not a needle. The axis is refitted on the metal's halo too, and for a needle
   near the axial plane of a thick-slice scan its z comes from which slices its steel lights
   (``_slice_fit``; how deep steel must reach into a slice to light it follows from the threshold's share
   of the rod's contrast). A needle lying inside one slice stays uncertain through it: the tip's standard
   error (``tip_sd_mm``) says how much.
3. The tip is where the intensity profile along the axis falls to half-way between the needle plateau and the
   tissue beyond, interpolated between 0.1 mm samples. For a symmetric blur that crossing is the true end
   of the steel; where the scan clips the steel the crossing lies beyond the end by
   sigma * Phi^-1(1 - half / contrast) (``metal_appearance.clipped_end_bias``), with the blur along the
   axis from the measured in-plane blur and the slice profile (the needle's z component).
4. Matching: one found needle per planned needle at most, by the Hungarian method on the distance of the
   found line from the planned tip region, gated at ``track_radius_mm`` (below half the ~10 mm needle
   spacing), so a missing needle is never given its neighbour's. A second round with a wider gate
   (``far_radius_mm``) takes still-unmatched candidates: needles far off track. A planned needle still
   unmatched takes the steel within ``rescue_radius_mm`` of its track that no matched line holds (never
   "not found" while steel lies on the track); otherwise it is reported not found. Unmatched metal lines
   (less pieces of matched needles) are reported as unexpected.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from navigator.core.volume import Volume, box_slices, index_box, voxel_box
from navigator.imaging.metal_appearance import (
    axis_contrast,
    clipped_end_bias,
    cross_section_sigma,
    estimate_levels,
    full_rod_contrast,
    slice_entry_depth_mm,
)

__all__ = ["NeedleFindingSettings", "FoundNeedle", "NeedleMatch", "NeedleSearch", "find_needles",
           "planned_in_intraop"]


@dataclass(frozen=True)
class NeedleFindingSettings:
    # Metal threshold (HU). None: measured on the scan in hand (``metal_appearance.estimate_levels``: half-way
    # between the tissue and the dimmest stretch of steel along the planned tracks, within the bounds below);
    # a number (``navigator needles --metal-hu``) overrides it.
    metal_hu: float | None = None
    min_metal_hu: float = 350.0  # never below this: soft tissue + noise must stay out whatever the steel does
    max_metal_hu: float = 1500.0  # never above this: bone and contrast stay below; dimmer steel lowers it
    level_tube_radius_mm: float = 6.0  # the steel of a track is looked for within this of it (> off-track 5 mm)
    box_margin_mm: float = 20.0  # search box = mapped tracks' bounding box + this
    min_length_mm: float = 10.0  # shorter metal is not a needle (a seed is 4.5 mm)
    max_radius_rms_mm: float = 1.5  # RMS distance of metal voxels from the axis; a needle is ~0.6 mm
    merge_angle_deg: float = 4.0  # collinear pieces of one needle: axes within this ...
    merge_offset_mm: float = 1.5  # ... each centroid within this of the other's line ...
    merge_gap_mm: float = 3.0  # ... and at most this far apart along it (a partial-volume break is short)
    max_gap_mm: float = 1.0  # a needle is one continuous steel tube: a longer dip on its axis (half-way from
    #                          the threshold to the tissue) means separate objects in a row (released seeds)
    track_radius_mm: float = 4.5  # first round gate: found line within this of the planned tip region
    track_check_back_mm: float = 15.0  # the second point of the tip region: this far back from the tip
    far_radius_mm: float = 20.0  # second round gate ("far off track")
    max_angle_deg: float = 30.0  # a found needle more tilted than this from its plan is not that needle
    min_ridge_fraction: float = 0.25  # see ``_candidates``: bone lines just above the threshold are not steel
    rescue_radius_mm: float = 2.0  # a planned needle left unmatched takes the metal within this of its track
    profile_step_mm: float = 0.1
    plateau_window_mm: tuple[float, float] = (-12.0, -3.0)  # relative to the rough tip, along the axis
    beyond_window_mm: tuple[float, float] = (3.0, 8.0)
    # The tip bias of a clipped end (``metal_appearance.clipped_end_bias``) uses the blur measured on this
    # scan's needles (``cross_section_sigma``). This sigma is used only when no found line lies near the axial
    # plane to measure it on (a 0.8 mm FWHM soft-tissue kernel with 0.7 mm pixels).
    fallback_sigma_mm: float = 0.45
    # axis refit on every voxel within this radius of the first axis, weighted by HU above a floor a fifth of
    # the way from the tissue to the metal threshold (both measured on the scan): the needle's partial-volume
    # halo says where it lies within a thick slice, the clipped core does not
    refit_radius_mm: float = 2.5
    refit_floor_fraction: float = 0.2
    # A needle within ~6 degrees of the axial plane lies across one or two thick slices. Which slices its
    # steel lights along its length bounds its z at each point (inside one slice: at least a radius from the
    # slice faces less the entry depth; in two: within a radius less that depth of the face between them);
    # the line through the middle of those bounds (a small linear programme) places it better than the clipped
    # voxels' centroid can. The entry depth (how far steel must reach into a slice to light it above the
    # threshold) is computed from the threshold's share of the brightest full-rod contrast measured on the
    # scan (``metal_appearance.slice_entry_depth_mm``).
    slice_fit_max_uz: float = 0.1
    needle_diameter_mm: float = 1.27  # 18G
    # The slice profile is Gaussian-like when the neighbours of a slice holding a rod still see more than this
    # share of its signal (a box profile gives them ~0; a Gaussian with FWHM = thickness 6 % or more)
    gaussian_profile_share: float = 0.03


@dataclass
class FoundNeedle:
    """A metal line in the intraop CT (LPS mm). ``axis`` points from the visible shaft towards the tip."""

    tip_mm: np.ndarray
    axis: np.ndarray
    shaft_end_mm: np.ndarray  # the other visible end
    visible_length_mm: float
    radius_rms_mm: float
    n_voxels: int
    plateau_hu: float
    background_hu: float
    half_crossing_mm: np.ndarray  # uncorrected half-max point
    centroid_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    tip_sd_mm: float = float("nan")  # standard error of tip_mm (mm, 3D): how sure the tip is

    def to_json(self) -> dict:
        return {"tip_mm": _r(self.tip_mm), "axis": _r(self.axis, 5), "shaft_end_mm": _r(self.shaft_end_mm),
                "visible_length_mm": round(self.visible_length_mm, 2), "radius_rms_mm": round(self.radius_rms_mm, 3),
                "plateau_hu": round(self.plateau_hu, 1), "background_hu": round(self.background_hu, 1),
                "tip_sd_mm": round(self.tip_sd_mm, 3) if np.isfinite(self.tip_sd_mm) else None}


@dataclass
class NeedleMatch:
    """A planned needle (mapped into the intraop frame) and what was found for it."""

    needle_id: str
    planned_entry_mm: np.ndarray
    planned_tip_mm: np.ndarray
    found: FoundNeedle | None
    far_off_track: bool = False
    track_distance_mm: float = float("nan")  # distance of the found line from the planned tip region

    @property
    def is_found(self) -> bool:
        return self.found is not None


@dataclass
class NeedleSearch:
    matches: list[NeedleMatch]
    unexpected: list[FoundNeedle]  # metal lines matched to no planned needle
    seconds: float
    settings: dict


def planned_in_intraop(plan, registration) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The plan's needles ``(id, entry_mm, tip_mm)`` mapped from pre-plan LPS to intraop LPS."""
    out = []
    for n in plan.needles:
        e, t = registration.map_fixed_to_moving(np.stack([n.entry_mm, n.tip_mm]))
        out.append((n.id, e, t))
    return out


def find_needles(ct: Volume, planned, settings: NeedleFindingSettings | None = None) -> NeedleSearch:
    """Find the needles of ``planned`` [(id, entry_mm, tip_mm) in ``ct``'s LPS] in the intraop ``ct``."""
    s = settings or NeedleFindingSettings()
    t0 = time.perf_counter()
    ids = [p[0] for p in planned]
    entries = np.array([p[1] for p in planned], dtype=float).reshape(-1, 3)
    tips = np.array([p[2] for p in planned], dtype=float).reshape(-1, 3)
    units = (tips - entries) / np.linalg.norm(tips - entries, axis=1, keepdims=True)
    mean_dir = units.sum(0)
    mean_dir = mean_dir / np.linalg.norm(mean_dir) if np.linalg.norm(mean_dir) > 0 else np.array([0, 0, 1.0])

    sub, offset = _box(ct, np.vstack([entries, tips]), s.box_margin_mm)
    look = _look(ct, sub, offset, list(zip(entries, tips)), s)
    candidates = _candidates(ct, sub, offset, s, look, mean_dir, tracks=list(zip(tips, units)))
    look = _measure_blur(ct, candidates, look, s)
    candidates = [_slice_fit(ct, p, s, look) for p in candidates]

    matches = [NeedleMatch(i, e, t, None) for i, e, t in zip(ids, entries, tips)]
    free = set(range(len(candidates)))
    for gate, far in ((s.track_radius_mm, False), (s.far_radius_mm, True)):
        todo = [m for m in range(len(matches)) if matches[m].found is None]
        cand = sorted(free)
        if not todo or not cand:
            break
        cost = np.full((len(todo), len(cand)), np.inf)
        for a, m in enumerate(todo):
            for b, c in enumerate(cand):
                cost[a, b] = _track_cost(entries[m], tips[m], units[m], candidates[c], s)
        for a, b in _assign(cost, gate):
            m, c = todo[a], cand[b]
            cn = candidates[c]
            if np.dot(cn["axis"], units[m]) < 0:  # orient along this planned needle
                cn = _flip(cn)
            matches[m].found = _finish(ct, cn, s, look)
            matches[m].far_off_track = far
            matches[m].track_distance_mm = float(cost[a, b])
            free.discard(c)
    taken = [candidates[c] for c in range(len(candidates)) if c not in free]
    for m in matches:
        if m.found is None:  # never "not found" while steel lies along the planned track
            cn = _rescue(ct, sub, offset, m.planned_entry_mm, m.planned_tip_mm, taken, s, look)
            if cn is not None:
                m.found = _finish(ct, cn, s, look)
                m.track_distance_mm = _track_cost(m.planned_entry_mm, m.planned_tip_mm, units[ids.index(m.needle_id)],
                                                  cn, s)
                taken.append(cn)
    # a piece lying on a matched needle's line (its hub in air, broken off by partial volume) is that needle
    unexpected = [_finish(ct, candidates[c], s, look) for c in sorted(free)
                  if not any(_collinear(candidates[c], q, s) for q in taken)]
    used = {**asdict(s), "metal_hu": look.metal_hu, "appearance": look.to_json()}
    return NeedleSearch(matches, unexpected, time.perf_counter() - t0, used)


@dataclass(frozen=True)
class _Look:
    """How the metal looks in this scan (``metal_appearance``): the levels, blur and slice geometry used."""

    metal_hu: float
    tissue_hu: float
    clip_hu: float | None
    top_hu: float  # the clip, or the brightest voxel of the box: weights saturate here
    refit_floor_hu: float
    thickness_mm: float
    sigma_mm: float | None = None  # in-plane blur of a steel end (None until measured)
    full_contrast_hu: float | None = None  # brightest full-rod contrast (unclipped amplitude)
    weakest_line_hu: float | None = None
    slice_profile: str = "box"  # "box", "gaussian" (the neighbouring slices' share of a rod's signal) or
    #                             "unknown" (slices too thin for a rod to fit inside one: no slice fit then)
    neighbour_share: float | None = None

    def to_json(self) -> dict:
        r = (lambda v, n=1: None if v is None else round(float(v), n))
        return {"metal_hu": r(self.metal_hu), "tissue_hu": r(self.tissue_hu), "clip_hu": r(self.clip_hu),
                "weakest_line_hu": r(self.weakest_line_hu), "sigma_mm": r(self.sigma_mm, 3),
                "full_contrast_hu": r(self.full_contrast_hu), "slice_thickness_mm": r(self.thickness_mm, 3),
                "slice_profile": self.slice_profile, "neighbour_share": r(self.neighbour_share, 3)}


def _look(ct: Volume, sub: np.ndarray, offset, tracks, s: NeedleFindingSettings) -> _Look:
    lv = estimate_levels(ct, sub, offset, tracks, tube_radius_mm=s.level_tube_radius_mm,
                         min_metal_hu=s.min_metal_hu, max_metal_hu=s.max_metal_hu)
    metal = lv.metal_hu if s.metal_hu is None else float(s.metal_hu)
    top = lv.clip_hu if lv.clip_hu is not None else max(float(sub.max()) if sub.size else metal, metal + 1.0)
    thickness = float(ct.meta.get("slice_thickness_mm") or ct.spacing_mm[2]) if ct.meta else float(ct.spacing_mm[2])
    return _Look(metal, lv.tissue_hu, lv.clip_hu, top, lv.tissue_hu + s.refit_floor_fraction * (metal - lv.tissue_hu),
                 thickness, weakest_line_hu=lv.weakest_line_hu)


def _measure_blur(ct: Volume, candidates, look: _Look, s: NeedleFindingSettings) -> _Look:
    """The in-plane blur and the full-rod contrast, measured across the candidate lines."""
    full, share, width = full_rod_contrast(ct, candidates, look.clip_hu)
    if width is not None:  # unclipped cuts: their width, less the rod's own (a disc edge-on: D^2 / 16)
        sigma, amp = float(np.sqrt(max(width ** 2 - s.needle_diameter_mm ** 2 / 16.0, 0.04))), None
    else:  # every cut clipped: clipped Gaussians fitted across the lines
        sigma, amp = cross_section_sigma(ct, candidates, look.clip_hu, s.needle_diameter_mm, want_amplitude=True)
    # the neighbours' share tells the profile only where a rod fits inside one slice (thick slices)
    thick = min(float(ct.spacing_mm[2]), look.thickness_mm) >= 1.5 * s.needle_diameter_mm
    profile = ("gaussian" if share > s.gaussian_profile_share else "box") if thick and share is not None else "unknown"
    return replace(look, sigma_mm=sigma if sigma is not None else s.fallback_sigma_mm,
                   full_contrast_hu=full if full is not None else amp, slice_profile=profile,
                   neighbour_share=share)


# --- candidates --------------------------------------------------------------------------------------------


def _box(ct: Volume, points_mm: np.ndarray, margin_mm: float):
    """The sub-array (view, (k, j, i)) covering the points + margin, and its (i, j, k) offset."""
    lo, hi = voxel_box(ct, points_mm, margin_mm)
    return ct.array[box_slices(lo, hi)], lo


def _candidates(ct: Volume, sub: np.ndarray, offset: np.ndarray, s: NeedleFindingSettings, look: _Look, mean_dir,
                tracks=()) -> list[dict]:
    """Every metal line in the box (before any matching): components, split and merged, refitted."""
    from scipy import ndimage

    metal = sub > look.metal_hu
    labels, n = ndimage.label(metal, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return []
    kk, jj, ii = np.nonzero(labels)  # numpy (k, j, i) -> ijk below
    lab = labels[kk, jj, ii]
    w = np.minimum(sub[kk, jj, ii].astype(np.float64), look.top_hu) - look.metal_hu + 1.0
    pts = ct.ijk_to_lps(np.stack([ii + offset[0], jj + offset[1], kk + offset[2]], axis=1))
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(1, n + 2))
    pieces = []
    for c in range(n):
        idx = order[bounds[c]:bounds[c + 1]]
        if len(idx) < 3:
            continue
        pieces.append(_fit(pts[idx], w[idx]))
    pieces = [q for p in pieces for q in ([p] if p["radius"] <= s.max_radius_rms_mm
                                          else (_split_by_tracks(p, s, tracks) or _split_lines(p, s)))]
    pieces = _merge(pieces, s)
    out = []
    # steel, not bone: a line's ridge (median over 2 mm bins of its brightest voxel) must reach a quarter of the
    # way from the threshold to the dimmest steel along the planned tracks (both measured on this scan)
    weakest = look.weakest_line_hu if look.weakest_line_hu is not None else look.metal_hu
    min_ridge = look.metal_hu + s.min_ridge_fraction * max(weakest - look.metal_hu, 0.0)
    for p in pieces:
        if p["length"] < s.min_length_mm or p["radius"] > s.max_radius_rms_mm or _ridge_hu(p, look) < min_ridge:
            continue
        p = _refit(ct, sub, offset, p, s, look)
        # a gap is a dip half-way from the threshold to the tissue: partial volume between slices and pixels
        # dims a dim needle's ridge towards the threshold, the space between two seeds falls to the tissue
        if _longest_gap_mm(ct, p, 0.5 * (look.metal_hu + look.tissue_hu)) > s.max_gap_mm:
            continue
        if np.dot(p["axis"], mean_dir) < 0:
            p = _flip(p)
        out.append(p)
    return out


def _ridge_hu(p: dict, look: _Look, bin_mm: float = 2.0) -> float:
    """Median over 2 mm bins along the line of its brightest metal voxel (HU, saturating at ``top_hu``)."""
    t = (p["pts"] - p["centroid"]) @ p["axis"]
    b = ((t - t.min()) // bin_mm).astype(int)
    peak = np.full(b.max() + 1, -np.inf)
    np.maximum.at(peak, b, p["w"])
    return float(np.median(peak[np.isfinite(peak)])) + look.metal_hu - 1.0


def _fit(pts: np.ndarray, w: np.ndarray) -> dict:
    """Weighted PCA line of metal voxels: centroid, unit axis, extent along it, RMS radius."""
    c = (pts * w[:, None]).sum(0) / w.sum()
    d = pts - c
    cov = (d * w[:, None]).T @ d / w.sum()
    vals, vecs = np.linalg.eigh(cov)
    axis = vecs[:, 2]
    t = d @ axis
    perp = d - t[:, None] * axis
    radius = float(np.sqrt((w * (perp ** 2).sum(1)).sum() / w.sum()))
    return {"pts": pts, "w": w, "centroid": c, "axis": axis, "t0": float(t.min()), "t1": float(t.max()),
            "length": float(t.max() - t.min()), "radius": radius}


def _perp_distance(pts: np.ndarray, point: np.ndarray, unit: np.ndarray) -> np.ndarray:
    d = pts - point
    return np.linalg.norm(d - np.outer(d @ unit, unit), axis=1)


def _split_by_tracks(p: dict, s: NeedleFindingSettings, tracks) -> list[dict]:
    """A component that is many needles (a template row lying in the same thick slices, bridged by bloom and
    streaks) split along the planned tracks that pass through it: each voxel goes to the nearest track's line,
    then lines are refitted and voxels reassigned until stable. Lines too thick or too short are dropped;
    a needle far from every track is left to ``_split_lines``."""
    pts, w = p["pts"], p["w"]
    near = [(np.asarray(e, float), np.asarray(u, float)) for e, u in tracks
            if (_perp_distance(pts, np.asarray(e, float), np.asarray(u, float)) < s.track_radius_mm).sum() >= 3]
    if len(near) < 2:
        return []
    label = np.stack([_perp_distance(pts, e, u) for e, u in near]).argmin(0)
    lines = []
    for _ in range(10):
        groups = [c for c in range(len(near)) if (label == c).sum() >= 3]
        lines = [_fit(pts[label == c], w[label == c]) for c in groups]
        if not lines:
            return []
        new = np.stack([_perp_distance(pts, ln["centroid"], ln["axis"]) for ln in lines]).argmin(0)
        if len(lines) == len(near) and np.array_equal(new, label):
            break
        label = new
    return [ln for ln in lines if ln["radius"] <= s.max_radius_rms_mm and ln["t1"] - ln["t0"] >= s.min_length_mm]


def _split_lines(p: dict, s: NeedleFindingSettings, k_max: int = 3) -> list[dict]:
    """A thick component may be needles that touch (bloom bridges them in thick slices): try k lines."""
    pts, w = p["pts"], p["w"]
    if len(pts) < 20:
        return []
    for k in range(2, k_max + 1):
        # start: split along the second principal axis into k bands, then alternate assign / refit
        d = pts - p["centroid"]
        cov = (d * w[:, None]).T @ d / w.sum()
        pc2 = np.linalg.eigh(cov)[1][:, 1]
        proj = d @ pc2
        edges = np.quantile(proj, np.linspace(0, 1, k + 1)[1:-1])
        label = np.searchsorted(edges, proj)
        for _ in range(10):
            lines = [_fit(pts[label == c], w[label == c]) for c in range(k) if (label == c).sum() >= 3]
            if len(lines) < k:
                break
            dist = np.stack([np.linalg.norm((pts - ln["centroid"]) - np.outer((pts - ln["centroid"]) @ ln["axis"],
                                                                             ln["axis"]), axis=1) for ln in lines])
            new = dist.argmin(0)
            if np.array_equal(new, label):
                break
            label = new
        if len(lines) == k and all(ln["radius"] <= s.max_radius_rms_mm for ln in lines):
            return lines
    return []


def _refit(ct: Volume, sub: np.ndarray, offset: np.ndarray, p: dict, s: NeedleFindingSettings, look: _Look) -> dict:
    """Refit the axis on all voxels near it (halo included), weighted by HU above the scan's refit floor."""
    r = s.refit_radius_mm
    ends = np.array([p["centroid"] + (p["t0"] - r) * p["axis"], p["centroid"] + (p["t1"] + r) * p["axis"]])
    lo, hi = index_box(ct.lps_to_ijk(ends) - offset, r / ct.spacing_mm, sub.shape[::-1])  # box inside ``sub``
    block = sub[box_slices(lo, hi)]
    kk, jj, ii = np.nonzero(block > look.refit_floor_hu)  # numpy (k, j, i) -> ijk
    if len(kk) < 3:
        return p
    pts = ct.ijk_to_lps(np.stack([ii + lo[0] + offset[0], jj + lo[1] + offset[1], kk + lo[2] + offset[2]], 1))
    d = pts - p["centroid"]
    t = d @ p["axis"]
    perp = np.linalg.norm(d - t[:, None] * p["axis"], axis=1)
    keep = (perp < r) & (t >= p["t0"] - 1.0) & (t <= p["t1"] + 1.0)
    if keep.sum() < 3:
        return p
    w = np.minimum(block[kk, jj, ii][keep].astype(np.float64), look.top_hu) - look.refit_floor_hu
    q = _fit(pts[keep], w)
    if np.dot(q["axis"], p["axis"]) < 0:
        q = _flip(q)
    # keep the metal extent (the halo runs a little beyond the steel) and the metal-only radius
    tm = (p["pts"] - q["centroid"]) @ q["axis"]
    q.update(pts=p["pts"], w=p["w"], t0=float(tm.min()), t1=float(tm.max()), length=float(tm.max() - tm.min()),
             radius=p["radius"])
    return q


def _slice_fit(ct: Volume, p: dict, s: NeedleFindingSettings, look: _Look) -> dict:
    """Refine z of a near-axial needle from which slices its steel lights (see the settings' comment)."""
    from scipy.optimize import linprog

    ax, c = p["axis"], p["centroid"]
    if abs(ax[2]) > s.slice_fit_max_uz or not ct.is_axis_aligned() or abs(ct.direction[2, 2]) < 0.99:
        return p
    if ct.spacing_mm[2] < 1.5 * s.needle_diameter_mm:  # thin slices: the voxels already place it well
        return p
    r = 0.5 * s.needle_diameter_mm
    # how deep steel must reach into a slice to light it above the threshold (see the settings' comment)
    contrast = look.full_contrast_hu or (look.top_hu - look.tissue_hu)
    d = slice_entry_depth_mm((look.metal_hu - look.tissue_hu) / max(contrast, 1.0), r, look.thickness_mm,
                             look.slice_profile)
    half = 0.5 * float(ct.spacing_mm[2])
    nk, nj, ni = ct.array.shape
    rows = []
    for t in np.arange(p["t0"] + 2.0, p["t1"] - 3.0, 1.0):
        ijk = ct.lps_to_ijk(c + t * ax)
        i, j, k0 = (int(np.rint(v)) for v in ijk)
        if not (1 <= i < ni - 1 and 1 <= j < nj - 1 and 1 <= k0 < nk - 1):
            continue
        lit = [k for k in (k0 - 1, k0, k0 + 1) if ct.array[k, j - 1:j + 2, i - 1:i + 2].max() > look.metal_hu]
        if not lit or len(lit) > 2 or (len(lit) == 2 and lit[1] - lit[0] != 1):
            continue
        zk = [float(ct.ijk_to_lps([i, j, k])[2]) for k in lit]
        if len(lit) == 1:  # inside one slice: at least a radius (less the margin) from both faces
            lo, hi = zk[0] - half + r - d, zk[0] + half - r + d
        else:  # across the face between two slices: within a radius (less the margin) of it
            b = 0.5 * (zk[0] + zk[1])
            lo, hi = b - r + d, b + r - d
        rows.append((t, lo, hi))
    if len(rows) < 5:
        return p
    a = np.array(rows)
    ts, lo, hi = a[:, 0], a[:, 1], a[:, 2]
    # maximise the margin m:  lo + m <= z0 + beta t <= hi - m   (variables z0, beta, m)
    a_ub = np.vstack([np.column_stack([-np.ones_like(ts), -ts, np.ones_like(ts)]),
                      np.column_stack([np.ones_like(ts), ts, np.ones_like(ts)])])
    b_ub = np.concatenate([-lo, hi])
    zc = float(np.median(0.5 * (lo + hi)))
    res = linprog([0, 0, -1.0], A_ub=a_ub, b_ub=b_ub,
                  bounds=[(zc - 5.0, zc + 5.0), (-s.slice_fit_max_uz, s.slice_fit_max_uz), (-5.0, 5.0)])
    if not res.success or res.x[2] < -0.3:  # bounds that no line meets: leave the fit as it was
        return p
    # many lines share the best margin when the bounds say little about the slope: of those, take the one
    # closest to the first fit's slope (second programme, variables z0, beta, u >= |beta - beta0|)
    m = float(res.x[2]) - 0.02
    beta0 = float(ax[2])
    a2 = np.vstack([np.column_stack([-np.ones_like(ts), -ts, np.zeros_like(ts)]),
                    np.column_stack([np.ones_like(ts), ts, np.zeros_like(ts)]),
                    [[0, 1.0, -1.0], [0, -1.0, -1.0]]])
    b2 = np.concatenate([-lo - m, hi - m, [beta0, -beta0]])
    res2 = linprog([0, 0, 1.0], A_ub=a2, b_ub=b2,
                   bounds=[(zc - 5.0, zc + 5.0), (-s.slice_fit_max_uz, s.slice_fit_max_uz), (0, 1.0)])
    z0, beta = (float(res2.x[0]), float(res2.x[1])) if res2.success else (float(res.x[0]), float(res.x[1]))
    axis = np.array([ax[0], ax[1], beta])
    axis /= np.linalg.norm(axis)
    cen = np.array([c[0], c[1], z0])
    q = dict(p)
    tm = (p["pts"] - cen) @ axis
    q.update(axis=axis, centroid=cen, t0=float(tm.min()), t1=float(tm.max()), length=float(tm.max() - tm.min()),
             slice_fit_points=len(rows), slice_band_mm=2.0 * max(float(res.x[2]), 0.0) + 2.0 * d)
    return q


def _longest_gap_mm(ct: Volume, p: dict, metal_hu: float) -> float:
    """Longest run (mm) along the fitted axis, inside the metal's extent, where the CT is below ``metal_hu``."""
    from scipy import ndimage

    step = 0.25
    t = np.arange(p["t0"] + 1.0, p["t1"] - 1.0, step)
    if len(t) < 2:
        return 0.0
    # the fitted axis may pass between two thick slices or beside a thin needle: take the brightest of a
    # few points across it (never along it, where the gaps between seeds are)
    ax = p["axis"]
    w1 = np.cross(ax, [0.0, 0.0, 1.0])
    w1 = w1 / np.linalg.norm(w1) if np.linalg.norm(w1) > 1e-6 else np.array([1.0, 0, 0])
    w2 = np.cross(ax, w1)
    across = 0.5 * float(ct.spacing_mm[:2].max())
    thick = 0.5 * float(ct.spacing_mm[2])
    prof = np.full(len(t), -np.inf)
    for off in (0 * w1, across * w1, -across * w1, thick * w2, -thick * w2):
        ijk = ct.lps_to_ijk(p["centroid"] + off + t[:, None] * ax)
        v = ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest")
        prof = np.maximum(prof, v)
    low = prof < metal_hu
    if not low.any():
        return 0.0
    # lengths of runs of True
    edges = np.diff(np.concatenate([[0], low.view(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return float((ends - starts).max() * step)


def _flip(p: dict) -> dict:
    q = dict(p)
    q["axis"] = -p["axis"]
    q["t0"], q["t1"] = -p["t1"], -p["t0"]
    return q


def _line_distance(point, c, axis) -> float:
    d = np.asarray(point, float) - c
    return float(np.linalg.norm(d - np.dot(d, axis) * axis))


def _collinear(p: dict, q: dict, s: NeedleFindingSettings) -> bool:
    """Both ends of line ``p`` lie within ``merge_offset_mm`` of line ``q``, their axes within ``merge_angle_deg``."""
    if abs(np.dot(p["axis"], q["axis"])) < np.cos(np.radians(s.merge_angle_deg)):
        return False
    ends = [p["centroid"] + p["t0"] * p["axis"], p["centroid"] + p["t1"] * p["axis"]]
    return all(_line_distance(e, q["centroid"], q["axis"]) <= s.merge_offset_mm for e in ends)


def _merge(pieces: list[dict], s: NeedleFindingSettings) -> list[dict]:
    """Join collinear pieces of one needle (broken where partial volume dips below the threshold)."""
    cos_max = np.cos(np.radians(s.merge_angle_deg))
    merged = True
    while merged and len(pieces) > 1:
        merged = False
        for a in range(len(pieces)):
            for b in range(a + 1, len(pieces)):
                pa, pb = pieces[a], pieces[b]
                if abs(np.dot(pa["axis"], pb["axis"])) < cos_max:
                    continue
                if (_line_distance(pb["centroid"], pa["centroid"], pa["axis"]) > s.merge_offset_mm
                        or _line_distance(pa["centroid"], pb["centroid"], pb["axis"]) > s.merge_offset_mm):
                    continue
                # gap between the two extents along a's axis
                tb = (pb["pts"] - pa["centroid"]) @ pa["axis"]
                gap = max(tb.min() - pa["t1"], pa["t0"] - tb.max(), 0.0)
                if gap > s.merge_gap_mm:
                    continue
                pieces[a] = _fit(np.vstack([pa["pts"], pb["pts"]]), np.concatenate([pa["w"], pb["w"]]))
                del pieces[b]
                merged = True
                break
            if merged:
                break
    return pieces


# --- matching ----------------------------------------------------------------------------------------------


def _track_cost(entry, tip, unit, cand: dict, s: NeedleFindingSettings) -> float:
    """How far the candidate line runs from the planned tip region (mm); inf when it cannot be this needle."""
    if abs(np.dot(cand["axis"], unit)) < np.cos(np.radians(s.max_angle_deg)):
        return np.inf
    c, ax = cand["centroid"], cand["axis"]
    # the candidate must reach the tip region: its visible extent overlaps [tip - back - 10, tip + 15] in depth
    sign = 1.0 if np.dot(ax, unit) >= 0 else -1.0
    ends = np.array([c + cand["t0"] * ax, c + cand["t1"] * ax])
    depth = (ends - tip) @ unit
    lo, hi = depth.min(), depth.max()
    if hi < -(s.track_check_back_mm + 10.0) or lo > 15.0:
        return np.inf
    del sign
    back = tip - s.track_check_back_mm * unit
    return max(_line_distance(tip, c, ax), _line_distance(back, c, ax))


def _assign(cost: np.ndarray, gate: float) -> list[tuple[int, int]]:
    """Unique assignment minimising the total cost; pairs above the gate are not made."""
    from scipy.optimize import linear_sum_assignment

    big = 1e6
    c = np.where(np.isfinite(cost) & (cost <= gate), cost, big)
    rows, cols = linear_sum_assignment(c)
    return [(r, k) for r, k in zip(rows, cols) if c[r, k] < big]


# --- the tip -----------------------------------------------------------------------------------------------


def _finish(ct: Volume, cand: dict, s: NeedleFindingSettings, look: _Look) -> FoundNeedle:
    """Locate the tip on the candidate's axis: the half-max crossing of the intensity profile less the bias of
    a clipped, blurred end (``metal_appearance.clipped_end_bias``, from this scan), and its standard error."""
    from scipy import ndimage

    c, ax = cand["centroid"], cand["axis"]
    rough = cand["t1"]
    lo = rough + s.plateau_window_mm[0] - 2.0
    hi = rough + s.beyond_window_mm[1] + 2.0
    t = np.arange(lo, hi + 1e-9, s.profile_step_mm)
    pts = c + t[:, None] * ax
    ijk = ct.lps_to_ijk(pts)
    prof = ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest")
    in_plateau = (t >= rough + s.plateau_window_mm[0]) & (t <= rough + s.plateau_window_mm[1])
    in_beyond = (t >= rough + s.beyond_window_mm[0]) & (t <= rough + s.beyond_window_mm[1])
    plateau = float(np.median(prof[in_plateau])) if in_plateau.any() else float(prof.max())
    beyond = float(np.median(prof[in_beyond])) if in_beyond.any() else float(prof.min())
    t_half = _half_crossing(t, prof, 0.5 * (plateau + beyond), rough)
    # blur along the axis: the in-plane edge blur for the in-plane part, the slice profile for the rest
    uz2 = float(ax[2]) ** 2
    sigma_ip = look.sigma_mm or s.fallback_sigma_mm
    sigma = float(np.sqrt((1.0 - uz2) * sigma_ip ** 2 + uz2 * (look.thickness_mm ** 2 / 12.0 + sigma_ip ** 2)))
    contrast = look.full_contrast_hu
    if contrast is not None and abs(float(ax[2])) < s.slice_fit_max_uz:  # lying along the slices: partial volume
        kz = float(ct.lps_to_ijk(c + (t_half - 3.0) * ax)[2])
        contrast = axis_contrast(contrast, kz - np.floor(kz), look.thickness_mm, float(ct.spacing_mm[2]),
                                 0.5 * s.needle_diameter_mm)
    # clipped where any of the plateau reaches the clip (the median may sit a little below it)
    reaches = look.clip_hu is not None and in_plateau.any() and prof[in_plateau].max() >= 0.97 * look.clip_hu
    bias, sd_along = clipped_end_bias(plateau, beyond, look.clip_hu if reaches else None, contrast, sigma,
                                      noise_hu=float(np.std(prof[in_beyond])) if in_beyond.sum() > 2 else 20.0)
    t_tip = t_half - bias
    # the bias rests on the measured blur and contrast: count half of it as uncertain
    sd_along = float(np.hypot(sd_along, 0.5 * bias))
    return FoundNeedle(
        tip_mm=c + t_tip * ax, axis=ax.copy(), shaft_end_mm=c + cand["t0"] * ax,
        visible_length_mm=float(t_tip - cand["t0"]), radius_rms_mm=cand["radius"], n_voxels=len(cand["w"]),
        plateau_hu=plateau, background_hu=beyond, half_crossing_mm=c + t_half * ax, centroid_mm=c.copy(),
        tip_sd_mm=_tip_sd(ct, cand, sd_along, look))


def _half_crossing(t: np.ndarray, prof: np.ndarray, half: float, rough: float) -> float:
    """Where the profile last falls through ``half``, interpolated between samples."""
    above = np.nonzero(prof >= half)[0]
    if len(above) == 0:
        return rough
    i = int(above.max())
    if i + 1 < len(t) and prof[i] != prof[i + 1]:
        return float(t[i] + (prof[i] - half) / (prof[i] - prof[i + 1]) * (t[i + 1] - t[i]))
    return float(t[i])


def _tip_sd(ct: Volume, cand: dict, sd_along: float, look: _Look) -> float:
    """Standard error (mm) of the tip: along the axis from the edge fit; across it, the through-slice
    placement. A needle placed by the slice fit is known within the band of z its lit slices allow (uniform:
    width / sqrt 12); otherwise the slice quantisation averaged over the slices the needle crosses; the
    in-plane placement of a line of many voxels adds little (its RMS radius over the root of its length)."""
    dz = float(ct.spacing_mm[2])
    if "slice_band_mm" in cand:
        sd_z = cand["slice_band_mm"] / np.sqrt(12.0)
    else:
        crossed = max(1.0, abs(float(cand["axis"][2])) * cand["length"] / dz)
        sd_z = max(dz, look.thickness_mm) / np.sqrt(12.0) / np.sqrt(crossed)
    sd_xy = cand["radius"] / np.sqrt(max(cand["length"], 1.0))
    sd_along = sd_along if np.isfinite(sd_along) else look.sigma_mm or 0.5
    return float(np.sqrt(sd_along ** 2 + sd_z ** 2 + sd_xy ** 2))


def _rescue(ct: Volume, sub: np.ndarray, offset, entry, tip, taken, s: NeedleFindingSettings, look: _Look):
    """A line for a planned needle left unmatched from the metal within ``rescue_radius_mm`` of its track
    (steel the component analysis dropped: too short, broken, fused with other metal), unless that metal
    belongs to a line already matched. None when the track carries no line."""
    unit = (tip - entry) / np.linalg.norm(tip - entry)
    lo, hi = voxel_box(ct, np.stack([entry, tip]), s.rescue_radius_mm + 2.0)
    lo, hi = np.maximum(lo - offset, 0), np.minimum(hi - offset, np.array(sub.shape[::-1]))
    block = sub[box_slices(lo, hi)]
    kk, jj, ii = np.nonzero(block > look.metal_hu)  # numpy (k, j, i) -> ijk
    if len(kk) < 3:
        return None
    pts = ct.ijk_to_lps(np.stack([ii + lo[0] + offset[0], jj + lo[1] + offset[1], kk + lo[2] + offset[2]], 1))
    keep = _perp_distance(pts, tip, unit) < s.rescue_radius_mm
    for q in taken:
        keep &= _perp_distance(pts, q["centroid"], q["axis"]) > s.rescue_radius_mm
    if keep.sum() < 3:
        return None
    vals = block[kk, jj, ii][keep].astype(np.float64)
    p = _fit(pts[keep], np.minimum(vals, look.top_hu) - look.metal_hu + 1.0)
    if p["length"] < s.min_length_mm or abs(np.dot(p["axis"], unit)) < np.cos(np.radians(s.max_angle_deg)):
        return None
    p = _refit(ct, sub, offset, p, s, look)
    if np.dot(p["axis"], unit) < 0:
        p = _flip(p)
    return _slice_fit(ct, p, s, look)


def _r(v, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in v]
