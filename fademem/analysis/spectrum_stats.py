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

Censoring. The OLS fit uses resolved bands only. A band that is too fast (t* < 1 lag) or too slow
(t* > the searchable lags) still says where its horizon lies, and leaving it out selects the resolved
points by their noise (a band near a bound is resolved only when its noise pulls it inside), which
flattens the slope. ``fit_censored`` is the Tobit maximum-likelihood fit of the same line with those
bands as censored observations (a probability beyond their bound, never a value); it is reported
beside the OLS fit.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.special
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


def _tobit_nll(theta, x, y, side, inv, n_groups):
    """Negative log-likelihood of log t = c_g + slope log f + N(0, s^2) and its gradient in
    (c_1..c_G, slope, log s). side 0: y observed; +1: y above it (right-censored); -1: below it."""
    c, slope, log_s = theta[:n_groups], theta[n_groups], theta[n_groups + 1]
    s = math.exp(log_s)
    mu = c[inv] + slope * x
    obs = side == 0
    z = np.where(obs, (y - mu) / s, side * (mu - y) / s)
    log_cdf = scipy.special.log_ndtr(z)
    zc = np.maximum(z, -30.0)  # phi(z) / Phi(z); below -30 its asymptote -z - 1/z (no cancellation)
    lam = np.where(z < -30.0, -z - 1 / np.minimum(z, -30.0),
                   np.exp(-0.5 * zc**2 - 0.5 * math.log(2 * math.pi) - scipy.special.log_ndtr(zc)))
    ll = np.where(obs, -0.5 * z**2 - log_s - 0.5 * math.log(2 * math.pi), log_cdf)
    d_mu = np.where(obs, z / s, lam * side / s)
    d_log_s = np.where(obs, z**2 - 1, -lam * z)
    grad = np.concatenate([np.bincount(inv, d_mu, n_groups), [(d_mu * x).sum(), d_log_s.sum()]])
    return -float(ll.sum()), -grad


def fit_censored(f, t, side, groups=None, level: float = 0.95) -> dict:
    """Tobit (censored-regression) maximum-likelihood fit of log t = c_g - k log f + N(0, s^2), common
    slope, one intercept per group. ``side``: 0 where t is a resolved horizon, +1 where t is a lower
    bound (too slow: the horizon lies above it), -1 where t is an upper bound (too fast). Groups with no
    resolved point are left out (their intercept is not identified). Interval on k: Wald, from the
    observed information (numerical Hessian of the analytic gradient), its standard error scaled by
    sqrt(n_r / (n_r - G - 1)) (n_r resolved points: the ML noise scale's small-sample bias, as OLS
    divides by its dof), t quantile with n - G - 2 dof; on simulated two-sided censoring (1-30 clips of
    8-16 bands) it covers the planted k 94-97% of the time at 95%.
    Needs what the OLS fit of the resolved points needs (>= 3 points, a residual dof): the noise scale
    is not identified from censored points alone. Always a dict; "k" None with a "note" when no fit."""
    f, t, side = (np.asarray(a, float) for a in (f, t, side))
    groups = np.zeros(len(f), int) if groups is None else np.asarray(groups)
    ok = np.isfinite(f) & np.isfinite(t) & (f > 0) & (t > 0) & np.isin(side, (-1, 0, 1))
    f, t, side, groups = f[ok], t[ok], side[ok].astype(int), groups[ok]
    obs = side == 0
    keep = np.isin(groups, groups[obs])
    out = {"method": "tobit ML (censored bands as bounds)", "n_resolved": int(obs.sum()),
           "n_too_fast": int((keep & (side < 0)).sum()), "n_too_slow": int((keep & (side > 0)).sum()),
           "k": None, "b": None, "k_ci": None, "b_ci": None, "note": None}
    if fit_horizons(f[obs], t[obs], groups[obs], level) is None:
        return {**out, "note": "fewer than 3 resolved bands (or no residual dof): the noise scale is not "
                               "identified from censored bands alone"}
    f, t, side, groups, obs = f[keep], t[keep], side[keep], groups[keep], obs[keep]
    x, y = np.log(f), np.log(t)
    labels, inv = np.unique(groups, return_inverse=True)
    n_g = len(labels)
    xo, yo, io = x[obs], y[obs], inv[obs]
    xc = xo - (np.bincount(io, xo, n_g) / np.bincount(io, minlength=n_g))[io]
    yc = yo - (np.bincount(io, yo, n_g) / np.bincount(io, minlength=n_g))[io]
    slope0 = float((xc * yc).sum() / (xc**2).sum())
    c0 = np.bincount(io, yo - slope0 * xo, n_g) / np.bincount(io, minlength=n_g)
    s0 = max(float(np.sqrt(((yc - slope0 * xc) ** 2).mean())), 1e-3)
    args = (x, y, side, inv, n_g)
    opt = scipy.optimize.minimize(_tobit_nll, np.concatenate([c0, [slope0, math.log(s0)]]), args=args,
                                  jac=True, method="BFGS", options={"gtol": 1e-8, "maxiter": 2000})
    theta = opt.x
    h = 1e-5
    hess = np.empty((len(theta), len(theta)))
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        hess[i] = (_tobit_nll(theta + e, *args)[1] - _tobit_nll(theta - e, *args)[1]) / (2 * h)
    hess = (hess + hess.T) / 2
    try:
        cov = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        cov = None
    if not np.isfinite(theta).all() or cov is None or not np.isfinite(cov[n_g, n_g]) or cov[n_g, n_g] <= 0:
        return {**out, "note": f"no maximum-likelihood estimate ({opt.message})"}
    n_r = int(obs.sum())
    k, se_ml = -float(theta[n_g]), math.sqrt(float(cov[n_g, n_g]))
    se = se_ml * math.sqrt(n_r / max(1, n_r - n_g - 1))
    dof = max(1, len(x) - n_g - 2)
    q = float(scipy.stats.t.ppf((1 + level) / 2, dof))
    k_ci = [k - q * se, k + q * se]
    converged = bool(opt.success or np.abs(opt.jac).max() < 1e-4)  # BFGS flags precision loss at the optimum
    return {**out, "k": k, "k_se": se, "k_se_ml": se_ml, "k_ci": k_ci, "b": 1 / k if k > 0 else None,
            "b_ci": b_interval(k_ci), "sigma": math.exp(float(theta[n_g + 1])), "loglik": -float(opt.fun),
            "n_points": int(len(x)), "n_groups": n_g, "dof": dof, "converged": converged,
            "log_c": float(theta[0]) if n_g == 1 else None}
