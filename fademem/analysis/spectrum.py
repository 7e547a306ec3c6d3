"""Distance-dependent spectral decay of real videos (paper Section 3.2, Figure 2).

Pipeline, all streamed (only the last `max_lag` frames' band coefficients are kept):

1. Frame features: luma (BT.601), RGB per channel, or Wan-VAE latents (`--vae-dir`).
2. Band decomposition: subtract each channel's spatial mean, apply a 2D Hann window (stops the
   frame border from leaking static energy into every band), real 2D FFT, and split the
   coefficients into `bands` annuli of normalised radial frequency rho = |f| / f_Nyquist:
   log-spaced from rho_min (default 2 / min(H, W), the lowest non-DC ring; band 0 also takes what
   lies below) to 1, so the bands are evenly spread on the log axis the power law is fitted on
   (``band_scale="linear"``: the old equal-width annuli). A band sits at its energy-weighted
   geometric centre exp(E[log rho]), measured on the clip, not at a nominal midpoint.
3. Estimator: C_r(lag) = mean over frame pairs (t, t+lag) of the cosine
   Re<X_t^r, X_{t+lag}^r> / (|X_t^r| |X_{t+lag}^r|), where X_t^r stacks all band-r Fourier
   coefficients (all channels) of frame t. The temporal mean is NOT removed: content that stays
   put across the lag is precisely the information that remains usable from distant memory.
4. Horizon t*(r): C(0) is replaced by the extrapolation 2 C(1) - C(2) (capped at 1), so per-frame
   noise (a drop at every lag >= 1) neither counts as decorrelation nor enters the slope rule's
   mean-slope denominator. On the running-minimum envelope m(lag), t* is the first lag
   (interpolated) where a flatness score drops to <= eps. Rule "slope" (default): the envelope's
   slope over [t, 1.5 t] is at most eps times its mean slope over [0, t]; rule "drop": the
   remaining drop m(t) - m(L) is at most eps times the total drop. Statuses: "resolved" (the
   only ones fitted), "too_fast" (flat from lag 1, or no measurable drop at a low level: t* < 1
   lag), "too_slow" (no flat regime within the searchable lags, t* > censor_frac * L, or no
   measurable drop at a high level: a lower bound), "undefined" (no valid pairs). Censored bands
   get no horizon (NaN) and are never fitted at a stand-in value; their bounds are reported.
   Horizons are reported in lags and in seconds (lag * frame_step / fps).
5. r*(t) = largest band centre whose horizon is >= t (JSON only; the figure shows the fitted points).
6. Fit log t* = c - k log f over the resolved bands (f: band centre, known; t*: the noisy measurement,
   so it is the response), b = 1/k; see ``spectrum_stats``. Intervals on k, inverted to b: OLS
   t-interval (misfit) and a stratified block bootstrap (pairs assigned to the block of their later
   frame, blocks of `block` frames resampled within the clip; a band censored in a replicate is
   left out of that replicate). The reported interval is their union. Verdict: "supported",
   "weak" (< min_points points or r^2 < min_r2) or "none" (no power law supported). A sensitivity
   grid (rule x eps) is reported beside the chosen rule.
7. beta = 1 - 2b (density matching, see `suggest_beta`), clipped to [beta_floor, 1] and flagged
   "saturated" when clipped at the floor; none when the verdict is "none".
8. Several videos are pooled by clip (``spectrum_pool``): one slope, one intercept per clip,
   intervals from the misfit, the within-clip bootstrap and the clip bootstrap.

Modules: ``spectrum_params`` (``SpectrumParams``), ``spectrum_bands`` (steps 1-3: features, bands,
the streamed estimator), ``spectrum_fit`` (steps 4-7: horizons, fit, bootstrap, beta,
``analyse_stats`` / ``analyse_frames``), ``spectrum_stats`` (the regression, intervals, verdict),
``spectrum_pool`` (pooling by clip), this one (video input: ``analyse_videos``,
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
    band_index,
    to_channels,
)
from fademem.analysis.spectrum_fit import (  # noqa: F401
    MIN_BOOT_BLOCKS,
    analyse_frames,
    analyse_stats,
    bootstrap_b,
    censor_bounds,
    decorrelation_horizons,
    fit_power_law,
    flatness,
    stable_radius,
    suggest_beta,
)
from fademem.analysis.spectrum_params import SpectrumParams
from fademem.analysis.spectrum_pool import pool_clips  # noqa: F401
from fademem.analysis.spectrum_stats import fit_horizons, verdict  # noqa: F401

# ----------------------------------------------------------------------------- videos


def _encode_batches(frames: Iterable[np.ndarray], batch: int, encode):
    """``encode`` (a list of float32 frames -> a list of latents) over ``frames`` in groups of ``batch``,
    streamed: the latents of each group are yielded before the next group is read."""
    buf = []
    for frame in frames:
        buf.append(np.asarray(frame, np.float32))
        if len(buf) == batch:
            yield from encode(buf)
            buf = []
    if buf:
        yield from encode(buf)


def wan_vae_latents(frames: Iterable[np.ndarray], vae_dir, device: str = "cpu", batch: int = 8):
    """Encode RGB frames one by one (as single-frame clips) with a diffusers AutoencoderKLWan and
    yield normalised latents (z - latents_mean) / latents_std as (z_dim, h, w) arrays."""
    import torch

    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
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

    yield from _encode_batches(frames, batch, encode)


def load_frame_codec(path, device: str = "cpu"):
    """The frame codec of an embedded-model file: an autoencoder file, or a bundle (its codec inside).
    ValueError naming the file when it holds neither (or a pixel-space v1 bundle)."""
    from safetensors import safe_open

    from fademem.embedded import load as load_bundle
    from fademem.embedded.autoencoder import load_codec

    try:
        with safe_open(os.fspath(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"cannot read {path} as a safetensors file: {exc}") from exc
    if "autoencoder" in meta:
        return load_codec(path, device=device).eval()
    try:
        bundle = load_bundle(path, device=device)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path} is neither an embedded autoencoder file nor an embedded-model bundle") from exc
    if bundle.cfg.codec == "pixel":
        raise ValueError(f"{path} is a pixel-space (v1) bundle: it has no latent codec to analyse")
    return bundle.codec.eval()


def codec_latents(frames: Iterable[np.ndarray], codec, batch: int = 64):
    """Encode RGB frames ([S, S, 3] in [0, 1], S the codec's frame size) with an embedded-model LatentCodec
    and yield its normalised latents as (C, h, w) arrays: the space the embedded DiT and its memory see."""
    import torch

    s = codec.cfg.frame_size

    def encode(buf):
        x = torch.from_numpy(np.stack(buf))[None]  # [1, T, S, S, 3]
        if tuple(x.shape[2:4]) != (s, s):
            raise ValueError(f"frames are {tuple(x.shape[2:4])}, the codec takes {s}x{s} (--size {s})")
        with torch.no_grad():
            z = codec.encode(x.to(codec._param.device)).float().cpu()[0]  # [C, T, h, w]
        return list(z.permute(1, 0, 2, 3).numpy())

    yield from _encode_batches(frames, batch, encode)


def analyse_videos(paths, params: SpectrumParams | None = None, *, size=None, stride: int = 1,
                   max_frames: int | None = None, vae_dir=None, device: str = "cpu",
                   pool: bool = True, progress: bool = True, codec=None) -> dict:
    """Stream every video, report per video (lags in seconds where the fps is known) and (pool=True,
    several videos) pooled by clip. ``vae_dir``: Wan-VAE latents; ``codec``: an embedded-model autoencoder
    or bundle file, its latents (frames centre-cropped and resized to its frame size)."""
    from tqdm import tqdm

    from fademem.pipeline import video_io

    params = (params or SpectrumParams()).validate()
    if vae_dir is not None and codec is not None:
        raise ValueError("give --vae-dir or --codec, not both")
    frame_codec = None
    if codec is not None:
        frame_codec = load_frame_codec(codec, device)
        s = frame_codec.cfg.frame_size
        if size is not None and size not in (s, (s, s)):
            raise ValueError(f"the codec {codec} takes {s}x{s} frames: leave --size out or give --size {s}")
        size = s
    if vae_dir is not None or codec is not None:
        params = SpectrumParams(**{**asdict(params), "channels": "raw"})
    if not paths:
        raise ValueError("no video given")
    videos = []
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
        elif frame_codec is not None:
            frames = codec_latents(frames, frame_codec)
        stats = accumulate(frames, params, name=path)
        fps = video_io.video_fps(path)
        dt = step / fps if fps else float(step)  # no frame rate: "seconds" are source frames
        res = analyse_stats([stats], params, dt)
        res.update(path=path, name=os.path.basename(path), n_frames_total=n_total, frame_step=step,
                   fps=fps, lag_seconds=step / fps if fps else None, time_unit="s" if fps else "frames")
        videos.append(res)
    report = {"params": {**asdict(params), "size": size, "stride": stride, "max_frames": max_frames,
                         "vae_dir": None if vae_dir is None else os.fspath(vae_dir),
                         "codec": None if codec is None else os.fspath(codec), "pool": pool},
              "videos": videos, "pooled": None}
    if pool and len(videos) > 1:
        report["pooled"] = pool_clips(videos, params)
    elif len(videos) == 1:
        report["pooled"] = videos[0]
    return report
