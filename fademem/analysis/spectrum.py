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
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
import scipy.stats

MIN_BOOT_BLOCKS = 5
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601


@dataclass(frozen=True)
class SpectrumParams:
    bands: int = 8
    max_lag: int = 32
    channels: str = "luma"  # luma | rgb | raw (frames already (C, H, W) or (H, W))
    window: str = "hann"  # hann | none
    rule: str = "slope"  # slope | drop: horizon rule, see `flatness`
    eps: float = 0.1
    lookahead: float = 0.5  # slope rule: local slope measured over [lag, (1 + lookahead) lag]
    min_drop: float = 0.05
    censor_frac: float = 0.5
    block: int | None = None  # bootstrap block length in frames; None -> ceil(censor_frac * max_lag)
    n_boot: int = 1000
    level: float = 0.95
    ci: str = "bootstrap"  # bootstrap | ols: which interval the summary / beta use
    seed: int = 0
    beta_floor: float = 0.05

    def validate(self) -> SpectrumParams:
        if self.bands < 2:
            raise ValueError(f"bands must be >= 2, got {self.bands}")
        if self.max_lag < 2:
            raise ValueError(f"max_lag must be >= 2, got {self.max_lag}")
        if self.channels not in ("luma", "rgb", "raw"):
            raise ValueError(f"channels must be luma, rgb or raw, got {self.channels!r}")
        if self.window not in ("hann", "none"):
            raise ValueError(f"window must be hann or none, got {self.window!r}")
        if self.rule not in ("slope", "drop"):
            raise ValueError(f"rule must be slope or drop, got {self.rule!r}")
        if self.lookahead <= 0:
            raise ValueError(f"lookahead must be > 0, got {self.lookahead}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 < self.censor_frac <= 1:
            raise ValueError(f"censor_frac must be in (0, 1], got {self.censor_frac}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.ci not in ("bootstrap", "ols"):
            raise ValueError(f"ci must be bootstrap or ols, got {self.ci!r}")
        if not 0 < self.beta_floor <= 1:
            raise ValueError(f"beta_floor must be in (0, 1], got {self.beta_floor}")
        return self

    @property
    def block_len(self) -> int:
        return self.block or max(1, math.ceil(self.censor_frac * self.max_lag))


# ----------------------------------------------------------------------------- bands


def band_edges(n_bands: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_bands + 1)


class BandLayout:
    """Maps a (C, H, W) frame to its band-sorted, weighted real-FFT coefficient vector.

    rfft2 keeps half the spectrum; interior columns stand for two conjugate coefficients, so
    they get weight 2 (sqrt(2) on the coefficient) and Re<x, y> over the half spectrum equals
    the full-spectrum inner product.
    """

    def __init__(self, shape: tuple[int, int, int], n_bands: int, window: str = "hann"):
        c, h, w = shape
        fy = np.fft.fftfreq(h)[:, None] / 0.5
        fx = np.fft.rfftfreq(w)[None, :] / 0.5
        band = np.ceil(np.hypot(fy, fx) * n_bands).astype(int) - 1  # (0, 1/R] -> 0, ...
        weight = np.full(band.shape, 2.0)
        weight[:, 0] = 1.0
        if w % 2 == 0:
            weight[:, -1] = 1.0
        band_flat = np.tile(band.ravel(), c)
        keep = np.flatnonzero((band_flat >= 0) & (band_flat < n_bands))
        order = keep[np.argsort(band_flat[keep], kind="stable")]
        sizes = np.bincount(band_flat[order], minlength=n_bands)
        if (sizes == 0).any():
            raise ValueError(
                f"frames of {h}x{w} pixels are too small for {n_bands} bands "
                f"(band {int(np.argmin(sizes))} holds no frequency); use fewer bands or a larger size"
            )
        self.shape, self.n_bands = (c, h, w), n_bands
        self.order = order
        self.sqrt_w = np.sqrt(np.tile(weight.ravel(), c)[order]).astype(np.float32)
        self.bounds = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.sizes = sizes
        self.window = (np.outer(np.hanning(h), np.hanning(w)).astype(np.float32) if window == "hann" else None)

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=(1, 2), keepdims=True)
        if self.window is not None:
            x = x * self.window
        spec = scipy.fft.rfft2(x.astype(np.float32, copy=False), workers=-1)
        return spec.reshape(-1)[self.order] * self.sqrt_w

    def band_sums(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.bounds, axis=-1)

    def band_dots(self, rows: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Re<rows[i]^r, c^r> for every row i and band r, as (n_rows, bands) (one BLAS gemv per band)."""
        cc = c.conj()
        ends = np.append(self.bounds[1:], c.size)
        return np.stack([(rows[:, s:e] @ cc[s:e]).real for s, e in zip(self.bounds, ends, strict=True)], 1)


def to_channels(frame: np.ndarray, channels: str) -> np.ndarray:
    """A frame as a float32 (C, H, W) array: (H, W) -> 1 channel; (H, W, 3) RGB -> luma or rgb."""
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 2:
        return frame[None]
    if channels == "raw":
        if frame.ndim != 3:
            raise ValueError(f"raw frames must be (C, H, W), got shape {frame.shape}")
        return frame
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    if channels == "luma":
        return (frame @ LUMA)[None]
    return np.moveaxis(frame, -1, 0)


# ----------------------------------------------------------------------------- accumulation


@dataclass
class LagStats:
    """Per-block sums of pair cosines and pair counts, each (n_blocks, max_lag + 1, bands)."""

    sums: np.ndarray
    counts: np.ndarray
    n_frames: int

    def curves(self) -> np.ndarray:
        """C_r(lag) as (bands, max_lag + 1)."""
        return _ratio(self.sums.sum(0), self.counts.sum(0)).T


def _ratio(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


class LagAccumulator:
    """Streams frames; keeps a ring buffer of the last max_lag coefficient vectors."""

    def __init__(self, params: SpectrumParams):
        self.p = params
        self.layout: BandLayout | None = None
        self.t = 0
        self.sums: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        x = to_channels(frame, self.p.channels)
        L, R = self.p.max_lag, self.p.bands
        if self.layout is None:
            self.layout = BandLayout(x.shape, R, self.p.window)
            self.buf = np.zeros((L + 1, self.layout.order.size), np.complex64)
            self.energy = np.zeros((L + 1, R))
        elif x.shape != self.layout.shape:
            raise ValueError(f"frame {self.t} has shape {x.shape}, earlier frames {self.layout.shape}")
        c = self.layout.transform(x)
        e = self.layout.band_sums((c.real**2 + c.imag**2).astype(np.float64))
        blk = self.t // self.p.block_len
        while len(self.sums) <= blk:
            self.sums.append(np.zeros((L + 1, R)))
            self.counts.append(np.zeros((L + 1, R)))
        n = min(self.t, L)
        if n:
            pos = (self.t - np.arange(1, n + 1)) % (L + 1)
            dots = self.layout.band_dots(self.buf, c)[pos]
            denom = np.sqrt(self.energy[pos] * e)
            ok = denom > 1e-12 * max(float(e.max()), 1e-30)
            self.sums[blk][1 : n + 1] += np.where(ok, dots / np.where(ok, denom, 1.0), 0.0)
            self.counts[blk][1 : n + 1] += ok
        self.sums[blk][0] += e > 0
        self.counts[blk][0] += e > 0
        self.buf[self.t % (L + 1)] = c
        self.energy[self.t % (L + 1)] = e
        self.t += 1

    def stats(self, name: str = "frames") -> LagStats:
        if self.t < 2:
            raise ValueError(f"{name}: a single frame (or none) cannot show temporal correlation")
        if self.t < self.p.max_lag + 1:
            raise ValueError(
                f"{name}: only {self.t} frames to analyse, fewer than max_lag + 1 = {self.p.max_lag + 1}; "
                "lower max_lag or stride"
            )
        return LagStats(np.stack(self.sums), np.stack(self.counts), self.t)


def accumulate(frames: Iterable[np.ndarray], params: SpectrumParams, name: str = "frames") -> LagStats:
    acc = LagAccumulator(params.validate())
    for frame in frames:
        acc.add(frame)
    return acc.stats(name)


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
