"""Find the implanted I-125 seeds in a post-implant CT: each seed's centre and long axis (LPS mm).

Method (each step says why):

1. Threshold metal (``threshold_hu``) and label connected components (26-connectivity). A seed's
   titanium capsule and silver rod are far brighter than bone after any realistic blur.
2. Per component, an integration window (the component dilated by ~1.5 mm, never reaching into another
   component) and its local background. The *excess intensity integral* ``sum((HU - background) * dV)`` is
   preserved by the scanner blur and the slice profile, so it counts seeds even when they are smeared over
   two slices or fused into one blob.
3. The integral of one seed is calibrated in the same scan (robust median of the isolated components); the
   count per component is the rounded ratio. The expected count (delivery ledger or plan) only settles the
   ambiguous components (ratio near x.5), and a gross mismatch becomes a warning.
4. A component with more than one seed is split by a shape-constrained Gaussian mixture (EM): every
   mixture member has the covariance of one blurred 4.5 x 0.8 mm seed around its own axis, so two seeds side
   by side are not cut across their length as plain k-means would do. Several initialisations (along the
   blob's principal axis, across it, at the mapped planned positions) compete by likelihood.
5. Centre: the excess-weighted centroid of the seed's voxels (responsibility-weighted in a cluster). With
   thick slices (>= 2 mm) the z centre comes from fitting the known slice-sensitivity profile to the
   seed's per-slice sums, because the centroid of two or three samples of a 5 mm profile is biased.
6. Axis: principal direction of the weighted covariance. With thick slices the z extent is dominated by
   the slice profile, so the axis comes from the in-plane elongation (its tilt out of plane from how much
   shorter than 4.5 mm the seed looks in plane). A seed that lies mostly along z has no reliable in-plane
   direction: it takes the axis of the nearest planned needle (``axis_source == "needle"``) and says so.

Limits (measured by bench/bench_seed_finding.py): with a box slice profile a seed lying inside one slice
images the same wherever it sits in that slice, so z is known only to +-(T - seed z extent)/2 (0.85 mm for
in-plane seeds in 2.5 mm slices, 2.1 mm in 5 mm slices); the 0.5 mm centre goal holds in 3D for slices up to
~1.8 mm and in plane for any thickness. Clusters lying across 5 mm slices are the weakest case.

Calibrated on the scan in hand (issue #12, ``estimate_appearance``): after a first pass with the caller's
settings (else the ``FALLBACK_*`` constants), the in-plane blur, the slice profile and the thresholds are
measured on the isolated unclipped seeds and the blobs are measured again with them; a caller's explicit
setting wins, and ``SeedFindingResult.appearance`` records each value and where it came from.

All analysis runs in "image mm" (voxel index times spacing, index axes i, j, k); results are converted to
LPS once, at the end. Migration: a found seed more than ``migration_mm`` from every planned position.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares, linear_sum_assignment
from scipy.special import erf

from navigator.errors import InputError
from navigator.core.volume import Volume
from navigator.imaging.metal_appearance import detect_clip, disk_share

SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8

# Fallbacks (fitted to our simulator sim_a), used only when the scan has fewer than ``min_isolated_seeds``
# isolated seeds to measure them on, or (blur, profile) when most of its seeds clip; otherwise each is
# re-estimated from the scan in hand by ``estimate_appearance``, as its comment says.
FALLBACK_BLUR_SIGMA_MM = 0.35    # re-estimated: median Gaussian width across isolated unclipped in-plane seeds
FALLBACK_SLICE_PROFILE = "box"   # re-estimated: neighbouring slices' share of a seed vs box/Gaussian predictions
MAX_SEEDS_MIGRATED = 3  # a blob far from every planned seed holds at most this many (migrated seeds, a strand)
FALLBACK_THRESHOLD_HU = 700.0    # re-estimated: tissue + half the dimmest isolated seeds' contrast, bounded
FALLBACK_LOW_THRESHOLD_HU = 500.0   # re-estimated: tissue + 0.7 x (threshold - tissue), the fallbacks' ratio


@dataclass(frozen=True)
class SeedFindingSettings:
    """Every knob of the seed finder, named with its unit."""

    # What is measured on the scan in hand: one seed's excess-intensity integral (median of the isolated blobs,
    # ``_calibrate_unit``), the in-plane elongation of a seed on thick slices (``_elongation_scale``), each
    # blob's background (its shell), each core's split level (a fraction of its own peak) and, from the
    # brightest isolated seeds (``estimate_appearance``, issue #12), the in-plane blur, the slice profile and
    # the detection levels. A knob left None is estimated from the scan; a value given here wins over the
    # estimate (e.g. ``--slice-profile``). The ``FALLBACK_*`` constants serve only when the scan has too few
    # isolated seeds to measure them.
    threshold_hu: float | None = None       # a seed blob must reach this (None: from tissue level and seed peak)
    low_threshold_hu: float | None = None   # ...and extends down to this (hysteresis: keeps smeared 5 mm seeds whole)
    split_fraction: float = 0.5           # a blob splits into cores above this fraction of each core's own peak
    seed_length_mm: float = SEED_LENGTH_MM
    seed_diameter_mm: float = SEED_DIAMETER_MM
    window_mm: float = 1.5                # integration window: component dilated by this much
    scanner_blur_sigma_mm: float | None = None   # in-plane point-spread sigma besides the voxel size (None: measured)
    slice_profile: str | None = None      # "box" (slice averaged) or "gaussian" (FWHM = thickness); None: measured
    min_isolated_seeds: int = 5           # fewer isolated (unclipped, in-plane) seeds than this: the fallbacks serve
    gaussian_share_fraction: float = 0.5  # profile is Gaussian above this point between the box and Gaussian shares
    min_fraction_of_seed: float = 0.4     # a blob with less than this fraction of one seed's integral is noise
    max_seeds_per_blob: int = 12          # more than this in one blob: not seeds (bone, a clip, a wire)
    metal_hu: float = 2000.0              # an object this bright is metal (above cortical bone on any scanner)
    dim_fraction: float = 0.5             # with metal in the scan, a blob below this share of the brightest
                                          # peak is bone or calcification, unless it lies near a planned seed
    prior_radius_mm: float = 10.0         # "near a planned seed" (partial-volume seeds on thick slices)
    min_seed_integral_hu_mm3: float = 5000.0   # a 2.3 mm3 metal seed carries more excess HU x volume than this
    thick_slice_mm: float = 2.0           # slices at least this thick use the slice-profile z fit
    z_fit_reach_slices: float = 0.6       # the z fit moves a centre at most this many slices from its centroid
    z_fit_overlap_fraction: float = 0.05  # a neighbour with this share of a seed's footprint signal is fitted jointly
    migration_mm: float = 10.0            # found seed this far from every planned position: migrated
    em_iterations: int = 40


@dataclass(frozen=True)
class SeedAppearance:
    """How the seeds look in this scan and where each value the finder used came from: "scan" (measured on
    ``seeds_used`` isolated seeds), "setting" (given by the caller, which wins) or "fallback" (too few isolated
    seeds: the ``FALLBACK_*`` constant). ``neighbour_share``: the 10th percentile, over isolated in-plane seeds,
    of the brighter neighbouring slice's share of the seed's brightest slice; ``box_share``/``gaussian_share``:
    what each profile predicts for this slice spacing and thickness."""

    blur_sigma_mm: float
    blur_source: str
    slice_profile: str
    profile_source: str
    threshold_hu: float
    low_threshold_hu: float
    threshold_source: str
    seeds_used: int = 0
    blur_measured_mm: float | None = None
    neighbour_share: float | None = None
    box_share: float | None = None
    gaussian_share: float | None = None
    tissue_hu: float | None = None
    seed_peak_hu: float | None = None      # median peak of the isolated seeds (the clip when they saturate)
    dim_seed_peak_hu: float | None = None  # 5th percentile: the dimmest seeds the threshold must keep
    clip_hu: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in self.__dict__.items()}


@dataclass
class FoundSeed:
    """One seed: centre and unit long axis in LPS mm of the post-implant CT (axis sign arbitrary)."""

    position_mm: np.ndarray
    axis: np.ndarray
    axis_source: str          # "image" (from the seed's own shape) or "needle" (nearest planned needle)
    blob: int                 # index of the connected component it came from
    blob_seeds: int           # how many seeds that component held
    nearest_planned_mm: float | None = None

    def to_dict(self) -> dict:
        d = {"position_mm": [round(float(v), 3) for v in self.position_mm],
             "axis": [round(float(v), 4) for v in self.axis],
             "axis_source": self.axis_source, "blob": int(self.blob), "blob_seeds": int(self.blob_seeds)}
        if self.nearest_planned_mm is not None:
            d["nearest_planned_mm"] = round(float(self.nearest_planned_mm), 2)
        return d


@dataclass
class SeedFindingResult:
    seeds: list[FoundSeed]
    expected: int | None
    blobs: int
    seed_integral_hu_cc: float          # calibrated excess-intensity integral of one seed
    warnings: list[str] = field(default_factory=list)
    migrated: list[dict] = field(default_factory=list)
    missing: int | None = None
    unmatched_planned: list[int] = field(default_factory=list)   # indices of planned seeds with no seed near
    seconds: float = 0.0
    appearance: SeedAppearance | None = None   # blur, slice profile and levels used, and where each came from

    @property
    def positions_mm(self) -> np.ndarray:
        return np.array([s.position_mm for s in self.seeds], dtype=float).reshape(-1, 3)

    @property
    def axes(self) -> np.ndarray:
        return np.array([s.axis for s in self.seeds], dtype=float).reshape(-1, 3)


# --------------------------------------------------------------------------------------------------------
def find_seeds(ct: Volume, expected: int | None = None, planned_mm=None, planned_axes=None,
               settings: SeedFindingSettings = SeedFindingSettings(), roi_mask: np.ndarray | None = None
               ) -> SeedFindingResult:
    """Find the seeds in ``ct`` (HU). ``planned_mm``/``planned_axes`` (N, 3): the planned seeds mapped into
    this CT's LPS frame (a prior for splitting clusters, the fallback axis, migration). ``roi_mask``
    (array-shaped bool): search only there (e.g. the body). Raises InputError when no seed is found."""
    t0 = time.perf_counter()
    spacing = np.asarray(ct.spacing_mm, dtype=float)            # (si, sj, sk)
    thickness = float(ct.meta.get("slice_thickness_mm") or spacing[2])
    planned_img, planned_axes_img = _planned_in_image(ct, spacing, planned_mm, planned_axes)
    blobs, n_blobs, unit, appearance, s = _calibrated_blobs(ct, roi_mask, spacing, thickness, settings, expected,
                                                            planned_img)
    thick = spacing[2] >= s.thick_slice_mm or thickness >= s.thick_slice_mm
    keep, warnings = _seed_blobs(ct, blobs, n_blobs, unit, spacing, s, expected, _psf_var(spacing, thickness, s))
    seeds = _seeds_of(keep, ct, spacing, thickness, thick, planned_img, planned_axes_img, s, appearance.clip_hu)
    warnings += _count_warnings(seeds, len(keep), spacing, expected)
    result = SeedFindingResult(seeds=seeds, expected=expected, blobs=len(keep), seed_integral_hu_cc=unit / 1000.0,
                               warnings=warnings, appearance=appearance)
    if planned_mm is not None and len(planned_mm):
        _migration(result, np.asarray(planned_mm, float).reshape(-1, 3), s)
    if expected is not None:
        result.missing = max(0, int(expected) - len(seeds))
    result.seconds = time.perf_counter() - t0
    return result


def _planned_in_image(ct: Volume, spacing: np.ndarray, planned_mm, planned_axes):
    """The planned seeds and axes in image-mm axes (i, j, k), or None."""
    if planned_mm is None or not len(planned_mm):
        return None, None
    planned_img = ct.lps_to_ijk(np.asarray(planned_mm, float).reshape(-1, 3)) * spacing
    planned_axes_img = None
    if planned_axes is not None:
        planned_axes_img = np.asarray(planned_axes, float).reshape(-1, 3) @ ct.direction
    return planned_img, planned_axes_img


def _calibrated_blobs(ct: Volume, roi_mask, spacing: np.ndarray, thickness: float, settings: SeedFindingSettings,
                      expected, planned_img=None):
    """The bright blobs and one seed's excess integral, measured with the settings the scan's own appearance
    gives: a first pass with the caller's values, else the fallbacks; then the appearance is measured on this
    scan's isolated seeds and, where it differs from what the first pass used, the blobs are measured again.
    Returns ``(blobs, n_blobs, unit, appearance, settings used)``."""
    s = replace(settings,
                threshold_hu=_given(settings.threshold_hu, FALLBACK_THRESHOLD_HU),
                low_threshold_hu=_given(settings.low_threshold_hu, FALLBACK_LOW_THRESHOLD_HU),
                scanner_blur_sigma_mm=_given(settings.scanner_blur_sigma_mm, FALLBACK_BLUR_SIGMA_MM),
                slice_profile=_given(settings.slice_profile, FALLBACK_SLICE_PROFILE))
    blobs, n_blobs = _detect(ct, roi_mask, spacing, thickness, s)
    blobs, calib = _seed_candidates(blobs, planned_img, s)
    unit = _calibrate_unit([b["integral"] for b in calib], expected)
    appearance = estimate_appearance(ct.array, blobs, unit, spacing, thickness, settings, s)
    s_est = replace(s, threshold_hu=appearance.threshold_hu, low_threshold_hu=appearance.low_threshold_hu,
                    scanner_blur_sigma_mm=appearance.blur_sigma_mm, slice_profile=appearance.slice_profile)
    if s_est != s:
        s = s_est
        blobs, n_blobs = _detect(ct, roi_mask, spacing, thickness, s)
        blobs, calib = _seed_candidates(blobs, planned_img, s)
        unit = _calibrate_unit([b["integral"] for b in calib], expected)
    return blobs, n_blobs, unit, appearance, s


def _seed_candidates(blobs: list, planned_img, s: SeedFindingSettings) -> tuple[list, list]:
    """(the blobs that can be seeds, the blobs that measure one seed's integral). Left in, bone and
    calcifications set the size of "one seed" (the unit) and make a cluster of real seeds look like bone.

    Seeds are the brightest objects of a post-implant scan: when it holds metal (a peak above ``metal_hu``), a
    blob dimmer than ``dim_fraction`` of the brightest peak is not a seed, unless it lies near a planned seed (a
    seed cut by a thick slice peaks lower). With the planned seeds known, the blobs near them measure the unit;
    a blob far from every planned seed stays a candidate (a migrated seed) only when it is as bright as those
    (``dim_fraction`` of their peak) and is marked ``far`` (``_seed_blobs`` then wants about one seed in it)."""
    if not blobs:
        return blobs, blobs
    for b in blobs:
        b["near_plan"] = planned_img is not None and len(planned_img) > 0 and \
            float(np.min(np.linalg.norm(planned_img - b["centroid_img"], axis=1))) <= s.prior_radius_mm
    top = max(b["peak_hu"] for b in blobs)
    if top >= s.metal_hu:
        blobs = [b for b in blobs if b["peak_hu"] >= s.dim_fraction * top or b["near_plan"]] or blobs
    near = [b for b in blobs if b["near_plan"]]
    if not near:
        return blobs, blobs
    ref = max(b["peak_hu"] for b in near)
    far = [b for b in blobs if not b["near_plan"] and b["peak_hu"] >= s.dim_fraction * ref]
    for b in far:
        b["far"] = True
    return near + far, near


def _seed_blobs(ct: Volume, blobs: list, n_blobs: int, unit: float, spacing: np.ndarray, s: SeedFindingSettings,
                expected, psf_var: np.ndarray) -> tuple[list, list[str]]:
    """The blobs that are seeds, each with its seed count ``n``; warnings for bright objects left out."""
    if unit < s.min_seed_integral_hu_mm3:
        raise InputError(
            f"post-implant CT: the {len(blobs)} bright object(s) above {s.threshold_hu:.0f} HU are too faint for "
            f"I-125 seeds (typical excess {unit / 1000:.1f} HU.cc per object, a seed carries more than "
            f"{s.min_seed_integral_hu_mm3 / 1000:.0f}); no seed found: check that this is the post-implant scan")
    warnings: list[str] = []
    for b in blobs:
        b["ratio"] = b["integral"] / unit
    blobs = _merge_fragments(blobs, unit, s)
    keep = [b for b in blobs if b["ratio"] >= s.min_fraction_of_seed
            and not (b.get("far") and not s.min_fraction_of_seed <= b["ratio"] <= MAX_SEEDS_MIGRATED + 0.5)]
    too_big = [b for b in keep if b["ratio"] > s.max_seeds_per_blob + 0.5]
    big = {id(b) for b in too_big}   # by identity: blobs are dicts of arrays, == would compare the arrays
    seed_peak = float(np.median([b["peak_hu"] for b in keep if id(b) not in big] or [np.inf]))
    for b in too_big:
        if b["peak_hu"] < 0.8 * seed_peak:     # dimmer than the seeds: bone, not worth a warning
            continue
        c = ct.ijk_to_lps(b["centroid_img"] / spacing)
        warnings.append(
            f"a bright object of {b['volume_mm3']:.0f} mm3 ({b['ratio']:.0f} seeds' worth of metal) at LPS "
            f"({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm is not counted as seeds (bone, a clip or a wire?); "
            "check it on the images")
    keep = [b for b in keep if id(b) not in big]
    if not keep:
        raise InputError(
            f"post-implant CT: {n_blobs} bright object(s) above {s.threshold_hu:.0f} HU but none looks like an "
            "I-125 seed (4.5 x 0.8 mm); check that this is the post-implant scan")
    for b in keep:
        b["n"] = max(1, int(round(b["ratio"])))
    _settle_counts(keep, expected, lambda b, n: _room_for(b, n, psf_var, s))
    return keep, warnings


def _seeds_of(keep: list, ct: Volume, spacing: np.ndarray, thickness: float, thick: bool, planned_img,
              planned_axes_img, s: SeedFindingSettings, clip_hu: float | None = None) -> list[FoundSeed]:
    """Each seed blob split into its seeds: centre, axis and how sure."""
    psf_var = _psf_var(spacing, thickness, s)                   # image-mm axes (i, j, k)
    recs = []
    for bi, b in enumerate(keep):
        for c_img, cov, _ in _split_blob(b, planned_img, psf_var, s):
            recs.append({"c": c_img.copy(), "cov": cov, "b": b, "bi": bi})
    recs = _resplit_parents(recs, psf_var, s)
    ab = _elongation_scale(recs, thick, s)
    for r in recs:
        r["axis"], r["reliable"] = _axis_from_cov(r["cov"], psf_var, thick, s, ab)
    if thick:
        _refine_z_thick(recs, spacing[2], thickness, s)
    # the rods' blur is Gaussian in z: the scanner's own z response on thin slices, or on thick ones with a
    # Gaussian slice profile that still resolves a seed along z; a box profile keeps _refine_z_thick's answer
    if not thick or (s.slice_profile == "gaussian" and max(spacing[2], thickness) < s.seed_length_mm):
        _fit_touching(recs, psf_var, clip_hu, float(np.prod(spacing)), s)
    return [_make_seed(r, ct, spacing, thick, planned_img, planned_axes_img) for r in recs]


def _count_warnings(seeds: list[FoundSeed], n_blobs: int, spacing: np.ndarray, expected) -> list[str]:
    """What the operator should know about the seeds' axes and their count against the expected one."""
    warnings = []
    n_found = len(seeds)
    n_needle = sum(sd.axis_source == "needle" for sd in seeds)
    n_blind = sum(sd.axis_source == "image-z" for sd in seeds)
    if n_needle:
        warnings.append(f"{n_needle} seed(s) lie mostly along the {spacing[2]:g} mm slices, where their image gives "
                        "no reliable axis: they take the axis of the nearest planned needle (axis_source 'needle')")
    if n_blind:
        warnings.append(f"{n_blind} seed(s) lie mostly along the {spacing[2]:g} mm slices and no plan was given: "
                        "their axis is the slice direction (axis_source 'image-z'), a guess")
    if expected is not None and expected > 0:
        if n_found > 1.5 * expected + 3:
            warnings.append(
                f"found {n_found} seeds but {expected} were expected ({n_blobs} bright blobs): far more "
                "than delivered; another patient's scan, metal clips or a wrong threshold? "
                "Review the seed list before trusting the dose")
        elif n_found != expected:
            warnings.append(f"found {n_found} seeds, expected {expected} "
                            f"({'fewer' if n_found < expected else 'more'}: "
                            f"{abs(n_found - expected)}); see 'missing' and 'migrated'")
    return warnings


# --- detection ------------------------------------------------------------------------------------------
def _given(value, fallback):
    return fallback if value is None else value


def _detect(ct: Volume, roi_mask, spacing, thickness, s: SeedFindingSettings) -> tuple[list[dict], int]:
    """Hysteresis-thresholded components of ``ct`` measured as blobs (``_measure_blob``); raises InputError
    when nothing reaches ``threshold_hu``."""
    arr = ct.array
    psf_var = _psf_var(spacing, thickness, s)
    mask = arr > s.low_threshold_hu
    if roi_mask is not None:
        mask &= roi_mask
    labels, n_low = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    # hysteresis: keep the low-threshold components that hold at least one voxel above the seed threshold
    strong = np.unique(labels[(arr > s.threshold_hu) & mask])
    strong = strong[strong > 0]
    if len(strong) < n_low:
        remap = np.zeros(n_low + 1, dtype=labels.dtype)
        remap[strong] = np.arange(1, len(strong) + 1, dtype=labels.dtype)
        labels = remap[labels]
    n_blobs = len(strong)
    if n_blobs == 0:
        raise InputError(
            f"post-implant CT {ct.series_uid or ''}: no voxel above {s.threshold_hu:.0f} HU "
            f"(maximum {float(arr.max()):.0f} HU), so no seed can be found; check that this is the "
            "post-implant scan (not the pre-plan CT) and that its HU scale is right")
    objects = ndimage.find_objects(labels)
    blobs = [b for lab, sl in enumerate(objects) for b in _measure_blob(arr, labels, lab + 1, sl, spacing, psf_var, s)]
    return blobs, n_blobs


# --- per-blob measurement -------------------------------------------------------------------------------
def _psf_var(spacing, thickness, s: SeedFindingSettings) -> np.ndarray:
    """Variance (mm^2) the scanner adds along i, j, k: voxel box + scanner blur in plane; slice profile in z."""
    inplane = spacing[:2] ** 2 / 12.0 + s.scanner_blur_sigma_mm ** 2
    if s.slice_profile == "box":
        z = thickness ** 2 / 12.0
    else:
        z = (thickness / 2.3548) ** 2
    z = max(z, spacing[2] ** 2 / 12.0) + s.scanner_blur_sigma_mm ** 2
    return np.array([inplane[0], inplane[1], z])


def _measure_blob(arr, labels, lab, sl, spacing, psf_var, s: SeedFindingSettings) -> list[dict]:
    """Split one low-threshold component into sub-blobs (cores above ``split_fraction`` of their own peak,
    so a chain of seeds with faint gaps falls apart) and measure each: voxels, excess weights, integral."""
    # window: the seed's blur tails (2.5 sigma of the point spread / slice profile) beyond the thresholded core
    reach_mm = s.window_mm + 2.5 * np.sqrt(psf_var[::-1]) - 2.5 * s.scanner_blur_sigma_mm
    r_vox = np.maximum(1, np.round(reach_mm / spacing[::-1]).astype(int))   # (k, j, i) radii in voxels
    pad = r_vox + 2
    # the labelled component's own (k, j, i) slices grown by whole voxels: an index-space box, not a box
    # around LPS points (``core.volume.voxel_box``), so it needs no coordinates
    lo = [max(0, x.start - p) for x, p in zip(sl, pad)]
    hi = [min(n, x.stop + p) for x, p, n in zip(sl, pad, arr.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = arr[box].astype(np.float32)
    lab_sub = labels[box]
    core = lab_sub == lab
    kk, jj, ii = np.ogrid[-r_vox[0]:r_vox[0] + 1, -r_vox[1]:r_vox[1] + 1, -r_vox[2]:r_vox[2] + 1]
    ell = (kk / r_vox[0]) ** 2 + (jj / r_vox[1]) ** 2 + (ii / r_vox[2]) ** 2 <= 1.0 + 1e-9
    win = ndimage.binary_dilation(core, structure=ell)
    other = (lab_sub > 0) & ~core
    win &= ~ndimage.binary_dilation(other, structure=ell) | core
    shell = ndimage.binary_dilation(win, iterations=1) & ~win & ~other
    bg = float(np.median(sub[shell])) if shell.any() else 0.0
    bg = min(bg, 0.5 * s.low_threshold_hu)       # a shell touching other metal must not raise the background
    cores, m = _subcores(sub, core, s.split_fraction)
    if m > 1:   # every window voxel belongs to the nearest core (distances in mm: anisotropic voxels)
        _, idx = ndimage.distance_transform_edt(cores == 0, sampling=spacing[::-1], return_indices=True)
        owner = cores[tuple(idx)]
    else:
        owner = np.ones(sub.shape, dtype=np.int32)
    voxel_mm3 = float(np.prod(spacing))
    # the whole component's window, kept for the z fit (the nearest-core split is poor across thick slices)
    k, j, i = np.nonzero(win)
    parent = (np.stack([(i + lo[2]) * spacing[0], (j + lo[1]) * spacing[1], (k + lo[0]) * spacing[2]], axis=1),
              np.clip(sub[k, j, i] - bg, 0.0, None))
    out = []
    for c in range(1, m + 1):
        winc = win & (owner == c)
        k, j, i = np.nonzero(winc)
        exc = sub[k, j, i] - bg
        ww = np.clip(exc, 0.0, None)
        pts = np.stack([(i + lo[2]) * spacing[0], (j + lo[1]) * spacing[1], (k + lo[0]) * spacing[2]], axis=1)
        tot = float(ww.sum())
        centroid = (pts * ww[:, None]).sum(0) / tot if tot > 0 else pts.mean(0)
        corec = core & (owner == c)
        out.append({"label": lab, "parent": parent, "pts": pts, "w": ww, "integral": float(exc.sum()) * voxel_mm3,
                    "centroid_img": centroid, "volume_mm3": float(corec.sum()) * voxel_mm3,
                    "peak_hu": float(sub[corec].max()) if corec.any() else float(sub[winc].max()), "bg_hu": bg})
    return out


def _subcores(sub, core, fraction, passes: int = 2):
    """Cores of a component: parts above ``fraction`` of the peak, split again at ``fraction`` of each part's
    own peak (a dim seed touching a bright one keeps its own core)."""
    cores, m = ndimage.label(core & (sub > fraction * float(sub[core].max())), structure=np.ones((3, 3, 3), bool))
    for _ in range(passes - 1):
        new = np.zeros_like(cores)
        n_new = 0
        for c, sl in enumerate(ndimage.find_objects(cores), start=1):
            part = cores[sl] == c
            peak = float(sub[sl][part].max())
            lab2, m2 = ndimage.label(part & (sub[sl] > fraction * peak), structure=np.ones((3, 3, 3), bool))
            if m2 <= 1:
                n_new += 1
                new[sl][part] = n_new
            else:
                # voxels of the part below the re-threshold go to the nearest sub-core
                _, idx = ndimage.distance_transform_edt(lab2 == 0, return_indices=True)
                near = lab2[tuple(idx)]
                for q in range(1, m2 + 1):
                    new[sl][part & (near == q)] = n_new + q
                n_new += m2
        if n_new == m:
            break
        cores, m = new, n_new
    return cores, m


def _calibrate_unit(integrals, expected) -> float:
    """Excess integral (HU mm^3) of one seed: median of the blobs near the overall median (isolated seeds
    are the commonest blob); when the expected count says most blobs hold several seeds, total / expected."""
    x = np.asarray(integrals, float)
    x = x[x > 0]
    med = float(np.median(x))
    x = x[x >= 0.3 * med]
    unit = float(np.median(x))
    singles = x[(x > 0.7 * unit) & (x < 1.3 * unit)]
    if len(singles) >= 3:
        unit = float(np.median(singles))
    if expected:
        unit_expected = float(x.sum()) / float(expected)
        # too few isolated seeds, or the "singles" were mostly fused pairs/chains: trust the delivered count
        if len(singles) < 3 or unit > 1.4 * unit_expected:
            unit = unit_expected
    return unit


# --- the seeds' appearance in this scan (issue #12) ------------------------------------------------------
def estimate_appearance(arr, blobs, unit, spacing, thickness, given: SeedFindingSettings,
                        used: SeedFindingSettings) -> SeedAppearance:
    """Blur, slice profile and detection levels of this scan, measured on its isolated seeds (a component
    holding one blob of about one seed's integral); ``given`` values win, ``used`` are the first pass's.

    Only unclipped seeds are measured (their peak below 97 % of the clip, ``metal_appearance.detect_clip``),
    and only when they are most of the isolated seeds: where seeds clip, blur and profile fall back.

    - in-plane blur: across each of the brightest isolated seeds lying near the axial plane, the voxels of its
      brightest slice along the straight part of its capsule are fitted with a Gaussian of the distance from
      its axis (``_seed_cuts``); the median over seeds. The seed's 0.8 mm disc is not removed: on the
      simulators (which render it inside one pixel) the fitted width is the PSF's within 0.03 mm.
    - slice profile: the same seeds' per-slice excess over their footprint; the 10th percentile of the
      brighter neighbour's share of the brightest slice (seeds centred in a slice) against what a box
      (``disk_share`` of the seed's cross-section in the neighbour) and a Gaussian (FWHM = thickness) predict
      for this spacing and thickness: Gaussian above ``gaussian_share_fraction`` of the way between them.
      Decided only for slices of at least ``thick_slice_mm`` (where the z fit uses it).
    - levels: tissue = median of the isolated seeds' backgrounds; the threshold half-way from tissue to the
      dimmest isolated seeds' peak (5th percentile; when they clip, their contrast is unknown above the clip,
      so the bound applies), within [tissue + 250, tissue + 660] HU: above noise and soft tissue, and never
      above what a seed lying in one 5 mm slice still reaches (~1000 HU; the first pass only sees the seeds
      its own threshold kept, so the measured dimmest may be brighter than the dimmest present). The low
      (hysteresis) level keeps the fallbacks' ratio: tissue + 0.7 x (threshold - tissue).
    """
    iso, clip, sigmas, shares = _isolated_seed_cuts(arr, blobs, unit, spacing, used)
    blur, blur_src, blur_meas = _blur_of(sigmas, given, used)
    profile, prof_src, share, box_share, gauss_share = _profile_of(shares, spacing, thickness, given, used)
    thr, low, thr_src, tissue, peak, dim = _levels_of(iso, given, used)
    return SeedAppearance(blur_sigma_mm=blur, blur_source=blur_src, slice_profile=profile, profile_source=prof_src,
                          threshold_hu=float(thr), low_threshold_hu=float(low), threshold_source=thr_src,
                          seeds_used=len(shares), blur_measured_mm=blur_meas, neighbour_share=share,
                          box_share=box_share, gaussian_share=gauss_share, tissue_hu=tissue, seed_peak_hu=peak,
                          dim_seed_peak_hu=dim, clip_hu=clip)


def _isolated_seed_cuts(arr, blobs, unit, spacing, used: SeedFindingSettings):
    """The isolated seeds (one blob of about one seed's integral in its component), the clip level, and the
    in-plane blur and neighbour-slice share measured on the brightest unclipped ones lying near the axial plane."""
    by_label: dict[int, list[dict]] = {}
    for b in blobs:
        by_label.setdefault(b["label"], []).append(b)
    iso = [g[0] for g in by_label.values() if len(g) == 1 and 0.7 * unit < g[0]["integral"] < 1.3 * unit]
    clip = detect_clip(arr)
    top = np.inf if clip is None else float(clip)
    theory = used.seed_length_mm ** 2 / 12.0 - used.seed_diameter_mm ** 2 / 16.0
    sigmas, shares = [], []
    # clip-aware: a clipped seed's cut shows only the tail below the clip (where blooming dominates) and its
    # brightest slice loses signal, inflating the neighbours' share; only unclipped seeds are measured, and
    # only when most seeds are unclipped (else the unclipped few are the odd ones: straddling two slices)
    unclipped = [q for q in iso if clip is None or q["peak_hu"] < 0.97 * clip]
    if len(unclipped) < 0.5 * len(iso):
        unclipped = []
    for b in sorted(unclipped, key=lambda q: -q["peak_hu"]):
        cov = _weighted_cov(b["pts"][:, :2], b["w"], b["centroid_img"][:2])
        ev, evec = np.linalg.eigh(cov)
        if ev[1] - ev[0] < 0.5 * theory:          # not lying near the axial plane: no clean in-plane cut
            continue
        got = _seed_cuts(arr, b, evec[:, 1], spacing, top, used)
        if got is None:
            continue
        sig, share = got
        if sig is not None and len(sigmas) < 20:
            sigmas.append(sig)
        if share is not None:
            shares.append(share)
    return iso, clip, sigmas, shares


def _blur_of(sigmas: list, given: SeedFindingSettings, used: SeedFindingSettings):
    """``(blur sigma mm, its source, the measured value or None)``: a given setting, else the scan's, else the
    fallback."""
    blur_meas = float(np.median(sigmas)) if len(sigmas) >= used.min_isolated_seeds else None
    if given.scanner_blur_sigma_mm is not None:
        return float(given.scanner_blur_sigma_mm), "setting", blur_meas
    if blur_meas is not None:
        return blur_meas, "scan", blur_meas
    return FALLBACK_BLUR_SIGMA_MM, "fallback", blur_meas


def _profile_of(shares: list, spacing, thickness: float, given: SeedFindingSettings, used: SeedFindingSettings):
    """``(slice profile, its source, measured share, box share, Gaussian share)``."""
    dz = float(spacing[2])
    r_seed = 0.5 * used.seed_diameter_mm
    box_share = float(disk_share(dz - 0.5 * thickness, dz + 0.5 * thickness, r_seed)
                      / max(float(disk_share(-0.5 * thickness, 0.5 * thickness, r_seed)), 1e-9))
    sz2 = (thickness / 2.3548) ** 2 + used.seed_diameter_mm ** 2 / 16.0
    gauss_share = float(np.exp(-0.5 * dz ** 2 / sz2))
    share = float(np.percentile(shares, 10)) if len(shares) >= used.min_isolated_seeds else None
    if given.slice_profile is not None:
        profile, src = given.slice_profile, "setting"
    elif share is not None and gauss_share - box_share > 0.01 and thickness >= used.thick_slice_mm:
        cut = box_share + used.gaussian_share_fraction * (gauss_share - box_share)
        profile, src = ("gaussian" if share > cut else "box"), "scan"
    else:   # too few unclipped seeds; both profiles predict the same share; or thin slices, where few seeds
        # lie wholly inside one slice (the share then says little) and the profile is not used for z
        profile, src = FALLBACK_SLICE_PROFILE, "fallback"
    return profile, src, share, box_share, gauss_share


def _levels_of(iso: list, given: SeedFindingSettings, used: SeedFindingSettings):
    """``(threshold HU, low threshold HU, source, tissue HU, seed peak HU, dimmest seed peak HU)``."""
    tissue = peak = dim = None
    if len(iso) >= used.min_isolated_seeds:
        tissue = float(np.median([b["bg_hu"] for b in iso]))
        peaks = np.array([b["peak_hu"] for b in iso])
        peak, dim = float(np.median(peaks)), float(np.percentile(peaks, 5))
    if given.threshold_hu is not None or given.low_threshold_hu is not None or tissue is None:
        src = "fallback" if tissue is None and given.threshold_hu is None and given.low_threshold_hu is None \
            else "setting"
        return used.threshold_hu, used.low_threshold_hu, src, tissue, peak, dim
    thr = float(np.clip(tissue + 0.5 * (dim - tissue), tissue + 250.0, tissue + 660.0))
    low = tissue + 0.7 * (thr - tissue)
    return round(thr), round(low), "scan", tissue, peak, dim


def _seed_cuts(arr, b, e2, spacing, top, s) -> tuple[float | None, float | None] | None:
    """For one isolated seed lying near the axial plane along in-plane direction ``e2``: the clipped-Gaussian
    sigma (mm) across it in its brightest slice (None if the fit fails) and the brighter neighbouring slice's
    share of that slice's excess over the seed's footprint (None at the volume's ends or when the seed is not
    centred in a slice: its brightest slice must be the one its centroid lies in)."""
    c = b["centroid_img"]
    bg = b["bg_hu"]
    nk, nj, ni = arr.shape
    ci = c / spacing
    ri, rj = math.ceil(3.5 / spacing[0]), math.ceil(3.5 / spacing[1])
    i0, j0, k0 = round(ci[0]), round(ci[1]), round(ci[2])
    if not (1 <= k0 < nk - 1 and ri <= i0 < ni - ri and rj <= j0 < nj - rj):
        return None
    sub = arr[k0 - 1:k0 + 2, j0 - rj:j0 + rj + 1, i0 - ri:i0 + ri + 1].astype(float) - bg
    jj, ii = np.mgrid[j0 - rj:j0 + rj + 1, i0 - ri:i0 + ri + 1]
    x, y = ii * spacing[0] - c[0], jj * spacing[1] - c[1]
    along = x * e2[0] + y * e2[1]
    r = -x * e2[1] + y * e2[0]
    foot = (np.abs(along) < 0.5 * s.seed_length_mm) & (np.abs(r) < 1.5)
    sums = sub[:, foot].sum(1)
    share = None
    if sums[1] > 0 and sums[1] >= max(sums[0], sums[2]):
        share = float(max(sums[0], sums[2], 0.0) / sums[1])
    kb = int(np.argmax(sums))
    # the straight part of the capsule (its ends are hemispheres), a little short of it
    sel = (np.abs(along) < 0.4 * (s.seed_length_mm - s.seed_diameter_mm)) & (np.abs(r) < 3.0)
    rr, vv = r[sel], sub[kb][sel]
    amp0 = float(vv.max())
    core = vv >= 0.2 * amp0                   # the core: a blooming tail, where there is one, left out
    if core.sum() < 5 or amp0 <= 0:
        return None, share
    rr, vv = rr[core], vv[core]
    lim = top - bg
    # a reconstruction samples the blurred image at the pixel centres (no pixel box): across the seed the cut is
    # its disc's chord (variance D^2/16, close to a Gaussian's) blurred by the scanner, clipped at the clip level

    def model(q):
        return np.minimum(q[1] * np.exp(-0.5 * ((rr - q[0]) / q[2]) ** 2), lim) - vv
    try:
        fit = least_squares(model, [0.0, amp0 * 1.5, 0.5], bounds=([-1.0, 1.0, 0.15], [1.0, 1e6, 3.0]))
    except ValueError:
        return None, share
    return (float(fit.x[2]) if fit.success else None), share


def _merge_fragments(blobs, unit, s) -> list[dict]:
    """Re-join parts of one seed that the core split cut apart (a tilted seed crossing two thin slices dips
    to about half its peak between them): merge siblings when the sum is closer to whole seeds."""
    def err(r):
        return abs(r - round(r)) if r >= s.min_fraction_of_seed else r
    by_parent: dict[int, list[dict]] = {}
    for b in blobs:
        by_parent.setdefault(b["label"], []).append(b)
    out = []
    for group in by_parent.values():
        changed = len(group) > 1
        while changed:
            changed = False
            best = None
            for a in range(len(group)):
                for c in range(a + 1, len(group)):
                    A, C = group[a], group[c]
                    if np.linalg.norm(A["centroid_img"] - C["centroid_img"]) > s.seed_length_mm + 1.5:
                        continue
                    if min(A["ratio"], C["ratio"]) > 0.55:   # both look like whole (dim) seeds
                        continue
                    gain = err(A["ratio"]) + err(C["ratio"]) - err(A["ratio"] + C["ratio"])
                    if gain > 0.15 and (best is None or gain > best[0]):
                        best = (gain, a, c)
            if best is not None:
                _, a, c = best
                A, C = group[a], group[c]
                w = np.concatenate([A["w"], C["w"]])
                pts = np.concatenate([A["pts"], C["pts"]])
                merged = dict(A, pts=pts, w=w, integral=A["integral"] + C["integral"],
                              ratio=A["ratio"] + C["ratio"], volume_mm3=A["volume_mm3"] + C["volume_mm3"],
                              peak_hu=max(A["peak_hu"], C["peak_hu"]),
                              centroid_img=(pts * w[:, None]).sum(0) / max(float(w.sum()), 1e-12))
                group = [g for q, g in enumerate(group) if q not in (a, c)] + [merged]
                changed = True
        out.extend(group)
    return out


def _room_for(b: dict, n: int, psf_var: np.ndarray, s: SeedFindingSettings) -> bool:
    """Whether the blob's shape has room for ``n`` seeds, from its weighted second moments less the scanner's
    point spread along each principal direction: ``n`` seeds end to end (a strand) spread along their axis like
    one rod of n seed lengths (variance (nL)^2/12, L the seed length), so the main variance must pass the middle
    between n-1 and n, ((n-1/2)L)^2/12; crossing seeds widen the blob instead (two crossing at right angles:
    a second variance of L^2/24), so a second variance above L^2/40 also gives room (a single seed's, its
    radius^2/4 plus what the blur leaves after the point spread is removed, stays under 0.4 mm^2; two seeds
    side by side, 0.8 mm apart, stay ambiguous and are counted by their integral alone). Used only where the integral is ambiguous: the integral of a clipped seed depends on
    its angle to the slices (singles from 0.8 to 1.5 seeds' worth on one scanner), its shape much less."""
    cov = _weighted_cov(b["pts"], b["w"], b["centroid_img"])
    ev, evec = np.linalg.eigh(cov)
    spread = ev - (evec ** 2).T @ psf_var      # per principal direction, the scanner's spread removed
    length = s.seed_length_mm
    return bool(spread[2] >= ((n - 0.5) * length) ** 2 / 12.0 or spread[1] >= length ** 2 / 40.0)


def _settle_counts(blobs, expected, room) -> None:
    """Use the expected count only to settle ambiguous blobs (ratio more than 0.2 from an integer): a blob gets one
    more seed only where ``room(blob, n)`` says its shape holds n; so a count that exceeds what the scan shows
    leaves seeds missing (said in the result) rather than splitting single seeds into pairs 1 mm apart."""
    if not expected:
        return
    total = sum(b["n"] for b in blobs)
    if total < expected:
        cands = sorted((b for b in blobs if b["ratio"] - b["n"] > 0.2 and room(b, b["n"] + 1)),
                       key=lambda b: b["n"] - b["ratio"])
        for b in cands[: expected - total]:
            b["n"] += 1
    elif total > expected:
        cands = sorted((b for b in blobs if b["n"] - b["ratio"] > 0.2 and b["n"] >= 2),
                       key=lambda b: b["ratio"] - b["n"])
        for b in cands[: total - expected]:
            b["n"] -= 1


# --- cluster splitting ----------------------------------------------------------------------------------
def _weighted_cov(pts, w, c):
    d = pts - c
    return (d * w[:, None]).T @ d / max(float(w.sum()), 1e-12)


def _split_blob(b, planned_img, psf_var, s):
    """Yield (centre_img, covariance, per-voxel weights) for each of the blob's ``n`` seeds."""
    pts, w, n = b["pts"], b["w"], b["n"]
    c0 = b["centroid_img"]
    cov0 = _weighted_cov(pts, w, c0)
    if n == 1:
        yield c0, cov0, w
        return
    evals, evecs = np.linalg.eigh(cov0)
    inits = []
    for e in (evecs[:, 2], evecs[:, 1]):
        proj = (pts - c0) @ e
        # seeds spread evenly along this direction over the blob's weighted extent
        lo_, hi_ = np.percentile(proj, [10, 90]) if len(proj) > 3 else (proj.min(), proj.max())
        offs = np.linspace(lo_, hi_, n) if n > 1 else np.zeros(1)
        inits.append(c0 + offs[:, None] * e[None, :])
    # farthest-point picks among the bright voxels: one per seed when the seeds lie in different directions
    bright = pts[w >= 0.5 * w.max()]
    picks = [bright[int(np.argmax(w[w >= 0.5 * w.max()]))]]
    for _ in range(n - 1):
        dmin = np.min([np.linalg.norm(bright - q, axis=1) for q in picks], axis=0)
        picks.append(bright[int(np.argmax(dmin))])
    inits.append(np.array(picks))
    if planned_img is not None:
        d = np.linalg.norm(planned_img - c0, axis=1)
        near = np.argsort(d)[:n]
        if len(near) == n and d[near].max() < 15.0:
            inits.append(planned_img[near].copy())
    best = None
    for init in inits:
        res = _em(pts, w, init, evecs[:, 2], psf_var, s)
        if best is None or res[0] > best[0]:
            best = res
    # incremental: add one member at a time where the bright voxels are worst explained
    bright_mask = w >= 0.5 * w.max()
    centres = c0[None, :].copy()
    for k in range(2, n + 1):
        _, centres, _ = _em(pts, w, centres, evecs[:, 2], psf_var, s)
        d2 = ((pts[bright_mask][:, None, :] - centres[None, :, :]) ** 2).sum(2).min(1)
        centres = np.vstack([centres, pts[bright_mask][int(np.argmax(d2 * w[bright_mask]))]])
    res = _em(pts, w, centres, evecs[:, 2], psf_var, s)
    if res[0] > best[0]:
        best = res
    _, centres, resp = best
    for m in range(n):
        wm = w * resp[:, m]
        c = (pts * wm[:, None]).sum(0) / max(wm.sum(), 1e-12)
        yield c, _weighted_cov(pts, wm, c), wm


def _by_component(recs) -> list[list[dict]]:
    """The seeds grouped by the low-threshold component their blob was cut from (its shared window,
    ``b["parent"]``), in order of first appearance."""
    groups: dict[int, list[dict]] = {}
    for r in recs:
        groups.setdefault(id(r["b"]["parent"]), []).append(r)
    return list(groups.values())


def _resplit_parents(recs, psf_var, s) -> list[dict]:
    """Where a component was cut into several cores, re-partition its whole window among all its seeds with
    the shape-constrained mixture, started from the per-core estimates: the nearest-core cut is poor across
    thick slices (stacked needles 2 slices apart share blurred voxels)."""
    out = []
    for group in _by_component(recs):
        if len(group) == 1:
            out.extend(group)
            continue
        pts, w = group[0]["b"]["parent"]
        init = np.array([r["c"] for r in group])
        # each member starts along its own core's long axis: the window's long axis is across the seeds when
        # two parallel seeds lie side by side farther apart than half their length (neighbouring needles)
        axes0 = np.array([np.linalg.eigh(r["cov"])[1][:, 2] for r in group])
        _, centres, resp = _em(pts, w, init, axes0, psf_var, s)
        for m, r in enumerate(group):
            wm = w * resp[:, m]
            c = (pts * wm[:, None]).sum(0) / max(float(wm.sum()), 1e-12)
            out.append(dict(r, c=c, cov=_weighted_cov(pts, wm, c)))
    return out


def _em(pts, w, centres, axis0, psf_var, s):
    """Weighted EM of a mixture of blurred seeds (equal masses), vectorised over the members.
    Returns (log-likelihood, centres (n, 3), responsibilities (M, n))."""
    n = len(centres)
    centres = centres.astype(float).copy()
    axes = np.broadcast_to(np.asarray(axis0, float), (n, 3))        # one start axis, or one per member
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    a = s.seed_length_mm ** 2 / 12.0
    b = s.seed_diameter_mm ** 2 / 16.0
    psf = np.diag(psf_var)
    ll = -np.inf
    resp = np.full((len(pts), n), 1.0 / n)
    for _ in range(s.em_iterations):
        C = (a - b) * np.einsum("ni,nj->nij", axes, axes) + b * np.eye(3)[None] + psf[None]
        Ci = np.linalg.inv(C)
        _, logdet = np.linalg.slogdet(C)
        d = pts[:, None, :] - centres[None, :, :]                       # (M, n, 3)
        logp = -0.5 * np.einsum("mni,nij,mnj->mn", d, Ci, d) - 0.5 * logdet[None, :]
        mx = logp.max(1, keepdims=True)
        p = np.exp(logp - mx)
        tot = p.sum(1, keepdims=True)
        resp = p / tot
        new_ll = float((w * (np.log(tot[:, 0]) + mx[:, 0])).sum())
        W = w[:, None] * resp                                          # (M, n)
        sw = np.maximum(W.sum(0), 1e-12)
        old = centres
        centres = (W.T @ pts) / sw[:, None]
        d = pts[:, None, :] - centres[None, :, :]
        cov = np.einsum("mn,mni,mnj->nij", W, d, d) / sw[:, None, None] - psf[None]
        _, evec = np.linalg.eigh(cov)
        axes = evec[:, :, 2]
        if abs(new_ll - ll) <= 1e-7 * abs(new_ll) or np.abs(centres - old).max() < 0.005:
            ll = new_ll
            break
        ll = new_ll
    return ll, centres, resp


# --- touching seeds: a fit of blurred rods ---------------------------------------------------------------
def _rod_image(pts, centres, axes, half_mm, cov):
    """Each seed as a uniform line segment (``centres`` (n, 3), unit ``axes`` (n, 3), half-length ``half_mm``)
    blurred by the Gaussian ``cov`` (3 x 3, mm^2), at ``pts`` (M, 3): (M, n), each integrating to its length.
    Exact: along the segment the Gaussian's exponent is quadratic in the line parameter, which integrates to erf."""
    ci = np.linalg.inv(cov)
    norm = 1.0 / ((2.0 * np.pi) ** 1.5 * np.sqrt(np.linalg.det(cov)))
    d = pts[:, None, :] - centres[None, :, :]                          # (M, n, 3)
    cia = axes @ ci                                                     # (n, 3): C^-1 a
    alpha = np.einsum("ni,ni->n", cia, axes)                            # a' C^-1 a
    beta = np.einsum("mni,ni->mn", d, cia)                              # a' C^-1 d
    q = np.einsum("mni,ij,mnj->mn", d, ci, d) - beta ** 2 / alpha[None]
    t0 = beta / alpha[None]
    k = np.sqrt(alpha / 2.0)[None]
    along = np.sqrt(np.pi / (2.0 * alpha))[None] * (erf(k * (half_mm - t0)) + erf(k * (half_mm + t0)))
    return norm * np.exp(-0.5 * q) * along


def _fit_touching(recs, psf_var, clip_hu, voxel_mm3: float, s) -> None:
    """Seeds that share a blob (touching, crossing, side by side): their centres and axes
    refined by a least-squares fit of blurred, clipped rods to the blob's voxels, started from the mixture's
    estimate. The mixture (``_em``) shares each voxel of the overlap between the seeds, which pulls both centres
    toward the contact point; the rod model explains the overlap as the sum it is. The blur is the scan's own
    (``psf_var``: voxel size, the blur measured on isolated seeds, the seed's radius), the clip the scan's (its
    detected clip level above the blob's background); the rods' line density is fitted (one for the blob). A
    fit is not used when it fails, explains the voxels no better than its start, moves a centre by more than a
    seed's length or puts two centres closer than a seed's diameter (solid seeds cannot overlap)."""
    from scipy.optimize import least_squares

    half = s.seed_length_mm / 2.0
    cov = np.diag(psf_var) + (s.seed_diameter_mm ** 2 / 16.0) * np.eye(3)
    for group in _by_component(recs):
        if len(group) < 2:
            continue
        pts, w = group[0]["b"]["parent"]
        if len(pts) > 20000:
            continue
        bg = group[0]["b"].get("bg_hu", 0.0)
        top = np.inf if clip_hu is None else float(clip_hu) - bg
        c0 = np.array([r["c"] for r in group])
        a0 = np.array([r["axis"] / np.linalg.norm(r["axis"]) for r in group])
        basis = [np.linalg.svd(a[None])[2][1:] for a in a0]             # two unit vectors across each axis
        n = len(group)
        unit0 = float(w.sum()) * voxel_mm3 / (n * s.seed_length_mm)   # HU mm^2: the line density

        def unpack(x):
            cs = c0 + x[: 3 * n].reshape(n, 3)
            ax = a0 + np.einsum("nk,nki->ni", x[3 * n: 5 * n].reshape(n, 2), np.array(basis))
            return cs, ax / np.linalg.norm(ax, axis=1, keepdims=True), x[-1] * unit0

        def residual(x):
            cs, ax, dens = unpack(x)
            return np.minimum(dens * _rod_image(pts, cs, ax, half, cov).sum(1), top) - w

        x0 = np.concatenate([np.zeros(5 * n), [1.0]])
        try:
            fit = least_squares(residual, x0, x_scale=np.concatenate([np.full(3 * n, 0.3), np.full(2 * n, 0.1),
                                                                      [0.2]]), max_nfev=60 * len(x0))
        except (ValueError, np.linalg.LinAlgError):
            continue
        cs, ax, _ = unpack(fit.x)
        apart = np.linalg.norm(cs[:, None] - cs[None], axis=2)[np.triu_indices(n, 1)]
        if not fit.success or fit.cost >= 0.5 * float((residual(x0) ** 2).sum()) or \
                np.linalg.norm(cs - c0, axis=1).max() > s.seed_length_mm or apart.min() < s.seed_diameter_mm:
            continue
        for r, c, a in zip(group, cs, ax):
            r["c"], r["axis"] = c, a


# --- one seed: centre refinement and axis ---------------------------------------------------------------
def _make_seed(r, ct, spacing, thick, planned_img, planned_axes_img) -> FoundSeed:
    c_img, axis_img, b = r["c"], r["axis"], r["b"]
    source = "image"
    if not r["reliable"]:
        if planned_img is not None and planned_axes_img is not None and len(planned_axes_img):
            j = int(np.argmin(np.linalg.norm(planned_img - c_img, axis=1)))
            axis_img = planned_axes_img[j] / np.linalg.norm(planned_axes_img[j])
            source = "needle"
        else:
            source = "image-z" if thick else "image"
    pos = ct.ijk_to_lps(c_img / spacing)
    axis = ct.direction @ axis_img
    axis = axis / np.linalg.norm(axis)
    if axis[int(np.argmax(np.abs(axis)))] < 0:       # sign is arbitrary: make the largest component positive
        axis = -axis
    return FoundSeed(position_mm=pos, axis=axis, axis_source=source, blob=r["bi"], blob_seeds=b["n"])


def _elongation_scale(recs, thick, s) -> float:
    """In-plane variance difference (mm^2) of a seed lying in plane. Theory for a 4.5 x 0.8 mm cylinder is
    L^2/12 - D^2/16; rounded ends, clipping and the integration window make the imaged seed look shorter, so
    with thick slices (where the tilt is read from it) it is taken from this scan's single seeds: the 90th
    percentile of their in-plane elongation (most seeds lie close to the plane), within 0.5-1.2 x theory."""
    theory = s.seed_length_mm ** 2 / 12.0 - s.seed_diameter_mm ** 2 / 16.0
    if not thick:
        return theory
    diffs = []
    for r in recs:
        if r["b"]["n"] == 1:
            ev = np.linalg.eigvalsh(r["cov"][:2, :2])
            diffs.append(ev[1] - ev[0])
    if len(diffs) < 5:
        return theory
    return float(np.clip(np.percentile(diffs, 90), 0.5 * theory, 1.2 * theory))


def _axis_from_cov(cov, psf_var, thick, s, a_minus_b=None) -> tuple[np.ndarray, bool]:
    if a_minus_b is None:
        a_minus_b = s.seed_length_mm ** 2 / 12.0 - s.seed_diameter_mm ** 2 / 16.0
    if not thick:
        ev, evec = np.linalg.eigh(cov - np.diag(psf_var))
        u = evec[:, 2]
        return u, bool((ev[2] - ev[1]) > 0.35 * a_minus_b)
    # thick slices: z spread is mostly slice profile; read the axis from the in-plane elongation
    c2 = cov[:2, :2]
    ev, evec = np.linalg.eigh(c2)
    e1 = evec[:, 1]
    inplane_sq = float(np.clip((ev[1] - ev[0]) / a_minus_b, 0.0, 1.0))     # = 1 - uz^2
    uz = math.sqrt(1.0 - inplane_sq)
    if float(e1 @ cov[:2, 2]) < 0:
        uz = -uz
    u = np.array([e1[0] * math.sqrt(inplane_sq), e1[1] * math.sqrt(inplane_sq), uz])
    return u / np.linalg.norm(u), inplane_sq > 0.3


def _slice_profile(t, ell, thickness, s):
    """Expected per-slice signal of a seed of z extent ``ell`` (mm) at offset ``t`` (mm) from a slice centre."""
    if s.slice_profile == "box":
        return np.clip(np.minimum(t + ell / 2, thickness / 2) - np.maximum(t - ell / 2, -thickness / 2), 0, None)
    q = math.hypot(thickness / 2.3548, s.scanner_blur_sigma_mm) * math.sqrt(2.0)
    return 0.5 * (erf((t + ell / 2) / q) - erf((t - ell / 2) / q))


def _footprint(pts, c, axis_img, s):
    """Points within 1.2 mm (in plane) of the seed's projected segment."""
    p2 = axis_img[:2]
    n2 = float(np.linalg.norm(p2))
    half = 0.5 * s.seed_length_mm * n2
    p2 = p2 / n2 if n2 > 1e-6 else np.zeros(2)
    d = pts[:, :2] - c[:2]
    along = np.clip(d @ p2, -half, half)
    return np.linalg.norm(d - along[:, None] * p2[None, :], axis=1) < 1.2


def _refine_z_thick(recs, dz, thickness, s, sweeps: int = 3) -> None:
    """z centres from the slice profile with thick slices. The centroid of two or three samples of a 5 mm
    profile is biased, so each seed's per-slice sums (over its in-plane footprint) are fitted with the known
    profile; seeds of the same blob that share the footprint (stacked needles, a chain) are fitted jointly
    (their amplitudes free, their centres from the previous sweep). The search stays within
    ``z_fit_reach_slices`` of the seed's centroid z. Seeds lying mostly along z keep the
    centroid: their profile is the slice profile convolved with 4.5 mm and their neighbours overlap it."""
    for group in _by_component(recs):
        pts, w = group[0]["b"]["parent"]
        ks_all = np.round(pts[:, 2] / dz).astype(int)
        fit = [r for r in group if abs(r["axis"][2]) < 0.6]
        # the centroid is biased by less than about half a slice; a wider search lets a seed slide onto the
        # next slice's signal of a neighbour sharing its footprint (two needles 10 mm apart, one blob)
        z0 = {id(r): float(r["c"][2]) for r in fit}
        for _ in range(sweeps):
            moved = 0.0
            for r in fit:
                sel = _footprint(pts, r["c"], r["axis"], s)
                if not sel.any():
                    continue
                ks = np.unique(ks_all[sel])
                S = np.bincount(ks_all[sel] - ks[0], weights=w[sel])[ks - ks[0]]
                zc = ks * dz
                # fitted jointly: every neighbour whose own footprint carries part of this seed's footprint
                # signal, not only those centred in it (parallel needles overlap in plane off-centre)
                wsel = float(w[sel].sum())
                others = [o for o in group if o is not r and (
                    _footprint(o["c"][None, :], r["c"], r["axis"], s)[0]
                    or float(w[sel & _footprint(pts, o["c"], o["axis"], s)].sum()) > s.z_fit_overlap_fraction * wsel)]
                ell = max(s.seed_diameter_mm, s.seed_length_mm * abs(float(r["axis"][2])))
                reach = s.z_fit_reach_slices * dz
                cand = z0[id(r)] + np.linspace(-reach, reach, 121)
                cols = [_slice_profile(zc[None, :] - cand[:, None], ell, thickness, s)]
                for o in others:
                    ello = max(s.seed_diameter_mm, s.seed_length_mm * abs(float(o["axis"][2])))
                    po = _slice_profile(zc - o["c"][2], ello, thickness, s)
                    cols.append(np.broadcast_to(po, cols[0].shape))
                X = np.stack(cols, axis=2)                                   # (candidates, slices, columns)
                XtX = np.einsum("cki,ckj->cij", X, X) + 1e-9 * np.eye(X.shape[2])
                Xty = np.einsum("cki,k->ci", X, S)
                beta = np.linalg.solve(XtX, Xty[..., None])[..., 0]
                sse = ((S[None, :] - np.einsum("cki,ci->ck", X, beta)) ** 2).sum(1)
                sse[beta[:, 0] <= 0] = np.inf
                if np.isfinite(sse).any():
                    # a box profile leaves z flat inside a slice: take the middle of the equally good range
                    best = float(np.min(sse))
                    tie = sse <= best + 1e-3 * float((S * S).sum()) + 1e-9
                    z_new = float(cand[tie].mean())
                    moved = max(moved, abs(z_new - r["c"][2]))
                    r["c"][2] = z_new
            if moved < 0.05:
                break


# --- plan comparison ------------------------------------------------------------------------------------
def _migration(result: SeedFindingResult, planned_mm: np.ndarray, s: SeedFindingSettings) -> None:
    found = result.positions_mm
    if not len(found):
        result.unmatched_planned = list(range(len(planned_mm)))
        return
    d = np.linalg.norm(found[:, None, :] - planned_mm[None, :, :], axis=2)
    nearest = d.min(1)
    for i, seed in enumerate(result.seeds):
        seed.nearest_planned_mm = float(nearest[i])
        if nearest[i] > s.migration_mm:
            result.migrated.append({"index": i, "position_mm": [round(float(v), 2) for v in found[i]],
                                    "distance_to_plan_mm": round(float(nearest[i]), 2)})
    # capped cost: beyond the migration distance every pairing is equally "no match", so the assignment
    # never shifts a chain of good matches to shave distance off a migrated seed
    rows, cols = linear_sum_assignment(np.minimum(d, s.migration_mm + 1.0))
    matched = {int(c) for r, c in zip(rows, cols) if d[r, c] <= s.migration_mm}
    result.unmatched_planned = [j for j in range(len(planned_mm)) if j not in matched]
    if result.migrated:
        result.warnings.append(
            f"{len(result.migrated)} seed(s) lie more than {s.migration_mm:.0f} mm from every planned position "
            "(migration or a non-seed object); see 'migrated'")
