"""Horizons, the power-law fit, its intervals and beta (steps 4-7 of ``fademem.analysis.spectrum``):
decorrelation horizons t*(r), r*(t), the OLS fit of log r = a - b log t, the stratified block
bootstrap, and the FadeMem exponent beta = 1 - 2b."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import scipy.stats

from fademem.analysis.spectrum_bands import LagStats, _ratio, accumulate, band_edges
from fademem.analysis.spectrum_params import SpectrumParams

MIN_BOOT_BLOCKS = 5


# ----------------------------------------------------------------------------- horizons and fit


def flatness(env: np.ndarray, rule: str, lookahead: float) -> np.ndarray:
    """Score g(lag) of a non-increasing envelope; the curve is near-flat once g <= eps. g(0) = 1.

    drop:  remaining drop over the total drop, (m(lag) - m(L)) / (m(0) - m(L)).
    slope: local slope over the lookahead [lag, (1 + k) lag] relative to the mean slope so far,
           (m(lag) - m((1 + k) lag)) / (k (m(0) - m(lag))); inf where (1 + k) lag > L.
    """
    L = len(env) - 1
    lags = np.arange(L + 1, dtype=float)
    if rule == "drop":
        return (env - env[-1]) / (env[0] - env[-1])
    ahead = np.interp((1 + lookahead) * lags, lags, env)
    done = env[0] - env
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(done > 0, (env - ahead) / (lookahead * done), 1.0)
    g[0] = 1.0
    g[(1 + lookahead) * lags > L] = np.inf
    return g


def decorrelation_horizons(curves: np.ndarray, params: SpectrumParams) -> tuple[np.ndarray, list[str]]:
    """t*(r) per band (in lag units) and its status; see the module docstring for the rule."""
    L = curves.shape[1] - 1
    horizons, status = np.full(len(curves), np.nan), []
    for r, curve in enumerate(curves):
        if not np.isfinite(curve).all():
            status.append("undefined")
            continue
        env = np.minimum.accumulate(curve)
        if env[0] - env[-1] < params.min_drop:
            horizons[r] = L
            status.append("static")
            continue
        g = flatness(env, params.rule, params.lookahead)
        below = np.flatnonzero(g[1:] <= params.eps)
        if below.size == 0:  # never flat within the searchable lags: a lower bound
            horizons[r] = L / (1 + params.lookahead)
            status.append("too_slow")
            continue
        k = int(below[0]) + 1
        if k == 1:
            horizons[r] = 1.0
            status.append("too_fast")
            continue
        hi, lo = g[k - 1], g[k]
        horizons[r] = k - 1 + (hi - params.eps) / (hi - lo) if np.isfinite(hi) and hi > lo else float(k)
        status.append("too_slow" if horizons[r] > params.censor_frac * L else "resolved")
    return horizons, status


def stable_radius(horizons: np.ndarray, centres: np.ndarray, max_lag: int) -> np.ndarray:
    """r*(t) for t = 1..max_lag: the largest band centre whose horizon is >= t (NaN if none)."""
    t = np.arange(1, max_lag + 1)[:, None]
    ok = np.isfinite(horizons)[None] & (np.nan_to_num(horizons, nan=-1.0)[None] >= t)
    return np.where(ok.any(1), np.where(ok, centres[None], -np.inf).max(1), np.nan)


def fit_power_law(t: np.ndarray, r: np.ndarray, level: float = 0.95) -> dict | None:
    """OLS of log r = a - b log t; b, log a, r2 and the t-based CI of b. None below 3 points
    (two points always fit exactly and leave no residual to judge the fit by)."""
    t, r = np.asarray(t, float), np.asarray(r, float)
    if len(t) < 3 or np.ptp(np.log(t)) == 0:
        return None
    x, y = np.log(t), np.log(r)
    slope, a = np.polyfit(x, y, 1)
    resid = y - (a + slope * x)
    sxx = ((x - x.mean()) ** 2).sum()
    syy = ((y - y.mean()) ** 2).sum()
    out = {"b": -slope, "log_a": a, "n_points": len(t), "r2": 1 - (resid**2).sum() / syy if syy > 0 else 1.0,
           "ci_ols": None}
    se = math.sqrt((resid**2).sum() / (len(t) - 2) / sxx)
    q = scipy.stats.t.ppf((1 + level) / 2, len(t) - 2)
    out["ci_ols"] = [-slope - q * se, -slope + q * se]
    return out


def _fit_curves(curves, centres, params):
    horizons, status = decorrelation_horizons(curves, params)
    ok = np.array([s == "resolved" for s in status])
    return horizons, status, fit_power_law(horizons[ok], centres[ok], params.level)


def bootstrap_b(stats: list[LagStats], centres: np.ndarray, params: SpectrumParams, bands: np.ndarray) -> np.ndarray:
    """b on `n_boot` stratified block-bootstrap replicates, over the band set `bands` (boolean mask)
    chosen on the full data -- re-selecting bands per replicate would mix in model-selection flips.
    NaN where a replicate leaves fewer than 3 finite horizons."""
    rng = np.random.default_rng(params.seed)
    out = np.full(params.n_boot, np.nan)
    for i in range(params.n_boot):
        s = n = 0.0
        for st in stats:
            idx = rng.integers(0, len(st.sums), len(st.sums))
            s = s + st.sums[idx].sum(0)
            n = n + st.counts[idx].sum(0)
        horizons = decorrelation_horizons(_ratio(s, n).T[bands], params)[0]
        ok = np.isfinite(horizons)
        fit = fit_power_law(horizons[ok], centres[bands][ok], params.level)
        if fit is not None:
            out[i] = fit["b"]
    return out


def suggest_beta(b: float | None, ci: list | None = None, floor: float = 0.05) -> dict:
    """FadeMem exponent from the measured decay.

    The schedule u(d) = d^beta merges the adjacent pair closest in warped space, so entries end
    up roughly uniform in u: entry density per unit distance ~ du/dd ~ d^(beta-1). The stable
    information at distance t scales like the number of stable 2D Fourier modes,
    ~ r*(t)^2 ~ t^(-2b). Matching exponents: beta - 1 = -2b, beta = 1 - 2b, clipped to
    [floor, 1] (1 - 2b <= 0 means the stable bandwidth shrinks faster than any beta in (0, 1]
    can follow; b < 0 means it does not shrink, and beta = 1 keeps uniform density).
    """
    if b is None or not np.isfinite(b):
        return {"beta": None, "beta_ci": None, "raw": None, "note": "no fit of b, no beta"}

    def clip(v):
        return float(min(max(v, floor), 1.0))

    raw = 1 - 2 * b
    note = None
    if raw <= 0:
        note = f"1 - 2b = {raw:.3f} <= 0: clipped to the floor {floor}"
    elif raw < floor:
        note = f"1 - 2b = {raw:.3f} below the floor: clipped to {floor}"
    elif raw > 1:
        note = f"1 - 2b = {raw:.3f} > 1 (b < 0, no shrinkage): clipped to 1"
    beta_ci = None
    if ci is not None and all(v is not None and np.isfinite(v) for v in ci):
        beta_ci = sorted([clip(1 - 2 * ci[1]), clip(1 - 2 * ci[0])])
    return {"beta": clip(raw), "beta_ci": beta_ci, "raw": raw, "note": note}


def analyse_stats(stats: list[LagStats], params: SpectrumParams) -> dict:
    """Curves, horizons, r*(t), the power-law fit with its intervals and beta, as a JSON-able dict."""
    edges = band_edges(params.bands)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = sum(st.counts.sum(0) for st in stats)
    curves = _ratio(sum(st.sums.sum(0) for st in stats), counts).T
    horizons, status, fit = _fit_curves(curves, centres, params)
    res = {
        "n_frames": sum(st.n_frames for st in stats),
        "lags": list(range(params.max_lag + 1)),
        "band_edges": edges.tolist(),
        "band_centres": centres.tolist(),
        "curves": curves.tolist(),
        "pairs_per_lag": counts.max(1).astype(int).tolist(),
        "horizons": horizons.tolist(),
        "horizon_status": status,
        "r_star": stable_radius(horizons, centres, params.max_lag).tolist(),
        "fit": fit,
        "b": None if fit is None else fit["b"],
        "ci_ols": None if fit is None else fit["ci_ols"],
        "ci_bootstrap": None,
    }
    n_blocks = sum(len(st.sums) for st in stats)
    if params.n_boot > 0 and fit is not None and n_blocks >= MIN_BOOT_BLOCKS:
        boots = bootstrap_b(stats, centres, params, np.array([st == "resolved" for st in status]))
        good = boots[np.isfinite(boots)]
        res["bootstrap"] = {"n_boot": params.n_boot, "n_blocks": n_blocks, "block_frames": params.block_len,
                            "valid_fraction": len(good) / params.n_boot}
        if len(good) >= 0.5 * params.n_boot:
            alpha = (1 - params.level) / 2
            res["ci_bootstrap"] = np.quantile(good, [alpha, 1 - alpha]).tolist()
    res["ci"] = res["ci_bootstrap"] if params.ci == "bootstrap" and res["ci_bootstrap"] else res["ci_ols"]
    res["ci_method"] = "bootstrap" if res["ci"] is not None and res["ci"] is res["ci_bootstrap"] else "ols"
    res["beta"] = suggest_beta(res["b"], res["ci"], params.beta_floor)
    return res


def analyse_frames(frames: Iterable[np.ndarray], params: SpectrumParams | None = None) -> dict:
    """Array entry point: analyse one frame sequence ((H, W), (H, W, 3) or raw (C, H, W) frames)."""
    params = (params or SpectrumParams()).validate()
    return analyse_stats([accumulate(frames, params)], params)
