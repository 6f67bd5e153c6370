"""Cold spots: connected parts of the CTV that receive less than the prescription.

A cold spot is a 26-connected region of CTV voxels with dose < Rx on the dose grid. Regions smaller than
``min_volume_cc`` are dropped (a few voxels at the CTV edge between two seeds are noise of the grid, not a
place to add a seed) and the threshold, the number dropped and their total volume are reported. The rest are
ranked by their dose-deficit integral, sum over voxels of (Rx - dose) x voxel cc = volume x mean deficit
(cc Gy): a large region just below Rx and a small one far below it both rank high.

Where the dose is missing: a region is often one 26-connected blob that runs along the CTV's rim (the outer
few mm of any implant sit just below Rx, the plan's own cold rim included) with a deep part where seeds are
missing; the geometric centroid of such a blob lies near the CTV's centre, far from the gap. So
``centroid_mm`` is weighted by where the dose is missing:
- with ``reference_gy`` (the plan's dose on the same grid): the centroid of the region weighted by the missing
  dose, max(0, reference - dose) - the plan's own cold rim weighs nothing, the voxels that went cold because
  seeds are absent weigh what they lack - and ``missing_peak_mm`` the voxel that lacks the most;
- without it: the deficit-weighted centroid of the region's *core*, its voxels whose deficit (Rx - dose) is
  at least ``core_fraction`` (default half) of the region's largest.
The whole region's centroid (``region_centroid_mm``) and its coldest voxel (``coldest_mm``) are reported beside
it; for a compact region of uniform deficit they all coincide.
Coordinates are LPS mm of the dose grid's frame. Pure numpy/scipy: no DICOM here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from navigator.core.volume import Volume

DEFAULT_MIN_VOLUME_CC = 0.05
DEFAULT_CORE_FRACTION = 0.5


@dataclass
class ColdSpot:
    volume_cc: float
    centroid_mm: np.ndarray       # LPS mm: deficit-weighted centroid of the core (deficit >= core_fraction x max)
    min_dose_gy: float
    mean_dose_gy: float
    mean_deficit_gy: float        # Rx - mean dose
    score_cc_gy: float            # volume x mean deficit: the ranking key
    voxels: int
    mask: np.ndarray | None = field(default=None, repr=False)   # (k, j, i) bool on the dose grid
    region_centroid_mm: np.ndarray | None = None   # LPS mm, the whole region's geometric centroid
    coldest_mm: np.ndarray | None = None           # LPS mm, the voxel of the largest deficit
    missing_peak_mm: np.ndarray | None = None      # LPS mm, the voxel of the largest missing dose (reference given)
    weighting: str = "deficit core"                # or "missing dose"

    def to_dict(self) -> dict:
        return {"volume_cc": round(self.volume_cc, 4),
                "centroid_mm": [round(float(v), 2) for v in self.centroid_mm],
                "min_dose_gy": round(self.min_dose_gy, 2), "mean_dose_gy": round(self.mean_dose_gy, 2),
                "mean_deficit_gy": round(self.mean_deficit_gy, 2), "score_cc_gy": round(self.score_cc_gy, 3),
                "voxels": int(self.voxels),
                "region_centroid_mm": None if self.region_centroid_mm is None else
                [round(float(v), 2) for v in self.region_centroid_mm],
                "coldest_mm": None if self.coldest_mm is None else [round(float(v), 2) for v in self.coldest_mm],
                "missing_peak_mm": None if self.missing_peak_mm is None else
                [round(float(v), 2) for v in self.missing_peak_mm],
                "centroid_weighting": self.weighting}


@dataclass
class ColdSpotResult:
    spots: list[ColdSpot]
    min_volume_cc: float
    dropped: int
    dropped_cc: float
    cold_cc: float                # all CTV below Rx, dropped regions included

    def to_dict(self) -> dict:
        return {"cold_spot_threshold_cc": self.min_volume_cc, "dropped_regions": self.dropped,
                "dropped_cc": round(self.dropped_cc, 4), "ctv_below_rx_cc": round(self.cold_cc, 4)}


def find_cold_spots(dose_gy: np.ndarray, ctv_mask: np.ndarray, grid: Volume, rx_gy: float,
                    min_volume_cc: float = DEFAULT_MIN_VOLUME_CC, keep_masks: bool = True,
                    core_fraction: float = DEFAULT_CORE_FRACTION, reference_gy: np.ndarray | None = None) -> ColdSpotResult:
    """Cold spots of ``dose_gy`` (Gy, (k, j, i) on ``grid``) inside ``ctv_mask`` (same shape) below ``rx_gy``,
    largest deficit integral first; ``reference_gy``: the plan's dose on the same grid (see the module)."""
    dose_gy = np.asarray(dose_gy)
    if dose_gy.shape != ctv_mask.shape or dose_gy.shape != grid.array.shape:
        raise ValueError(f"dose {dose_gy.shape}, CTV {ctv_mask.shape} and grid {grid.array.shape} must match")
    cold = ctv_mask & (dose_gy < rx_gy)
    vcc = grid.voxel_volume_cc
    labels, n = ndimage.label(cold, structure=np.ones((3, 3, 3), bool))
    spots: list[ColdSpot] = []
    dropped, dropped_cc = 0, 0.0
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == lab
        nvox = int(region.sum())
        if nvox * vcc < min_volume_cc:
            dropped += 1
            dropped_cc += nvox * vcc
            continue
        full = None
        if keep_masks:
            full = np.zeros(cold.shape, bool)
            full[sl] = region
        ref = None if reference_gy is None else reference_gy[sl][region].astype(float)
        spots.append(_spot(dose_gy[sl], region, sl, grid, rx_gy, core_fraction, full, ref))
    spots.sort(key=lambda s: -s.score_cc_gy)
    return ColdSpotResult(spots=spots, min_volume_cc=float(min_volume_cc), dropped=dropped, dropped_cc=dropped_cc,
                          cold_cc=float(cold.sum()) * vcc)


