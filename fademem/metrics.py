"""Frame metrics (PSNR, SSIM) and lag-binned statistics with confidence intervals.

Frames are [..., H, W, C] arrays (numpy or torch) in [0, data_range]; metrics reduce the last three
dims and return one value per frame (numpy in -> numpy float64 out, torch in -> torch out on the
same device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _as_torch(a, b) -> tuple[torch.Tensor, torch.Tensor, bool]:
    is_np = not isinstance(a, torch.Tensor)
    ta, tb = torch.as_tensor(np.asarray(a) if is_np else a), torch.as_tensor(np.asarray(b) if is_np else b)
    if ta.shape != tb.shape:
        raise ValueError(f"shape mismatch: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    if ta.ndim < 3:
        raise ValueError(f"expected [..., H, W, C] frames, got shape {tuple(ta.shape)}")
    dtype = torch.float64 if ta.device.type == "cpu" else torch.float32  # exact on CPU, fast on GPU
    return ta.to(dtype), tb.to(device=ta.device, dtype=dtype), is_np


def _out(x: torch.Tensor, is_np: bool):
    return x.cpu().numpy() if is_np else x


def psnr(a, b, data_range: float = 1.0, max_db: float | None = None):
    """Per-frame PSNR in dB, 10 log10(data_range^2 / MSE) with MSE over H, W, C.

    Identical frames give +inf; pass max_db (e.g. 100) to cap instead, which keeps means finite.
    """
    ta, tb, is_np = _as_torch(a, b)
    mse = ((ta - tb) ** 2).mean(dim=(-3, -2, -1))
    db = 10 * torch.log10(data_range**2 / mse)  # mse = 0 -> +inf
    if max_db is not None:
        db = db.clamp(max=max_db)
    return _out(db, is_np)


def _gaussian_window(dtype, device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_map(a, b, data_range: float = 1.0) -> torch.Tensor:
    """SSIM map [N..., C, H-10, W-10] (valid region: windows entirely inside the frame)."""
    ta, tb, _ = _as_torch(a, b)
    *lead, H, W, C = ta.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    x = ta.reshape(-1, H, W, C).permute(0, 3, 1, 2).reshape(-1, 1, H, W)  # channels become batch
    y = tb.reshape(-1, H, W, C).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
    g = _gaussian_window(x.dtype, x.device)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(z):  # separable Gaussian, 'valid' like Wang et al.'s filter2(..., 'valid')
        return F.conv2d(F.conv2d(z, gh), gw)

    stacked = blur(torch.cat([x, y, x * x, y * y, x * y]))
    mx, my, xx, yy, xy = stacked.chunk(5)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my  # population (weighted) moments, as in the paper
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(*lead, C, H - SSIM_WINDOW + 1, W - SSIM_WINDOW + 1)


def ssim(a, b, data_range: float = 1.0):
    """Per-frame SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, mean of
    the valid-region map, averaged over channels. Equals skimage's structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=..., channel_axis=-1)."""
    is_np = not isinstance(a, torch.Tensor)
    return _out(ssim_map(a, b, data_range).mean(dim=(-3, -2, -1)), is_np)


