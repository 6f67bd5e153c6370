"""cohort.html: a cohort re-analysis: the dose-response (ROC of D90 with the Youden cut-off, Kaplan-Meier
curves above and below it, logistic and Cox models), the D90 distribution of responders and non-responders,
and every study with its status.

Built from the cohort.json dict alone (plain data: this page does not import the cohort package).
"""

from __future__ import annotations

import numpy as np

from navigator.report import html as H
from navigator.report import plots as R

STUDY_HEADER = ["patient", "study date", "status", "seeds found", "expected", "seed data", "Sk (U)", "D90 (Gy)",
                "V100 (%)", "response", "in analysis"]


def roc_figure(analysis: dict):
    """ROC curve of D90 with the Youden point."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    c = analysis["roc_curve"]
    ax.plot(c["fpr"], c["tpr"], lw=1.8, label=f"D90 (AUC {analysis['roc_auc']:.2f})")
    ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=0.8)
    ax.plot([1 - analysis["specificity"]], [analysis["sensitivity"]], "o", color="#d00",
            label=f"Youden cut-off {analysis['youden_cutoff_d90_gy']:.1f} Gy")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("ROC of D90 for the response", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def km_figure(km: dict):
    """Kaplan-Meier curves of local control above and below the cut-off."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for g, color in zip(km["groups"], ("#1f77b4", "#d62728")):
        if g["n"]:
            ax.step(g["timeline_months"], g["event_free"], where="post", color=color, lw=1.8,
                    label=f"{g['label']} (n {g['n']}, events {g['events']})")
    p = (km.get("logrank") or {}).get("p")
    ax.set_title("Local control" + (f" (log-rank p = {p:.3g})" if p is not None else ""), fontsize=10)
    ax.set_xlabel("months")
    ax.set_ylabel("event-free fraction")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def d90_figure(studies: list, cutoff_gy: float | None):
    """D90 of the analysed studies: responders and non-responders side by side, the cut-off as a line."""
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(1, 2, figsize=(8.4, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    groups = {"non-responders": [], "responders": [], "no outcome": []}
    for s in studies:
        if s.get("status") != "ok" or not s.get("metrics"):
            continue
        o = s.get("outcome")
        key = "no outcome" if o is None else ("responders" if o["response"] else "non-responders")
        groups[key].append(s["metrics"]["D90_gy"])
    if not groups["no outcome"]:
        del groups["no outcome"]
    colors = {"non-responders": "#d62728", "responders": "#1f77b4", "no outcome": "#999999"}
    rng = np.random.default_rng(0)   # horizontal jitter only, for legibility
    for x, (name, vals) in enumerate(groups.items()):
        if vals:
            ax.plot(x + rng.uniform(-0.15, 0.15, len(vals)), vals, "o", color=colors[name], ms=4, alpha=0.8)
    ax.set_xticks(range(len(groups)), [f"{k}\n(n {len(v)})" for k, v in groups.items()], fontsize=8)
    all_vals = [v for vals in groups.values() for v in vals]
    if all_vals:
        bins = np.linspace(min(all_vals), max(all_vals), 16) if max(all_vals) > min(all_vals) else 8
        hx.hist([groups["responders"], groups["non-responders"]], bins=bins, stacked=True,
                color=[colors["responders"], colors["non-responders"]], label=["responders", "non-responders"])
    for a in (ax, hx):
        if cutoff_gy is not None:
            (a.axhline if a is ax else a.axvline)(cutoff_gy, color="k", ls="--", lw=0.9)
        a.grid(alpha=0.3)
    ax.set_ylabel("D90 (Gy)")
    hx.set_xlabel("D90 (Gy)")
    hx.set_ylabel("studies")
    hx.legend(fontsize=8)
    fig.suptitle("Delivered D90" + (f" (dashed: cut-off {cutoff_gy:.1f} Gy)" if cutoff_gy is not None else ""),
                 fontsize=10)
    return fig


def _figure(make, alt: str, *args) -> str:
    try:
        return H.image(R.png_base64(make(*args)), alt)
    except Exception as exc:  # noqa: BLE001 - a page is written even when a picture cannot be drawn
        return H.unavailable(alt, exc)


def _ci(v, spec="{:.1f}") -> str:
    return "—" if not v else f"{spec.format(v[0])} – {spec.format(v[1])}"


def _analysis_section(a: dict) -> str:
    if a.get("roc_auc") is None:
        return H.section("Dose-response", H.paragraph(
            f"Not analysed: {a['responders']} responder(s), {a['non_responders']} non-responder(s) among {a['n']} "
            "analysed studies with an outcome (see the warnings)."))
    rows = [("studies analysed with an outcome", a["n"]), ("responders", a["responders"]),
            ("ROC AUC of D90", H.Cell(f"{a['roc_auc']:.3f} (95 % CI {_ci(a.get('roc_auc_ci95'), '{:.3f}')})")),
            ("Youden cut-off D90", H.Cell(f"{a['youden_cutoff_d90_gy']:.1f} Gy (95 % CI "
                                          f"{_ci(a.get('youden_cutoff_ci95_gy'))} Gy)")),
            ("sensitivity / specificity", H.Cell(f"{a['sensitivity']:.2f} / {a['specificity']:.2f}"))]
    lg = a.get("logistic") or {}
    if lg.get("separated"):
        rows.append(("logistic regression", lg.get("note", "complete separation")))
    elif lg:
        rows += [("logistic: odds ratio per 10 Gy", H.num(lg["odds_ratio_per_10gy"], "{:.2f}")),
                 ("logistic: D90 at 50 % response", H.num(lg["d90_at_p50_gy"], "{:.1f} Gy")),
                 ("logistic: likelihood-ratio p", H.num(lg["lr_p"], "{:.3g}"))]
    cox = a.get("cox") or {}
    for key, label in (("d90_per_10gy", "Cox: hazard ratio per 10 Gy"), ("d90_below_cutoff", "Cox: HR below cut-off")):
        c = cox.get(key)
        if c:
            rows.append((label, H.Cell(f"{c['hazard_ratio']:.2f} (95 % CI {_ci(c['hazard_ratio_ci95'], '{:.2f}')}), "
                                       f"p = {c['p']:.3g}")))
    other = a.get("metrics_roc") or {}
    other_rows = [[k, H.num(v["auc"], "{:.3f}"), H.num(v["youden_cutoff"], "{:.2f}"), H.num(v["sensitivity"], "{:.2f}"),
                   H.num(v["specificity"], "{:.2f}")] for k, v in other.items() if v]
    parts = [H.table(rows, ["quantity", "value"]),
             H.note(f"Cut-off: halfway between the Youden threshold and the next lower D90; confidence intervals: "
                    f"{a['bootstrap']['samples']} stratified bootstrap resamples of patients (seed "
                    f"{a['bootstrap']['seed']})."),
             _figure(roc_figure, "ROC curve", a)]
    if a.get("km"):
        parts.append(_figure(km_figure, "Kaplan-Meier curves", a["km"]))
    if other_rows:
        parts.append(H.subsection("ROC of the other metrics", H.table(other_rows, ["metric", "AUC", "Youden cut-off",
                                                                                  "sensitivity", "specificity"])))
    return H.section("Dose-response", *parts)


def study_rows(studies: list) -> list[list]:
    rows = []
    for s in studies:
        m = s.get("metrics") or {}
        o = s.get("outcome") or {}
        ok = s.get("status") == "ok"
        rows.append([s.get("patient_id"), s.get("study_date") or "", H.flag(ok, "ok", s.get("status", "")),
                     H.num(s.get("seeds_found"), "{:d}"), H.num(s.get("expected_seeds"), "{:d}"),
                     s.get("seed_data_from") or "", H.num(s.get("seed_sk_u"), "{:.3f}"), H.num(m.get("D90_gy")),
                     H.num(m.get("V100_pct")), "" if not o else str(o.get("response")),
                     H.flag(s.get("in_analysis"), "yes", "no")])
    return rows


def cohort_page(result: dict) -> str:
    """cohort.html from the cohort.json dict."""
    a, studies = result["analysis"], result["studies"]
    d = result.get("discovery") or {}
    cutoff = a.get("youden_cutoff_d90_gy")
    return H.page(
        "Cohort re-analysis",
        H.paragraph(f"{len(studies)} studies of {d.get('patients', '?')} patients found among {d.get('files_seen', '?')} "
                    f"files under {d.get('root', '?')}; {result['studies_ok']} analysed, {result['studies_failed']} "
                    f"could not be; {result['workers']} worker(s), {result['seconds']:.1f} s."),
        _analysis_section(a),
        H.section("Delivered D90", _figure(d90_figure, "D90 distribution", studies, cutoff)),
        H.section("Warnings", H.bullets(result.get("warnings") or [])),
        H.section("Studies", H.table(study_rows(studies), STUDY_HEADER,
                                     bad_rows=[s.get("status") != "ok" for s in studies]),
                  H.note("Doses are the delivered total dose of the permanent implant (TG-43 from the seeds found "
                         "on each post-implant CT); V-values are % of the target at each study's prescription.")),
        heading=f"Cohort re-analysis: {result['studies_ok']} of {len(studies)} studies analysed"
                + (f", D90 cut-off {cutoff:.1f} Gy (AUC {a['roc_auc']:.2f})" if cutoff is not None else ""),
    )
