"""Horizons, the power-law fit, its intervals and beta (steps 4-7 of ``fademem.analysis.spectrum``):
decorrelation horizons t*(r) with censoring, r*(t), the fit of log t* on log f (``spectrum_stats``),
the stratified block bootstrap, the rule/eps sensitivity grid and the FadeMem exponent beta = 1 - 2b."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from fademem.analysis.spectrum_bands import LagStats, _ratio, accumulate, band_edges
from fademem.analysis.spectrum_params import SpectrumParams
from fademem.analysis.spectrum_stats import (
    b_interval,
    fit_censored,
    fit_horizons,
    quantile_interval,
    summarise_fit,
    verdict,
)

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


def lag0_extrapolated(curve: np.ndarray) -> float:
    """The noise-free C(0): C(0) = 1 by construction, but independent per-frame noise (sensor noise,
    compression, flicker) makes every lag >= 1 drop at once (a "nugget"). Extrapolating the curve
    linearly from lags 1 and 2 to lag 0 (capped at 1) removes that step, so it neither counts as
    decorrelation nor enters the slope rule's mean-slope denominator."""
    if len(curve) < 3:
        return float(curve[0])
    return float(min(curve[0], 2 * curve[1] - curve[2]))


def decorrelation_horizons(curves: np.ndarray, params: SpectrumParams) -> tuple[np.ndarray, list[str]]:
    """t*(r) per band (in lag units) and its status; see the module docstring for the rule.

    Only "resolved" bands get a horizon. "too_fast" (flat from lag 1: decorrelated within one lag,
    horizon < 1 lag) and "too_slow" (no flat regime within the searchable lags, beyond
    censor_frac * max_lag, or no measurable drop at all while the correlation stays high) are
    censored: NaN, with the bound given by `censor_bounds`. "undefined": no valid pairs."""
    L = curves.shape[1] - 1
    horizons, status = np.full(len(curves), np.nan), []
    for curve in curves:
        if not np.isfinite(curve).all():
            status.append("undefined")
            continue
        curve = curve.astype(float).copy()
        curve[0] = lag0_extrapolated(curve)
        env = np.minimum.accumulate(curve)
        if env[0] - env[-1] < params.min_drop:
            # no measurable decay over lags >= 1: the level tells a persistent band from a lost one
            status.append("too_slow" if env[0] > 0.5 else "too_fast")
            continue
        g = flatness(env, params.rule, params.lookahead)
        below = np.flatnonzero(g[1:] <= params.eps)
        if below.size == 0:  # never flat within the searchable lags: a lower bound
            status.append("too_slow")
            continue
        k = int(below[0]) + 1
        if k == 1:
            status.append("too_fast")
            continue
        hi, lo = g[k - 1], g[k]
        h = k - 1 + (hi - params.eps) / (hi - lo) if np.isfinite(hi) and hi > lo else float(k)
        if h > params.censor_frac * L:
            status.append("too_slow")
            continue
        horizons[len(status)] = h
        status.append("resolved")
    return horizons, status


def censor_bounds(status: list[str], params: SpectrumParams) -> list:
    """What a censored band says, in lags: too_fast -> ("<", 1), too_slow -> (">", censor_frac * L)."""
    L = params.max_lag
    return [("<", 1.0) if s == "too_fast" else (">", params.censor_frac * L) if s == "too_slow" else None
            for s in status]


def stable_radius(horizons: np.ndarray, centres: np.ndarray, max_lag: int) -> np.ndarray:
    """r*(t) for t = 1..max_lag: the largest band centre whose horizon is >= t (NaN if none)."""
    t = np.arange(1, max_lag + 1)[:, None]
    ok = np.isfinite(horizons)[None] & (np.nan_to_num(horizons, nan=-1.0)[None] >= t)
    return np.where(ok.any(1), np.where(ok, centres[None], -np.inf).max(1), np.nan)


def fit_power_law(t: np.ndarray, r: np.ndarray, level: float = 0.95) -> dict | None:
    """r ~ t^-b from horizons t at band centres r, by the regression of log t on log r (see
    ``spectrum_stats``): b = 1/k, log a (of log r = log a - b log t), r2, n_points, ci_ols. None below
    3 points or when the horizons do not shorten with frequency (k <= 0)."""
    fit = fit_horizons(r, t, level=level)
    if fit is None or fit["b"] is None:
        return None
    return {**fit, "log_a": fit["log_c"] * fit["b"], "ci_ols": fit["b_ci_ols"]}


def _resolved_fit(horizons, status, centres, params, dt=1.0):
    ok = np.array([s == "resolved" for s in status])
    return ok, fit_horizons(centres[ok], horizons[ok] * dt, level=params.level)


