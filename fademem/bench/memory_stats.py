"""``fademem bench memory``: per-frame scores against the truth and their statistics over episodes.

Frames are scored with PSNR (capped at ``PSNR_CAP_DB``) and SSIM; statistics are over episodes
(frames of one episode are correlated): per lag bin (``metrics.binned_by_lag``), overall and at
long lags, with 95% t intervals (``metrics.mean_ci``), and per-episode paired differences.
"""

from __future__ import annotations

import math
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


def summarise(per_episode: list[dict], lags: list[np.ndarray], long_lag: int,
              edges=LAG_EDGES) -> dict[str, Any]:
    """Overall and long-lag means with CIs over episodes, and the lag-binned tables."""
    out: dict[str, Any] = {}
    for key in ("psnr", "ssim"):
        vals = [np.asarray(ep[key], np.float64) for ep in per_episode]
        out[key] = _ci([v.mean() for v in vals if v.size])
        longs = [v[lg >= long_lag].mean() for v, lg in zip(vals, lags) if (lg >= long_lag).any()]
        out[f"{key}_long"] = _ci(longs)
        out["n_long_episodes"] = len(longs)
        out[f"{key}_by_lag"] = lag_table(vals, lags, edges)
    return out


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
