"""Figures for the HTML reports (matplotlib, Agg backend, no display): DVHs, isodose lines on slices, the
CT in the plane of each needle.

Generic on purpose (the plan, needles, post-implant and rehearsal pages use them): a figure function takes
plain arrays/Volumes/result dicts and returns a matplotlib Figure; ``png_base64`` turns it into text for an
<img> tag.
Images are drawn in LPS mm (axial slices: x to the right of the picture is the patient's left, as on the
scanner console with the patient's right on the viewer's left; y increases downwards = posterior).
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from navigator.core.volume import Volume

ISODOSE_LEVELS_PCT = (50, 100, 150, 200)
ISODOSE_COLORS = {50: "#3b9cff", 100: "#ff2d2d", 150: "#ffb000", 200: "#ff00ff"}
_OUTLINE_COLORS = ["#00e000", "#00e0e0", "#e0e000", "#ff8080", "#8080ff", "#ffffff", "#c080ff", "#80ffc0"]


def png_base64(fig, dpi: int = 90) -> str:
    """The figure as base64 PNG text (for ``navigator.report.html.image``); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def dvh_figure(dvhs: dict, rx_gy: float | None = None, title: str = "Cumulative DVH", max_dose_gy: float | None = None,
               ylabel: str = "volume (%)"):
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
    ax.set_ylabel(ylabel)
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


_MARKER_STYLES = [("o", "yellow", 4.5), ("*", "cyan", 7.0), ("s", "lime", 3.5), ("^", "orange", 4.0)]


def _outline_on(ct: Volume, m) -> tuple[Volume, np.ndarray]:
    """(grid, mask array) of an outline given as a bool mask on ``ct``'s grid or as a mask Volume."""
    if isinstance(m, Volume):
        return m, np.asarray(m.array, float)
    return ct, np.asarray(m, float)


def _slice_window(dose: Volume, rx_gy: float, half_width_mm: float | None):
    """x and y rasters (LPS mm) of the slices: centred on the Rx region (else the whole dose grid)."""
    hot = dose.array >= rx_gy
    pts = dose.voxel_centers_lps(hot) if hot.any() else dose.voxel_centers_lps()
    cx, cy = np.median(pts[:, 0]), np.median(pts[:, 1])
    if half_width_mm is None:
        half_width_mm = max(30.0, 0.5 * float(np.ptp(pts[:, 0]) if len(pts) else 0) + 25.0,
                            0.5 * float(np.ptp(pts[:, 1]) if len(pts) else 0) + 25.0)
    step = 0.5 if half_width_mm < 60 else 1.0
    return (np.arange(cx - half_width_mm, cx + half_width_mm, step),
            np.arange(cy - half_width_mm, cy + half_width_mm, step))


def _default_slices_z(dose: Volume, rx_gy: float, n_slices: int) -> np.ndarray:
    """``n_slices`` LPS z positions evenly through the region where the dose is >= Rx (else >= half max)."""
    d = dose.array
    hot = d >= rx_gy
    zc = dose.voxel_centers_lps(hot if hot.any() else d >= d.max() * 0.5)[:, 2]
    lo, hi = np.percentile(zc, [15, 85]) if len(zc) else (dose.origin_mm[2], dose.origin_mm[2])
    return np.linspace(lo, hi, n_slices) if n_slices > 1 else np.array([0.5 * (lo + hi)])