def censored_fit(results: list[dict], level: float = 0.95) -> dict:
    """``spectrum_stats.fit_censored`` over per-clip results (one intercept per clip): resolved horizons as
    values, too-slow / too-fast bands as bounds (seconds), undefined bands left out."""
    f, t, side, groups = [], [], [], []
    for i, res in enumerate(results):
        for c, h, st, bd in zip(res["band_centres"], res["horizons_s"], res["horizon_status"],
                                res["horizon_bounds_s"], strict=True):
            if st == "resolved" or bd is not None:
                f.append(c)
                t.append(h if st == "resolved" else bd[1])
                side.append(0 if st == "resolved" else 1 if bd[0] == ">" else -1)
                groups.append(i)
    return fit_censored(f, t, side, groups, level)


def bootstrap_horizons(stats: list[LagStats], params: SpectrumParams, bands: np.ndarray) -> np.ndarray:
    """Horizons (lags) on `n_boot` stratified block-bootstrap replicates, (n_boot, n_bands): NaN
    wherever a band is not resolved in the replicate (a censored replicate band is left out, never
    fitted at a stand-in value) or was not resolved on the full data (`bands`, boolean mask:
    re-selecting bands per replicate would mix model-selection flips into the interval)."""
    rng = np.random.default_rng(params.seed)
    out = np.full((params.n_boot, len(bands)), np.nan)
    for i in range(params.n_boot):
        s = n = 0.0
        for st in stats:
            idx = rng.integers(0, len(st.sums), len(st.sums))
            s = s + st.sums[idx].sum(0)
            n = n + st.counts[idx].sum(0)
        h, status = decorrelation_horizons(_ratio(s, n).T, params)
        keep = bands & np.array([x == "resolved" for x in status])
        out[i, keep] = h[keep]
    return out


def bootstrap_k(boot_h: np.ndarray, centres: np.ndarray, level: float) -> np.ndarray:
    """k of every replicate (NaN where a replicate leaves fewer than 3 resolved bands)."""
    ks = np.full(len(boot_h), np.nan)
    for i, h in enumerate(boot_h):
        fit = fit_horizons(centres, h, level=level)
        if fit is not None:
            ks[i] = fit["k"]
    return ks


def bootstrap_b(stats: list[LagStats], centres: np.ndarray, params: SpectrumParams, bands: np.ndarray) -> np.ndarray:
    """b = 1/k on the block-bootstrap replicates (NaN: invalid replicate or k <= 0)."""
    ks = bootstrap_k(bootstrap_horizons(stats, params, bands), centres, params.level)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ks > 0, 1 / ks, np.nan)


def suggest_beta(b: float | None, ci: list | None = None, floor: float = 0.05, verdict: str = "supported") -> dict:
    """FadeMem exponent from the measured decay.

    The schedule u(d) = d^beta merges the adjacent pair closest in warped space, so entries end
    up roughly uniform in u: entry density per unit distance ~ du/dd ~ d^(beta-1). The stable
    information at distance t scales like the number of stable 2D Fourier modes,
    ~ r*(t)^2 ~ t^(-2b). Matching exponents: beta = 1 - 2b, clipped to [floor, 1].

    The mapping saturates: every b >= (1 - floor) / 2 gives the floor, so a clipped beta is not a
    measurement ("saturated": True, the summary says so). No beta at all without a fit, or when
    the verdict is "none" (no power law supported: there is nothing to match).
    """
    if b is None or not np.isfinite(b):
        return {"beta": None, "beta_ci": None, "raw": None, "saturated": False, "note": "no fit of b, no beta"}
    if verdict == "none":
        return {"beta": None, "beta_ci": None, "raw": 1 - 2 * b, "saturated": False,
                "note": "no power law supported: no beta suggested"}

    def clip(v):
        return float(min(max(v, floor), 1.0))

    raw = 1 - 2 * b
    note = None
    if raw <= 0:
        note = f"1 - 2b = {raw:.3f} <= 0: saturated at the floor {floor} (any b >= {(1 - floor) / 2:.3f} gives it)"
    elif raw < floor:
        note = f"1 - 2b = {raw:.3f} below the floor: saturated at {floor}"
    elif raw > 1:
        note = f"1 - 2b = {raw:.3f} > 1 (b < 0, no shrinkage): clipped to 1"
    beta_ci = None
    if ci is not None and all(v is not None for v in ci):
        beta_ci = sorted([clip(1 - 2 * ci[1]) if np.isfinite(ci[1]) else floor, clip(1 - 2 * ci[0])])
    return {"beta": clip(raw), "beta_ci": beta_ci, "raw": raw, "saturated": raw < floor, "note": note}


