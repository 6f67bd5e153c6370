"""Dose-volume histograms and the plan metrics of cli-contract.md (pure numpy; doses in Gy, volumes in cc).

A structure is given as a boolean mask or as fractional occupancy weights (0..1 per voxel, e.g. from
``structures.structure_fraction``) on the dose grid: each voxel counts with weight × voxel volume. On lymph
nodes of a few cc a boolean mask misjudges the volume by a whole shell of voxels, so occupancy weights are the
way to get small structures right. The dose can be supersampled too (``supersample``): every voxel is split
into f³ sub-voxels whose dose is trilinearly interpolated from the voxel centres, each carrying 1/f³ of the
voxel's weight (the occupancy is not refined; the structure's edge is already in the weights).

Definitions:
- V_x (``V100_pct`` ...): volume receiving >= x % of the prescription, in % of the structure's volume.
- D_x (``D90_gy``): the minimum dose to the hottest x % of the volume. The voxels, sorted by dose, form a
  staircase of volume; each voxel's dose is placed at the middle of its volume step and D_x is read off by
  linear interpolation between those points (held at the hottest/coldest voxel beyond them), so D100 is the
  minimum dose and D0 the maximum. D_vcc (``D2cc_gy``): the same at an absolute volume in cc.
- HI = (V100 − V150) / V100 as a fraction (0 when V100 = 0), as in the thyroid-node paper among the seeds.
- Conformity: Paddick's conformity index CI = TV_Rx² / (TV · V_Rx) (TV target volume, TV_Rx target volume
  receiving >= Rx, V_Rx total volume receiving >= Rx); it equals COIN without the organ-at-risk factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navigator.errors import InputError

_METHOD = (
    "cumulative DVH from voxel doses weighted by fractional occupancy; D_x: minimum dose to the hottest x % "
    "(linear interpolation between voxel mid-volumes); V_x in % of the structure volume"
)


def _weights(mask_or_weights, shape) -> np.ndarray:
    w = np.asarray(mask_or_weights)
    if w.shape != shape:
        raise InputError(f"structure mask shape {w.shape} differs from the dose grid {shape}; resample it first")
    w = w.astype(float)
    if np.any(~np.isfinite(w)) or np.any(w < 0) or np.any(w > 1.0 + 1e-6):
        raise InputError("structure occupancy weights must lie in 0..1 (a mask or fractional occupancy)")
    return w


def supersample(dose_gy: np.ndarray, weights: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each voxel into factor³ sub-voxels: dose trilinear from the voxel centres, weight / factor³.

    Only the bounding box of the structure (plus one voxel) is supersampled; returns flat arrays.
    """
    from scipy.ndimage import map_coordinates

    if factor <= 1:
        return np.asarray(dose_gy, dtype=float).ravel(), np.asarray(weights, dtype=float).ravel()
    nz = np.nonzero(weights > 0)
    if len(nz[0]) == 0:
        return np.zeros(0), np.zeros(0)
    lo = [max(0, int(a.min()) - 1) for a in nz]
    hi = [min(n, int(a.max()) + 2) for a, n in zip(nz, weights.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    d, w = np.asarray(dose_gy, dtype=float)[box], weights[box]
    sub = (np.arange(factor) + 0.5) / factor - 0.5  # sub-voxel centres, in voxel units about the centre
    axes = [(np.arange(n)[:, None] + sub[None, :]).ravel() for n in d.shape]
    coords = np.meshgrid(*axes, indexing="ij")
    fine = map_coordinates(d, coords, order=1, mode="nearest")
    fine_w = np.repeat(np.repeat(np.repeat(w, factor, 0), factor, 1), factor, 2) / factor**3
    keep = fine_w > 0
    return fine[keep], fine_w[keep]


@dataclass
class DVH:
    """Cumulative DVH of one structure: voxel doses sorted hottest first with their volumes (cc)."""

    dose_gy: np.ndarray  # descending
    volume_cc: np.ndarray  # volume of each entry

    @classmethod
    def from_dose(cls, dose_gy, mask_or_weights, voxel_cc: float, supersample_factor: int = 1) -> "DVH":
        dose = np.asarray(getattr(dose_gy, "array", dose_gy), dtype=float)
        w = _weights(mask_or_weights, dose.shape)
        d, w = supersample(dose, w, supersample_factor)
        keep = w > 0
        d, w = d[keep], w[keep]
        order = np.argsort(-d, kind="stable")
        return cls(dose_gy=d[order], volume_cc=w[order] * float(voxel_cc))

    @property
    def total_cc(self) -> float:
        return float(self.volume_cc.sum())

    def _require(self) -> None:
        if len(self.dose_gy) == 0 or self.total_cc <= 0:
            raise InputError("structure is empty on the dose grid (0 cc); check it lies inside the dose grid")

    def volume_at_cc(self, dose_gy: float) -> float:
        """Volume (cc) receiving >= dose_gy."""
        return float(self.volume_cc[self.dose_gy >= dose_gy].sum())

    def v_pct(self, dose_gy: float) -> float:
        """Volume receiving >= dose_gy, % of the structure."""
        self._require()
        return 100.0 * self.volume_at_cc(dose_gy) / self.total_cc

    def d_at_cc(self, volume_cc: float) -> float:
        """Minimum dose (Gy) to the hottest ``volume_cc``."""
        self._require()
        mid = np.cumsum(self.volume_cc) - 0.5 * self.volume_cc  # each voxel's dose sits at its mid-volume
        return float(np.interp(volume_cc, mid, self.dose_gy))

    def d_pct(self, percent: float) -> float:
        """Minimum dose (Gy) to the hottest ``percent`` % of the structure (D90: percent=90)."""
        self._require()
        return self.d_at_cc(self.total_cc * percent / 100.0)

    def curve(self, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """(dose Gy, volume % receiving >= dose) on n dose points from 0 to the maximum, for plots."""
        self._require()
        doses = np.linspace(0.0, float(self.dose_gy[0]), n)
        return doses, np.array([self.v_pct(x) for x in doses])


def target_metrics(dose_gy, mask_or_weights, voxel_cc: float, rx_gy: float, supersample_factor: int = 1) -> dict:
    """{ctv_cc, D90_gy, D100_gy, V90_pct, V100_pct, V150_pct, V200_pct, HI} of a target for prescription rx_gy."""
    if not rx_gy > 0:
        raise InputError(f"prescription {rx_gy} Gy must be > 0 Gy (seed implants: 110-160 Gy)")
    dvh = DVH.from_dose(dose_gy, mask_or_weights, voxel_cc, supersample_factor)
    dvh._require()
    v = {p: dvh.v_pct(rx_gy * p / 100.0) for p in (90, 100, 150, 200)}
    return {
        "ctv_cc": dvh.total_cc,
        "D90_gy": dvh.d_pct(90.0),
        "D100_gy": dvh.d_pct(100.0),
        "V90_pct": v[90],
        "V100_pct": v[100],
        "V150_pct": v[150],
        "V200_pct": v[200],
        "HI": (v[100] - v[150]) / v[100] if v[100] > 0 else 0.0,
    }


def oar_metrics(dose_gy, mask_or_weights, voxel_cc: float, supersample_factor: int = 1) -> dict:
    """{Dmax_gy, D2cc_gy (None when the structure is < 2 cc), D0.1cc_gy} of an organ at risk."""
    dvh = DVH.from_dose(dose_gy, mask_or_weights, voxel_cc, supersample_factor)
    dvh._require()
    return {
        "Dmax_gy": float(dvh.dose_gy[0]),
        "D2cc_gy": dvh.d_at_cc(2.0) if dvh.total_cc >= 2.0 else None,
        "D0.1cc_gy": dvh.d_at_cc(0.1),  # a structure under 0.1 cc: its minimum dose (the whole of it)
    }


def conformity_index(dose_gy, target_mask_or_weights, voxel_cc: float, rx_gy: float, body_mask=None) -> float:
    """Paddick's CI = TV_Rx² / (TV · V_Rx); V_Rx counted over the dose grid (or inside ``body_mask``)."""
    dose = np.asarray(getattr(dose_gy, "array", dose_gy), dtype=float)
    w = _weights(target_mask_or_weights, dose.shape)
    hot = dose >= rx_gy
    if body_mask is not None:
        hot &= np.asarray(body_mask, dtype=bool)
    tv = w.sum()
    tv_rx = w[hot].sum()
    v_rx = hot.sum()
    if tv <= 0 or v_rx == 0:
        return 0.0
    return float(tv_rx**2 / (tv * v_rx))


def plan_metrics(dose_vol, target_weights, oar_weights: dict, rx_gy: float, supersample_factor: int = 1) -> dict:
    """The plan.json "metrics" dict: target metrics, ``oars: {name: {...}}``, ``CI_paddick`` and ``method``.

    ``dose_vol``: a Volume of dose in Gy (or an array with ``voxel_cc`` unavailable: pass a Volume).
    """
    voxel_cc = dose_vol.voxel_volume_cc
    dose = dose_vol.array
    metrics = target_metrics(dose, target_weights, voxel_cc, rx_gy, supersample_factor)
    metrics["oars"] = {name: oar_metrics(dose, w, voxel_cc, supersample_factor) for name, w in oar_weights.items()}
    metrics["CI_paddick"] = conformity_index(dose, target_weights, voxel_cc, rx_gy)
    metrics["method"] = _METHOD + (f"; dose supersampled x{supersample_factor} (trilinear)" if supersample_factor > 1 else "")
    return metrics
