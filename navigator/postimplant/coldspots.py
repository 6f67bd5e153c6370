"""Cold spots: connected parts of the CTV that receive less than the prescription.

A cold spot is a 26-connected region of CTV voxels with dose < Rx on the dose grid. Regions smaller than
``min_volume_cc`` are dropped (a few voxels at the CTV edge between two seeds are noise of the grid, not a
place to add a seed) and the threshold, the number dropped and their total volume are reported. The rest are
ranked by volume x mean dose deficit (cc Gy): a large region just below Rx and a small one far below it both
rank high. Centroids are LPS mm of the dose grid's frame. Pure numpy/scipy: no DICOM here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from navigator.core.volume import Volume

DEFAULT_MIN_VOLUME_CC = 0.05


@dataclass
class ColdSpot:
    volume_cc: float
    centroid_mm: np.ndarray       # LPS mm
    min_dose_gy: float
    mean_dose_gy: float
    mean_deficit_gy: float        # Rx - mean dose
    score_cc_gy: float            # volume x mean deficit: the ranking key
    voxels: int
    mask: np.ndarray | None = field(default=None, repr=False)   # (k, j, i) bool on the dose grid

    def to_dict(self) -> dict:
        return {"volume_cc": round(self.volume_cc, 4),
                "centroid_mm": [round(float(v), 2) for v in self.centroid_mm],
                "min_dose_gy": round(self.min_dose_gy, 2), "mean_dose_gy": round(self.mean_dose_gy, 2),
                "mean_deficit_gy": round(self.mean_deficit_gy, 2), "score_cc_gy": round(self.score_cc_gy, 3),
                "voxels": int(self.voxels)}


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
                    min_volume_cc: float = DEFAULT_MIN_VOLUME_CC, keep_masks: bool = True) -> ColdSpotResult:
    """Cold spots of ``dose_gy`` (Gy, (k, j, i) on ``grid``) inside ``ctv_mask`` (same shape) below ``rx_gy``."""
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
        vol_cc = nvox * vcc
        if vol_cc < min_volume_cc:
            dropped += 1
            dropped_cc += vol_cc
            continue
        d = dose_gy[sl][region].astype(float)
        kk, jj, ii = np.nonzero(region)
        ijk = np.stack([ii + sl[2].start, jj + sl[1].start, kk + sl[0].start], axis=1).astype(float)
        centroid = grid.ijk_to_lps(ijk.mean(0))
        deficit = rx_gy - float(d.mean())
        full = None
        if keep_masks:
            full = np.zeros(cold.shape, bool)
            full[sl] = region
        spots.append(ColdSpot(volume_cc=vol_cc, centroid_mm=centroid, min_dose_gy=float(d.min()),
                              mean_dose_gy=float(d.mean()), mean_deficit_gy=deficit,
                              score_cc_gy=vol_cc * deficit, voxels=nvox, mask=full))
    spots.sort(key=lambda s: -s.score_cc_gy)
    return ColdSpotResult(spots=spots, min_volume_cc=float(min_volume_cc), dropped=dropped, dropped_cc=dropped_cc,
                          cold_cc=float(cold.sum()) * vcc)
