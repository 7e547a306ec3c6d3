"""Distance-dependent spectral decay of real videos (paper Section 3.2, Figure 2).

Pipeline, all streamed (only the last `max_lag` frames' band coefficients are kept):

1. Frame features: luma (BT.601), RGB per channel, or Wan-VAE latents (`--vae-dir`).
2. Band decomposition: subtract each channel's spatial mean, apply a 2D Hann window (stops the
   frame border from leaking static energy into every band), real 2D FFT, and split the
   coefficients into `bands` equal-width annuli of normalised radial frequency
   rho = |f| / f_Nyquist in (0, 1]. DC (rho = 0) and the corners (rho > 1) belong to no band.
3. Estimator: C_r(lag) = mean over frame pairs (t, t+lag) of the cosine
   Re<X_t^r, X_{t+lag}^r> / (|X_t^r| |X_{t+lag}^r|), where X_t^r stacks all band-r Fourier
   coefficients (all channels) of frame t. Per-pair normalisation makes each pair count once,
   whatever its energy (exposure changes, fades), and pools across videos and resolutions.
   The temporal mean is NOT removed: content that stays put across the lag is precisely the
   information that remains usable from distant memory, and removing a sample mean would need
   two passes and bias long-lag correlations negative on short clips.
4. Horizon t*(r): on the running-minimum envelope m(lag) of the curve (non-increasing, so noise
   bumps do not count), t* is the first lag (linearly interpolated) where a flatness score drops
   to <= eps. Default rule "slope": the envelope's slope over the lookahead [t, 1.5 t] is at most
   eps times its mean slope over [0, t] -- scale-free (a curve flat from lag T gives ~0.95 T, an
   exponential exp(-t/tau) gives ~3.6 tau) and blind to slow drifts later in the window. Rule
   "drop": the remaining drop m(t) - m(L) is at most eps times the total drop m(0) - m(L).
   Statuses: "static" (total drop < min_drop: never decorrelates, horizon := L), "too_slow"
   (not flat within the searchable lags, or t* > censor_frac * L), "too_fast" (already flat
   at lag 1; t* := 1), "undefined" (no valid pairs), else "resolved". Only resolved bands
   enter the fit.
5. r*(t) = largest band centre whose horizon is >= t (static bands count as horizon L).
6. Fit log r = a - b log t* over the resolved bands (OLS, needs >= 3); CI: t-based on the OLS slope, and a
   stratified block bootstrap that re-runs steps 3-6 on every replicate: pairs are assigned to
   the block of their later frame, blocks of `block` frames (default censor_frac * max_lag, the
   longest horizon that can be resolved, so a block outlasts the dependence it must keep) are
   resampled with replacement within each video. Needs >= MIN_BOOT_BLOCKS blocks in all;
   otherwise (and with ci="ols") the reported interval is the OLS one.
7. beta = 1 - 2b (density matching, see `suggest_beta`), clipped to [beta_floor, 1].

Modules: ``spectrum_params`` (``SpectrumParams``), ``spectrum_bands`` (steps 1-3: features, bands,
the streamed estimator), ``spectrum_fit`` (steps 4-7: horizons, fit, bootstrap, beta,
``analyse_stats`` / ``analyse_frames``), this one (video input: ``analyse_videos``,
``wan_vae_latents``) and ``spectrum_plot`` (figures, JSON, summary lines). The names of the first
three are re-exported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np

# Re-exported: every name of the analysis stays importable from fademem.analysis.spectrum.
from fademem.analysis.spectrum_bands import (  # noqa: F401
    LUMA,
    BandLayout,
    LagAccumulator,
    LagStats,
    _ratio,
    accumulate,
    band_edges,
    to_channels,
)
from fademem.analysis.spectrum_fit import (  # noqa: F401
    MIN_BOOT_BLOCKS,
    _fit_curves,
    analyse_frames,
    analyse_stats,
    bootstrap_b,
    decorrelation_horizons,
    fit_power_law,
    flatness,
    stable_radius,
    suggest_beta,
)
from fademem.analysis.spectrum_params import SpectrumParams

# ----------------------------------------------------------------------------- videos


def wan_vae_latents(frames: Iterable[np.ndarray], vae_dir, device: str = "cpu", batch: int = 8):
    """Encode RGB frames one by one (as single-frame clips) with a diffusers AutoencoderKLWan and
    yield normalised latents (z - latents_mean) / latents_std as (z_dim, h, w) arrays."""
    import torch
    from diffusers import AutoencoderKLWan

    try:
        vae = AutoencoderKLWan.from_pretrained(os.fspath(vae_dir)).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a Wan VAE from {vae_dir}: {exc}") from exc
    cfg = vae.config
    if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
        raise ValueError(f"{vae_dir}: latents_mean/std must have z_dim = {cfg.z_dim} entries")
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    f = 2 ** (len(cfg.dim_mult) - 1)

    def encode(buf):
        x = torch.from_numpy(np.stack(buf)).permute(0, 3, 1, 2)[:, :, None] * 2 - 1
        x = x[..., : x.shape[-2] // f * f, : x.shape[-1] // f * f]
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"frames smaller than the VAE's spatial factor {f}")
        with torch.no_grad():
            z = vae.encode(x.to(device)).latent_dist.mode().float().cpu()
        return list(((z - mean) / std)[:, :, 0].numpy())

    buf = []
    for frame in frames:
        buf.append(np.asarray(frame, np.float32))
        if len(buf) == batch:
            yield from encode(buf)
            buf = []
    if buf:
        yield from encode(buf)


def analyse_videos(paths, params: SpectrumParams | None = None, *, size=None, stride: int = 1,
                   max_frames: int | None = None, vae_dir=None, device: str = "cpu",
                   pool: bool = True, progress: bool = True) -> dict:
    """Stream every video, report per video and (pool=True, several videos) pooled over all pairs."""
    from tqdm import tqdm

    from fademem.pipeline import video_io

    params = (params or SpectrumParams()).validate()
    if vae_dir is not None:
        params = SpectrumParams(**{**asdict(params), "channels": "raw"})
    if not paths:
        raise ValueError("no video given")
    videos, all_stats = [], []
    for path in paths:
        path = os.fspath(path)
        n_total = video_io.count_frames(path)
        step = video_io.effective_stride(n_total, stride, max_frames)
        n_use = math.ceil(n_total / step) if max_frames is None else min(math.ceil(n_total / step), max_frames)
        if n_use < 2:
            raise ValueError(f"{path}: a single frame (or none) cannot show temporal correlation")
        if n_use < params.max_lag + 1:
            raise ValueError(f"{path}: only {n_use} frames to analyse (of {n_total}, stride {step}), fewer "
                             f"than max_lag + 1 = {params.max_lag + 1}; lower --max-lag or --stride")
        frames = video_io.iter_video_frames(path, size=size, stride=step, max_frames=max_frames)
        frames = tqdm(frames, total=n_use, desc=os.path.basename(path), unit="frame", disable=not progress)
        if vae_dir is not None:
            frames = wan_vae_latents(frames, vae_dir, device)
        stats = accumulate(frames, params, name=path)
        fps = video_io.video_fps(path)
        res = analyse_stats([stats], params)
        res.update(path=path, name=os.path.basename(path), n_frames_total=n_total, frame_step=step,
                   fps=fps, lag_seconds=step / fps if fps else None)
        videos.append(res)
        all_stats.append(stats)
    report = {"params": {**asdict(params), "size": size, "stride": stride, "max_frames": max_frames,
                         "vae_dir": None if vae_dir is None else os.fspath(vae_dir), "pool": pool},
              "videos": videos, "pooled": None}
    if pool and len(all_stats) > 1:
        report["pooled"] = analyse_stats(all_stats, params)
    elif len(all_stats) == 1:
        report["pooled"] = videos[0]
    return report
