"""The learned compressor the ``compressor`` memory policy runs at inference, and its files.

Everything here is pure torch: the policy needs it, so it lives in the memory layer; training
(the retrieval decoder, pretraining, generator fine-tuning, saving files) is in
:mod:`fademem.compressor`, which builds on this module.

* :func:`parse_rate`, :func:`parse_channels` -- the ``"t x h x w"`` rate and channel-ladder knobs.
* :class:`HistoryEncoder` -- an almost fully convolutional 3D encoder (channel ladder; GroupNorm +
  SiLU residual blocks; one self-attention block at the coarsest level) reducing **time first,
  then space** at a rate ``"t x h x w"`` (power-of-two factors) and projecting to a width: tokens
  [B, N, out_dim] plus each token's fractional temporal position (the centre of the history span
  it summarises). Configured by :class:`CompressorConfig` (which also carries the retrieval
  decoder's fields used in training).
* :class:`KVCompressor` -- the per-layer K/V-space compressor: a group of ``t`` evicted frames of
  one layer, viewed as a small video ``[2*heads*head_dim, t, grid_h, grid_w]`` (keys with their
  spatial RoPE phase, values), becomes ``(grid_h/h)*(grid_w/w)`` tokens of compressed keys and
  values. Per-layer 1x1x1 input projections and output heads around one shared
  :class:`HistoryEncoder` trunk; each token is the **average pool** of its cell plus the head's
  correction, and the heads start at zero, so an untrained compressor is plain span averaging.
* Files (safetensors): ``kv.*`` the compressor, optionally ``decoder.*`` (the retrieval decoder
  of pretraining, read by :func:`fademem.compressor.kv.load`) and ``lora.*`` (a peft LoRA for the
  generator fine-tuned to read this memory), with the configs as JSON metadata. :func:`load`
  reads the compressor, the LoRA and its metadata; :func:`file_rate` only the rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def parse_rate(rate: str | tuple) -> tuple[int, int, int]:
    """``"2x2x1"`` -> (2, 2, 1): (time, height, width) reduction factors, each a power of two."""
    if isinstance(rate, (tuple, list)):
        parts = list(rate)
    elif isinstance(rate, str):
        parts = rate.lower().replace(" ", "").split("x")
    else:
        raise ValueError(f"rate must be a string like '2x2x1' (time x height x width), got {rate!r}")
    try:
        factors = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"rate must look like '2x2x1' (time x height x width factors), got {rate!r}") from None
    if len(factors) != 3 or any(f < 1 or f & (f - 1) for f in factors):
        raise ValueError(f"rate must be three power-of-two factors 'TxHxW' such as '2x2x1' or '4x4x2', got {rate!r}")
    return factors  # type: ignore[return-value]


def parse_channels(channels: str | tuple) -> tuple[int, ...]:
    """``"64-128-256-512"`` or a tuple -> channel ladder (positive multiples of 4 for GroupNorm)."""
    parts = channels.replace(",", "-").split("-") if isinstance(channels, str) else list(channels)
    try:
        out = tuple(int(c) for c in parts)
    except (TypeError, ValueError):
        raise ValueError(f"channels must look like '64-128-256-512', got {channels!r}") from None
    if not out or any(c <= 0 or c % 4 for c in out):
        raise ValueError(f"channels must be positive multiples of 4, got {channels!r}")
    return out


@dataclass
class CompressorConfig:
    in_channels: int = 48  # latent channels (embedded model: 4x4-folded RGB)
    out_dim: int = 256  # DiT width the tokens are projected to
    channels: tuple[int, ...] = (64, 128, 256, 512)
    rate: str = "2x2x1"
    heads: int = 4  # encoder attention heads at the coarsest level
    dec_dim: int = 128  # decoder width
    dec_layers: int = 2
    dec_heads: int = 4
    dec_patch: int = 2
    latent_hw: tuple[int, int] = (16, 16)  # decoder query frame size

    def __post_init__(self):
        self.channels = parse_channels(self.channels)
        self.latent_hw = tuple(int(s) for s in self.latent_hw)
        parse_rate(self.rate)
        for name in ("in_channels", "out_dim", "heads", "dec_dim", "dec_layers", "dec_heads", "dec_patch"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"CompressorConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def factors(self) -> tuple[int, int, int]:
        return parse_rate(self.rate)


def _groups(c: int) -> int:
    return math.gcd(c, 32) if c >= 8 else 1


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin), cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout), cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class AttnBlock3d(nn.Module):
    """Self-attention over every (t, h, w) position of the coarsest level."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c)
        self.attn = nn.MultiheadAttention(c, heads if c % heads == 0 else 1, batch_first=True)

    def forward(self, x):
        b, c, t, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        y = self.attn(y, y, y, need_weights=False)[0]
        return x + y.transpose(1, 2).reshape(b, c, t, h, w)