def _spot(dose_box: np.ndarray, region: np.ndarray, sl: tuple, grid: Volume, rx_gy: float, core_fraction: float,
          mask: np.ndarray | None, reference: np.ndarray | None = None) -> ColdSpot:
    """One region (``region``: bool in the box ``sl`` of the grid) measured; see the module docstring."""
    kk, jj, ii = np.nonzero(region)
    ijk = np.stack([ii + sl[2].start, jj + sl[1].start, kk + sl[0].start], axis=1).astype(float)
    d = dose_box[region].astype(float)
    deficit = rx_gy - d
    core = deficit >= core_fraction * deficit.max()
    centroid = grid.ijk_to_lps((ijk[core] * deficit[core, None]).sum(0) / deficit[core].sum())
    weighting, peak = "deficit core", None
    missing = None if reference is None else np.maximum(reference - d, 0.0)
    if missing is not None and missing.sum() > 0:
        weighting = "missing dose"
        centroid = grid.ijk_to_lps((ijk * missing[:, None]).sum(0) / missing.sum())
        peak = grid.ijk_to_lps(ijk[int(np.argmax(missing))])
    vol_cc = len(d) * grid.voxel_volume_cc
    return ColdSpot(volume_cc=vol_cc, centroid_mm=centroid, min_dose_gy=float(d.min()), mean_dose_gy=float(d.mean()),
                    mean_deficit_gy=float(deficit.mean()), score_cc_gy=float(deficit.sum()) * grid.voxel_volume_cc,
                    voxels=len(d), mask=mask, region_centroid_mm=grid.ijk_to_lps(ijk.mean(0)),
                    coldest_mm=grid.ijk_to_lps(ijk[int(np.argmax(deficit))]), missing_peak_mm=peak,
                    weighting=weighting)
