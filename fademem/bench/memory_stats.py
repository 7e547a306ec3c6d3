"""``fademem bench memory``: per-frame scores against the truth and their statistics over episodes.

Frames are scored with PSNR (capped at ``PSNR_CAP_DB``) and SSIM; statistics are over episodes
(frames of one episode are correlated): per lag bin (``metrics.binned_by_lag``), overall and at
long lags, with 95% t intervals (``metrics.mean_ci``), and per-episode paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

LAG_EDGES = (0, 1, 8, 16, 32, 64, 128, 256, math.inf)  # latent (= video) frames
PSNR_CAP_DB = 100.0


# -------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------
def frame_metrics(generated, truth, max_db: float = PSNR_CAP_DB) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (PSNR capped at ``max_db``, SSIM) of frames [T, H, W, 3] in [0, 1]."""
    from fademem.metrics import psnr, ssim

    g = torch.as_tensor(np.asarray(generated) if not isinstance(generated, torch.Tensor) else generated)
    t = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth)
    g, t = g.detach().cpu().double(), t.detach().cpu().double()
    return psnr(g, t, max_db=max_db).numpy(), ssim(g, t).numpy()


def _ci(values) -> list[float]:
    from fademem.metrics import mean_ci

    return list(mean_ci(values))


def lag_table(values: list[np.ndarray], lags: list[np.ndarray], edges=LAG_EDGES) -> dict[str, list]:
    """Per lag bin: mean over episodes of the per-episode mean, 95% CI, episode and frame counts."""
    from fademem.metrics import binned_by_lag

    b = binned_by_lag(list(values), list(lags), edges)
    return {"mean": b.mean.tolist(), "low": b.low.tolist(), "high": b.high.tolist(),
            "n_episodes": b.n_episodes.tolist(), "n_frames": b.n_frames.tolist()}


def summarise(per_episode: list[dict], lags: list[np.ndarray], long_lag: int, edges=LAG_EDGES,
              masks: list[np.ndarray] | None = None, keys: Sequence[str] = ("psnr", "ssim")) -> dict[str, Any]:
    """Overall and long-lag means with CIs over episodes, and the lag-binned tables. ``masks`` (one
    [T] bool per episode): score only those frames (e.g. ``revisit_masks``); ``n_frames``: their count."""
    out: dict[str, Any] = {}
    for key in keys:
        vals, lgs = _selected(per_episode, key, lags, masks)
        out[key] = _ci([v.mean() for v in vals if v.size])
        longs = [v[lg >= long_lag].mean() for v, lg in zip(vals, lgs) if (lg >= long_lag).any()]
        out[f"{key}_long"] = _ci(longs)
        out["n_long_episodes"] = len(longs)
        out[f"{key}_by_lag"] = lag_table(vals, lgs, edges)
        out["n_frames"] = int(sum(v.size for v in vals))
    return out


