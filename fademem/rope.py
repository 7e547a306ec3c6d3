"""Wan's 3D rotary position embedding, evaluated from the angle formula.

Each head's ``head_dim / 2`` complex pairs (adjacent-pair convention: dims 2i, 2i+1) are split
into a temporal, a height and a width band of ``c - 2(c//3), c//3, c//3`` pairs. Band ``b`` with
``n`` pairs rotates pair ``i`` by ``pos * theta ** (-2i / (2n))``, exactly Wan's ``rope_params``.

Memories store keys with the spatial phase applied and the temporal phase removed, then ask for
the temporal phase at whatever (possibly fractional) position their policy assigns. The bands
act on disjoint pairs, so spatial and temporal rotations commute and can be applied separately.
Angles are computed in float64 on the host and cached as float32 cos/sin (or complex64) tables on
the device, copied from pinned memory without a sync, so the 30 layers of one chunk share one
transfer.

The model's hot path uses :meth:`WanRoPE.freqs` + :func:`apply_rotary`: one complex64 table
``[F, h*w, head_dim/2]`` holding the temporal phase of each frame and the spatial phase of each
token, applied to q or k in a single float32 pass (``x.float()``, one complex multiply, one cast
back). ``rotate_temporal`` / ``rotate_spatial`` stay for the memories and tests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

Positions = Sequence[float] | torch.Tensor


def band_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs in the temporal, height and width bands of one head."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    c = head_dim // 2
    if c < 3:
        raise ValueError(f"head_dim {head_dim} is too small for three RoPE bands (need >= 6)")
    return c - 2 * (c // 3), c // 3, c // 3


def inverse_frequencies(pairs: int, theta: float = 10000.0) -> torch.Tensor:
    """Wan's per-pair inverse frequencies for a band of ``pairs`` complex pairs (float64, CPU)."""
    dim = 2 * pairs
    # Explicitly on the host: tables are built there even under a `with torch.device("cuda")` block.
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without a host sync (pinned staging buffer, non-blocking copy)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor, out: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, F*N, H, D] by a complex64 table ``freqs`` [F, N, D/2] (one
    rotation per frame and token, all bands at once; F = 1 applies one table to every frame) in
    float32; the result is written to ``out``
    (any [B, F*N, H, D] tensor, e.g. the tail of an attention buffer) or returned in ``out_dtype``
    (default x.dtype)."""
    b, tokens, heads, d = x.shape
    f, n, p = freqs.shape
    if f == 1 and n and tokens % n == 0:  # one frame's table for every frame (spatial phase only)
        f = tokens // n
    if f * n != tokens or 2 * p != d:
        raise ValueError(f"rotary table {tuple(freqs.shape)} does not fit x of shape {tuple(x.shape)}")
    xc = torch.view_as_complex(x.float().view(b, f, n, heads, p, 2))
    y = torch.view_as_real(xc * freqs[None, :, :, None, :]).view(b, tokens, heads, d)
    if out is not None:
        return out.copy_(y)
    return y.to(out_dtype or x.dtype)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs: x[..., P, 2] by angles whose cos/sin broadcast to [..., P]."""
    a, b = x[..., 0], x[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)


