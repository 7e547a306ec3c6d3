"""Issue 18: the censored-regression (Tobit) fit of log t* on log f beside the OLS fit of resolved bands.

Bands too fast or too slow for the searchable lags are left out of the OLS fit; which bands get resolved
depends on their noise, so the OLS slope on what is left is biased towards 0. The Tobit fit takes those
bands as bounds and recovers the planted exponent."""

from __future__ import annotations

import json

import numpy as np
from test_spectrum_stats import P5, banded_video

from fademem.analysis.spectrum import SpectrumParams, accumulate, analyse_frames, analyse_stats, pool_clips
from fademem.analysis.spectrum_plot import _jsonable, format_summary
from fademem.analysis.spectrum_stats import fit_censored, fit_horizons

K_TRUE = 1.5  # t* ~ f^-1.5, b = 1/k = 0.667


def censored_sample(seed, clips=30, bands=8, k=K_TRUE, noise=0.5, fast=1.0, slow=30.0):
    """Per-clip horizons log t = c_clip - k log f + N(0, noise^2), observed only inside [fast, slow]:
    below, a too-fast band (an upper bound `fast`), above, a too-slow one (a lower bound `slow`)."""
    rng = np.random.default_rng(seed)
    log_f = np.tile(np.linspace(np.log(1 / 32), 0, bands), clips)
    groups = np.repeat(np.arange(clips), bands)
    y = rng.normal(-0.5, 0.4, clips)[groups] - k * log_f + rng.normal(0, noise, clips * bands)
    side = np.where(y < np.log(fast), -1, np.where(y > np.log(slow), 1, 0))
    t = np.where(side < 0, fast, np.where(side > 0, slow, np.exp(y)))
    return np.exp(log_f), t, side, groups


def test_censored_fit_recovers_the_planted_exponent_the_resolved_only_fit_flattens():
    f, t, side, groups = censored_sample(0)
    assert (side < 0).sum() > 20 and (side > 0).sum() > 40  # both kinds of censoring, a lot of it
    naive = fit_horizons(f[side == 0], t[side == 0], groups[side == 0])
    tobit = fit_censored(f, t, side, groups)
    assert naive["k"] < 1.3 and naive["k_ci_ols"][1] < K_TRUE  # the resolved-only fit excludes the truth
    assert naive["b"] > 0.75  # b = 1/k: 0.667 planted
    assert abs(tobit["k"] - K_TRUE) < 0.1 and tobit["k_ci"][0] < K_TRUE < tobit["k_ci"][1]
    assert abs(tobit["b"] - 1 / K_TRUE) < 0.05 and tobit["b_ci"][0] < 1 / K_TRUE < tobit["b_ci"][1]
    assert abs(tobit["sigma"] - 0.5) < 0.1 and tobit["converged"]
    assert (tobit["n_resolved"], tobit["n_too_fast"], tobit["n_too_slow"]) == (
        (side == 0).sum(), (side < 0).sum(), (side > 0).sum())


def test_censored_fit_is_unbiased_over_replicates_where_the_naive_fit_is_not():
    ks = np.array([[fit_censored(f, t, s, g)["k"], fit_horizons(f[s == 0], t[s == 0], g[s == 0])["k"]]
                   for f, t, s, g in (censored_sample(seed, clips=3) for seed in range(40))])
    tobit, naive = np.median(ks, 0)
    assert abs(tobit - K_TRUE) < 0.08
    assert naive < K_TRUE - 0.15


def test_one_clip_and_no_censoring_agrees_with_ols():
    rng = np.random.default_rng(3)
    f = np.geomspace(1 / 32, 1, 8)
    t = 2 * f**-1.2 * np.exp(rng.normal(0, 0.2, 8))
    tobit, ols = fit_censored(f, t, np.zeros(8)), fit_horizons(f, t)
    assert abs(tobit["k"] - ols["k"]) < 1e-5 and abs(tobit["log_c"] - ols["log_c"]) < 1e-4
    assert abs(tobit["k_se"] - ols["k_se"]) / ols["k_se"] < 1e-3  # the dof correction makes it the OLS s.e.


def test_no_censored_fit_without_enough_resolved_bands():
    f = np.geomspace(1 / 32, 1, 6)
    got = fit_censored(f, [9, 5, 30, 30, 30, 30], [0, 0, 1, 1, 1, 1])
    assert got["k"] is None and "not identified from censored bands alone" in got["note"]


def test_spectrum_reports_the_censored_fit_beside_the_ols_fit():
    video = banded_video(240, 64, [30, 15, 8, 4, 2], 5, seed=1)  # band 0 too slow for 48 lags
    p = SpectrumParams(**P5, n_boot=0)
    res = analyse_frames(video, p)
    fc = res["fit_censored"]
    status = res["horizon_status"]
    assert (fc["n_resolved"], fc["n_too_fast"], fc["n_too_slow"]) == (
        status.count("resolved"), status.count("too_fast"), status.count("too_slow"))
    assert fc["n_too_slow"] >= 1 and fc["k"] is not None and fc["k"] > 0
    assert "censored fit (Tobit, " in format_summary(res, "clip", with_beta=True)
    json.dumps(_jsonable(res))  # goes into spectrum.json as it is
    second = analyse_stats([accumulate(banded_video(240, 64, [60, 30, 12, 4, 2], 5, seed=2), p)], p)
    pooled = pool_clips([res, second], p)
    assert pooled["fit_censored"]["n_groups"] == 2
    assert pooled["fit_censored"]["n_resolved"] == fc["n_resolved"] + second["fit_censored"]["n_resolved"]
