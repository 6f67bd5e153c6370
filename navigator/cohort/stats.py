"""Dose-response statistics of a cohort: what the delivered D90 predicts. Well-kept libraries do the statistics
(scikit-learn: ROC, AUC, logistic regression, resampling; lifelines: Kaplan-Meier, log-rank, Cox; scipy: the
chi-squared tail); this module only arranges them and reports their numbers.

- ROC of D90 for the response (higher D90, more likely a response), its AUC, and the Youden cut-off: the
  threshold maximising sensitivity + specificity - 1. ROC thresholds are observed D90 values; the cut-off is
  reported, as SPSS and most papers do, halfway between that D90 and the next lower observed one, so "D90 >=
  cut-off" classifies the cohort exactly as the threshold does. The AUC's 95 % confidence interval:
  percentiles of a stratified bootstrap over patients (``sklearn.utils.resample``, ``bootstrap`` resamples,
  ``numpy.random.RandomState(seed)``: same seed, same interval). The cut-off's: percentiles of the same
  resamples with each resampled D90 moved by Gaussian noise of SD ``CUTOFF_SMOOTHING`` x Silverman's bandwidth
  (a smoothed bootstrap). The cut-off maximises a step function of the data (a cube-root estimator); the plain
  bootstrap of such an estimator is not consistent and its interval is too short: over cohorts drawn from a
  known dose-response (bench/bench_cohort.py --coverage) the plain percentile interval held the true cut-off
  in 75 / 90 / 87 % of cohorts of 12 / 40 / 100 patients, the smoothed one (half Silverman) in 93 / 99 / 99 %
  (100 cohorts each; a full Silverman bandwidth: 100 %, twice as wide). The smoothing also stands for what the
  plain bootstrap ignores: each D90 is itself measured to a few Gy (seed positions, contours).
- The same ROC (AUC, cut-off, sensitivity, specificity) for the other metrics (D100, V90-V200, HI, volume).
- Logistic regression of the response on D90 (unpenalised): odds ratio per 10 Gy, the D90 of a 50 %
  response probability, the likelihood-ratio test against the intercept-only model. When D90 separates the
  responders completely the maximum-likelihood estimate does not exist; that is said and no odds ratio given.
- With times: Kaplan-Meier curves of local control (event-free) above and below the Youden cut-off with the
  log-rank test, and Cox proportional hazards of D90 (per 10 Gy) and of "D90 below the cut-off".
"""

from __future__ import annotations

import warnings as _warnings

import numpy as np

CUTOFF_SMOOTHING = 0.5   # x Silverman's bandwidth, for the cut-off's smoothed bootstrap (module docstring)
OTHER_METRICS = ("D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI", "ctv_cc")
MIN_PER_CLASS = 2


