"""The CT scanner's imperfections: texture, blur (PSF), blooming, metal streaks, noise, the HU range.

Order of a simulated acquisition (``acquire``): the ideal partial-volume image (anatomy and metal, slice
profile already integrated by the renderers) -> tissue texture -> metal streaks (the metal's error sinogram,
filtered and back-projected: beam hardening and photon starvation along the lines through metal, so streaks
run where real ones do, including the dark band between two pieces of metal) -> in-plane PSF blur, with a wider
tail for metal (blooming) -> correlated noise -> clipped to the scanner's HU range and rounded.

Scanners differ on purpose (``SCANNERS``, chosen by name with ``scanner_model``): the HU range where metal
saturates (12-bit 3071, 4095, or an extended scale), the slice sensitivity profile (``box``: the whole slice
averaged; ``gaussian``: FWHM = slice thickness, reaching into the neighbouring slices; rendered in
``cases.render_scan``), sharp or smooth kernels (PSF and noise texture), with or without blooming and streaks.
Pixel size and slice thickness are the acquisition's, given to the scan functions.

Metal is passed as ``metal_hu`` = sum of occupancy x the metal's effective HU, with ``metal_occ`` its total
occupancy (clipped at 1), on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from navigator.core.volume import Volume
from navigator.errors import InputError

from . import _kernels as K

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class ScannerModel:
    """A CT scanner and reconstruction kernel. Lengths in mm, values in HU."""

    psf_fwhm_mm: float = 0.8            # in-plane resolution of a standard soft-tissue kernel
    noise_hu: float = 12.0              # standard deviation of image noise in water
    noise_corr_fwhm_mm: float = 0.8     # noise is correlated over about the PSF
    texture_hu: float = 6.0             # smooth tissue heterogeneity
    texture_fwhm_mm: float = 4.0
    bloom_fraction: float = 0.2         # share of the metal signal in the wide (blooming) component
    bloom_fwhm_mm: float = 2.0
    streaks: bool = True
    streak_angles: int = 180            # projections over 180 degrees
    mu_water_per_mm: float = 0.019      # effective attenuation of water (~70 keV)
    beam_hardening: float = 0.10        # p_measured = p / (1 + beam_hardening * p), p = metal line integral
    starvation_p: float = 6.0           # metal line integral at which the detector runs out of photons
    starvation_noise: float = 0.01      # projection noise scale (line-integral units) behind metal
    hu_min: float = -1024.0
    hu_max: float = 3071.0              # 12-bit scanner range: metal saturates here
    slice_profile: str = "box"          # "box" (whole slice averaged) or "gaussian" (FWHM = slice thickness)
    name: str = "sim_a"

    def __post_init__(self) -> None:
        if self.slice_profile not in SLICE_PROFILES:
            raise InputError(f"slice_profile {self.slice_profile!r} is not one of {', '.join(SLICE_PROFILES)}")

    def describe(self) -> dict:
        return dict(self.__dict__)


SLICE_PROFILES = ("box", "gaussian")

# Scanner presets built to differ from each other where finders and registration are sensitive (issue #12).
SCANNERS: dict[str, ScannerModel] = {
    # our original simulator: 12-bit clip, box profile, standard kernel, blooming and streaks
    "sim_a": ScannerModel(),
    # like the independent phantom that broke the intraop check: metal clipped at 3071 HU, Gaussian slice
    # profile, a Gaussian in-plane blur of sigma 0.45 mm (FWHM 1.06 mm), no blooming model and no streaks
    "vendor_b": ScannerModel(psf_fwhm_mm=1.06, noise_hu=12.0, noise_corr_fwhm_mm=1.0, bloom_fraction=0.0,
                             streaks=False, hu_max=3071.0, slice_profile="gaussian", name="vendor_b"),
    # 4095 HU ceiling, box profile, a sharp kernel (narrow PSF, finer and stronger noise), strong blooming and
    # streaks (more beam hardening, earlier photon starvation)
    "vendor_c": ScannerModel(psf_fwhm_mm=0.5, noise_hu=20.0, noise_corr_fwhm_mm=0.5, texture_hu=8.0,
                             bloom_fraction=0.35, bloom_fwhm_mm=2.8, streaks=True, beam_hardening=0.16,
                             starvation_p=5.0, hu_max=4095.0, slice_profile="box", name="vendor_c"),
    # an extended HU scale (metal kept up to 30710 HU), Gaussian profile, a smooth kernel (wide PSF, low
    # noise), blooming and streaks
    "vendor_d": ScannerModel(psf_fwhm_mm=1.3, noise_hu=7.0, noise_corr_fwhm_mm=1.3, texture_hu=5.0,
                             bloom_fraction=0.25, hu_max=30710.0, slice_profile="gaussian", name="vendor_d"),
}


def scanner_model(scanner: "ScannerModel | str | None", default: "ScannerModel | None" = None) -> ScannerModel:
    """A ``ScannerModel`` from a model, a preset's name (``SCANNERS``) or None (``default``, else sim_a)."""
    if scanner is None:
        return default or SCANNERS["sim_a"]
    if isinstance(scanner, ScannerModel):
        return scanner
    if isinstance(scanner, str) and scanner in SCANNERS:
        return SCANNERS[scanner]
    raise InputError(f"unknown scanner {scanner!r}; the presets are {', '.join(SCANNERS)}")


