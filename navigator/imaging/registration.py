"""Rigid registration of an intraoperative CT (moving) to the pre-plan CT (fixed), around the target.

Frames: ``fixed`` is the pre-plan CT's patient frame (LPS mm), ``moving`` the intraop CT's. The result's
``fixed_to_moving`` (4x4, row-major) maps a point given in fixed LPS to the same anatomy in moving LPS -- the
direction of ITK's registration transform, so it is used as is. Plan geometry goes to the intraop scan with it.

How it is done (every knob lives in :class:`RegistrationSettings`):

1. Both CTs are resampled onto isotropic axis-aligned grids around the target (fixed: a box of half-size
   ``region_half_mm``; moving: the same box grown by ``moving_margin_mm``). Isotropic grids make ITK's
   shrink factors mean the same in mm along every axis; a 2.5 mm slice CT shrunk by 4 would otherwise be
   10 mm thick along z and lose the target.
2. HU are clipped to ``hu_window`` (CT-CT is one modality: correlation on clipped HU is fast and sharp).
   The needles' metal (> ``metal_hu``, dilated by ``metal_dilation_mm``) is masked out of the metric, in
   the moving image and, should there be any, in the fixed one.
3. The translation is initialised by an FFT normalised cross-correlation on a coarse grid (capture range
   +-``moving_margin_mm``; patient motion of 15 mm is beyond what a gradient optimiser reliably climbs).
4. ``sitk.ImageRegistrationMethod`` with an ``Euler3DTransform`` centred on the target, multi-resolution
   (``shrink_factors``, ``smoothing_sigmas_mm``), random metric sampling, regular-step gradient descent
   with physical-shift scales. An observer records the metric at every iteration; the stop condition is kept.
5. Error estimate (``_error_budget``, parts in ``error_budget_mm``): the registration is also run backward
   (intraop -> pre-plan) from the forward answer perturbed by ``consistency_perturbation_mm`` / ``_deg``, and
   forward again from ``restarts`` other perturbed starts with their own metric samples. At the check points
   (target centre, box points, plan tips) the estimate adds in quadrature the larger of the forward/backward
   residual and the spread about the one kept of the candidates the full metric cannot tell apart (a run
   stuck in a clearly worse optimum is discarded when two others agree), and a resolution floor
   (``resolution_floor_fraction`` of the coarsest sampling: slice thickness or resampling step), because a
   small forward/backward residual says the
   optimum is stable, not that it is right (cf. FLE vs TRE): a consistent match biased by partial volume is
   invisible to both. Tests check it against truth: identity (real CTs against themselves), known motions of a
   real CT, and phantom scans from every scanner preset.
6. The result is whichever candidate (forward, inverted backward, their midpoint, restarts) has the best
   metric evaluated on every voxel (no sampling noise): along the neck's axis the optimum is shallow and a
   sampled gradient descent may stop a few tenths of a millimetre short; the full metric tells the better one
   apart. ``translation_at_centre_mm`` is the patient's shift at the target; ``translation_mm`` that of the
   LPS origin (which a tiny rotation moves by a millimetre when the origin is far from the target).

Refusals raise :class:`navigator.errors.RegistrationError` carrying the result (``exc.result``) so callers
can still write what was found: no overlap, no convergence, weak similarity, estimated error too large.
Different patient ids raise :class:`navigator.errors.InputError`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from navigator.errors import InputError, RegistrationError
from navigator.core.transform import RigidTransform
from navigator.core.volume import Volume, crop

__all__ = [
    "RegistrationSettings",
    "RegistrationResult",
    "MetricObserver",
    "register_rigid",
    "check_same_patient",
    "build_registration_method",
]


@dataclass(frozen=True)
class RegistrationSettings:
    """Every knob of the rigid registration, with its unit. Frozen: a result records the settings it used."""

    # region around the target
    region_half_mm: float = 45.0  # fixed box half-size around the target centre (mm)
    moving_margin_mm: float = 24.0  # moving box = fixed box + this on each side; also the init capture range
    grid_step_mm: float = 1.5  # isotropic resampling step of both crops (mm); sub-voxel accuracy is the norm
    # intensities
    hu_window: tuple[float, float] = (-300.0, 1300.0)  # HU clipped to this before the metric
    metal_hu: float = 2000.0  # voxels above this are metal (needles, seeds): masked out of the metric
    metal_dilation_mm: float = 3.0  # the mask is grown by this to cover the metal's blur halo (mm)
    # initialisation
    init_step_mm: float = 3.0  # grid of the FFT cross-correlation translation search (mm)
    # metric
    metric: str = "correlation"  # "correlation" | "mean_squares" | "mattes"
    mattes_bins: int = 32
    sampling_strategy: str = "random"  # "random" | "regular" | "none"
    sampling_fractions: tuple[float, ...] = (0.3, 0.08, 0.02)  # of the fixed grid's voxels, per level
    sampling_seed: int = 20261122
    # pyramid
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    # optimiser: regular-step gradient descent on (rotation rad, translation mm) with physical-shift scales
    learning_rate: float = 2.0  # first step, in mm of the largest point shift
    min_step: float = 0.01  # mm of point shift: far below the 0.5 mm TRE goal
    max_iterations: int = 120
    relaxation_factor: float = 0.5
    gradient_magnitude_tolerance: float = 1e-6
    threads: int = 2
    # refusal and error estimate
    consistency_check: bool = True
    consistency_perturbation_mm: float = 1.5
    consistency_perturbation_deg: float = 1.5
    consistency_shrink_factors: tuple[int, ...] = (2, 1)  # the backward run starts near the answer
    consistency_smoothing_sigmas_mm: tuple[float, ...] = (1.0, 0.0)
    restarts: int = 1  # forward runs from perturbed starts, each with its own metric samples (error estimate)
    agreeing_metric_tolerance: float = 0.005  # correlation: candidates within this of the best count as
    #                                          alternatives (a flat optimum); worse ones as failed runs
    resolution_floor_fraction: float = 0.1  # error floor: this fraction of the coarsest sampling (slice, step)
    max_estimated_error_mm: float = 1.5  # refuse above this: with the 2 mm needle tolerance a larger error
    #                                      would make the check meaningless (the estimate is conservative)
    max_metric: float = -0.5  # correlation: -1 is perfect; refuse a final metric worse than this
    min_overlap_fraction: float = 0.35  # of the fixed box that must lie inside the moving scan (a short intraop
    #                                     scan of 60 mm covers ~60 % of a 90 mm box)


class MetricObserver:
    """Records the metric at every optimiser iteration (level, value): the trace a physicist checks."""

    def __init__(self, method):
        self._method = method
        self.levels: list[int] = []
        self.values: list[float] = []

    def on_iteration(self) -> None:
        self.levels.append(int(self._method.GetCurrentLevel()))
        self.values.append(float(self._method.GetMetricValue()))

    def trace(self) -> list[list[float]]:
        return [[lv, round(v, 6)] for lv, v in zip(self.levels, self.values)]


@dataclass
class RegistrationResult:
    """A rigid registration pre-plan (fixed) -> intraop (moving), LPS mm both sides."""

    fixed_to_moving: RigidTransform  # pre-plan (fixed) -> intraop (moving); a 4x4 array is taken too
    metric: float
    converged: bool
    estimated_error_mm: float
    seconds: float
    cpu_seconds: float = float("nan")  # CPU time of all threads: the fair measure on a shared machine
    metric_trace: list = field(default_factory=list)  # [[level, value], ...] forward run
    stop_condition: str = ""
    iterations: int = 0
    region_centre_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    region_half_mm: float = 0.0
    check_points_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # fixed LPS
    consistency_residuals_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    initial_translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    overlap_fraction: float = 1.0
    chosen: str = "forward"  # which estimate was kept: forward, backward (inverted), midpoint, restartN
    error_budget_mm: dict = field(default_factory=dict)  # parts of estimated_error_mm (see _error_budget)
    refusal: str = ""  # why it was refused, empty when accepted
    fixed_frame_of_reference_uid: str = ""
    moving_frame_of_reference_uid: str = ""
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fixed_to_moving = RigidTransform.of(self.fixed_to_moving)

    @property
    def moving_to_fixed(self) -> RigidTransform:
        return self.fixed_to_moving.inverse()

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the transform (degrees)."""
        return self.fixed_to_moving.rotation_deg

    @property
    def translation_at_centre_mm(self) -> np.ndarray:
        """How far the region centre moves (mm, moving LPS - fixed LPS): the patient's shift at the target.

        ``fixed_to_moving.translation_mm`` is the shift of the LPS origin, often a metre away from the target:
        there a rotation of 0.08 degrees alone moves it by 1.1 mm (a CT registered with itself, STS_001)."""
        return self.fixed_to_moving.apply(self.region_centre_mm) - self.region_centre_mm

    def map_fixed_to_moving(self, points_mm) -> np.ndarray:
        """Fixed (pre-plan) LPS mm (..., 3) -> moving (intraop) LPS mm."""
        return self.fixed_to_moving.apply(points_mm)

    def map_moving_to_fixed(self, points_mm) -> np.ndarray:
        return self.moving_to_fixed.apply(points_mm)

    def to_json(self) -> dict:
        """registration.json per cli-contract.md, plus diagnostics under extra keys."""
        return {
            "fixed_to_moving": self.fixed_to_moving.to_list(),
            "metric": round(float(self.metric), 6),
            "converged": bool(self.converged),
            # null when there is no estimate (a refusal before any registration ran): JSON has no Infinity
            "estimated_error_mm": (round(float(self.estimated_error_mm), 4) if np.isfinite(self.estimated_error_mm)
                                   else None),
            "seconds": round(float(self.seconds), 3),
            "cpu_seconds": round(float(self.cpu_seconds), 3),
            "stop_condition": self.stop_condition,
            "iterations": int(self.iterations),
            "rotation_deg": round(self.rotation_deg, 4),
            "translation_mm": [round(float(v), 4) for v in self.fixed_to_moving.translation_mm],
            "translation_at_centre_mm": [round(float(v), 4) for v in self.translation_at_centre_mm],
            "region_centre_mm": [round(float(v), 3) for v in self.region_centre_mm],
            "region_half_mm": float(self.region_half_mm),
            "check_points_mm": np.round(self.check_points_mm, 3).tolist(),
            "consistency_residuals_mm": np.round(self.consistency_residuals_mm, 4).tolist(),
            "initial_translation_mm": [round(float(v), 3) for v in self.initial_translation_mm],
            "overlap_fraction": round(float(self.overlap_fraction), 4),
            "chosen": self.chosen,
            "error_budget_mm": {k: round(float(v), 4) for k, v in self.error_budget_mm.items()},
            "refusal": self.refusal,
            "fixed_frame_of_reference_uid": self.fixed_frame_of_reference_uid,
            "moving_frame_of_reference_uid": self.moving_frame_of_reference_uid,
            "metric_trace": self.metric_trace,
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, d: dict) -> "RegistrationResult":
        try:
            m = np.array(d["fixed_to_moving"], dtype=float).reshape(4, 4)
            return cls(
                fixed_to_moving=m,
                metric=float(d["metric"]),
                converged=bool(d["converged"]),
                estimated_error_mm=float("inf") if d["estimated_error_mm"] is None else float(d["estimated_error_mm"]),
                seconds=float(d.get("seconds", 0.0)),
                stop_condition=str(d.get("stop_condition", "")),
                region_centre_mm=np.array(d.get("region_centre_mm", [0, 0, 0]), dtype=float),
                region_half_mm=float(d.get("region_half_mm", 0.0)),
                error_budget_mm={k: float(v) for k, v in (d.get("error_budget_mm") or {}).items()},
                fixed_frame_of_reference_uid=str(d.get("fixed_frame_of_reference_uid", "")),
                moving_frame_of_reference_uid=str(d.get("moving_frame_of_reference_uid", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"registration.json: not a valid registration ({type(exc).__name__}: {exc}); "
                             "write it with `navigator register`") from None



def check_same_patient(fixed: Volume, moving: Volume) -> None:
    """InputError when both scans name a patient and the ids differ."""
    a, b = (fixed.patient_id or "").strip(), (moving.patient_id or "").strip()
    if a and b and a != b:
        raise InputError(
            f"the pre-plan CT is of patient id {a!r} but the intraop CT is of patient id {b!r}; "
            "load the intraop series of the same patient")


# --- resampling --------------------------------------------------------------------------------------------


def _crop_isotropic(vol: Volume, centre_mm, half_mm: float, step_mm: float, default_hu: float,
                    metal_hu: float = np.inf):
    """Resample ``vol`` onto an axis-aligned LPS grid (identity direction) around ``centre_mm``.

    Returns (sitk image float32, inside fraction, metal (z, y, x) bool): voxels outside the scan get
    ``default_hu``; ``metal`` marks grid voxels touched by a scan voxel above ``metal_hu``.
    """
    import SimpleITK as sitk

    n = int(np.ceil(2 * half_mm / step_mm)) + 1
    origin = np.asarray(centre_mm, dtype=float) - step_mm * (n - 1) / 2.0
    sub = _subvolume(vol, origin, origin + step_mm * (n - 1))
    img = sub.to_sitk()
    grid = ([n, n, n], sitk.Transform(), sitk.sitkLinear, tuple(origin), (step_mm,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    # the metal is found on the scan's own voxels: smoothing and resampling would dilute a 1.3 mm needle
    metal_sub = sub.array > metal_hu
    metal = np.zeros((n, n, n), dtype=bool)
    if metal_sub.any():
        m_img = sub.with_array(metal_sub.astype(np.float32)).to_sitk()
        metal = sitk.GetArrayFromImage(sitk.Resample(m_img, *grid, 0.0, sitk.sitkFloat32)) > 0.01
    # anti-aliasing: where the scan is finer than the grid (in-plane pixels), smooth to the grid's scale
    # before sampling it, or noise and aliasing would wobble the metric by tenths of a millimetre
    # (scipy's separable FIR Gaussian, edges replicated as ITK's DiscreteGaussian does: same kernel to its 1 %
    # truncation, ten times faster on a 512-pixel crop, which is most of a live check's registration time)
    sp_abs = [abs(float(sp)) for sp in vol.spacing_mm]
    sig = [float(np.sqrt(max((step_mm / 2.0) ** 2 - (sp / 2.0) ** 2, 0.0))) for sp in sp_abs]
    if max(sig) > 0.05:
        from scipy import ndimage

        sigma_kji = [v / sp for v, sp in zip(sig, sp_abs)][::-1]
        img = sub.with_array(ndimage.gaussian_filter(sub.array, sigma_kji, mode="nearest", truncate=3.0)).to_sitk()
    out = sitk.Resample(img, *grid, float(default_hu), sitk.sitkFloat32)
    # fraction of the grid inside the scan: cheap on the grid corners' lattice (every 4th voxel)
    g = np.arange(0, n, 4) * step_mm
    pts = origin + np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    inside = float(np.mean(vol.contains_lps(pts)))
    return out, inside, metal


def _subvolume(vol: Volume, lo_mm, hi_mm, margin_vox: int = 2) -> Volume:
    """The part of ``vol`` covering the LPS box [lo, hi] (+ a margin), as a view: SimpleITK then copies and
    resamples a few MB instead of the whole 512 x 512 x N series."""
    corners = np.array([[x, y, z] for x in (lo_mm[0], hi_mm[0]) for y in (lo_mm[1], hi_mm[1])
                        for z in (lo_mm[2], hi_mm[2])])
    sub, _ = crop(vol, corners, margin_vox=margin_vox)
    return replace(sub, array=np.ascontiguousarray(sub.array, dtype=np.float32))


def _metal_mask(metal: np.ndarray, dilation_mm: float, step_mm: float) -> np.ndarray:
    """True where the metric may look: not metal, not its halo. Arrays (z, y, x) like sitk.GetArrayFromImage."""
    from scipy import ndimage

    if not metal.any():
        return np.ones_like(metal)
    r = max(1, int(round(dilation_mm / step_mm)))
    # a cube (separable maximum filter) rather than a ball: ten times faster, and masking a little more
    # around the metal costs nothing
    return ndimage.maximum_filter(metal.view(np.uint8), size=2 * r + 1) == 0


# --- building blocks ---------------------------------------------------------------------------------------


def build_registration_method(s: RegistrationSettings):
    """An ``sitk.ImageRegistrationMethod`` configured from the settings (no images, no transform yet)."""
    import SimpleITK as sitk

    r = sitk.ImageRegistrationMethod()
    if s.metric == "correlation":
        r.SetMetricAsCorrelation()
    elif s.metric == "mean_squares":
        r.SetMetricAsMeanSquares()
    elif s.metric == "mattes":
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s.mattes_bins)
    else:
        raise ValueError(f"unknown metric {s.metric!r}; use correlation, mean_squares or mattes")
    strategy = {"random": r.RANDOM, "regular": r.REGULAR, "none": r.NONE}[s.sampling_strategy]
    r.SetMetricSamplingStrategy(strategy)
    if strategy != r.NONE:
        # per level: the coarse grids are small, the finest has ~10^6 voxels of which ~10^4 pin 6 parameters
        r.SetMetricSamplingPercentagePerLevel(list(s.sampling_fractions), s.sampling_seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(
        learningRate=s.learning_rate, minStep=s.min_step, numberOfIterations=s.max_iterations,
        relaxationFactor=s.relaxation_factor, gradientMagnitudeTolerance=s.gradient_magnitude_tolerance)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(s.shrink_factors))
    r.SetSmoothingSigmasPerLevel(list(s.smoothing_sigmas_mm))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetNumberOfThreads(int(s.threads))
    # gradients at the sampled points only: a full gradient image of the moving box costs more than the
    # few percent of voxels the metric samples
    r.MetricUseFixedImageGradientFilterOff()
    r.MetricUseMovingImageGradientFilterOff()
    return r


def _fft_translation(fixed_np: np.ndarray, fixed_valid: np.ndarray, moving_np: np.ndarray,
                     moving_valid: np.ndarray, factor: int, step_mm: float) -> np.ndarray:
    """Translation (x, y, z mm; fixed -> moving) maximising masked normalised cross-correlation.

    ``fixed_np`` is the fixed box, ``moving_np`` the larger moving box with the same centre; both on the same
    isotropic grid, arrays (z, y, x). Downsampled by ``factor`` (block means) for speed.
    """
    def down(a):
        z, y, x = (np.array(a.shape) // factor) * factor
        a = a[:z, :y, :x]
        return a.reshape(z // factor, factor, y // factor, factor, x // factor, factor).mean(axis=(1, 3, 5))

    f, fw = down(fixed_np), down(fixed_valid.astype(np.float32))
    m, mw = down(moving_np), down(moving_valid.astype(np.float32))
    fw = (fw > 0.99).astype(np.float64)
    mw = (mw > 0.99).astype(np.float64)
    f = f.astype(np.float64) * fw
    m = m.astype(np.float64) * mw
    # masked normalised cross-correlation (Padfield 2012): statistics over the overlap of both masks only,
    # so a short intraop scan that covers part of the box is compared on what it covers
    n = _correlate_valid(mw, fw)
    sf = _correlate_valid(mw, f)
    sm = _correlate_valid(m, fw)
    sff = _correlate_valid(mw, f * f)
    smm = _correlate_valid(m * m, fw)
    sfm = _correlate_valid(m, f)
    nn = np.maximum(n, 1.0)
    var = np.maximum(sff - sf * sf / nn, 1e-6) * np.maximum(smm - sm * sm / nn, 1e-6)
    ncc = (sfm - sf * sm / nn) / np.sqrt(var)
    ncc[n < 0.5 * n.max()] = -np.inf  # too little overlap to judge
    idx = np.array(np.unravel_index(int(np.argmax(ncc)), ncc.shape), dtype=float)
    # sub-cell refinement: parabola through the neighbours along each axis
    for a in range(3):
        i = int(idx[a])
        if 0 < i < ncc.shape[a] - 1:
            sl = [int(v) for v in idx]
            vals = []
            for d in (-1, 0, 1):
                sl2 = list(sl)
                sl2[a] = i + d
                vals.append(ncc[tuple(sl2)])
            den = vals[0] - 2 * vals[1] + vals[2]
            if np.all(np.isfinite(vals)) and den < 0:
                idx[a] = i + 0.5 * (vals[0] - vals[2]) / den
    centre = (np.array(ncc.shape, dtype=float) - 1) / 2.0
    shift_zyx = (idx - centre) * factor * step_mm
    return shift_zyx[::-1].copy()  # (x, y, z)


def _correlate_valid(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """sum_x small(x) big(x + t) for every shift t keeping ``small`` inside ``big`` (numpy FFT, float64)."""
    shape = [b + s - 1 for b, s in zip(big.shape, small.shape)]
    axes = (0, 1, 2)
    fb = np.fft.rfftn(big, shape, axes=axes)
    fs = np.fft.rfftn(small[::-1, ::-1, ::-1], shape, axes=axes)
    full = np.fft.irfftn(fb * fs, shape, axes=axes)
    sl = tuple(slice(s - 1, b) for b, s in zip(big.shape, small.shape))
    return full[sl]


def _euler_to_matrix(tx) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    t = np.array(tx.GetTranslation())
    m[:3, 3] = t + c - m[:3, :3] @ c
    return m


def _run_one(s: RegistrationSettings, fixed_img, fixed_mask, moving_img, moving_mask, init_matrix: np.ndarray,
             centre_mm: np.ndarray):
    """One multi-resolution registration; returns (4x4 fixed->moving, metric, stop, iterations, observer)."""
    import SimpleITK as sitk

    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(v) for v in centre_mm))
    rot = init_matrix[:3, :3]
    tx.SetMatrix(tuple(float(v) for v in rot.ravel()), 1e-5)
    # translation such that p -> R (p - c) + c + t equals init_matrix
    t = init_matrix[:3, 3] - (centre_mm - rot @ centre_mm)
    tx.SetTranslation(tuple(float(v) for v in t))

    r = build_registration_method(s)
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        r.SetMetricMovingMask(moving_mask)
    r.SetInitialTransform(tx, inPlace=True)
    obs = MetricObserver(r)
    r.AddCommand(sitk.sitkIterationEvent, obs.on_iteration)
    try:
        r.Execute(fixed_img, moving_img)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RegistrationError(
            f"registration failed inside ITK ({msg}); the scans probably do not overlap around the target: "
            "check that the intraop series covers the target region, then rescan") from None
    stop = r.GetOptimizerStopConditionDescription()
    return _euler_to_matrix(tx), float(r.GetMetricValue()), stop, int(r.GetOptimizerIteration()), obs


def _metric_at(s: RegistrationSettings, fixed_img, fixed_mask, moving_img, moving_mask, matrix: np.ndarray,
               centre_mm: np.ndarray) -> float:
    """The metric of a given transform on every fixed voxel (no sampling noise), at full resolution."""
    import SimpleITK as sitk

    full = RegistrationSettings(**{**asdict(s), "shrink_factors": (1,), "smoothing_sigmas_mm": (0.0,),
                                   "sampling_strategy": "none", "sampling_fractions": (1.0,)})
    r = build_registration_method(full)
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        r.SetMetricMovingMask(moving_mask)
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(v) for v in centre_mm))
    tx.SetMatrix(tuple(float(v) for v in matrix[:3, :3].ravel()), 1e-5)
    tx.SetTranslation(tuple(float(v) for v in matrix[:3, 3] - (centre_mm - matrix[:3, :3] @ centre_mm)))
    r.SetInitialTransform(tx, inPlace=True)
    try:
        return float(r.MetricEvaluate(fixed_img, moving_img))
    except RuntimeError:
        return float("inf")


def _midpoint(a: np.ndarray, b: np.ndarray, centre_mm: np.ndarray) -> np.ndarray:
    """The rigid transform half-way between ``a`` and ``b`` (mean rotation, mean image of the centre)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]])).mean().as_matrix()
    c_img = 0.5 * (RigidTransform(a).apply(centre_mm) + RigidTransform(b).apply(centre_mm))
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = c_img - rot @ centre_mm
    return m


def _box_check_points(centre_mm: np.ndarray, half_mm: float) -> np.ndarray:
    """Target centre and six points at half the box half-size: where the needles' tips lie."""
    d = 0.5 * half_mm
    offs = np.array([[0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d], [0, 0, -d]], float)
    return centre_mm + offs


def _perturbation(deg: float, mm: float, axis_sign=(1.0, -1.0, 1.0), shift_sign=(1.0, 1.0, -1.0)) -> np.ndarray:
    """A fixed, deterministic small rigid motion (about an oblique axis, shifted along another) used to
    restart a run away from an answer."""
    axis = np.asarray(axis_sign, dtype=float) / np.sqrt(3.0)
    a = np.radians(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = mm * np.asarray(shift_sign, dtype=float) / np.sqrt(3.0)
    return m


def _centred(m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The rigid motion ``m`` applied about the point ``c`` rather than the origin."""
    t1, t2 = np.eye(4), np.eye(4)
    t1[:3, 3] = -c
    t2[:3, 3] = c
    return t2 @ m @ t1


# --- the public entry point --------------------------------------------------------------------------------


def register_rigid(fixed: Volume, moving: Volume, region_mm=None, metal_hu: float | None = None,
                   settings: RegistrationSettings | None = None, check_points_mm=None,
                   raise_on_refusal: bool = True) -> RegistrationResult:
    """Register ``moving`` (intraop CT) to ``fixed`` (pre-plan CT) rigidly around the target.

    ``region_mm``: where to look, in fixed LPS mm: ``None`` (centre of the fixed scan), a centre ``(x, y, z)``,
    ``(centre, radius_mm)``, or an LPS box ``((x0, y0, z0), (x1, y1, z1))`` (its centre and largest half-side).
    ``metal_hu`` overrides ``settings.metal_hu``. ``check_points_mm`` (fixed LPS, e.g. planned tips) are added
    to the points where the error is estimated.

    Stages: crop both scans around the target (``_crop_pair``), FFT translation start, forward run
    (``_run_one``), backward run and restarts from perturbed starts (``_alternatives``), the best candidate by
    the full metric (``_choose``), the error estimate (``_error_budget``), refusal.

    Returns a :class:`RegistrationResult`; raises :class:`RegistrationError` (with ``.result``) when refused,
    unless ``raise_on_refusal`` is false (then ``result.refusal`` says why), and :class:`InputError` for scans
    of different patients.
    """
    s = settings or RegistrationSettings()
    if metal_hu is not None:
        s = replace(s, metal_hu=float(metal_hu))
    check_same_patient(fixed, moving)
    t0, c0 = time.perf_counter(), time.process_time()
    centre, half = _parse_region(region_mm, fixed, s.region_half_mm)
    if not fixed.contains_lps(centre):
        raise InputError(f"the target region centre {np.round(centre, 1).tolist()} mm lies outside the pre-plan CT; "
                         "give a region inside the fixed scan")
    pair = _crop_pair(fixed, moving, centre, half, s)
    if pair.moving_valid.mean() < 0.05 or pair.moving_inside < 0.05:
        return _refuse(_refused(s, centre, half, t0, fixed, moving, 0.0,
                                "no overlap: the intraop CT does not cover the target region "
                                f"(centre {np.round(centre, 1).tolist()} mm, half-size {half:.0f} mm); "
                                "rescan covering the target"), raise_on_refusal)
    t_init = pair.fft_translation(s)
    init = np.eye(4)
    init[:3, 3] = t_init
    fwd, metric, stop, iters, obs = _run_one(s, *pair.images(), init, centre)
    converged = "Maximum number of iterations" not in stop

    points = _box_check_points(centre, half)
    if check_points_mm is not None:
        points = np.vstack([points, np.asarray(check_points_mm, dtype=float).reshape(-1, 3)])
    residuals = np.zeros(len(points))
    chosen, candidates, agree = "forward", {"forward": fwd}, ["forward"]
    weak = s.metric == "correlation" and metric > s.max_metric   # refused whatever else is found
    if s.consistency_check and not weak:
        bwd, restarts = _alternatives(s, fixed, moving, pair, fwd, centre, half)
        candidates.update({"backward": np.linalg.inv(bwd),
                           "midpoint": _midpoint(fwd, np.linalg.inv(bwd), centre), **restarts})
        chosen, values = _choose(s, pair, candidates, centre)
        metric, agree = values[chosen], _agreeing(values, s)
        if "forward" in agree and "backward" in agree:
            residuals = np.linalg.norm(RigidTransform(bwd).apply(RigidTransform(fwd).apply(points)) - points, axis=1)
    best = candidates[chosen]
    spread = np.max([np.linalg.norm(RigidTransform(candidates[c]).apply(points) - RigidTransform(best).apply(points),
                                    axis=1) for c in agree], axis=0)
    budget = _error_budget(s, fixed, moving, residuals, spread)
    budget["runs_discarded"] = float(len(candidates) - len(agree))
    overlap = float(np.mean(moving.contains_lps(RigidTransform(best).apply(_lattice(centre, half, 6)))))
    result = RegistrationResult(
        fixed_to_moving=best, metric=metric, converged=converged, estimated_error_mm=budget["estimated_error_mm"],
        seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, metric_trace=obs.trace(),
        stop_condition=stop, iterations=iters, region_centre_mm=centre, region_half_mm=half, check_points_mm=points,
        consistency_residuals_mm=residuals, initial_translation_mm=t_init, overlap_fraction=overlap, chosen=chosen,
        error_budget_mm=budget, fixed_frame_of_reference_uid=fixed.frame_of_reference_uid,
        moving_frame_of_reference_uid=moving.frame_of_reference_uid, settings=_settings_json(s))
    result.refusal = _refusal(result, s)
    if result.refusal:
        result.converged = result.converged and not result.refusal.startswith("did not converge")
        return _refuse(result, raise_on_refusal)
    return result


def _refuse(result: RegistrationResult, raise_on_refusal: bool) -> RegistrationResult:
    if raise_on_refusal:
        exc = RegistrationError(result.refusal)
        exc.result = result
        raise exc
    return result


@dataclass
class _Pair:
    """One registration problem on isotropic crops: clipped HU images and where the metric may look (z, y, x)."""

    fixed_img: object      # sitk images (their geometry) of the crops
    moving_img: object
    fixed_hu: np.ndarray   # clipped to the HU window, outside-the-scan filled with the window's low end
    moving_hu: np.ndarray
    fixed_keep: np.ndarray
    moving_keep: np.ndarray
    moving_valid: np.ndarray
    moving_inside: float

    def images(self):
        """(fixed image, fixed mask or None, moving image, moving mask) for ``_run_one``/``_metric_at``."""
        import SimpleITK as sitk

        fmask = None if self.fixed_keep.all() else _like(self.fixed_img, self.fixed_keep.astype(np.uint8),
                                                          sitk.sitkUInt8)
        mmask = _like(self.moving_img, self.moving_keep.astype(np.uint8), sitk.sitkUInt8)
        return _like(self.fixed_img, self.fixed_hu), fmask, _like(self.moving_img, self.moving_hu), mmask

    def fft_translation(self, s: RegistrationSettings) -> np.ndarray:
        """Masked FFT cross-correlation start (metal replaced by soft tissue so that it does not pull)."""
        m_for_init = np.where(self.moving_keep, self.moving_hu, 40.0).astype(np.float32)
        factor = max(1, int(round(s.init_step_mm / s.grid_step_mm)))
        return _fft_translation(self.fixed_hu, self.fixed_keep, m_for_init, self.moving_valid, factor,
                                s.grid_step_mm)


def _crop_pair(fixed: Volume, moving: Volume, centre_mm, half_mm: float, s: RegistrationSettings) -> _Pair:
    """``fixed`` cropped to the box around ``centre_mm``, ``moving`` to the box grown by the capture margin."""
    import SimpleITK as sitk

    f_img, _, f_metal = _crop_isotropic(fixed, centre_mm, half_mm, s.grid_step_mm, np.nan, s.metal_hu)
    m_img, m_inside, m_metal = _crop_isotropic(moving, centre_mm, half_mm + s.moving_margin_mm, s.grid_step_mm,
                                               np.nan, s.metal_hu)
    out = []
    for img, metal in ((f_img, f_metal), (m_img, m_metal)):
        a = sitk.GetArrayFromImage(img)
        valid = np.isfinite(a)
        a = np.clip(np.where(valid, a, s.hu_window[0]), *s.hu_window).astype(np.float32)
        out.append((a, _metal_mask(metal, s.metal_dilation_mm, s.grid_step_mm) & valid, valid))
    (f, f_keep, _), (m, m_keep, m_valid) = out
    return _Pair(f_img, m_img, f, m, f_keep, m_keep, m_valid, m_inside)


def _alternatives(s: RegistrationSettings, fixed: Volume, moving: Volume, pair: _Pair, fwd: np.ndarray,
                  centre: np.ndarray, half: float):
    """The backward run (intraop -> pre-plan, a 4x4 moving -> fixed) and the forward restarts from perturbed
    starts ({name: 4x4 fixed -> moving}), all on the short pyramid and with their own metric samples.

    The backward run sees the problem from the other side (its own crops, its own samples); the restarts
    start ``consistency_perturbation_*`` away from the forward answer about other axes: where the optimum is
    shallow or several optima compete, they end apart and the spread shows it."""
    nb = len(s.consistency_shrink_factors)
    short = replace(s, shrink_factors=tuple(s.consistency_shrink_factors),
                    smoothing_sigmas_mm=tuple(s.consistency_smoothing_sigmas_mm),
                    sampling_fractions=tuple(s.sampling_fractions[-nb:]))
    c_m = RigidTransform(fwd).apply(centre)
    back = _crop_pair(moving, fixed, c_m, half, s)
    b_init = _centred(_perturbation(s.consistency_perturbation_deg, s.consistency_perturbation_mm), c_m) \
        @ np.linalg.inv(fwd)
    bwd = _run_one(short, *back.images(), b_init, c_m)[0]
    restarts = {}
    for n in range(s.restarts):
        axis_sign = np.array([[1, 1, -1], [-1, 1, 1], [1, -1, -1]])[n % 3]
        start = _centred(_perturbation(s.consistency_perturbation_deg, s.consistency_perturbation_mm,
                                       axis_sign, -axis_sign[::-1]), c_m) @ fwd
        run = replace(short, sampling_seed=s.sampling_seed + 7919 * (n + 1))
        restarts[f"restart{n + 1}"] = _run_one(run, *pair.images(), start, centre)[0]
    return bwd, restarts


def _choose(s: RegistrationSettings, pair: _Pair, candidates: dict, centre: np.ndarray) -> tuple[str, dict]:
    """The candidate with the best metric on every voxel (no sampling noise), and every candidate's metric:
    along the neck's axis the optimum is shallow and a sampled gradient descent may stop a few tenths of a
    millimetre short."""
    images = pair.images()
    values = {name: _metric_at(s, *images, m, centre) for name, m in candidates.items()}
    return min(values, key=values.get), values


def _agreeing(values: dict, s: RegistrationSettings) -> list[str]:
    """The candidates whose full metric is within ``agreeing_metric_tolerance`` of the best: alternatives the
    data cannot tell apart, whose spread is the uncertainty. A clearly worse one is a run that failed (stuck
    in a local optimum): it says nothing about the error of the kept answer when at least two independent runs
    (the midpoint is not one) agree; otherwise every candidate counts."""
    best = min(values.values())
    agree = [n for n, v in values.items() if v <= best + s.agreeing_metric_tolerance]
    runs = [n for n in agree if n != "midpoint"]
    return agree if len(runs) >= 2 else list(values)


def _error_budget(s: RegistrationSettings, fixed: Volume, moving: Volume, residuals: np.ndarray,
                  spread: np.ndarray) -> dict:
    """The estimated error at the check points (mm) and its parts.

    - ``consistency``: the largest forward/backward residual (how stable the optimum is);
    - ``spread``: the largest distance of any agreeing candidate (forward, backward, midpoint, restarts whose
      metric the data cannot tell from the best, ``_agreeing``) from the one kept: a shallow or ambiguous
      optimum (a run stuck clearly worse is discarded, ``runs_discarded``, when two others agree);
    - ``resolution``: a floor that neither of those can see: both runs can agree on a match biased by partial
      volume and interpolation, which scale with the coarsest sampling in play (the slice thickness of either
      scan or the resampling step); ``resolution_floor_fraction`` of it.
    The first two measure one thing (how well the optimum is pinned) and the larger counts; it and the floor
    are independent and add in quadrature."""
    coarsest = float(max(np.max(fixed.spacing_mm), np.max(moving.spacing_mm), s.grid_step_mm))
    parts = {"consistency": float(residuals.max()) if len(residuals) else 0.0,
             "spread": float(spread.max()) if len(spread) else 0.0,
             "resolution": s.resolution_floor_fraction * coarsest}
    stability = max(parts["consistency"], parts["spread"])   # one effect seen twice: take the larger
    parts["estimated_error_mm"] = float(np.hypot(stability, parts["resolution"]))
    return parts


def _refusal(r: RegistrationResult, s: RegistrationSettings) -> str:
    if r.overlap_fraction < s.min_overlap_fraction:
        return (f"no overlap: only {100 * r.overlap_fraction:.0f} % of the target region (need "
                f">= {100 * s.min_overlap_fraction:.0f} %) lies inside the intraop CT; rescan covering the target")
    if not r.converged:
        return (f"did not converge: the optimiser stopped by '{r.stop_condition}' after {r.iterations} iterations; "
                "check that both series show the same anatomy, then rescan")
    if s.metric == "correlation" and r.metric > s.max_metric:
        return (f"weak similarity: final correlation {-r.metric:.2f} (need >= {-s.max_metric:.2f}); the scans do "
                "not show the same anatomy around the target (other patient or region?); check the series")
    if r.estimated_error_mm > s.max_estimated_error_mm:
        return (f"estimated registration error {r.estimated_error_mm:.2f} mm exceeds "
                f"{s.max_estimated_error_mm:.2f} mm (" + ", ".join(
                    f"{k} {r.error_budget_mm[k]:.2f} mm" for k in ("consistency", "spread", "resolution")
                if k in r.error_budget_mm)
                + "); rescan longer or with thinner slices, or check the region")
    return ""


def _refused(s, centre, half, t0, fixed, moving, overlap, why) -> RegistrationResult:
    return RegistrationResult(
        fixed_to_moving=np.eye(4), metric=0.0, converged=False, estimated_error_mm=float("inf"),
        seconds=time.perf_counter() - t0, region_centre_mm=centre, region_half_mm=half, overlap_fraction=overlap,
        refusal=why, fixed_frame_of_reference_uid=fixed.frame_of_reference_uid,
        moving_frame_of_reference_uid=moving.frame_of_reference_uid, settings=_settings_json(s))


def _settings_json(s: RegistrationSettings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}


def _like(ref, arr: np.ndarray, pixel=None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    if pixel is not None and img.GetPixelID() != pixel:
        img = sitk.Cast(img, pixel)
    return img


def _lattice(centre, half, n) -> np.ndarray:
    g = np.linspace(-half, half, n)
    return np.asarray(centre) + np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


def _parse_region(region_mm, fixed: Volume, default_half: float):
    if region_mm is None:
        i, j, k = fixed.shape_ijk
        return fixed.ijk_to_lps([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2]), float(default_half)
    if isinstance(region_mm, dict):
        return np.asarray(region_mm["centre_mm"], float).reshape(3), float(region_mm.get("half_mm", default_half))
    arr = np.asarray(region_mm, dtype=object)
    if arr.shape == (3,) and all(np.isscalar(v) for v in region_mm):
        return np.asarray(region_mm, float), float(default_half)
    a, b = region_mm
    a = np.asarray(a, float)
    if np.isscalar(b):
        return a.reshape(3), float(b)
    b = np.asarray(b, float)
    return (a + b) / 2.0, float(np.max(np.abs(b - a)) / 2.0)