def mean_ci(values, confidence: float = 0.95, method: str = "t", n_boot: int = 10_000,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): a `confidence` interval for the mean of independent samples.

    method="t": mean +- t_{(1+c)/2, n-1} * s / sqrt(n) (s with ddof=1). method="bootstrap":
    percentile interval of `n_boot` resampled means (seeded, so reproducible). Fewer than two
    values give a nan interval.
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if not np.isfinite(v).all():
        raise ValueError("non-finite values (cap PSNR with psnr(..., max_db=...))")
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    if method == "t":
        half = float(stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        return m, m - half, m + half
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        return m, float(lo), float(hi)
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")


@dataclass
class LagBins:
    """Per-bin statistics: bin i covers lags in [edges[i], edges[i+1])."""

    edges: np.ndarray  # [B+1]
    mean: np.ndarray  # [B] mean over episodes of the per-episode mean error in the bin
    low: np.ndarray  # [B] CI bounds (nan with < 2 episodes)
    high: np.ndarray
    n_episodes: np.ndarray  # [B] episodes with at least one frame in the bin
    n_frames: np.ndarray  # [B] frames in the bin, all episodes


def binned_by_lag(errors, lags, bins, confidence: float = 0.95, method: str = "t") -> LagBins:
    """Mean error per lag bin with a CI over episodes.

    errors: [E, T] array or a list of E 1-D arrays (episodes may differ in length), one value per
    frame (e.g. PSNR or SSIM of a generated frame against the true one). lags: same structure, or
    one 1-D array shared by all episodes (e.g. `last_seen` of a common scene). bins: edges.
    Frames of one episode are correlated, so each episode contributes one sample per bin, its mean
    over the bin's frames; the CI (see `mean_ci`) is over those episode means.
    """
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be increasing edges, at least two")
    err_eps = [np.asarray(e, np.float64).ravel()
               for e in (errors if isinstance(errors, list) else np.atleast_2d(errors))]
    if isinstance(lags, list) and len(lags) and np.ndim(lags[0]) == 1:  # ragged: one array per episode
        lag_eps = [np.asarray(x).ravel() for x in lags]
    elif np.ndim(lags) == 1:  # shared by all episodes
        lag_eps = [np.asarray(lags).ravel()] * len(err_eps)
    else:
        lag_eps = list(np.asarray(lags).reshape(len(err_eps), -1))
    if len(lag_eps) != len(err_eps) or any(e.shape != g.shape for e, g in zip(err_eps, lag_eps)):
        raise ValueError("errors and lags must have matching shapes per episode")
    B = edges.size - 1
    per_bin: list[list[float]] = [[] for _ in range(B)]
    n_frames = np.zeros(B, np.int64)
    for e, g in zip(err_eps, lag_eps):
        idx = np.searchsorted(edges, g, side="right") - 1  # bin of each frame; outside -> -1 or B
        for b in range(B):
            sel = e[idx == b]
            if sel.size:
                per_bin[b].append(float(sel.mean()))
                n_frames[b] += sel.size
    rows = np.array([mean_ci(v, confidence, method) for v in per_bin]).reshape(B, 3)
    return LagBins(edges, rows[:, 0], rows[:, 1], rows[:, 2], np.array([len(v) for v in per_bin]), n_frames)


def paired_t(a, b=None, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, low, high, p) for the mean of paired differences ``a - b`` (or of ``a`` when ``b`` is None):
    the t interval mean +- t_{(1+c)/2, n-1} s / sqrt(n) and the two-sided one-sample t-test p-value
    against 0 (= scipy.stats.ttest_rel(a, b)). Fewer than two pairs: nan interval and p. Zero spread:
    a zero-width interval, p = 1 if the mean is 0 else 0."""
    d = np.asarray(a, np.float64).ravel() - (0.0 if b is None else np.asarray(b, np.float64).ravel())
    if d.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    if not np.isfinite(d).all():
        raise ValueError("non-finite values (cap PSNR with psnr(..., max_db=...))")
    m = float(d.mean())
    if d.size < 2:
        return m, math.nan, math.nan, math.nan
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    if se == 0.0:
        return m, m, m, 1.0 if m == 0.0 else 0.0
    half = float(stats.t.ppf((1 + confidence) / 2, d.size - 1)) * se
    p = float(2 * stats.t.sf(abs(m) / se, d.size - 1))
    return m, m - half, m + half, p


@dataclass
class Holm:
    """Holm-Bonferroni over a family of tests (nan p-values are left out of the family)."""

    adjusted: np.ndarray  # [m] Holm-adjusted p-values (nan where p was nan)
    rejected: np.ndarray  # [m] bool: rejected at the family-wise level alpha
    level: np.ndarray  # [m] the per-test level Holm compared it at (see ``holm``); nan where p was nan
    family: int  # tests in the family (non-nan p)


def holm(pvalues, alpha: float = 0.05) -> Holm:
    """Holm's step-down procedure: with the m p-values sorted p(1) <= ... <= p(m), reject H(i) while
    p(i) <= alpha / (m - i + 1); adjusted p(i) = max_{j <= i} min(1, (m - j + 1) p(j)).

    ``level``: for the i-th smallest of the r rejected tests, alpha / (m - i + 1) (the level it was
    rejected at); for every test not rejected, alpha / (m - r). A (1 - level) interval per test then
    excludes 0 exactly when Holm rejects it (the intervals ``paired_holm`` reports)."""
    p = np.asarray(pvalues, np.float64).ravel()
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    adjusted, level = np.full(p.shape, math.nan), np.full(p.shape, math.nan)
    rejected = np.zeros(p.shape, bool)
    order = ok[np.argsort(p[ok], kind="stable")]
    running, r, stopped = 0.0, 0, False
    for i, k in enumerate(order):  # i = rank - 1
        running = max(running, min(1.0, (m - i) * p[k]))
        adjusted[k] = running
        if not stopped and p[k] <= alpha / (m - i):
            rejected[k], level[k], r = True, alpha / (m - i), r + 1
        else:
            stopped = True
    level[order[r:]] = alpha / (m - r) if m > r else math.nan
    return Holm(adjusted, rejected, level, m)


def paired_holm(differences: list, alpha: float = 0.05) -> list[dict]:
    """A family of paired comparisons, one array of per-unit differences each: per comparison the
    mean, Holm-adjusted interval (``low``/``high``: the t interval at confidence 1 - ``level`` of
    ``holm``), the raw and Holm-adjusted p-values, ``excludes_zero`` (= Holm rejects), n."""
    raw = [paired_t(d) for d in differences]
    h = holm([r[3] for r in raw], alpha)
    out = []
    for i, (d, (m, _, _, p)) in enumerate(zip(differences, raw)):
        lv = float(h.level[i])
        _, lo, hi, _ = paired_t(d, confidence=1 - lv) if math.isfinite(lv) else (m, math.nan, math.nan, p)
        out.append({"mean": m, "low": lo, "high": hi, "p": p, "p_holm": float(h.adjusted[i]),
                    "level": lv, "excludes_zero": bool(h.rejected[i]), "n": int(np.size(d))})
    return out
