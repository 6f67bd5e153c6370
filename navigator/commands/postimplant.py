"""``navigator postimplant --plan plan.json --preplan-ct DIR --ct DIR --out DIR [--expected-seeds N]
[--structures RS.dcm] [--delivery delivery.json] [--cold-spot-min-cc V] [--slice-profile box|gaussian]``

Finds the seeds in the post-implant CT, computes the delivered dose (TG-43 from the found seeds and their
axes), the metrics and cold spots, and proposes supplementary seeds (``navigator.postimplant.pipeline``).

The pre-plan structures: ``--structures RS.dcm``, else ``RTSTRUCT.dcm`` beside plan.json (``navigator plan``
writes it, with the CTV), else ``RS.dcm`` beside the pre-plan CT folder (a phantom case's layout). The
expected seed count: ``--expected-seeds``, else the ``released`` count of ``--delivery delivery.json``, else
the plan's seed count. Writes ``postimplant.json``, ``RTDOSE.dcm`` (delivered dose on the post-implant CT's
frame) and ``postimplant.html`` (comparison table, DVH pre vs post, isodoses on the CT with the cold spots
outlined and the proposed seeds marked).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from navigator.errors import InputError
from navigator.commands._common import Progress, add_output_options, emit, out_dir
from navigator.io import write_json


def add_arguments(parser) -> None:
    parser.add_argument("--plan", required=True, metavar="plan.json", help="the pre-plan (navigator plan)")
    parser.add_argument("--preplan-ct", required=True, metavar="DIR", help="the CT series the plan was made on")
    parser.add_argument("--ct", required=True, metavar="DIR", help="the post-implant CT series")
    parser.add_argument("--expected-seeds", type=int, metavar="N", help="seeds delivered (default: the plan's count)")
    parser.add_argument("--delivery", metavar="delivery.json", help="delivery record: its 'released' count is expected")
    parser.add_argument("--structures", metavar="RS.dcm",
                        help="pre-plan RT Structure Set (default: RTSTRUCT.dcm beside plan.json)")
    parser.add_argument("--cold-spot-min-cc", type=float, default=0.05,
                        help="cold regions smaller than this are dropped (cc, default 0.05)")
    parser.add_argument("--slice-profile", choices=("box", "gaussian"), default="box",
                        help="the scanner's slice sensitivity profile for seed z fitting (default box)")
    add_output_options(parser)


def _structures_path(args) -> Path:
    if args.structures:
        return Path(args.structures)
    for cand in (Path(args.plan).parent / "RTSTRUCT.dcm", Path(args.preplan_ct).parent / "RS.dcm"):
        if cand.exists():
            return cand
    raise InputError(f"no pre-plan structure set: give --structures RS.dcm (looked for RTSTRUCT.dcm beside "
                     f"{args.plan} and RS.dcm beside {args.preplan_ct}); the CTV and OARs come from it")


def _expected(args, plan) -> int | None:
    if args.expected_seeds is not None:
        if args.expected_seeds < 1:
            raise InputError(f"--expected-seeds {args.expected_seeds}: give the number of seeds released (>= 1)")
        return int(args.expected_seeds)
    if args.delivery:
        p = Path(args.delivery)
        try:
            return int(json.loads(p.read_text())["released"])
        except FileNotFoundError:
            raise InputError(f"--delivery {p}: file not found; give the delivery.json written by `navigator deliver`") from None
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"--delivery {p}: no integer 'released' count ({exc}); give the delivery.json "
                             "written by `navigator deliver` or --expected-seeds N") from None
    return len(plan.seeds) or None


def run(args) -> int:
    from navigator.io.dicom import load_ct_series
    from navigator.io.dicom import write_rtdose
    from navigator.core.plan import Plan
    from navigator.postimplant.pipeline import PostimplantOptions, run_postimplant
    from navigator.imaging.seed_finding import SeedFindingSettings
    from navigator.io.dicom import read_structure_set

    if not args.cold_spot_min_cc >= 0:
        raise InputError(f"--cold-spot-min-cc {args.cold_spot_min_cc} cc must be >= 0")
    plan = Plan.load(args.plan)
    progress = Progress(enabled=not args.json)
    out = out_dir(args)
    progress.step("loading the CT series")
    preplan_ct = load_ct_series(args.preplan_ct)
    post_ct = load_ct_series(args.ct)
    structures = read_structure_set(_structures_path(args), ct=preplan_ct)
    opts = PostimplantOptions(expected_seeds=_expected(args, plan), cold_spot_min_cc=args.cold_spot_min_cc,
                              seed_finding=SeedFindingSettings(slice_profile=args.slice_profile),
                              progress=progress.step)
    res = run_postimplant(plan, preplan_ct, post_ct, structures, opts)
    r = res.result

    progress.step("writing RTDOSE.dcm and postimplant.html")
    write_rtdose(out / "RTDOSE.dcm", res.dose, post_ct, comment="post-implant dose, found seeds")
    write_json(out / "postimplant.json", r)
    (out / "postimplant.html").write_text(render_html(res, post_ct, plan))

    m, pm = r["metrics"], r["supplementary"]["predicted_metrics"]
    lines = [f"postimplant: {len(r['seeds'])} seeds found (expected {r['expected_seeds']}), "
             f"D90 {m['D90_gy']:.1f} Gy, V100 {m['V100_pct']:.1f} % (Rx {r['prescription_gy']:.0f} Gy)",
             f"cold spots: {len(r['cold_spots'])} (>= {r['cold_spot_threshold_cc']} cc)"
             + (f", largest {r['cold_spots'][0]['volume_cc']:.2f} cc" if r["cold_spots"] else ""),
             f"supplementary: {len(r['supplementary']['seeds'])} seed(s) -> D90 {pm['D90_gy']:.1f} Gy, "
             f"V100 {pm['V100_pct']:.1f} % ({r['supplementary']['stop_reason']})"]
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines.append(f"written: {out / 'postimplant.json'}, {out / 'RTDOSE.dcm'}, {out / 'postimplant.html'}")
    emit(args, r, "\n".join(lines))
    return 0


# --- report ---------------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(res, post_ct, plan) -> str:
    """A self-contained page: comparison table, DVH (pre-plan, post-implant, with supplementary seeds) and an
    axial slice through the largest cold spot with isodoses, cold spots outlined and seeds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from navigator.physics import dvh

    r = res.result
    rx = r["prescription_gy"]
    # DVH
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [("pre-plan", res.preplan_dvh, "k--")]
    curves.append(("post-implant", dvh.DVH.from_dose(res.dose.array, res.ctv_weights, res.dose.voxel_volume_cc), "r-"))
    if len(res.supplementary_mm):
        curves.append(("with supplementary", dvh.DVH.from_dose(res.dose_supplemented.array, res.ctv_weights,
                                                               res.dose.voxel_volume_cc), "b-"))
    for label, h, style in curves:
        d, v = h.curve()
        ax.plot(d, v, style, label=label)
    ax.axvline(rx, color="g", lw=0.8, label=f"Rx {rx:g} Gy")
    ax.set_xlim(0, 3 * rx)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("CTV volume (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    dvh_png = _png(fig)

    # axial slice of the dose grid through the largest cold spot (else the CTV centre)
    dose = res.dose
    if res.cold_masks:
        kc = int(np.round(np.nonzero(res.cold_masks[0])[0].mean()))
    else:
        kc = int(np.round(np.nonzero(res.ctv_weights >= 0.5)[0].mean()))
    nk, nj, ni = dose.array.shape
    jj, ii = np.mgrid[0:nj, 0:ni]
    ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, kc)], axis=1)
    pts = dose.ijk_to_lps(ijk)
    cijk = post_ct.lps_to_ijk(pts)
    ct_slice = ndimage.map_coordinates(post_ct.array, [cijk[:, 2], cijk[:, 1], cijk[:, 0]], order=1,
                                       cval=-1000).reshape(nj, ni)
    fig, ax = plt.subplots(figsize=(6, 6))
    ext = [0, ni * dose.spacing_mm[0], nj * dose.spacing_mm[1], 0]
    ax.imshow(ct_slice, cmap="gray", vmin=-200, vmax=400, extent=ext)
    xs, ys = np.arange(ni) * dose.spacing_mm[0], np.arange(nj) * dose.spacing_mm[1]
    levels = [0.5 * rx, rx, 1.5 * rx, 2 * rx]
    cs = ax.contour(xs, ys, dose.array[kc], levels=levels, colors=["c", "g", "y", "r"], linewidths=1)
    ax.clabel(cs, fmt=lambda v: f"{v / rx * 100:.0f}%", fontsize=7)
    ax.contour(xs, ys, res.ctv_weights[kc], levels=[0.5], colors=["m"], linewidths=1.5)
    for q, cm in enumerate(res.cold_masks[:5]):
        if cm[kc].any():
            ax.contour(xs, ys, cm[kc].astype(float), levels=[0.5], colors=["b"], linewidths=2, linestyles="--")

    def mark(points, style, label):
        if not len(points):
            return
        g = dose.lps_to_ijk(points)
        near = np.abs(g[:, 2] - kc) * dose.spacing_mm[2] <= 3.0
        if near.any():
            ax.plot(g[near, 0] * dose.spacing_mm[0], g[near, 1] * dose.spacing_mm[1], style, label=label, ms=7)
    mark(res.seeds_mm, "o", "found seeds (within 3 mm)")
    mark(res.supplementary_mm, "*", "proposed seeds (within 3 mm)")
    ax.set_title(f"axial slice z-index {kc}: isodoses 50/100/150/200 %, CTV (magenta), cold spots (blue dashed)",
                 fontsize=8)
    ax.set_xlabel("mm")
    ax.legend(fontsize=7, loc="lower right")
    slice_png = _png(fig)

    def row(cells, tag="td"):
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    comp = "".join(row([c["quantity"] + (f" ({c['unit']})" if c["unit"] else ""), c["preplan"], c["postimplant"],
                        c["with_supplementary"]]) for c in r["comparison"])
    cold = "".join(row([i + 1, c["volume_cc"], c["centroid_mm"], c["min_dose_gy"], c["mean_deficit_gy"]])
                   for i, c in enumerate(r["cold_spots"]))
    sup = "".join(row([i + 1, s["position_mm"], s["entry_mm"], s["path"], s["hole"] or "-"])
                  for i, s in enumerate(r["supplementary"]["seeds"]))
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in r["warnings"]) or "<li>none</li>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Post-implant evaluation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #aaa;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Post-implant evaluation</h1>
<p>Post-implant CT series {html.escape(r['ct_series_uid'])}; prescription {rx:g} Gy; seed model {html.escape(r['seed_model'])},
{r['seed_sk_u']:.4g} U. Seeds found: {len(r['seeds'])} (expected {r['expected_seeds']}). Coordinates: LPS mm of the post-implant CT.</p>
<h2>Warnings</h2><ul>{warn}</ul>
<h2>Pre-plan vs post-implant</h2><table>{row(['', 'pre-plan', 'post-implant', 'with supplementary (predicted)'], 'th')}{comp}</table>
<h2>DVH of the CTV</h2><img src="data:image/png;base64,{dvh_png}">
<h2>Isodoses</h2><img src="data:image/png;base64,{slice_png}">
<h2>Cold spots (threshold {r['cold_spot_threshold_cc']} cc)</h2>
<table>{row(['#', 'volume (cc)', 'centroid (mm)', 'min dose (Gy)', 'mean deficit (Gy)'], 'th')}{cold}</table>
<h2>Proposed supplementary seeds ({html.escape(r['supplementary']['stop_reason'])})</h2>
<table>{row(['#', 'position (mm)', 'entry (mm)', 'path', 'template hole'], 'th')}{sup}</table>
<h2>Registration</h2><p>estimated error {r['registration']['estimated_error_mm']} mm, converged {r['registration']['converged']}</p>
</body></html>"""
