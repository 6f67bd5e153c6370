"""Figures for the HTML reports (matplotlib, Agg backend, no display): DVHs and isodose lines on slices.

Generic on purpose (plan, post-implant and rehearsal reports use them): a figure function takes plain
arrays/Volumes and returns a matplotlib Figure; ``png_base64`` turns it into text for an <img> tag.
Images are drawn in LPS mm (axial slices: x to the right of the picture is the patient's left, as on the
scanner console with the patient's right on the viewer's left; y increases downwards = posterior).
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from navigator.core.volume import Volume  # noqa: E402

ISODOSE_LEVELS_PCT = (50, 100, 150, 200)
ISODOSE_COLORS = {50: "#3b9cff", 100: "#ff2d2d", 150: "#ffb000", 200: "#ff00ff"}
_OUTLINE_COLORS = ["#00e000", "#00e0e0", "#e0e000", "#ff8080", "#8080ff", "#ffffff", "#c080ff", "#80ffc0"]


def png_base64(fig, dpi: int = 90) -> str:
    """The figure as base64 PNG text (for ``<img src="data:image/png;base64,...">``); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def dvh_figure(dvhs: dict, rx_gy: float | None = None, title: str = "Cumulative DVH", max_dose_gy: float | None = None):
    """Cumulative DVHs: ``{label: (dose_gy array, volume_pct array)}`` (dose ascending). A dashed line at Rx."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (d, v) in dvhs.items():
        ax.plot(np.asarray(d, float), np.asarray(v, float), label=label, lw=1.6)
    if rx_gy:
        ax.axvline(rx_gy, color="k", ls="--", lw=0.8)
        ax.text(rx_gy, 101, f" Rx {rx_gy:g} Gy", fontsize=8, va="bottom")
    if max_dose_gy is None:
        max_dose_gy = 3.0 * rx_gy if rx_gy else None
    if max_dose_gy:
        ax.set_xlim(0, max_dose_gy)
    ax.set_ylim(0, 105)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def cumulative_dvh(dose_gy: np.ndarray, mask: np.ndarray, max_gy: float, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(dose_gy, volume_pct) of a cumulative DVH of the voxels in ``mask`` on a 0..max_gy raster."""
    d = np.asarray(dose_gy)[np.asarray(mask, bool)]
    levels = np.linspace(0.0, max_gy, n)
    if d.size == 0:
        return levels, np.zeros(n)
    ds = np.sort(d)
    v = 100.0 * (1.0 - np.searchsorted(ds, levels, side="left") / d.size)
    return levels, v


def _sample_slice(vol: Volume, arr: np.ndarray, xs: np.ndarray, ys: np.ndarray, z: float, order: int = 1):
    """Values of a (k, j, i) array at the LPS plane z = const on the x/y raster (nan outside the volume)."""
    from scipy.ndimage import map_coordinates

    X, Y = np.meshgrid(xs, ys)
    pts = np.stack([X, Y, np.full_like(X, z)], axis=-1)
    ijk = vol.lps_to_ijk(pts)
    coords = np.stack([ijk[..., 2], ijk[..., 1], ijk[..., 0]])  # (k, j, i) order for numpy arrays
    out = map_coordinates(np.asarray(arr, dtype=float), coords, order=order, mode="constant", cval=np.nan)
    return out


