"""replan.html: the intraoperative re-plan against the pre-plan and the pre-plan's loading as placed on the
needles as found: the metrics side by side, the goals, the CTV's DVHs, isodose lines as placed and re-planned,
the needles (found, moved, dropped) with their seeds, a view along the needles, and the optimiser's rounds.

Built from the re-plan's result (``navigator.planning.replan.ReplanResult``: the three plans, their doses on
one grid, the CT around the implant) and its replan.json dict. All coordinates LPS mm of the pre-plan CT.
"""

from __future__ import annotations

import numpy as np

from navigator.report import html as H
from navigator.report import plots as R

METRIC_ROWS = [("ctv_cc", "CTV volume (cc)", "{:.1f}"), ("D90_gy", "D90 (Gy)", "{:.1f}"),
               ("D100_gy", "D100 (Gy)", "{:.1f}"), ("V90_pct", "V90 (%)", "{:.1f}"),
               ("V100_pct", "V100 (%)", "{:.1f}"), ("V150_pct", "V150 (%)", "{:.1f}"),
               ("V200_pct", "V200 (%)", "{:.1f}"), ("HI", "HI", "{:.3f}")]
AS_PLACED = "as placed (pre-plan loading on the needles as found)"
COLUMNS = (("metrics_preplan", "pre-plan"), ("metrics_as_placed", AS_PLACED), ("metrics_replan", "re-plan"))


def comparison_table(data: dict) -> str:
    """Seeds, needles, CTV and OAR metrics of the pre-plan, as placed and re-planned (replan.json ``data``)."""
    ms = [data.get(k) or {} for k, _ in COLUMNS]
    n_found = len(data.get("needles_used") or [])
    rows = [["seeds", data.get("seeds_preplan"), data.get("seeds_as_placed"), data.get("seeds")],
            ["needles", n_found + len(data.get("needles_dropped") or []), n_found,
             len(data.get("needles_with_seeds") or [])]]
    rows += [[label] + [H.num(m.get(key), spec) for m in ms] for key, label, spec in METRIC_ROWS]
    limits = (data.get("goals") or {}).get("oar_D0.1cc_max_gy") or {}
    for name in sorted(limits):
        rows.append([f"{name} D0.1cc (Gy; limit {limits[name]:.1f})"]
                    + [H.num(((m.get("oars") or {}).get(name) or {}).get("D0.1cc_gy")) for m in ms])
    return H.table(rows, [""] + [label for _, label in COLUMNS])


def goals_table(checks: dict) -> str:
    rows = []
    for name, c in checks.items():
        if not isinstance(c, dict):
            continue
        value = next((v for k, v in c.items() if k.startswith(("value", "min_depth", "max_off", "seeds"))), None)
        limit = next((v for k, v in c.items() if k.startswith("limit")), None)
        rows.append([name, H.fmt(value), H.fmt(limit), H.flag(c.get("ok"), "met", "MISSED")])
    return H.table(rows, ["goal", "value", "limit", ""])


def needles_table(res) -> str:
    """Each planned needle: found or dropped, how it moved, its seeds before and after."""
    pre, rev = res.preplan, res.plan
    used = {n.id: n for n in rev.needles}
    rows, bad = [], []
    for n in pre.needles:
        mv = res.found.moves.get(n.id) or {}
        mine = rev.seeds_of(n.id) if n.id in used else []
        rows.append([n.id, n.hole or "single", H.flag(n.id in used, "found", "NOT FOUND: dropped"),
                     H.num(mv.get("tip_moved_mm")), H.num(mv.get("depth_change_mm"), "{:+.1f}"),
                     H.num(mv.get("angle_deg")), len(pre.seeds_of(n.id)), len(mine),
                     ", ".join(f"{used[n.id].depth_of(s.position_mm):.1f}" for s in mine)])
        bad.append(n.id not in used)
    return H.table(rows, ["needle", "hole", "", "tip moved (mm)", "depth change (mm, + deeper)", "angle (°)",
                          "seeds pre-plan", "seeds re-plan", "re-plan seed depths (mm from the hole)"],
                   bad_rows=bad)


def rounds_table(rounds: list) -> str:
    keys = ["round", "seeds", "D90_gy", "V100_pct", "V150_pct", "V200_pct", "adds", "removes", "exchanges",
            "budget_removals", "optimise_s", "stop"]
    rows = [[r.get(k) for k in keys] + [", ".join(r.get("goals_missed") or []) or "none"] for r in rounds]
    return H.table(rows, keys + ["goals missed"])


def dvh_picture(res) -> str:
    rx = res.plan.prescription_gy
    mask = res.field.ctv
    curves = {f"CTV {label.split(' (')[0]}": R.cumulative_dvh(res.doses[key].array, mask, 3 * rx)
              for key, label in (("preplan", "pre-plan"), ("as_placed", "as placed"), ("replan", "re-plan"))}
    fig = R.dvh_figure(curves, rx_gy=rx, title="CTV DVH: pre-plan, as placed, re-plan")
    return H.image(R.png_base64(fig), "DVH")


