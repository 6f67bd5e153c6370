"""How metal looks in the scan in hand: levels, clipping, blur and slice profile, measured from the scan itself.

Frame: the CT's LPS (mm); HU for levels. Used by the needle finder (``needle_finding``) so its thresholds and
tip model come from this scan, not from constants fitted to one simulator or one scanner:

- ``clip_hu``: the scanner's hard maximum when metal saturates (a plateau of many voxels at exactly the
  array's maximum: 3071 for 12-bit storage, 4095, or any other); None when nothing is clipped.
- ``tissue_hu``: the median of the search region inside the body (above -500 HU: the needles' hubs stand in
  air, which must not pull the level down).
- ``weakest_line_hu``: the dimmest stretch of steel along the planned tracks (the 20th percentile, over
  2 mm bins along a track, of the brightest voxel within ``tube_radius_mm`` of it), over the tracks that
  carry a line at all. A needle straddling two thick slices, or dimmed by a narrow slice profile, is this dim.
- ``metal_hu``: the threshold for metal, half-way between tissue and the weakest line (so every needle's
  whole length is above it), bounded by ``[min_metal_hu, max_metal_hu]``.
- the blur of a steel edge in the axial plane (``full_rod_contrast``: the width of unclipped cuts across the
  lines found; ``cross_section_sigma``: clipped Gaussians fitted across them when every cut is clipped),
  less the rod's own width; the unclipped contrast of a rod lying in one slice (the partial volume of
  neighbouring slices) and, on the axis of a rod lying along the slices, the share of it the axis samples
  (``axis_contrast``); whether the slice profile is box-like or Gaussian (the neighbours' share).

``clipped_end_bias``: the half-max crossing of a clipped rod lies beyond its end by
sigma * Phi^-1(1 - half / amplitude), with the blur and the unclipped amplitude measured on the scan
(``cross_section_sigma``, ``full_rod_contrast``), so the tip bias follows from the scan, not a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.special import ndtri

__all__ = ["MetalLevels", "estimate_levels", "cross_section_sigma", "full_rod_contrast", "clipped_end_bias",
           "slice_entry_depth_mm", "disk_share", "axis_contrast"]


@dataclass(frozen=True)
class MetalLevels:
    clip_hu: float | None
    tissue_hu: float
    weakest_line_hu: float | None  # None: no line along any track
    metal_hu: float

    def to_json(self) -> dict:
        r = (lambda v: None if v is None else round(float(v), 1))
        return {"clip_hu": r(self.clip_hu), "tissue_hu": r(self.tissue_hu),
                "weakest_line_hu": r(self.weakest_line_hu), "metal_hu": r(self.metal_hu)}


def detect_clip(values: np.ndarray, min_voxels: int = 10, min_hu: float = 2000.0) -> float | None:
    """The array's maximum when at least ``min_voxels`` voxels sit exactly on it (a saturation plateau) and
    it is metal-bright; None otherwise (unclipped or extended-range storage)."""
    top = float(values.max()) if values.size else 0.0
    if top < min_hu:
        return None
    return top if int(np.count_nonzero(values >= top - 0.5)) >= min_voxels else None


def estimate_levels(ct, sub: np.ndarray, offset_ijk: np.ndarray, tracks, *, tube_radius_mm: float = 6.0,
                    floor_hu: float = 300.0, min_metal_hu: float = 350.0, max_metal_hu: float = 1500.0,
                    bin_mm: float = 2.0) -> MetalLevels:
    """Levels of the metal along the planned ``tracks`` [(entry_mm, tip_mm)] in ``sub`` (the search box of
    ``ct``, numpy (k, j, i), starting at index ``offset_ijk`` (i, j, k)). ``floor_hu``: brighter than any soft
    tissue with noise; a track whose bins stay below it carries no line (a needle not inserted)."""
    body = sub[sub > -500.0]
    tissue = float(np.median(body)) if body.size else float(np.median(sub))
    clip = detect_clip(sub)
    kk, jj, ii = np.nonzero(sub > floor_hu)  # numpy (k, j, i) -> ijk below
    weakest = []
    if len(kk):
        vals = sub[kk, jj, ii].astype(np.float64)
        pts = ct.ijk_to_lps(np.stack([ii + offset_ijk[0], jj + offset_ijk[1], kk + offset_ijk[2]], axis=1))
        for entry, tip in tracks:
            entry, tip = np.asarray(entry, float), np.asarray(tip, float)
            length = float(np.linalg.norm(tip - entry))
            u = (tip - entry) / length
            d = pts - entry
            t = d @ u
            near = (np.linalg.norm(d - np.outer(t, u), axis=1) < tube_radius_mm) & (t > 0) & (t < length - 3.0)
            if not near.any():
                continue
            nbins = max(1, int((length - 3.0) // bin_mm))
            b = np.minimum((t[near] // bin_mm).astype(int), nbins - 1)
            peak = np.full(nbins, -np.inf)
            np.maximum.at(peak, b, vals[near])
            # bins inside the body that the steel crosses: a needle lights most of its track
            lit = peak[np.isfinite(peak)]
            if len(lit) < 0.3 * nbins:
                continue
            weakest.append(float(np.percentile(lit, 20)))
    weak = min(weakest) if weakest else None
    metal = max_metal_hu if weak is None else float(np.clip(0.5 * (weak + tissue), min_metal_hu, max_metal_hu))
    return MetalLevels(clip, tissue, weak, metal)


def _gauss_clipped(x, r0, amp, sigma, bg, top):
    return bg + np.minimum(amp * np.exp(-0.5 * ((x - r0) / sigma) ** 2), top - bg)


def _fit_clipped_gaussian(r: np.ndarray, prof: np.ndarray, top: float) -> tuple[float, float] | None:
    """(amplitude HU, sigma mm) of ``bg + min(A exp(-(r - r0)^2 / 2 sigma^2), top - bg)`` fitted to a cut."""
    bg = float(np.median(np.concatenate([prof[:8], prof[-8:]])))
    amp0 = max(float(prof.max()) - bg, 1.0)
    # the core only (above a quarter of the peak): a wide blooming tail, where a scanner has one, leaves the
    # half-max crossings where the core puts them
    core = prof - bg >= 0.25 * amp0
    r, prof = r[core], prof[core]
    if len(r) < 5:
        return None
    try:
        fit = least_squares(lambda q: _gauss_clipped(r, q[0], q[1], q[2], bg, top) - prof,
                            [float(r[np.argmax(prof)]), amp0 * 1.5, 0.7], bounds=([-1.5, 1.0, 0.15], [1.5, 1e6, 3.0]))
    except ValueError:
        return None
    return (float(fit.x[1]), float(fit.x[2])) if fit.success else None


def cross_section_sigma(ct, lines, clip_hu: float | None, rod_diameter_mm: float, want_amplitude: bool = False,
                        max_lines: int = 6, step_mm: float = 0.1,
                        half_width_mm: float = 4.0) -> tuple[float | None, float | None]:
    """Blur (sigma, mm) of a steel edge in the axial plane, from the in-plane profile across the found lines
    (``lines``: dicts with ``centroid``, ``axis``, ``t0``, ``t1``, LPS mm). Each line's profiles (every 2 mm
    along it) are averaged and fitted with a clipped Gaussian; the rod's own width (a disc seen edge-on has
    variance D^2/16) is removed. Returns (sigma, the largest fitted amplitude: the unclipped contrast of a rod
    lying wholly inside a slice, only when ``want_amplitude``); (None, None) when no line lies near the axial
    plane to cut across. The ``max_lines`` longest lines suffice: the blur is one value for the scan."""
    r = np.arange(-half_width_mm, half_width_mm + 1e-9, step_mm)
    top = np.inf if clip_hu is None else float(clip_hu)
    sig, amps = [], []
    for p in sorted(lines, key=lambda q: -q["length"])[:max_lines]:
        ax = np.asarray(p["axis"], float)
        n = np.cross(ax, [0.0, 0.0, 1.0])
        if np.linalg.norm(n) < 0.7:  # steeper than ~45 degrees from the axial plane: no clean in-plane cut
            continue
        n /= np.linalg.norm(n)
        ts = np.arange(p["t0"] + 3.0, p["t1"] - 5.0, 2.0)
        if len(ts) < 3:
            continue
        pts = p["centroid"] + ts[:, None, None] * ax + r[None, :, None] * n
        ijk = ct.lps_to_ijk(pts.reshape(-1, 3))
        profs = ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, mode="nearest")
        profs = profs.reshape(len(ts), len(r))
        # the blur from the typical cut; the full-rod contrast from the cut carrying the most steel (the rod
        # lying wholly inside one slice there)
        excess = profs.sum(1)
        cuts = [(np.median(profs, axis=0), "sigma")]
        if want_amplitude:
            cuts.append((profs[int(np.argmax(excess))], "amp"))
        for prof, keep in cuts:
            fit = _fit_clipped_gaussian(r, prof, top)
            if fit is None:
                continue
            (sig if keep == "sigma" else amps).append(fit[1 if keep == "sigma" else 0])
    if not sig:
        return None, None
    s2 = float(np.median(sig)) ** 2 - rod_diameter_mm ** 2 / 16.0
    return float(np.sqrt(max(s2, 0.04))), (float(max(amps)) if amps else None)


def full_rod_contrast(ct, lines, clip_hu: float | None, half_width_mm: float = 3.0,
                      step_mm: float = 0.1) -> tuple[float | None, float | None, float | None]:
    """The peak contrast (HU above its surroundings) a rod lying wholly inside one slice would have, from the partial
    volume of neighbouring slices: across a line near the axial plane, the in-plane excess integrals of the
    slices it touches add up to the whole rod's (blur keeps the integral; only cuts with no clipped sample are
    used), and a slice's peak is its integral times the peak-to-integral ratio of the cut profile (measured on
    the same cuts). Also the slice profile's reach: the 10th percentile, over cuts, of the brighter neighbouring
    slice's share of the brightest slice's integral. A box profile leaves the neighbours dark wherever the rod
    lies inside one slice (share ~0); a Gaussian profile (FWHM = thickness) always lends them a few per cent.
    Third, the width of an unclipped cut as a Gaussian sigma (integral / (peak sqrt(2 pi))): the blur a steel
    edge sees, a wide blooming tail counted by its small share of the peak. (None, None, None) when no
    unclipped cut exists (then the caller falls back to the clipped-profile fit)."""
    r = np.arange(-half_width_mm, half_width_mm + 1e-9, step_mm)
    top = np.inf if clip_hu is None else 0.97 * float(clip_hu)
    nk = ct.array.shape[0]
    totals, ratios, shares = [], [], []
    for p in lines:
        ax = np.asarray(p["axis"], float)
        if abs(ax[2]) > 0.2:
            continue
        n = np.cross(ax, [0.0, 0.0, 1.0])
        n /= np.linalg.norm(n)
        ts = np.arange(p["t0"] + 3.0, p["t1"] - 5.0, 1.0)
        if len(ts) == 0:
            continue
        ijk = ct.lps_to_ijk(p["centroid"] + ts[:, None, None] * ax + r[None, :, None] * n)  # (t, r, 3)
        k0 = np.rint(ijk[:, :, 2].mean(1))
        ok = (k0 >= 1) & (k0 < nk - 1)
        if not ok.any():
            continue
        ijk, k0 = ijk[ok], k0[ok]
        # the three slices around the line, each sampled in plane only (integer k: no mixing across slices)
        cuts = np.stack([ndimage.map_coordinates(
            ct.array, [np.broadcast_to((k0 + dk)[:, None], ijk.shape[:2]).ravel(), ijk[:, :, 1].ravel(),
                       ijk[:, :, 0].ravel()], order=1, mode="nearest").reshape(ijk.shape[:2])
            for dk in (-1, 0, 1)], axis=1)  # (t, slice, r)
        clean = cuts.max(axis=(1, 2)) < top
        # each cut's own background (its ends): the hub of a needle lies in air, its shaft in tissue
        cuts = cuts - np.median(np.concatenate([cuts[:, :, :10], cuts[:, :, -10:]], axis=2), axis=2)[:, :, None]
        integ = np.clip(cuts[clean], 0.0, None).sum(2) * step_mm  # (t, slice)
        totals.extend(integ.sum(1).tolist())
        b = integ.argmax(1)
        big = integ[np.arange(len(b)), b]
        peak = cuts[clean][np.arange(len(b)), b].max(1)
        ratios.extend((peak[big > 0] / big[big > 0]).tolist())
        mid = (b == 1) & (big > 0)  # the rod mostly in the middle slice: how much do its neighbours see?
        shares.extend((np.maximum(integ[mid, 0], integ[mid, 2]) / big[mid]).tolist())
    if len(totals) < 5:
        return None, None, None
    share = float(np.percentile(shares, 10)) if len(shares) >= 5 else None
    rho = float(np.median(ratios))
    return float(np.percentile(totals, 75) * rho), share, float(1.0 / (rho * np.sqrt(2.0 * np.pi)))


def clipped_end_bias(plateau_hu: float, background_hu: float, clip_hu: float | None, full_contrast_hu: float | None,
                     sigma_mm: float, noise_hu: float) -> tuple[float, float]:
    """How far (mm) beyond a rod's end its half-max crossing lies, and the crossing's standard error (mm).

    Along the axis the end images as ``A * Phi((L - t) / sigma)`` above the background (a flat end blurred by
    the scan's PSF); half-way between the plateau and the background it crosses at L when nothing clips. When
    the plateau is the clip, the plateau is lower than A and the crossing lies beyond L by
    ``sigma * Phi^-1(1 - half / A)``, with A the unclipped contrast of the rod on the sampled line
    (``full_rod_contrast``, ``axis_contrast``) and half = (plateau - background) / 2. ``clip_hu`` None: the
    caller found no clipped sample on the plateau (no bias). The standard error is the noise over the edge's
    slope at the crossing."""
    half = 0.5 * (plateau_hu - background_hu)
    slope = max(half, 1.0) * 0.4 / sigma_mm  # (A phi(x) / sigma) at the crossing, phi(0) = 0.4 when unclipped
    if clip_hu is None or not full_contrast_hu or full_contrast_hu <= 2.0 * half:
        return 0.0, float(noise_hu / slope)
    q = 1.0 - half / full_contrast_hu
    bias = float(sigma_mm * ndtri(q))
    slope = full_contrast_hu * float(np.exp(-0.5 * ndtri(q) ** 2)) / np.sqrt(2 * np.pi) / sigma_mm
    return bias, float(noise_hu / slope)


def disk_share(lo_mm, hi_mm, radius_mm: float):
    """Share of a disc of ``radius_mm`` (centred at 0) lying between ``lo_mm`` and ``hi_mm`` along one axis."""
    def below(x):
        x = np.clip(np.asarray(x, float), -radius_mm, radius_mm)
        area = radius_mm ** 2 * np.arccos(-x / radius_mm) + x * np.sqrt(radius_mm ** 2 - x ** 2)
        return area / (np.pi * radius_mm ** 2)
    return below(hi_mm) - below(lo_mm)


def axis_contrast(full_contrast_hu: float, z_offset_slices: float, thickness_mm: float, spacing_mm: float,
                  radius_mm: float) -> float:
    """The unclipped contrast on a rod's axis line sampled by linear interpolation between slices, for a rod
    lying along the slices ``z_offset_slices`` (continuous index) from a slice centre: each slice sees the
    share of the rod's cross-section inside it (box profile) times the full-rod contrast, and the axis line
    mixes the two nearest slices. A rod straddling two thin slices has about half the full contrast there."""
    k0 = int(np.floor(z_offset_slices))
    out = 0.0
    for k in (k0, k0 + 1):
        w = 1.0 - abs(z_offset_slices - k)
        rel = (k - z_offset_slices) * spacing_mm  # this slice's centre relative to the rod's axis
        out += w * float(disk_share(rel - 0.5 * thickness_mm, rel + 0.5 * thickness_mm, radius_mm))
    return full_contrast_hu * out


def slice_entry_depth_mm(fraction: float, radius_mm: float, thickness_mm: float | None = None,
                         profile: str = "box") -> float:
    """How deep (mm) a rod of ``radius_mm`` lying along the slices must reach into a slice (past its face) for
    that slice to carry ``fraction`` of the contrast the rod has when centred in it: the depth at which a slice
    lights above a threshold that is ``fraction`` of the full-rod contrast.

    Box profile: the slice carries the circular segment inside it. Gaussian profile (FWHM = thickness): the
    slice sees the rod with its sensitivity at the rod's distance from the slice centre (the rod's own
    extent across z added in quadrature); the depth may then be negative (a neighbour lights before the steel
    reaches it)."""
    f = float(np.clip(fraction, 1e-6, 1.0))
    if profile == "gaussian" and thickness_mm:
        sz = np.hypot(thickness_mm / 2.3548, 0.5 * radius_mm)
        dist = sz * np.sqrt(-2.0 * np.log(f))  # rod centre to slice centre where the share falls to f
        return float(0.5 * thickness_mm + radius_mm - dist)
    d = np.linspace(0.0, 2.0 * radius_mm, 401)
    c = np.clip((radius_mm - d) / radius_mm, -1.0, 1.0)
    area = (radius_mm ** 2 * np.arccos(c) - (radius_mm - d) * np.sqrt(np.maximum(2 * radius_mm * d - d ** 2, 0.0)))
    return float(np.interp(f, area / (np.pi * radius_mm ** 2), d))