def youden(y: np.ndarray, score: np.ndarray) -> dict:
    """Youden cut-off of ``score`` for the binary ``y`` (see the module docstring): {cutoff, threshold,
    sensitivity, specificity, J, auc}."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    j = tpr - fpr
    b = int(np.argmax(j))
    t = float(thr[b])
    below = score[score < t]
    cutoff = 0.5 * (t + float(below.max())) if below.size and np.isfinite(t) else t
    return {"cutoff": cutoff, "threshold": t, "sensitivity": float(tpr[b]), "specificity": float(1.0 - fpr[b]),
            "J": float(j[b]), "auc": float(auc(fpr, tpr))}


def roc_analysis(y, d90, bootstrap: int, seed: int) -> dict:
    """AUC and Youden cut-off of D90 with their bootstrap confidence intervals, and the curve."""
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.utils import resample

    y = np.asarray(y, int)
    d90 = np.asarray(d90, float)
    fpr, tpr, thr = roc_curve(y, d90)
    yd = youden(y, d90)
    rs = np.random.RandomState(seed)
    cut, auc = [], []
    idx = np.arange(len(y))
    h = CUTOFF_SMOOTHING * silverman_bandwidth(d90)
    for _ in range(int(bootstrap)):
        b = resample(idx, replace=True, stratify=y, random_state=rs)
        auc.append(youden(y[b], d90[b])["auc"])
        cut.append(youden(y[b], d90[b] + rs.normal(0.0, h, len(b)))["cutoff"])
    ci = (lambda v: [float(x) for x in np.percentile(v, [2.5, 97.5])]) if bootstrap else (lambda v: None)
    return {
        "roc_auc": float(roc_auc_score(y, d90)), "roc_auc_ci95": ci(auc),
        "youden_cutoff_d90_gy": yd["cutoff"], "youden_cutoff_ci95_gy": ci(cut),
        "youden_threshold_d90_gy": yd["threshold"], "youden_j": yd["J"],
        "sensitivity": yd["sensitivity"], "specificity": yd["specificity"],
        "roc_curve": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "thresholds_gy": [float(t) if np.isfinite(t) else None for t in thr]},
        "bootstrap": {"samples": int(bootstrap), "seed": int(seed),
                      "method": "stratified resampling of patients (sklearn.utils.resample), percentile 95 % CI; "
                                f"for the cut-off smoothed by Gaussian noise of SD {h:.2f} Gy "
                                f"({CUTOFF_SMOOTHING} x Silverman's bandwidth)",
                      "cutoff_smoothing_sd_gy": float(h)},
    }


def silverman_bandwidth(values) -> float:
    """Silverman's rule of thumb: 0.9 min(SD, IQR / 1.34) n^(-1/5)."""
    v = np.asarray(values, float)
    iqr = float(np.subtract(*np.percentile(v, [75, 25])))
    spread = min(float(np.std(v, ddof=1)), iqr / 1.34) if iqr > 0 else float(np.std(v, ddof=1))
    return 0.9 * spread * len(v) ** -0.2


def metrics_roc(y, table: dict[str, np.ndarray]) -> dict:
    """{metric: {auc, youden_cutoff, sensitivity, specificity}} of each metric's values (NaN rows left out)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    y = np.asarray(y, int)
    for name, values in table.items():
        v = np.asarray(values, float)
        ok = np.isfinite(v)
        if ok.sum() < 2 or len(set(y[ok])) < 2:
            out[name] = None
            continue
        yd = youden(y[ok], v[ok])
        out[name] = {"auc": float(roc_auc_score(y[ok], v[ok])), "youden_cutoff": yd["cutoff"],
                     "sensitivity": yd["sensitivity"], "specificity": yd["specificity"], "n": int(ok.sum())}
    return out


def logistic_analysis(y, d90) -> dict:
    """Unpenalised logistic regression of ``y`` on D90 (see the module docstring)."""
    from scipy.stats import chi2
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    y = np.asarray(y, int)
    d90 = np.asarray(d90, float)
    separated = bool(d90[y == 0].max() < d90[y == 1].min()) or bool(d90[y == 1].max() < d90[y == 0].min())
    n = len(y)
    null_ll = -log_loss(y, np.full(n, y.mean()), normalize=False)
    if separated:
        return {"separated": True, "coef_per_gy": None, "intercept": None, "odds_ratio_per_10gy": None,
                "d90_at_p50_gy": None, "lr_chi2": None, "lr_p": None, "n": n,
                "note": "D90 separates responders from non-responders completely: the maximum-likelihood fit "
                        "does not exist (the odds ratio is unbounded); the Youden cut-off is the estimate"}
    x = (d90 / 10.0).reshape(-1, 1)       # per 10 Gy: a well-scaled problem for the solver
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(x, y)
    b1, b0 = float(model.coef_[0, 0]), float(model.intercept_[0])
    ll = -log_loss(y, model.predict_proba(x)[:, 1], normalize=False)
    lr = max(0.0, 2.0 * (ll - null_ll))
    return {"separated": False, "coef_per_gy": b1 / 10.0, "intercept": b0, "odds_ratio_per_10gy": float(np.exp(b1)),
            "d90_at_p50_gy": (-b0 / b1 * 10.0) if b1 != 0 else None, "lr_chi2": lr, "lr_p": float(chi2.sf(lr, 1)),
            "n": n, "library": "sklearn.linear_model.LogisticRegression(C=inf)"}


def km_analysis(d90, time_months, event, cutoff_gy: float) -> dict:
    """Kaplan-Meier of local control above / below the cut-off and the log-rank test between them."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    d90, t, e = (np.asarray(a, float) for a in (d90, time_months, event))
    groups = []
    for label, sel in ((f"D90 >= {cutoff_gy:.1f} Gy", d90 >= cutoff_gy), (f"D90 < {cutoff_gy:.1f} Gy", d90 < cutoff_gy)):
        if not sel.any():
            groups.append({"label": label, "n": 0, "events": 0, "timeline_months": [], "event_free": [],
                           "median_months": None})
            continue
        kmf = KaplanMeierFitter().fit(t[sel], e[sel], label=label)
        sf = kmf.survival_function_
        groups.append({"label": label, "n": int(sel.sum()), "events": int(e[sel].sum()),
                       "timeline_months": [float(v) for v in sf.index], "event_free": [float(v) for v in sf.iloc[:, 0]],
                       "median_months": float(kmf.median_survival_time_)})
    above, below = d90 >= cutoff_gy, d90 < cutoff_gy
    logrank = None
    if above.any() and below.any():
        res = logrank_test(t[above], t[below], event_observed_A=e[above], event_observed_B=e[below])
        logrank = {"chi2": float(res.test_statistic), "p": float(res.p_value)}
    return {"cutoff_d90_gy": float(cutoff_gy), "groups": groups, "logrank": logrank, "n": len(t),
            "events": int(e.sum()), "library": "lifelines.KaplanMeierFitter, lifelines.statistics.logrank_test"}