def _selected(per_episode: list[dict], key: str, lags, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    vals = [np.asarray(ep[key], np.float64) for ep in per_episode]
    lgs = [np.asarray(lg) for lg in lags]
    if masks is None:
        return vals, lgs
    ms = [np.asarray(m, bool) for m in masks]
    return [v[m] for v, m in zip(vals, ms)], [lg[m] for lg, m in zip(lgs, ms)]


def revisit_masks(lags_all: list[np.ndarray], window: int, opening: int) -> list[np.ndarray]:
    """Per episode, [T - opening] bool over the scored (generated) frames: the frames within ``window``
    frames of a revisit onset among them (``world.revisit.revisit_aligned``)."""
    from fademem.embedded.world.revisit import revisit_aligned

    return [revisit_aligned(lg, window, start=opening)[opening:] for lg in lags_all]


def paired(per_episode: list[dict], reference: list[dict], lags: list[np.ndarray], long_lag: int) -> dict:
    """Per-episode differences policy - reference (same noise, same episodes): mean and 95% CI."""
    out = {}
    for key in ("psnr", "ssim"):
        a = [np.asarray(e[key]) for e in per_episode]
        b = [np.asarray(e[key]) for e in reference]
        out[key] = _ci([x.mean() - y.mean() for x, y in zip(a, b)])
        out[f"{key}_long"] = _ci([x[lg >= long_lag].mean() - y[lg >= long_lag].mean()
                                  for x, y, lg in zip(a, b, lags) if (lg >= long_lag).any()])
    return out


# -------------------------------------------------------------------------------------------
# Every pair of policies: paired differences with Holm-corrected intervals
# -------------------------------------------------------------------------------------------
PAIRWISE_METHOD = ("per-episode paired differences a - b (same episodes, same noise); per metric and lag range the "
                   "family is every pair of policies; Holm-Bonferroni at family-wise alpha; each interval is the t "
                   "interval at the level Holm compared that pair at (metrics.holm), so it excludes 0 exactly when "
                   "Holm rejects 'no difference'")


def episode_means(values: list[np.ndarray], lags: list[np.ndarray], lo: float, hi: float) -> np.ndarray:
    """[E] per-episode mean of the values whose lag is in [lo, hi) (nan: none)."""
    out = np.full(len(values), np.nan)
    for i, (v, lg) in enumerate(zip(values, lags)):
        sel = np.asarray(v, np.float64)[(np.asarray(lg) >= lo) & (np.asarray(lg) < hi)]
        if sel.size:
            out[i] = sel.mean()
    return out


def pairwise(named: list[tuple[str, list[dict]]], key: str, lags: list[np.ndarray], long_lag: int,
             masks: list[np.ndarray] | None = None, edges=LAG_EDGES, alpha: float = 0.05) -> dict[str, Any]:
    """Every pair (a, b) of the policies ``named`` [(name, per-episode dicts with ``key``)] on ``key``:
    {"overall": [...], "long": [...], "by_lag": [[...] per bin]}, one entry per pair (``metrics.paired_holm``
    plus "a", "b"), each family (one lag range) Holm-corrected on its own. Episodes without values in a
    range drop out of that range's comparisons (they lack them for every policy alike)."""
    from fademem.metrics import paired_holm

    sel = {name: _selected(eps, key, lags, masks) for name, eps in named}
    pairs = [(a, b) for i, (a, _) in enumerate(named) for b, _ in named[i + 1:]]
    ranges = {"overall": (-math.inf, math.inf), "long": (long_lag, math.inf)}
    ranges.update({f"bin{i}": (lo, hi) for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))})

    def family(lo, hi):
        means = {name: episode_means(*sel[name], lo, hi) for name, _ in named}
        diffs = []
        for a, b in pairs:
            d = means[a] - means[b]
            diffs.append(d[np.isfinite(d)])
        return [{"a": a, "b": b, **r} for (a, b), r in zip(pairs, paired_holm(diffs, alpha))]

    out = {name: family(*r) for name, r in ranges.items() if not name.startswith("bin")}
    out["by_lag"] = [family(*ranges[f"bin{i}"]) for i in range(len(edges) - 1)]
    return out


def excluding_zero(entries: list[dict]) -> list[str]:
    """'a - b' for the pairs whose Holm-corrected interval excludes 0."""
    return [f"{e['a']} - {e['b']}" for e in entries if e["excludes_zero"]]


def compare_policies(results: list[dict], lags: list[np.ndarray], long_lag: int, masks: list[np.ndarray],
                     alpha: float, extra_masks: dict | None = None, critic: bool = False) -> dict:
    """Everything in a report that depends on the set of policies: each finished policy's
    ``paired_vs_full`` (set in place, against the first unbounded one) and the pairwise block (every pair
    Holm-corrected on revisit-aligned PSNR/SSIM, on each of ``extra_masks``, and on the critic's identity
    when ``critic``). One run's report and a merge of several (``memory_merge``) both come from here."""
    ok = [r for r in results if r["error"] is None]
    ref = next((r for r in ok if r["unbounded"]), None)  # the reference of paired_vs_full
    for r in ok:
        r.pop("paired_vs_full", None)
        if ref is not None and r is not ref:
            r["paired_vs_full"] = paired(r["episodes"], ref["episodes"], lags, long_lag)
    named = [(r["spec"], r["episodes"]) for r in ok]
    pw: dict = {"alpha": alpha, "method": PAIRWISE_METHOD, "scoring": "revisit-aligned frames "
                "(identity: revisit windows)", "long_lag_frames": long_lag,
                "pairs": [[a, b] for i, (a, _) in enumerate(named) for b, _ in named[i + 1:]]}
    for key in ("psnr", "ssim"):
        pw[key] = pairwise(named, key, lags, long_lag, masks=masks, alpha=alpha)
    for name, m in (extra_masks or {}).items():
        pw[name] = {key: pairwise(named, key, lags, long_lag, masks=m, alpha=alpha) for key in ("psnr", "ssim")}
    if critic:
        id_named = [(r["spec"], [e["identity"] for e in r["episodes"]]) for r in ok]
        id_lags = [np.asarray(e["identity"]["lags"], np.int64) for e in ok[0]["episodes"]] if ok else []
        pw["identity"] = pairwise(id_named, "identity", id_lags, long_lag, alpha=alpha)
    pw["excluding_zero"] = {f"{k}_{rng}": excluding_zero(pw[k][rng]) for k in ("psnr", "ssim", "identity")
                            if k in pw for rng in ("overall", "long")}
    return pw