def _sigma_vox(grid: Volume, fwhm_mm: float) -> tuple[float, float, float]:
    """Gaussian sigma per numpy axis (k, j, i): in-plane only (the slice profile is rendered, not blurred)."""
    s = fwhm_mm * FWHM_TO_SIGMA
    return (0.0, s / grid.spacing_mm[1], s / grid.spacing_mm[0])


def _ramp_kernel(n: int, step_mm: float) -> np.ndarray:
    """Ram-Lak filter in the spatial domain (Kak & Slaney eq. 3.61), taps -n..n."""
    k = np.arange(-n, n + 1)
    h = np.zeros(2 * n + 1)
    h[k == 0] = 1.0 / (4.0 * step_mm ** 2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd] * step_mm) ** 2
    return h


def streak_image(metal_hu_slice: np.ndarray, pixel_mm: float, rng: np.random.Generator,
                 model: ScannerModel) -> np.ndarray:
    """HU error image of one slice caused by its metal: FBP of (measured - ideal) metal projections.

    The ideal metal is rendered directly; only the error it causes is reconstructed here, so a scanner with
    no beam hardening and no starvation adds nothing.
    """
    jj, ii = np.nonzero(metal_hu_slice > 0)
    nj, ni = metal_hu_slice.shape
    if len(jj) == 0:
        return np.zeros((nj, ni), dtype=np.float32)
    mu = metal_hu_slice[jj, ii].astype(float) * model.mu_water_per_mm / 1000.0   # excess attenuation, 1/mm
    theta = np.linspace(0.0, np.pi, model.streak_angles, endpoint=False)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    cj, ci = 0.5 * (nj - 1), 0.5 * (ni - 1)
    half = 0.5 * np.hypot(nj, ni) * pixel_mm + 2 * pixel_mm
    nt = int(np.ceil(2 * half / pixel_mm)) + 1
    t0 = -half
    p = K.project_sparse(jj.astype(np.int64), ii.astype(np.int64), mu, cj, ci, pixel_mm, cos_t, sin_t, nt, t0)
    p_bh = p / (1.0 + model.beam_hardening * p)
    # photon starvation: a floor of counts behind metal (normalised so that no metal measures 0)
    floor = np.exp(-model.starvation_p)
    p_meas = -np.log((np.exp(-p_bh) + floor) / (1.0 + floor))
    err = p_meas - p
    hit = p > 1e-6
    err[hit] += rng.normal(size=int(hit.sum())) * model.starvation_noise * np.sqrt(np.expm1(np.maximum(p_meas[hit], 0.0)))
    q = signal.fftconvolve(err, _ramp_kernel(nt, pixel_mm)[None, :], mode="same", axes=1) * pixel_mm
    img = K.backproject(q, nj, ni, cj, ci, pixel_mm, cos_t, sin_t, t0)
    return (img * 1000.0 / model.mu_water_per_mm).astype(np.float32)