@dataclass
class Encoded:
    tokens: torch.Tensor  # [B, N, out_dim], time-major, then height, then width
    positions: torch.Tensor  # [N] float32: centre of the history span each token summarises
    grid: tuple[int, int, int]  # (groups in time, height, width) of the token grid
    coords: torch.Tensor = field(repr=False, default=None)  # [N, 2] token centres (y, x) in [0, 1]


class HistoryEncoder(nn.Module):
    """Latent history [B, C, T, h, w] -> compressed tokens (see module docstring)."""

    def __init__(self, cfg: CompressorConfig):
        super().__init__()
        self.cfg = cfg
        ft, fh, fw = cfg.factors
        steps = [(2, 1, 1)] * int(math.log2(ft))  # time first ...
        for i in range(int(math.log2(max(fh, fw)))):  # ... then space
            steps.append((1, 2 if 2 ** i < fh else 1, 2 if 2 ** i < fw else 1))
        self.strides = tuple(steps)
        ch = cfg.channels
        self.stem = nn.Conv3d(cfg.in_channels, ch[0], 3, padding=1)
        blocks, c = [], ch[0]
        for i, s in enumerate(self.strides):
            c_next = ch[min(i + 1, len(ch) - 1)]
            blocks += [ResBlock3d(c, c), nn.Conv3d(c, c_next, 3, stride=s, padding=1)]
            c = c_next
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(ResBlock3d(c, c), AttnBlock3d(c, cfg.heads), ResBlock3d(c, c))
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.proj = nn.Linear(c, cfg.out_dim)

    def check(self, x: torch.Tensor) -> None:
        ft, fh, fw = self.cfg.factors
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"history must be latents [batch, channels, time, height, width], "
                             f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        _, c, t, h, w = x.shape
        if c != self.cfg.in_channels:
            raise ValueError(f"history has {c} latent channels, the encoder takes {self.cfg.in_channels}")
        if t < ft:
            raise ValueError(f"history of {t} frames is shorter than the compression window of {ft} frames "
                             f"(rate {self.cfg.rate})")
        if t % ft:
            raise ValueError(f"history of {t} frames is not a whole number of {ft}-frame compression windows")
        if h % fh or w % fw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the spatial factors {fh}x{fw} "
                             f"(rate {self.cfg.rate})")

    def forward(self, x: torch.Tensor, start: float = 0.0) -> Encoded:
        """x [B, C, T, h, w]; ``start`` is the temporal index of the history's first frame."""
        self.check(x)
        ft, fh, fw = self.cfg.factors
        y = self.mid(self.down(self.stem(x)))
        b, c, tg, hg, wg = y.shape
        tokens = self.proj(F.silu(self.norm_out(y)).flatten(2).transpose(1, 2))
        centre = start + torch.arange(tg, dtype=torch.float32) * ft + (ft - 1) / 2
        positions = centre.repeat_interleave(hg * wg).to(x.device)
        ys = (torch.arange(hg, dtype=torch.float32) + 0.5) / hg
        xs = (torch.arange(wg, dtype=torch.float32) + 0.5) / wg
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(1, hg * wg, 2)
        return Encoded(tokens, positions, (tg, hg, wg), coords.expand(tg, -1, -1).reshape(-1, 2).to(x.device))