def _draw_slice(ax, ct: Volume, dose: Volume, rx_gy: float, z: float, xs, ys, outlines: dict, markers: dict,
                levels_pct) -> None:
    img = _sample_slice(ct, ct.array, xs, ys, z)
    ax.imshow(np.nan_to_num(img, nan=-1000.0), cmap="gray", vmin=-250, vmax=350,
              extent=(xs[0], xs[-1], ys[-1], ys[0]), interpolation="nearest")
    dz = np.nan_to_num(_sample_slice(dose, dose.array, xs, ys, z), nan=0.0)
    for p in levels_pct:
        if dz.max() >= rx_gy * p / 100.0:
            ax.contour(xs, ys, dz, levels=[rx_gy * p / 100.0], colors=[ISODOSE_COLORS.get(p, "w")], linewidths=1.2)
    for n, (name, m) in enumerate(outlines.items()):
        grid, arr = _outline_on(ct, m)
        mz = np.nan_to_num(_sample_slice(grid, arr, xs, ys, z, order=0), nan=0.0)
        if mz.max() > 0.5:
            ax.contour(xs, ys, mz, levels=[0.5], colors=[_OUTLINE_COLORS[n % len(_OUTLINE_COLORS)]],
                       linewidths=0.9, linestyles="--")
    for n, pts_m in enumerate(markers.values()):
        marker, color, size = _MARKER_STYLES[n % len(_MARKER_STYLES)]
        near = np.abs(pts_m[:, 2] - z) <= 2.5
        if near.any():
            ax.plot(pts_m[near, 0], pts_m[near, 1], marker, ms=size, mfc="none", mec=color, mew=1.0)
    ax.set_title(f"z = {z:.1f} mm", fontsize=9)
    ax.set_xlabel("x (mm, LPS)", fontsize=8)
    ax.set_ylabel("y (mm, LPS)", fontsize=8)
    ax.tick_params(labelsize=7)