def band_centres(stats: list[LagStats], params: SpectrumParams) -> tuple[np.ndarray, np.ndarray]:
    """(edges, centres): energy-weighted geometric band centres where the stats carry energies (the
    point on the log-f axis a band's horizon belongs to), else the geometric / linear midpoints."""
    edges = stats[0].edges if stats[0].edges is not None else band_edges(params.bands)
    if all(st.energy is not None for st in stats):
        with np.errstate(invalid="ignore", divide="ignore"):
            centres = np.exp(sum(st.log_rho_energy for st in stats) / sum(st.energy for st in stats))
        if np.isfinite(centres).all():
            return edges, centres
    lo = np.where(edges[:-1] > 0, edges[:-1], edges[1] / 2)
    return edges, (np.sqrt(lo * edges[1:]) if params.band_scale == "log" else (edges[:-1] + edges[1:]) / 2)


def sensitivity(curves: np.ndarray, centres: np.ndarray, params: SpectrumParams, dt: float = 1.0) -> list[dict]:
    """b, points, r^2 and verdict for every horizon rule x eps in params.eps_grid (point fits)."""
    rows = []
    for rule in ("slope", "drop"):
        for eps in params.eps_grid:
            p = replace(params, rule=rule, eps=eps)
            h, status = decorrelation_horizons(curves, p)
            ok, fit = _resolved_fit(h, status, centres, p, dt)
            v = verdict(fit, None if fit is None else fit["k_ci_ols"], p.min_points, p.min_r2)
            rows.append({"rule": rule, "eps": eps, "b": None if fit is None else fit["b"],
                         "n_points": int(ok.sum()), "r2": None if fit is None else fit["r2"],
                         "verdict": v["verdict"]})
    return rows


def analyse_stats(stats: list[LagStats], params: SpectrumParams, dt: float = 1.0) -> dict:
    """One clip: curves, horizons (lags and seconds, dt = seconds per analysed frame), the fit of
    log t* on log f with its intervals, verdict, sensitivity grid and beta, as a dict. Several stats
    are pooled by summing frame pairs -- only meaningful for pieces of one clip (same frame rate and
    size); clips are pooled by ``spectrum_pool.pool_clips``."""
    edges, centres = band_centres(stats, params)
    counts = sum(st.counts.sum(0) for st in stats)
    curves = _ratio(sum(st.sums.sum(0) for st in stats), counts).T
    horizons, status = decorrelation_horizons(curves, params)
    ok, fit = _resolved_fit(horizons, status, centres, params, dt)
    bounds = censor_bounds(status, params)
    res = {
        "n_frames": sum(st.n_frames for st in stats),
        "dt": dt,
        "lags": list(range(params.max_lag + 1)),
        "lags_s": [lag * dt for lag in range(params.max_lag + 1)],
        "band_edges": edges.tolist(),
        "band_centres": centres.tolist(),
        "curves": curves.tolist(),
        "nugget": [None if not np.isfinite(c).all() else 1 - lag0_extrapolated(c) for c in curves],
        "pairs_per_lag": counts.max(1).astype(int).tolist(),
        "horizons": horizons.tolist(),
        "horizons_s": (horizons * dt).tolist(),
        "horizon_status": status,
        "horizon_bounds_s": [None if bd is None else [bd[0], bd[1] * dt] for bd in bounds],
        "r_star": stable_radius(horizons, centres, params.max_lag).tolist(),
        "ci_ols": None if fit is None else fit["b_ci_ols"],
        "ci_bootstrap": None,
        "bootstrap": None,
    }
    k_int = {"ols": None if fit is None else fit["k_ci_ols"], "block": None}
    n_blocks = sum(len(st.sums) for st in stats)
    boot_h = None
    if params.n_boot > 0 and fit is not None and n_blocks >= MIN_BOOT_BLOCKS:
        boot_h = bootstrap_horizons(stats, params, ok)
        ks = bootstrap_k(boot_h, centres, params.level)
        valid = float(np.isfinite(ks).mean())
        res["bootstrap"] = {"n_boot": params.n_boot, "n_blocks": n_blocks, "block_frames": params.block_len,
                            "valid_fraction": valid}
        if valid >= 0.5:
            k_int["block"] = quantile_interval(ks, params.level)
            res["ci_bootstrap"] = b_interval(k_int["block"])
    res.update(summarise_fit(fit, k_int if params.ci == "bootstrap" else {"ols": k_int["ols"]}, params.level,
                             params.min_points, params.min_r2))
    res["fit_censored"] = censored_fit([res], params.level)  # beside the OLS fit; it does not set beta
    res["sensitivity"] = sensitivity(curves, centres, params, dt)
    res["beta"] = suggest_beta(res["b"], res["ci"], params.beta_floor, res["verdict"])
    res["_boot_h_s"] = None if boot_h is None else boot_h * dt  # for pooling by clip; not written out
    return res


def analyse_frames(frames: Iterable[np.ndarray], params: SpectrumParams | None = None, dt: float = 1.0) -> dict:
    """Array entry point: analyse one frame sequence ((H, W), (H, W, 3) or raw (C, H, W) frames)."""
    params = (params or SpectrumParams()).validate()
    return analyse_stats([accumulate(frames, params)], params, dt)