@dataclass
class KVCompressorConfig:
    layers: int
    heads: int
    head_dim: int
    grid: tuple[int, int]  # token grid of one frame (rows, columns), row-major like the patch grid
    rate: str = "4x4x2"
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128
    attn_heads: int = 4

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        self.channels = parse_channels(self.channels)
        t, fh, fw = parse_rate(self.rate)
        for name in ("layers", "heads", "head_dim", "hidden", "attn_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"KVCompressorConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.grid) != 2 or self.grid[0] % fh or self.grid[1] % fw:
            raise ValueError(f"token grid {self.grid} is not divisible by the rate's spatial factors {fh}x{fw} "
                             f"({self.rate})")

    @property
    def width(self) -> int:
        return 2 * self.heads * self.head_dim

    @property
    def factors(self) -> tuple[int, int, int]:
        return parse_rate(self.rate)

    @property
    def tokens_per_group(self) -> int:
        _, fh, fw = self.factors
        return (self.grid[0] // fh) * (self.grid[1] // fw)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


class KVCompressor(nn.Module):
    """``compress(layer, k, v)``: groups of ``t`` frames of one layer's K/V -> compressed K/V."""

    def __init__(self, cfg: KVCompressorConfig):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.channels[0]
        self.stems = nn.ModuleList(nn.Conv3d(cfg.width, c0, 1) for _ in range(cfg.layers))
        self.trunk = HistoryEncoder(CompressorConfig(in_channels=c0, out_dim=cfg.hidden, channels=cfg.channels,
                                                     rate=cfg.rate, heads=cfg.attn_heads))
        self.heads = nn.ModuleList(nn.Linear(cfg.hidden, cfg.width) for _ in range(cfg.layers))
        for h in self.heads:  # start as span averaging
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)

    def compress(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, G*t*n, H, D] (G whole groups of t frames of n tokens, spatial phase only) ->
        compressed (k, v) [B, G*m, H, D], group-major, in the input dtype (math in float32)."""
        cfg = self.cfg
        t, fh, fw = cfg.factors
        gh, gw = cfg.grid
        n = gh * gw
        if not 0 <= layer < cfg.layers:
            raise ValueError(f"compressor has encoders for {cfg.layers} layers, asked for layer {layer}")
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must be [batch, tokens, heads, head_dim] of one shape, got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        b, tokens, h, d = k.shape
        if 2 * h * d != cfg.width:
            raise ValueError(f"compressor takes K/V of {cfg.heads} heads x {cfg.head_dim} (width {cfg.width}); "
                             f"got {h} x {d}")
        if tokens % (t * n):
            raise ValueError(f"{tokens} tokens are not whole groups of {t} frames x {n} tokens "
                             f"(grid {gh}x{gw}, rate {cfg.rate})")
        groups = tokens // (t * n)
        x = torch.cat([k, v], -2).float().reshape(b * groups, t, gh, gw, cfg.width).permute(0, 4, 1, 2, 3)
        pooled = F.avg_pool3d(x, (t, fh, fw)).flatten(2).transpose(1, 2)  # [BG, m, width]
        y = self.trunk(self.stems[layer](x)).tokens
        out = (pooled + self.heads[layer](y)).reshape(b, groups * cfg.tokens_per_group, 2, h, d).to(k.dtype)
        return out[:, :, 0].contiguous(), out[:, :, 1].contiguous()


# -- files ----------------------------------------------------------------------------------------------
@dataclass
class LoRAInfo:
    rank: int
    alpha: float
    targets: list[str] = field(default_factory=list)
    base_digest: str | None = None  # weights digest of the generator it was trained on (fademem.wan.fingerprint)


@dataclass
class KVWeights:
    """What inference reads from a compressor file: the compressor and the generator LoRA."""

    compressor: KVCompressor
    lora: dict[str, torch.Tensor]  # peft LoRA tensors (empty when the file has none)
    lora_info: LoRAInfo | None
    info: dict


def read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a K/V compressor file; ValueError when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressor weights not found at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "kv_compressor" not in meta:
            hint = (" (a latent-space HistoryEncoder file from fademem.compressor.save; the memory policy needs "
                    "K/V-space weights from `fademem train-compressor`)") if "compressor" in meta else ""
            raise ValueError(f"{path} is not a K/V compressor file (no 'kv_compressor' metadata){hint}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (prefix removed), in float32."""
    return {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}


def weights_from(meta: dict[str, str], tensors: dict[str, torch.Tensor], device="cpu") -> KVWeights:
    """The compressor (eval mode, on ``device``), the LoRA tensors and the metadata of a read file."""
    comp = KVCompressor(KVCompressorConfig(**json.loads(meta["kv_compressor"])))
    comp.load_state_dict(part(tensors, "kv."))
    lora_info = LoRAInfo(**json.loads(meta["lora"])) if "lora" in meta else None
    return KVWeights(comp.to(device).eval(), part(tensors, "lora."), lora_info, json.loads(meta.get("info", "{}")))


def load(path: str | Path, device="cpu") -> KVWeights:
    """The compressor and generator LoRA of a file from ``fademem train-compressor`` (the decoder,
    if any, is not read: :func:`fademem.compressor.kv.load` reads it too)."""
    return weights_from(*read(path), device)


_RATES: dict[str, tuple[int, int, int]] = {}


def file_rate(path: str) -> tuple[int, int, int]:
    """The rate recorded in a compressor file's metadata (read once per path)."""
    if path not in _RATES:
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "kv_compressor" not in meta:
            raise ValueError(f"compressor: {path} is not a K/V compressor file (no 'kv_compressor' metadata)")
        _RATES[path] = parse_rate(json.loads(meta["kv_compressor"])["rate"])
    return _RATES[path]


def default_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("fademem") / "assets" / "compressor.safetensors"))