def isodose_slices_figure(ct: Volume, dose: Volume, rx_gy: float, outlines: dict | None = None, markers=None,
                          n_slices: int = 3, z_mm=None, levels_pct=ISODOSE_LEVELS_PCT, half_width_mm: float | None = None,
                          title: str = ""):
    """Axial slices through the dose: CT in grey, isodose lines (% of ``rx_gy``), structure outlines.

    ``outlines``: ``{name: bool mask on ct's grid}`` (drawn as 0.5 contours). ``markers``: (N, 3) LPS mm
    points (seeds) drawn on slices within 2.5 mm, or ``{label: (N, 3)}``. ``z_mm``: slice positions (LPS z,
    mm); default ``n_slices`` evenly through the region where the dose is >= Rx.
    """
    outlines = outlines or {}
    d = dose.array
    hot = d >= rx_gy
    if z_mm is None:
        zc = dose.voxel_centers_lps(hot if hot.any() else d >= d.max() * 0.5)[:, 2]
        lo, hi = np.percentile(zc, [15, 85]) if len(zc) else (dose.origin_mm[2], dose.origin_mm[2])
        z_mm = np.linspace(lo, hi, n_slices) if n_slices > 1 else [0.5 * (lo + hi)]
    pts = dose.voxel_centers_lps(hot) if hot.any() else dose.voxel_centers_lps()
    cx, cy = np.median(pts[:, 0]), np.median(pts[:, 1])
    if half_width_mm is None:
        half_width_mm = max(30.0, 0.5 * float(np.ptp(pts[:, 0]) if len(pts) else 0) + 25.0,
                            0.5 * float(np.ptp(pts[:, 1]) if len(pts) else 0) + 25.0)
    step = 0.5 if half_width_mm < 60 else 1.0
    xs = np.arange(cx - half_width_mm, cx + half_width_mm, step)
    ys = np.arange(cy - half_width_mm, cy + half_width_mm, step)
    if isinstance(markers, np.ndarray) or (markers is not None and not isinstance(markers, dict)):
        markers = {"seeds": np.asarray(markers, float).reshape(-1, 3)}
    markers = markers or {}
    fig, axes = plt.subplots(1, len(z_mm), figsize=(4.2 * len(z_mm), 4.4), squeeze=False)
    extent = (xs[0], xs[-1], ys[-1], ys[0])
    for ax, z in zip(axes[0], z_mm):
        img = _sample_slice(ct, ct.array, xs, ys, z)
        ax.imshow(np.nan_to_num(img, nan=-1000.0), cmap="gray", vmin=-250, vmax=350, extent=extent,
                  interpolation="nearest")
        dz = _sample_slice(dose, d, xs, ys, z)
        for p in levels_pct:
            if np.nanmax(np.nan_to_num(dz, nan=0.0)) >= rx_gy * p / 100.0:
                ax.contour(xs, ys, np.nan_to_num(dz, nan=0.0), levels=[rx_gy * p / 100.0],
                           colors=[ISODOSE_COLORS.get(p, "w")], linewidths=1.2)
        for n, (name, m) in enumerate(outlines.items()):
            mz = _sample_slice(ct, np.asarray(m, float), xs, ys, z, order=0)
            if np.nanmax(np.nan_to_num(mz, nan=0.0)) > 0.5:
                ax.contour(xs, ys, np.nan_to_num(mz, nan=0.0), levels=[0.5],
                           colors=[_OUTLINE_COLORS[n % len(_OUTLINE_COLORS)]], linewidths=0.9, linestyles="--")
        for label, pts_m in markers.items():
            near = np.abs(pts_m[:, 2] - z) <= 2.5
            if near.any():
                ax.plot(pts_m[near, 0], pts_m[near, 1], "o", ms=3.5, mfc="none", mec="yellow", mew=1.0)
        ax.set_title(f"z = {z:.1f} mm", fontsize=9)
        ax.set_xlabel("x (mm, LPS)", fontsize=8)
        ax.set_ylabel("y (mm, LPS)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=ISODOSE_COLORS.get(p, "w"), label=f"{p} % ({rx_gy * p / 100:g} Gy)")
               for p in levels_pct]
    handles += [plt.Line2D([], [], color=_OUTLINE_COLORS[n % len(_OUTLINE_COLORS)], ls="--", label=name)
                for n, name in enumerate(outlines)]
    if markers:
        handles.append(plt.Line2D([], [], marker="o", ls="", mfc="none", mec="yellow", label="seeds (±2.5 mm)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.2)
    return fig


def needles_axial_figure(ct: Volume, z_mm: float, segments: list, outlines: dict | None = None,
                         half_width_mm: float = 80.0, center_xy=None):
    """One axial slice with needle segments ``[(entry_mm, tip_mm, label)]`` projected onto it (planning view)."""
    outlines = outlines or {}
    if center_xy is None:
        allp = np.array([p for s in segments for p in s[:2]]) if segments else ct.voxel_centers_lps()[:1]
        center_xy = allp[:, :2].mean(0)
    xs = np.arange(center_xy[0] - half_width_mm, center_xy[0] + half_width_mm, 1.0)
    ys = np.arange(center_xy[1] - half_width_mm, center_xy[1] + half_width_mm, 1.0)
    fig, ax = plt.subplots(figsize=(5, 5))
    img = _sample_slice(ct, ct.array, xs, ys, z_mm)
    ax.imshow(np.nan_to_num(img, nan=-1000.0), cmap="gray", vmin=-250, vmax=350,
              extent=(xs[0], xs[-1], ys[-1], ys[0]))
    for n, (name, m) in enumerate(outlines.items()):
        mz = _sample_slice(ct, np.asarray(m, float), xs, ys, z_mm, order=0)
        if np.nanmax(np.nan_to_num(mz, nan=0.0)) > 0.5:
            ax.contour(xs, ys, np.nan_to_num(mz, nan=0.0), levels=[0.5],
                       colors=[_OUTLINE_COLORS[n % len(_OUTLINE_COLORS)]], linewidths=0.9)
    for e, t, label in segments:
        ax.plot([e[0], t[0]], [e[1], t[1]], "-", color="orange", lw=0.8)
    ax.set_title(f"needles projected on z = {z_mm:.1f} mm", fontsize=9)
    return fig