def isodose_pictures(res) -> tuple[str, str]:
    """Isodose lines as placed and re-planned on the same three axial slices, with the seeds of each."""
    rx, fld = res.plan.prescription_gy, res.field
    ctv = fld.grid.with_array(fld.ctv.astype(np.float32))
    zc = fld.grid.voxel_centers_lps(fld.ctv)[:, 2]
    z = np.linspace(*np.percentile(zc, [20, 80]), 3)  # through the CTV, the same slices for both
    out = []
    for key, plan, title in (("as_placed", res.as_placed, "as placed: the pre-plan loading on the needles as found"),
                             ("replan", res.plan, "re-plan")):
        fig = R.isodose_slices_figure(fld.crop, res.doses[key], rx, {"CTV": ctv},
                                      markers={"seeds": plan.seed_positions_mm()}, z_mm=z, title=title)
        out.append(H.image(R.png_base64(fig), title))
    return out[0], out[1]


def needle_view(res) -> str:
    """The implant seen along the needles (the template's view): planned and found tips, dropped needles, the
    seeds as placed and re-planned, in the template plane's axes (mm)."""
    import matplotlib.pyplot as plt

    pre, rev = res.preplan, res.plan
    u = np.mean([n.axis for n in pre.needles], axis=0)
    u /= np.linalg.norm(u)
    e1 = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)

    def uv(p):
        p = np.asarray(p, float).reshape(-1, 3)
        return np.column_stack([p @ e1, p @ e2])

    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    found = {n.id: n for n in rev.needles}
    for n in pre.needles:
        p = uv(n.tip_mm)[0]
        ax.plot(*p, "o", ms=9, mfc="none", mec="red" if n.id not in found else "0.5")
        ax.annotate(n.id, p, fontsize=6, xytext=(4, 4), textcoords="offset points")
        if n.id in found:
            q = uv(found[n.id].tip_mm)[0]
            ax.plot([p[0], q[0]], [p[1], q[1]], "-", color="0.5", lw=0.8)
            ax.plot(*q, "x", color="k", ms=6)
    for pts, style, label in ((res.as_placed.seed_positions_mm(), {"marker": "s", "mfc": "none", "mec": "tab:orange"},
                               "seeds as placed"),
                              (rev.seed_positions_mm(), {"marker": ".", "color": "tab:blue"}, "seeds re-planned")):
        if len(pts):
            p = uv(pts)
            ax.plot(p[:, 0], p[:, 1], ls="", ms=6, label=label, **style)
    ax.plot([], [], "o", mfc="none", mec="0.5", label="planned tip")
    ax.plot([], [], "x", color="k", label="tip as found")
    ax.plot([], [], "o", mfc="none", mec="red", label="not found: dropped")
    ax.set_aspect("equal")
    ax.set_xlabel("mm across the needles")
    ax.set_ylabel("mm across the needles")
    ax.set_title("along the needles (template view)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return H.image(R.png_base64(fig), "needle view")


def replan_page(res, data: dict) -> str:
    """replan.html of a re-plan ``res`` (``ReplanResult``) with its replan.json ``data``."""
    plan, rx = res.plan, res.plan.prescription_gy
    m_as, m_re = data["metrics_as_placed"], data["metrics_replan"]
    dropped = data.get("needles_dropped") or []
    pictures = []
    for what, fn in (("DVH", dvh_picture), ("isodose pictures", isodose_pictures), ("needle view", needle_view)):
        try:
            got = fn(res)
            pictures.append(got if isinstance(got, tuple) else (got,))
        except Exception as exc:  # noqa: BLE001 (a picture is a convenience; the page is written all the same)
            pictures.append((H.unavailable(what, exc),))
    return H.page(
        f"Re-plan: revision {data.get('revision')}, {len(plan.seeds)} seeds",
        H.paragraph(f"Revision {data.get('revision')} of RT Plan {data.get('based_on_sop_instance_uid')}: the seed "
                    f"loading re-optimised on the {len(data.get('needles_used') or [])} needles where they were "
                    f"found (mapped back to the pre-plan frame {plan.frame_of_reference_uid} through the check's "
                    f"registration)" + (f"; not found and dropped: {', '.join(dropped)}" if dropped else "")
                    + f". Target {plan.target}, prescription {rx:g} Gy to the CTV ({data.get('ctv_source')}); "
                    f"seed model {plan.seed_model}, S_K {plan.seed_sk_u:.3f} U; cartridge {data.get('max_seeds')} "
                    f"seeds. {data.get('seconds')} s. All coordinates LPS mm."),
        H.paragraph(f"CTV D90 as placed {m_as['D90_gy']:.1f} Gy, re-planned {m_re['D90_gy']:.1f} Gy "
                    f"({data.get('d90_gain_gy', 0):+.1f} Gy); {data.get('seeds_moved')} seeds moved.",
                    "ok" if m_re["D90_gy"] >= rx else "fail"),
        H.section("Dose metrics: pre-plan, as placed, re-plan", comparison_table(data),
                  H.note(data.get("metrics_method", ""))),
        H.section("Goals of the re-plan", goals_table(res.checks)),
        H.section("DVH", *pictures[0]),
        H.section("Isodose lines: as placed and re-planned", *pictures[1],
                  H.note("Blue 50 %, red 100 %, orange 150 %, magenta 200 % of the prescription; dashed: CTV; "
                         "circles: seeds within 2.5 mm of the slice.")),
        H.section("Needles: planned, as found, and their seeds", needles_table(res), *pictures[2]),
        H.section("Optimiser rounds", rounds_table(data.get("rounds") or []),
                  H.paragraph(f"Candidate places: {data.get('candidate_places')}")),
        heading=f"Intraoperative re-plan (revision {data.get('revision')}): D90 {m_as['D90_gy']:.1f} → "
                f"{m_re['D90_gy']:.1f} Gy (Rx {rx:g} Gy)",
    )