def _slices_legend(fig, rx_gy: float, levels_pct, outlines: dict, markers: dict, ncol: int) -> None:
    handles = [plt.Line2D([], [], color=ISODOSE_COLORS.get(p, "w"), label=f"{p} % ({rx_gy * p / 100:g} Gy)")
               for p in levels_pct]
    handles += [plt.Line2D([], [], color=_OUTLINE_COLORS[n % len(_OUTLINE_COLORS)], ls="--", label=name)
                for n, name in enumerate(outlines)]
    for n, label in enumerate(markers):
        marker, color, size = _MARKER_STYLES[n % len(_MARKER_STYLES)]
        handles.append(plt.Line2D([], [], marker=marker, ls="", ms=size, mfc="none", mec=color,
                                  label=f"{label} (±2.5 mm)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(ncol, len(handles)),
               fontsize=7, frameon=False)


def isodose_slices_figure(ct: Volume, dose: Volume, rx_gy: float, outlines: dict | None = None, markers=None,
                          n_slices: int = 3, z_mm=None, levels_pct=ISODOSE_LEVELS_PCT, half_width_mm: float | None = None,
                          title: str = ""):
    """Axial slices through the dose: CT in grey, isodose lines (% of ``rx_gy``), structure outlines.

    ``outlines``: ``{name: mask}`` drawn dashed as 0.5 contours; a mask is a bool array on ``ct``'s grid or a
    Volume with its own grid (a mask on the dose grid: ``dose.with_array(mask)``). ``markers``: (N, 3) LPS mm
    points (seeds) drawn on slices within 2.5 mm, or ``{label: (N, 3)}`` (one marker style per label).
    ``z_mm``: slice positions (LPS z, mm); default ``n_slices`` evenly through the region where dose >= Rx.
    """
    outlines = outlines or {}
    if isinstance(markers, np.ndarray) or (markers is not None and not isinstance(markers, dict)):
        markers = {"seeds": markers}
    markers = {k: np.asarray(v, float).reshape(-1, 3) for k, v in (markers or {}).items()}
    z_mm = _default_slices_z(dose, rx_gy, n_slices) if z_mm is None else np.atleast_1d(np.asarray(z_mm, float))
    xs, ys = _slice_window(dose, rx_gy, half_width_mm)
    side = 4.2 if len(z_mm) > 1 else 6.0  # one slice alone is drawn larger
    fig, axes = plt.subplots(1, len(z_mm), figsize=(side * len(z_mm), side + 0.2), squeeze=False)
    for ax, z in zip(axes[0], z_mm):
        _draw_slice(ax, ct, dose, rx_gy, float(z), xs, ys, outlines, markers, levels_pct)
    _slices_legend(fig, rx_gy, levels_pct, outlines, markers, ncol=3 * len(z_mm))
    if title:
        fig.suptitle(title, fontsize=10)
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


def needle_panel(ax, ct: Volume, planned_entry_mm, planned_tip_mm, tip_mm=None, found_axis=None,
                 lateral_vector_mm=None, title: str = "", ok: bool = True, half_width_mm: float = 12.0,
                 slab_mm: float = 1.5) -> None:
    """CT in the plane of the planned needle (thin-slab maximum, mm from the planned tip along the needle and
    across it), the planned needle (green, dashed) and the found one (red; ``tip_mm`` None: not found).

    The plane holds the planned axis and the found tip's lateral offset (``lateral_vector_mm``, LPS mm), so a
    needle that went off sideways is seen in full; ``ok`` False draws the title in red."""
    from scipy import ndimage

    entry, ref = np.asarray(planned_entry_mm, float), np.asarray(planned_tip_mm, float)
    u = (ref - entry) / np.linalg.norm(ref - entry)
    w = np.asarray(lateral_vector_mm, float) if lateral_vector_mm is not None else np.zeros(3)
    if not np.all(np.isfinite(w)) or np.linalg.norm(w) <= 0.2:
        w = np.cross(u, [0, 0, 1.0])
    if np.linalg.norm(w) < 1e-6:
        w = np.cross(u, [1.0, 0, 0])
    w = w - np.dot(w, u) * u
    w /= np.linalg.norm(w)
    nrm = np.cross(u, w)
    s = np.arange(-45.0, 15.0 + 1e-9, 0.25)  # along the needle, 0 = planned tip
    t = np.arange(-half_width_mm, half_width_mm + 1e-9, 0.25)
    S, T = np.meshgrid(s, t, indexing="xy")
    img = None
    for o in np.arange(-slab_mm, slab_mm + 1e-9, 0.5):
        ijk = ct.lps_to_ijk((ref + S[..., None] * u + T[..., None] * w + o * nrm).reshape(-1, 3))
        v = ndimage.map_coordinates(ct.array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1, cval=-1000.0)
        img = v.reshape(S.shape) if img is None else np.maximum(img, v.reshape(S.shape))
    ax.imshow(img, cmap="gray", vmin=-200, vmax=1500, origin="lower", extent=(s[0], s[-1], t[0], t[-1]),
              aspect="equal")
    ax.plot([max((entry - ref) @ u, s[0]), 0], [0, 0], "--", color="lime", lw=1.0, label="planned")
    ax.plot([0], [0], "o", mfc="none", color="lime", ms=6)
    if tip_mm is not None:
        tip = np.asarray(tip_mm, float) - ref
        back = tip - 45.0 * np.asarray(found_axis if found_axis is not None else u, float)
        ax.plot([back @ u, tip @ u], [back @ w, tip @ w], "-", color="red", lw=0.8, label="found")
        ax.plot([tip @ u], [tip @ w], "x", color="red", ms=7)
    ax.set_xlim(s[0], s[-1])
    ax.set_ylim(t[0], t[-1])
    ax.set_title(title, fontsize=8, color="black" if ok else "red")
    ax.tick_params(labelsize=6)


def needle_planes_figure(ct: Volume, needles: list):
    """One :func:`needle_panel` per needle, four to a row. ``needles``: entries of needles.json's
    ``needles`` (id, found, within_tolerance, tip_error_mm, planned_entry_mm, planned_tip_mm, tip_mm, axis,
    lateral_vector_mm; intraop LPS mm)."""
    n = len(needles)
    cols = max(1, min(4, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.6 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        d = needles[k]
        ok = bool(d.get("within_tolerance"))
        status = "OK" if ok else ("NOT FOUND" if not d.get("found") else "OUT")
        err = d.get("tip_error_mm")
        title = f"{d['id']} {status}" + (f" {err:.1f} mm" if d.get("found") and err is not None else "")
        needle_panel(ax, ct, d["planned_entry_mm"], d["planned_tip_mm"], d.get("tip_mm") if d.get("found") else None,
                     d.get("axis"), d.get("lateral_vector_mm"), title=title, ok=ok)
    fig.suptitle("needle plane, mm from the planned tip (green: planned, red: found)", fontsize=9)
    fig.tight_layout()
    return fig
