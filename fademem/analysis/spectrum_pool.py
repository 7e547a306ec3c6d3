"""Pooling clips by clip (``fademem spectrum`` on several videos).

Every clip is analysed on its own (its horizons in seconds, at its own frame rate and size); the
pooled answer is one common slope k over all clips' resolved (f, t*) points with one intercept per
clip (``spectrum_stats.fit_horizons`` with groups). Frame pairs are never summed across clips: that
weights clips by length, mixes lags of different durations and lets a clip's curve shape leak into
another's horizons. Intervals: the slope's t-interval (misfit), the within-clip block bootstrap
(replicate i of every clip together) and the clip bootstrap (whole clips resampled with
replacement, >= 3 clips); the reported one is their union.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fademem.analysis.spectrum_fit import censored_fit, decorrelation_horizons, suggest_beta
from fademem.analysis.spectrum_params import SpectrumParams
from fademem.analysis.spectrum_stats import fit_horizons, quantile_interval, summarise_fit, verdict

MIN_CLIPS_FOR_CLIP_BOOTSTRAP = 3


def _points(results, horizons_s=None):
    f, t, g = [], [], []
    for i, res in enumerate(results):
        h = np.asarray(res["horizons_s"] if horizons_s is None else horizons_s[i], float)
        c = np.asarray(res["band_centres"], float)
        ok = np.isfinite(h)
        f.append(c[ok])
        t.append(h[ok])
        g.append(np.full(ok.sum(), i))
    return np.concatenate(f), np.concatenate(t), np.concatenate(g)


def pooled_fit(results, level: float = 0.95, horizons_s=None) -> dict | None:
    return fit_horizons(*_points(results, horizons_s), level=level)


def pool_clips(results: list[dict], params: SpectrumParams) -> dict:
    """The pooled-by-clip fit of per-clip results (``analyse_stats`` dicts), its intervals, verdict,
    sensitivity grid and beta."""
    fit = pooled_fit(results, params.level)
    k_int = {"ols": None if fit is None else fit["k_ci_ols"], "block": None, "clip": None}
    boots = [res.get("_boot_h_s") for res in results]
    n = len(results)
    if fit is not None and params.ci == "bootstrap" and params.n_boot > 0:
        if all(b is not None for b in boots):
            ks = []
            for i in range(params.n_boot):
                rep = pooled_fit(results, params.level, [b[i] for b in boots])
                ks.append(np.nan if rep is None else rep["k"])
            if np.isfinite(ks).mean() >= 0.5:
                k_int["block"] = quantile_interval(ks, params.level)
        if n >= MIN_CLIPS_FOR_CLIP_BOOTSTRAP:
            rng = np.random.default_rng(params.seed + 1)
            ks = []
            for _ in range(params.n_boot):
                pick = rng.integers(0, n, n)
                rep = pooled_fit([results[j] for j in pick], params.level)
                ks.append(np.nan if rep is None else rep["k"])
            if np.isfinite(ks).mean() >= 0.5:
                k_int["clip"] = quantile_interval(ks, params.level)
    if params.ci != "bootstrap":
        k_int = {"ols": k_int["ols"]}
    out = {"n_clips": n, "pooling": "by clip (common slope, one intercept per clip)",
           "per_clip_b": [res["b"] for res in results]}
    out.update(summarise_fit(fit, k_int, params.level, params.min_points, params.min_r2))
    out["fit_censored"] = censored_fit(results, params.level)
    rows = []
    for rule in ("slope", "drop"):
        for eps in params.eps_grid:
            p = replace(params, rule=rule, eps=eps)
            hs = [decorrelation_horizons(np.asarray(res["curves"], float), p)[0] * res["dt"] for res in results]
            cell = pooled_fit(results, p.level, hs)
            v = verdict(cell, None if cell is None else cell["k_ci_ols"], p.min_points, p.min_r2)
            rows.append({"rule": rule, "eps": eps, "b": None if cell is None else cell["b"],
                         "n_points": 0 if cell is None else cell["n_points"],
                         "r2": None if cell is None else cell["r2"], "verdict": v["verdict"]})
    out["sensitivity"] = rows
    out["beta"] = suggest_beta(out["b"], out["ci"], params.beta_floor, out["verdict"])
    return out
