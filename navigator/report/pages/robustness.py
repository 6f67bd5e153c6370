"""robustness.html: the plan's D90 and V100 over random needle placement errors (``navigator robustness``).

Built from robustness.json alone (``navigator.planning.robustness.robustness_preview``'s result): the summary
against the prescription, the D90 histogram over the samples, the DVH band (5th-95th percentile of the CTV's
cumulative DVH over the samples, with the median and the plan as planned), the needles ranked by their D90
sensitivity, and the error model with its sources.
"""

from __future__ import annotations

import numpy as np

from navigator.report import html as H
from navigator.report import plots as R


def d90_histogram_figure(d90_gy, rx_gy: float, p10_gy: float | None = None, nominal_gy: float | None = None):
    """Histogram of the samples' D90 with the prescription (red), the 10th percentile and the plan as planned."""
    fig, ax = R.plt.subplots(figsize=(6.4, 3.6))
    d90 = np.asarray(d90_gy, float)
    ax.hist(d90, bins=min(60, max(10, len(d90) // 20)), color="#7aa6d6", edgecolor="#35608c")
    ax.axvline(rx_gy, color="#d00000", lw=1.6, label=f"Rx {rx_gy:g} Gy")
    if p10_gy is not None:
        ax.axvline(p10_gy, color="#ff8c00", ls="--", lw=1.2, label=f"10th percentile {p10_gy:.1f} Gy")
    if nominal_gy is not None:
        ax.axvline(nominal_gy, color="k", ls=":", lw=1.2, label=f"as planned {nominal_gy:.1f} Gy")
    ax.set_xlabel("CTV D90 (Gy)")
    ax.set_ylabel("samples")
    ax.set_title(f"D90 over {len(d90)} samples of needle placement errors", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def dvh_band_figure(band: dict, rx_gy: float):
    """The CTV's cumulative DVH over the samples: 5th-95th percentile band, median, and the plan as planned."""
    fig, ax = R.plt.subplots(figsize=(6.4, 4.0))
    dose = np.asarray(band["dose_gy"], float)
    v = band["volume_pct"]
    ax.fill_between(dose, v["p5"], v["p95"], color="#7aa6d6", alpha=0.5, label="5th-95th percentile")
    ax.plot(dose, v["p50"], color="#1f4f80", lw=1.6, label="median")
    ax.plot(dose, v["nominal"], color="k", ls=":", lw=1.2, label="as planned")
    ax.axvline(rx_gy, color="#d00000", ls="--", lw=0.8)
    ax.axhline(90.0, color="#888", ls="--", lw=0.6)
    ax.set_xlim(0, float(dose[-1]))
    ax.set_ylim(0, 105)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("CTV volume (%)")
    ax.set_title("CTV DVH band over the samples", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def _picture(what: str, make) -> str:
    try:
        return H.image(R.png_base64(make()), what)
    except Exception as exc:  # noqa: BLE001 - a report is written all the same, saying what is missing
        return H.unavailable(what, exc)


def robustness_page(data: dict) -> str:
    """robustness.html from robustness.json's ``data``."""
    rx, em = data["prescription_gy"], data["error_model"]
    keys = ("mean", "p5", "p10", "p50", "p90", "p95")
    stats = [(name, data["nominal"].get(name), *[data[name][k] for k in keys])
             for name in ("D90_gy", "V100_pct", "V150_pct", "V200_pct") if name in data]
    passed = data["pass_rate"]
    verdict = H.Cell(f"{100 * passed:.1f} % of samples reach D90 >= Rx", "ok" if passed >= 0.9 else "fail")
    needles = sorted(data.get("needles", []), key=lambda n: n["d90_change_gy_per_mm"])
    rows = [(i + 1, n["id"], n["seeds"], H.num(n["d90_change_gy_per_mm"], "{:+.3f}"),
             H.num(n["d90_change_worst_gy_per_mm"], "{:+.3f}"), H.Cell(H.fmt(n["worst_direction_lps"], 2)))
            for i, n in enumerate(needles)]
    sens = data.get("sensitivity", {})
    model_rows = [(k, em[k]) for k in ("tip_sd_mm", "depth_sd_mm", "angle_sd_deg", "seed_loss_pct")]
    model_rows.append(("site preset", em.get("site") or "none (options or the contract's defaults)"))
    return H.page(
        f"Robustness preview: D90 p10 {data['D90_gy']['p10']:.1f} Gy (Rx {rx:g} Gy)",
        H.paragraph(f"{data['samples']} Monte Carlo samples of needle placement errors (seed {data['seed']}), "
                    f"{data['ctv']['points']} CTV points, {data['workers']} workers, {data['seconds']:.1f} s."),
        H.section("Summary", H.table([("pass rate (D90 >= Rx)", verdict)], ["", ""]),
                  H.table(stats, ["metric", "as planned", *keys], 2),
                  H.note("D_x, V_x as in plan.json (V in % of the CTV); 'as planned': the plan without errors on "
                         "the same CTV points and dose kernel.")),
        H.section("D90 over the samples", _picture("D90 histogram", lambda: d90_histogram_figure(
            data.get("d90_samples_gy", []), rx, data["D90_gy"]["p10"], data["nominal"]["D90_gy"]))),
        H.section("DVH band", _picture("DVH band", lambda: dvh_band_figure(data["dvh_band"], rx))),
        H.section("Needles ranked by D90 sensitivity (most sensitive first)",
                  H.table(rows, ["rank", "needle", "seeds", "mean Gy/mm", "worst Gy/mm", "worst direction (LPS)"]),
                  H.note(sens.get("definition", ""))),
        H.section("Error model", H.table(model_rows, ["parameter", "value"]), H.note(em.get("definition", "")),
                  H.bullets(em.get("sources") or [], empty="no published source: the options given")),
        H.section("Method", H.note(data.get("method", ""))),
    )