def cox_analysis(d90, time_months, event, cutoff_gy: float | None) -> tuple[dict | None, list[str]]:
    """Cox models of the hazard on D90 (per 10 Gy) and on D90 below the cut-off; (result, warnings)."""
    import pandas as pd
    from lifelines import CoxPHFitter

    d90, t, e = (np.asarray(a, float) for a in (d90, time_months, event))
    out, notes = {"n": len(t), "events": int(e.sum()), "library": "lifelines.CoxPHFitter"}, []
    covariates = {"d90_per_10gy": d90 / 10.0}
    if cutoff_gy is not None:
        covariates["d90_below_cutoff"] = (d90 < cutoff_gy).astype(float)
    for name, x in covariates.items():
        if np.ptp(x) == 0:
            notes.append(f"Cox model of {name}: the covariate does not vary; not fitted")
            out[name] = None
            continue
        df = pd.DataFrame({"time": t, "event": e, name: x})
        try:
            with _warnings.catch_warnings(record=True) as caught:
                _warnings.simplefilter("always")
                cph = CoxPHFitter().fit(df, duration_col="time", event_col="event")
        except Exception as exc:  # noqa: BLE001 - lifelines raises ConvergenceError, numpy errors on degenerate data
            notes.append(f"Cox model of {name} did not converge ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
            out[name] = None
            continue
        row = cph.summary.loc[name]
        out[name] = {"coef": float(row["coef"]), "hazard_ratio": float(row["exp(coef)"]),
                     "hazard_ratio_ci95": [float(row["exp(coef) lower 95%"]), float(row["exp(coef) upper 95%"])],
                     "p": float(row["p"]), "concordance": float(cph.concordance_index_)}
        for w in caught:
            if "converge" in str(w.message).lower() or "separation" in str(w.message).lower():
                notes.append(f"Cox model of {name}: {' '.join(str(w.message).split())[:200]}")
    return out, notes
