"""Band decomposition and the streamed lag-correlation estimator (steps 1-3 of
``fademem.analysis.spectrum``): frame features, band-sorted real-FFT coefficients, and per-block
sums of pair cosines C_r(lag)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from fademem.analysis.spectrum_params import SpectrumParams

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601


# ----------------------------------------------------------------------------- bands


def band_edges(n_bands: int, scale: str = "linear", rho_min: float | None = None) -> np.ndarray:
    """Edges in rho = |f| / f_Nyquist. linear: R equal-width annuli of (0, 1]. log: log-spaced from
    rho_min to 1 (equal width on the log axis the power law is fitted on); band 0 also takes the
    few rings below rho_min, so edges[0] is 0 either way."""
    if scale == "linear":
        return np.linspace(0.0, 1.0, n_bands + 1)
    edges = np.geomspace(rho_min, 1.0, n_bands + 1)
    edges[0] = 0.0
    return edges


def band_index(h: int, w: int, n_bands: int, scale: str = "linear", rho_min: float | None = None) -> np.ndarray:
    """Band of every rfft2 coefficient of an (h, w) frame (-1: DC; n_bands: the corners rho > 1)."""
    fy = np.fft.fftfreq(h)[:, None] / 0.5
    fx = np.fft.rfftfreq(w)[None, :] / 0.5
    rho = np.hypot(fy, fx)
    if scale == "linear":
        return np.ceil(rho * n_bands).astype(int) - 1  # (0, 1/R] -> 0, ...
    edges = band_edges(n_bands, scale, default_rho_min(h, w) if rho_min is None else rho_min)
    band = np.searchsorted(edges[1:], rho, side="left")  # (0, e1] -> 0, (e1, e2] -> 1, ...
    band[rho == 0] = -1
    return band


def default_rho_min(h: int, w: int) -> float:
    return 2.0 / min(h, w)


class BandLayout:
    """Maps a (C, H, W) frame to its band-sorted, weighted real-FFT coefficient vector.

    rfft2 keeps half the spectrum; interior columns stand for two conjugate coefficients, so
    they get weight 2 (sqrt(2) on the coefficient) and Re<x, y> over the half spectrum equals
    the full-spectrum inner product.
    """

    def __init__(self, shape: tuple[int, int, int], n_bands: int, window: str = "hann", scale: str = "linear",
                 rho_min: float | None = None):
        c, h, w = shape
        fy = np.fft.fftfreq(h)[:, None] / 0.5
        fx = np.fft.rfftfreq(w)[None, :] / 0.5
        band = band_index(h, w, n_bands, scale, rho_min)
        log_rho = np.log(np.maximum(np.hypot(fy, fx), 1e-12))
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
        self.log_rho = np.tile(log_rho.ravel(), c)[order]
        self.rho_min = default_rho_min(h, w) if rho_min is None else rho_min
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
    energy: np.ndarray | None = None  # (bands,) total band energy over all frames
    log_rho_energy: np.ndarray | None = None  # (bands,) sum of energy * log(rho): energy-weighted centres
    edges: np.ndarray | None = None  # band edges in rho

    def centres(self) -> np.ndarray | None:
        """Energy-weighted geometric centre of every band, exp(sum e log rho / sum e) (None if unknown)."""
        if self.energy is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.exp(self.log_rho_energy / self.energy)

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
            self.layout = BandLayout(x.shape, R, self.p.window, self.p.band_scale, self.p.rho_min)
            self.buf = np.zeros((L + 1, self.layout.order.size), np.complex64)
            self.energy = np.zeros((L + 1, R))
            self.e_total = np.zeros(R)
            self.log_rho_e = np.zeros(R)
        elif x.shape != self.layout.shape:
            raise ValueError(f"frame {self.t} has shape {x.shape}, earlier frames {self.layout.shape}")
        c = self.layout.transform(x)
        power = (c.real**2 + c.imag**2).astype(np.float64)
        e = self.layout.band_sums(power)
        self.e_total += e
        self.log_rho_e += self.layout.band_sums(power * self.layout.log_rho)
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
        edges = band_edges(self.p.bands, self.p.band_scale, self.layout.rho_min)
        return LagStats(np.stack(self.sums), np.stack(self.counts), self.t, self.e_total.copy(),
                        self.log_rho_e.copy(), edges)


def accumulate(frames: Iterable[np.ndarray], params: SpectrumParams, name: str = "frames") -> LagStats:
    acc = LagAccumulator(params.validate())
    for frame in frames:
        acc.add(frame)
    return acc.stats(name)
