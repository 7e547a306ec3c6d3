"""The building blocks of learned history compression (after Zhang et al., "Pretraining Frame
Preservation in Autoregressive Video Memory Compression"), and their latent-space use.

* :class:`HistoryEncoder` -- an almost fully convolutional 3D encoder (channel ladder, default
  64-128-256-512; GroupNorm + SiLU residual blocks; one self-attention block at the coarsest
  level). It reduces **time first, then space** at a rate ``"t x h x w"`` (``"2x2x1"``,
  ``"4x4x2"``; power-of-two factors) and projects to a width: tokens [B, N, out_dim] plus
  each token's fractional temporal position (the centre of the history span it summarises).
  The ``compressor`` memory policy runs it as the shared trunk of its per-layer K/V
  compressor (:mod:`fademem.compressor.kv`).
* :class:`RetrievalDecoder` -- a light frame-retrieval decoder for pretraining: a noised query
  frame (noise-as-mask: the frame to retrieve is replaced by noise at a random level), its
  noise level and its temporal position cross-attend to the compressed tokens and predict the
  clean frame.
* :func:`retrieval_loss`, :func:`pretrain`, :func:`retrieval_metrics` -- retrieval pretraining
  of an encoder over *latents* (the paper's setting; seeded, time-limited, device-agnostic),
  :func:`save` / :func:`load`. The memory policy's encoder is trained in K/V space instead
  (:mod:`fademem.compressor.train`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
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


def sincos(values: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding [..., dim] of float values."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    ang = values.float()[..., None] * scale * freq
    return torch.cat([ang.sin(), ang.cos()], -1)


class RetrievalDecoder(nn.Module):
    """(noised query frame, noise level, temporal position) x compressed tokens -> clean frame."""

    def __init__(self, cfg: CompressorConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dec_dim, cfg.dec_patch
        h, w = cfg.latent_hw
        if h % p or w % p:
            raise ValueError(f"decoder query size {h}x{w} is not divisible by its patch {p}")
        self.patch = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        self.pos = nn.Parameter(torch.zeros(1, (h // p) * (w // p), d))
        self.cond = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, d))
        self.mem_in = nn.Linear(cfg.out_dim, d)
        self.mem_pos = nn.Linear(3 * d, d)
        self.layers = nn.ModuleList()
        for _ in range(cfg.dec_layers):
            self.layers.append(nn.ModuleDict(dict(
                n1=nn.LayerNorm(d), sa=nn.MultiheadAttention(d, cfg.dec_heads, batch_first=True),
                n2=nn.LayerNorm(d), ca=nn.MultiheadAttention(d, cfg.dec_heads, batch_first=True),
                n3=nn.LayerNorm(d), mlp=nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)))))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.in_channels * p * p)

    def forward(self, enc: Encoded, query: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """query [B, Q, C, h, w] noised frames at levels sigma [B, Q] and positions t [B, Q]
        -> predicted clean frames [B, Q, C, h, w]."""
        cfg, d, p = self.cfg, self.cfg.dec_dim, self.cfg.dec_patch
        if query.dim() != 5 or query.shape[2] != cfg.in_channels or tuple(query.shape[3:]) != cfg.latent_hw:
            raise ValueError(f"query must be [B, Q, {cfg.in_channels}, {cfg.latent_hw[0]}, {cfg.latent_hw[1]}], "
                             f"got {tuple(query.shape)}")
        if enc.tokens.shape[-1] != cfg.out_dim:
            raise ValueError(f"compressed tokens are {enc.tokens.shape[-1]} wide, the decoder takes {cfg.out_dim}")
        b, q, c, h, w = query.shape
        x = self.patch(query.reshape(b * q, c, h, w)).flatten(2).transpose(1, 2) + self.pos
        cond = self.cond(torch.cat([sincos(sigma.reshape(-1), d, 1000.0), sincos(t.reshape(-1), d)], -1))
        x = x + cond[:, None]
        # Memory tokens: content + relative time to the query + spatial centre.
        mem = self.mem_in(enc.tokens).repeat_interleave(q, 0)  # [B*Q, N, d]
        rel = enc.positions[None, :] - t.reshape(-1, 1)  # [B*Q, N]
        co = enc.coords[None].expand(b * q, -1, -1)
        mem = mem + self.mem_pos(torch.cat([sincos(rel, d), sincos(co[..., 0], d, 64.0),
                                            sincos(co[..., 1], d, 64.0)], -1))
        for lyr in self.layers:
            y = lyr["n1"](x)
            x = x + lyr["sa"](y, y, y, need_weights=False)[0]
            x = x + lyr["ca"](lyr["n2"](x), mem, mem, need_weights=False)[0]
            x = x + lyr["mlp"](lyr["n3"](x))
        y = self.out(self.norm(x)).transpose(1, 2).reshape(b * q, c * p * p, h // p, w // p)
        return F.pixel_shuffle(y, p).reshape(b, q, c, h, w)


def _rand(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


def retrieval_loss(encoder: HistoryEncoder, decoder: RetrievalDecoder, history_latents: torch.Tensor,
                   generator: torch.Generator, queries: int = 2, sigma_min: float = 0.5) -> torch.Tensor:
    """Noise-as-mask retrieval: encode the clean history, pick ``queries`` random frames per
    item, replace them by noise at levels sigma ~ U(sigma_min, 1) (x_s = (1-s) x + s eps), and
    return the MSE of the decoder's clean-frame prediction. ``generator`` (CPU) drives every draw."""
    enc = encoder(history_latents)
    b, c, t, h, w = history_latents.shape
    dev = history_latents.device
    idx = torch.randint(0, t, (b, queries), generator=generator).to(dev)
    target = history_latents.permute(0, 2, 1, 3, 4)[torch.arange(b, device=dev)[:, None], idx]  # [B, Q, C, h, w]
    sigma = sigma_min + (1 - sigma_min) * _rand((b, queries), generator, dev)
    eps = torch.randn(target.shape, generator=generator).to(dev, target.dtype)
    s = sigma[..., None, None, None].to(target.dtype)
    pred = decoder(enc, (1 - s) * target + s * eps, sigma, idx.float())
    return F.mse_loss(pred, target)