def acquire(ideal_hu: np.ndarray, grid: Volume, rng: np.random.Generator, model: ScannerModel,
            metal_hu: np.ndarray | None = None, metal_occ: np.ndarray | None = None) -> np.ndarray:
    """The reconstructed CT (k, j, i) float32 HU, integer-valued, from the ideal image and the metal."""
    img = ideal_hu.astype(np.float32, copy=True)
    if model.texture_hu > 0:
        tex = rng.standard_normal(img.shape, dtype=np.float32)
        sig = _sigma_vox(grid, model.texture_fwhm_mm)
        tex = ndimage.gaussian_filter(tex, sig)
        tex *= model.texture_hu / max(float(tex.std()), 1e-6)
        img += tex * np.clip((ideal_hu + 900.0) / 300.0, 0.0, 1.0)   # air stays clean, tissue is textured
    has_metal = metal_hu is not None and bool(np.any(metal_hu > 0))
    if has_metal:
        img *= 1.0 - metal_occ
        if model.streaks:
            ks = np.nonzero(metal_hu.reshape(metal_hu.shape[0], -1).max(1) > 0)[0]
            for k in ks:
                img[k] += streak_image(metal_hu[k], float(grid.spacing_mm[0]), rng, model)
    img = ndimage.gaussian_filter(img, _sigma_vox(grid, model.psf_fwhm_mm))
    if has_metal:
        img += (1.0 - model.bloom_fraction) * ndimage.gaussian_filter(metal_hu, _sigma_vox(grid, model.psf_fwhm_mm))
        img += model.bloom_fraction * ndimage.gaussian_filter(metal_hu, _sigma_vox(grid, model.bloom_fwhm_mm))
    if model.noise_hu > 0:
        n = rng.standard_normal(img.shape, dtype=np.float32)
        n = ndimage.gaussian_filter(n, _sigma_vox(grid, model.noise_corr_fwhm_mm))
        n *= model.noise_hu / max(float(n.std()), 1e-6)
        img += n
    np.clip(img, model.hu_min, model.hu_max, out=img)
    return np.rint(img)


def add_metal(ct: Volume, metal_hu: np.ndarray, metal_occ: np.ndarray, rng: np.random.Generator,
              model: ScannerModel) -> np.ndarray:
    """Metal put into an existing (already noisy, blurred) CT: displaced tissue, streaks, blur, blooming,
    clip. The tissue is not re-blurred and no new noise is added."""
    img = ct.array.astype(np.float32, copy=True)
    if not np.any(metal_hu > 0):
        return img
    occ_b = ndimage.gaussian_filter(metal_occ.astype(np.float32), _sigma_vox(ct, model.psf_fwhm_mm))
    img *= 1.0 - np.clip(occ_b, 0.0, 1.0)
    extra = np.zeros_like(img)
    if model.streaks:
        ks = np.nonzero(metal_hu.reshape(metal_hu.shape[0], -1).max(1) > 0)[0]
        for k in ks:
            extra[k] = streak_image(metal_hu[k], float(ct.spacing_mm[0]), rng, model)
    img += ndimage.gaussian_filter(extra, _sigma_vox(ct, model.psf_fwhm_mm))
    img += (1.0 - model.bloom_fraction) * ndimage.gaussian_filter(metal_hu, _sigma_vox(ct, model.psf_fwhm_mm))
    img += model.bloom_fraction * ndimage.gaussian_filter(metal_hu, _sigma_vox(ct, model.bloom_fwhm_mm))
    np.clip(img, model.hu_min, model.hu_max, out=img)
    return np.rint(img)
