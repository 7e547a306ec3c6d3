"""The regression behind ``fademem spectrum``: log t* on log f, its intervals and its verdict.

Regression direction. The band centre f is set by the analysis (a design variable, known); the
horizon t* is the noisy measurement. So the fit is the ordinary regression of the noisy quantity on
the known one, log t* = c_clip - k log f, and b = 1/k (r*(t) ~ t^-b is the same line read the
other way). Regressing log f on log t* instead (the old fit) puts the noise in the regressor and
attenuates the slope, which biases b towards 0 on the 3-7 points a video gives.

Pooling. Clips are pooled by clip, never by summing frame pairs: every clip keeps its own intercept
c_clip (a fixed effect: clips differ in motion speed and frame rate) and contributes its resolved
(f, t* in seconds) points to one common slope k.

Intervals (on k, inverted to b = 1/k; an interval on k that reaches 0 leaves b unbounded above):
``ols`` the t-interval of the slope from the residual scatter (covers misfit of the power law),
``block`` the within-clip block bootstrap, ``clip`` resampling whole clips (pooled only). The
reported interval is their union (the widest) -- each covers a different source of error.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats


def fit_horizons(f, t, groups=None, level: float = 0.95) -> dict | None:
    """OLS of log t = c_g - k log f (common slope, one intercept per group). None below 3 points,
    without a residual degree of freedom, or when log f does not vary within any group."""
    f, t = np.asarray(f, float), np.asarray(t, float)
    groups = np.zeros(len(f), int) if groups is None else np.asarray(groups)
    ok = np.isfinite(f) & np.isfinite(t) & (f > 0) & (t > 0)
    f, t, groups = f[ok], t[ok], groups[ok]
    if len(f) < 3:
        return None
    x, y = np.log(f), np.log(t)
    labels, inv = np.unique(groups, return_inverse=True)
    xm = np.bincount(inv, x) / np.bincount(inv)
    ym = np.bincount(inv, y) / np.bincount(inv)
    xc, yc = x - xm[inv], y - ym[inv]
    sxx, syy = float((xc**2).sum()), float((yc**2).sum())
    dof = len(x) - len(labels) - 1
    if sxx <= 1e-12 or dof < 1:
        return None
    slope = float((xc * yc).sum() / sxx)
    k = -slope
    resid = yc - slope * xc
    rss = float((resid**2).sum())
    se = math.sqrt(rss / dof / sxx)
    q = float(scipy.stats.t.ppf((1 + level) / 2, dof))
    k_ci = [k - q * se, k + q * se]
    return {"k": k, "k_se": se, "k_ci_ols": k_ci, "b": 1 / k if k > 0 else None, "b_ci_ols": b_interval(k_ci),
            "r2": 1 - rss / syy if syy > 0 else 1.0, "n_points": int(len(x)), "n_groups": int(len(labels)),
            "dof": dof, "log_c": float(ym[0] - slope * xm[0]) if len(labels) == 1 else None}


def b_interval(k_ci) -> list | None:
    """An interval on k = 1/b as one on b. [1/k_hi, inf] when it reaches k <= 0 (b unbounded above);
    None when the whole interval is k <= 0 (no shrinking horizon at all)."""
    if k_ci is None:
        return None
    lo, hi = k_ci
    if hi <= 0:
        return None
    return [1 / hi, 1 / lo if lo > 0 else math.inf]


def quantile_interval(values, level: float) -> list | None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 20:
        return None
    alpha = (1 - level) / 2
    return np.quantile(v, [alpha, 1 - alpha]).tolist()


def union(*intervals) -> list | None:
    got = [iv for iv in intervals if iv is not None]
    if not got:
        return None
    return [min(iv[0] for iv in got), max(iv[1] for iv in got)]


def verdict(fit: dict | None, k_ci, min_points: int = 4, min_r2: float = 0.8) -> dict:
    """Is a power law t* ~ f^-k (k > 0) supported? 'supported', 'weak' or 'none', with the reason."""
    if fit is None:
        return {"verdict": "none", "reason": "fewer than 3 resolved bands: no power law supported"}
    if k_ci is None or k_ci[0] <= 0:
        return {"verdict": "none", "reason": "horizons do not shorten significantly with frequency (k interval "
                                              "reaches 0): no power law supported"}
    if fit["r2"] < min_r2 / 2:
        return {"verdict": "none", "reason": f"r^2 = {fit['r2']:.2f}: the points do not follow a line on log-log "
                                              "axes: no power law supported"}
    weak = []
    if fit["n_points"] < min_points:
        weak.append(f"only {fit['n_points']} points")
    if fit["r2"] < min_r2:
        weak.append(f"r^2 = {fit['r2']:.2f} < {min_r2}")
    if weak:
        return {"verdict": "weak", "reason": "power law consistent but " + ", ".join(weak)}
    return {"verdict": "supported", "reason": f"{fit['n_points']} points, r^2 = {fit['r2']:.2f}"}


def summarise_fit(fit: dict | None, k_intervals: dict, level: float, min_points: int, min_r2: float) -> dict:
    """The fit, every interval (on k and on b), their union and the verdict, as one dict."""
    k_ci = union(*k_intervals.values()) if fit is not None else None
    out = {"fit": fit, "b": None if fit is None else fit["b"], "k": None if fit is None else fit["k"],
           "k_intervals": k_intervals, "k_ci": k_ci, "ci": b_interval(k_ci),
           "ci_method": "union of " + "+".join(n for n, v in k_intervals.items() if v is not None) if k_ci else None,
           "level": level}
    out.update(verdict(fit, k_ci, min_points, min_r2))
    return out