def world_histories(batch: int, frames: int, rng, size: int = 64, fps: int = 8, max_start: int = 400) -> torch.Tensor:
    """``batch`` procedural-world histories of ``frames`` frames as folded-pixel latents [B, 48, T, 16, 16]."""
    import numpy as np

    from fademem.embedded import EmbeddedConfig, PixelCodec
    from fademem.embedded.world import World, sample_prompt

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    video = np.empty((batch, frames, size, size, 3), np.float32)
    for i in range(batch):
        world = World(sample_prompt(rng), int(rng.integers(2 ** 31)), size, fps)
        start = int(rng.integers(0, max_start + 1))
        for j in range(frames):
            video[i, j] = world.frame_at(start + j)
    return PixelCodec(EmbeddedConfig(frame_size=size, fps=fps)).encode(torch.from_numpy(video))


def build(cfg: CompressorConfig) -> tuple[HistoryEncoder, RetrievalDecoder]:
    return HistoryEncoder(cfg), RetrievalDecoder(cfg)


def save(path: str | Path, encoder: HistoryEncoder, decoder: RetrievalDecoder | None = None,
         info: dict | None = None) -> None:
    """safetensors with ``encoder.*`` / ``decoder.*`` tensors and the config as JSON metadata."""
    from safetensors.torch import save_file

    tensors = {f"encoder.{k}": v.detach().float().contiguous().cpu() for k, v in encoder.state_dict().items()}
    if decoder is not None:
        tensors.update({f"decoder.{k}": v.detach().float().contiguous().cpu() for k, v in decoder.state_dict().items()})
    save_file(tensors, str(path), metadata={"compressor": json.dumps(asdict(encoder.cfg)),
                                            "info": json.dumps(info or {})})


def load(path: str | Path, device="cpu") -> tuple[HistoryEncoder, RetrievalDecoder | None, dict]:
    """(encoder, decoder or None, info) from a file written by :func:`save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressor weights not found at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "compressor" not in meta:
            raise ValueError(f"{path} is not a fademem compressor file (no 'compressor' config metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = CompressorConfig(**json.loads(meta["compressor"]))
    encoder = HistoryEncoder(cfg)
    encoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
    decoder = None
    if any(k.startswith("decoder.") for k in tensors):
        decoder = RetrievalDecoder(cfg)
        decoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
        decoder.to(device).eval()
    return encoder.to(device).eval(), decoder, json.loads(meta.get("info", "{}"))


def pretrain(cfg: CompressorConfig, steps: int, *, batch: int = 4, frames: int = 8, seed: int = 0,
             device="cpu", lr: float = 2e-4, seconds: float | None = None, data: torch.Tensor | None = None,
             queries: int = 2, out: str | Path | None = None, log_every: int = 0):
    """Retrieval pretraining. Fresh world histories every step, or the fixed ``data`` [B, C, T, h, w]
    (overfitting checks). Stops after ``steps`` or ``seconds``. Returns (encoder, decoder, losses);
    writes ``out`` (safetensors) when given."""
    torch.manual_seed(seed)
    encoder, decoder = (m.to(device) for m in build(cfg))
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    import numpy as np

    rng = np.random.default_rng(seed)
    losses: list[float] = []
    t0 = time.monotonic()
    for step in range(steps):
        if seconds is not None and time.monotonic() - t0 > seconds:
            break
        x = data if data is not None else world_histories(batch, frames, rng)
        loss = retrieval_loss(encoder, decoder, x.to(device), g, queries=queries)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"step {step} loss {losses[-1]:.4f} ({time.monotonic() - t0:.0f} s)")
    if out is not None:
        save(out, encoder, decoder, {"steps": len(losses), "seed": seed, "final_loss": losses[-1] if losses else None,
                                     "frames": frames, "batch": batch})
    return encoder, decoder, losses


@torch.no_grad()
def retrieval_metrics(encoder: HistoryEncoder, decoder: RetrievalDecoder, history_latents: torch.Tensor,
                      seed: int = 0) -> dict:
    """Retrieve every history frame from pure noise (sigma = 1) and score it against the truth:
    mean PSNR / SSIM (``fademem.metrics``) on decoded pixels, with the rate and token counts."""
    from fademem.embedded import EmbeddedConfig, PixelCodec
    from fademem.metrics import psnr, ssim

    b, c, t, h, w = history_latents.shape
    enc = encoder(history_latents)
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(t, device=history_latents.device).expand(b, t)
    eps = torch.randn((b, t, c, h, w), generator=g).to(history_latents)
    pred = decoder(enc, eps, torch.ones(b, t, device=eps.device), idx.float())
    codec = PixelCodec(EmbeddedConfig(fold=int(round(math.sqrt(c / 3)))))
    true = codec.to_frames(history_latents)
    got = codec.to_frames(pred.permute(0, 2, 1, 3, 4))
    return {"rate": encoder.cfg.rate, "tokens": enc.tokens.shape[1], "latent_elements": c * t * h * w,
            "compression": (c * t * h * w) / (enc.tokens.shape[1] * encoder.cfg.out_dim),
            "psnr": float(psnr(got, true, max_db=100.0).mean()), "ssim": float(ssim(got, true).mean())}