class WanRoPE:
    """Wan 3D RoPE for one head size. Stateless apart from small cos/sin caches."""

    def __init__(self, head_dim: int, theta: float = 10000.0, cache_size: int = 64):
        self.head_dim = head_dim
        self.theta = theta
        self.t_pairs, self.h_pairs, self.w_pairs = band_pairs(head_dim)
        self.inv_t = inverse_frequencies(self.t_pairs, theta)
        self.inv_h = inverse_frequencies(self.h_pairs, theta)
        self.inv_w = inverse_frequencies(self.w_pairs, theta)
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    # -- tables -------------------------------------------------------------------------------
    def _remember(self, key: tuple, make) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get(key)
        if hit is None:
            hit = make()
            self._cache[key] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit

    def temporal_cos_sin(self, positions: Positions, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the temporal band at each position: two float32 [len(positions), t_pairs]."""
        device = torch.device(device)
        if isinstance(positions, torch.Tensor):
            # inv_t cached on the device: a pageable host->device copy per call would sync the host
            inv = self._remember(("inv_t", str(device)), lambda: _to_device(self.inv_t.to(torch.float32), device))
            ang = positions.to(device=device, dtype=torch.float32)[:, None] * inv
            return ang.cos(), ang.sin()

        def make():
            # Angles in float64 on the host (exact for any position), then one float32 copy.
            ang = torch.tensor(list(positions), dtype=torch.float64, device="cpu")[:, None] * self.inv_t
            return _to_device(ang.cos().float(), device), _to_device(ang.sin().float(), device)

        return self._remember(("t", tuple(float(p) for p in positions), str(device)), make)

    def spatial_cos_sin(self, height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the height+width bands for an h x w token grid: float32 [h*w, h_pairs+w_pairs]."""
        device = torch.device(device)

        def make():
            ah = torch.arange(height, dtype=torch.float64, device="cpu")[:, None] * self.inv_h  # [h, Ph]
            aw = torch.arange(width, dtype=torch.float64, device="cpu")[:, None] * self.inv_w  # [w, Pw]
            ang = torch.cat(
                (ah[:, None, :].expand(height, width, -1), aw[None, :, :].expand(height, width, -1)), dim=-1
            ).reshape(height * width, -1)
            return _to_device(ang.cos().float(), device), _to_device(ang.sin().float(), device)

        return self._remember(("hw", height, width, str(device)), make)

    def freqs(self, positions: Positions | None, height: int, width: int,
              device: torch.device | str) -> torch.Tensor:
        """Complex64 rotation table [F, h*w, head_dim/2] for :func:`apply_rotary`: the temporal
        band at ``positions`` (one per frame; None = the spatial phase only, one frame) and the
        height/width bands of an h x w grid. Cached per (positions, grid, device)."""
        device = torch.device(device)
        if isinstance(positions, torch.Tensor):  # uncached (training with tensor positions)
            return self._freqs(positions, height, width, device)
        pos = None if positions is None else tuple(float(p) for p in positions)
        return self._remember(("3d", pos, height, width, str(device)),
                              lambda: self._freqs(pos, height, width, device))

    def _freqs(self, positions, height: int, width: int, device: torch.device) -> torch.Tensor:
        hw = height * width
        sc, ss = self.spatial_cos_sin(height, width, device)  # [hw, Ps] float32
        spatial = torch.complex(sc, ss)
        if positions is None:
            temporal = torch.ones((1, self.t_pairs), dtype=torch.complex64, device=device)
        else:
            tc, ts = self.temporal_cos_sin(positions, device)  # [F, Pt]
            temporal = torch.complex(tc, ts)
        f = temporal.shape[0]
        return torch.cat((temporal[:, None, :].expand(f, hw, -1), spatial[None].expand(f, hw, -1)), dim=-1)

    def temporal_freqs(self, positions: Positions, device: torch.device | str) -> torch.Tensor:
        """Complex64 table [F, 1, head_dim/2]: the temporal phase at ``positions``, identity on the
        spatial bands (re-encoding stored keys in one pass with :func:`apply_rotary`)."""
        device = torch.device(device)

        def make():
            tc, ts = self.temporal_cos_sin(positions, device)
            ones = torch.ones((tc.shape[0], self.h_pairs + self.w_pairs), dtype=torch.complex64, device=device)
            return torch.cat((torch.complex(tc, ts), ones), dim=-1)[:, None, :]

        if isinstance(positions, torch.Tensor):
            return make()
        return self._remember(("tf", tuple(float(p) for p in positions), str(device)), make)

    # -- rotations ----------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"expected [batch, tokens, heads, {self.head_dim}] tensor, got shape {tuple(x.shape)}"
            )

    def rotate_temporal(self, x: torch.Tensor, positions: Positions, *, inverse: bool = False,
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Apply (or remove) the temporal phase. x: [B, F*N, H, D], one position per frame of N tokens.

        Returns a new tensor in ``out_dtype`` (default x.dtype); only the temporal band is touched.
        """
        self._check(x)
        nf = positions.numel() if isinstance(positions, torch.Tensor) else len(positions)
        b, tokens, heads, d = x.shape
        if nf == 0 or tokens % nf:
            raise ValueError(f"{tokens} tokens cannot be split into {nf} frames of equal size")
        cos, sin = self.temporal_cos_sin(positions, x.device)
        if inverse:
            sin = -sin
        out = x.to(torch.float32).clone() if x.dtype == torch.float32 else x.to(torch.float32)
        pairs = out.view(b, nf, tokens // nf, heads, d // 2, 2)
        pt = self.t_pairs
        pairs[..., :pt, :] = rotate_pairs(pairs[..., :pt, :], cos[:, None, None, :], sin[:, None, None, :])
        return out.to(out_dtype or x.dtype)

    def rotate_spatial(self, x: torch.Tensor, height: int, width: int, *, inverse: bool = False) -> torch.Tensor:
        """Apply (or remove) the height/width phases. x: [B, F*h*w, H, D] in (frame, row, col) order."""
        self._check(x)
        b, tokens, heads, d = x.shape
        n = height * width
        if tokens % n:
            raise ValueError(f"{tokens} tokens are not whole frames of {height}x{width}")
        cos, sin = self.spatial_cos_sin(height, width, x.device)
        if inverse:
            sin = -sin
        out = x.to(torch.float32).clone() if x.dtype == torch.float32 else x.to(torch.float32)
        pairs = out.view(b, tokens // n, n, heads, d // 2, 2)
        pt = self.t_pairs
        pairs[..., pt:, :] = rotate_pairs(pairs[..., pt:, :], cos[None, :, None, :], sin[None, :, None, :])
        return out.to(x.dtype)

    def rotate(self, x: torch.Tensor, positions: Positions, height: int, width: int) -> torch.Tensor:
        """Full 3D RoPE: temporal phase at ``positions`` (one per frame) plus the spatial phases."""
        return self.rotate_temporal(self.rotate_spatial(x, height, width), positions)

    def table(self, max_positions: int = 1024) -> torch.Tensor:
        """Wan's own complex128 table [max_positions, head_dim/2] (integer positions), for tests."""
        parts = [torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv)
                 for inv in (self.inv_t, self.inv_h, self.inv_w)]
        ang = torch.cat(parts, dim=1)
        return torch.polar(torch.ones_like(ang), ang)
