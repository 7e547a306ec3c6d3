"""The building blocks of learned history compression (after Zhang et al., "Pretraining Frame
Preservation in Autoregressive Video Memory Compression"), and their latent-space use.

* :class:`HistoryEncoder` -- an almost fully convolutional 3D encoder (channel ladder, default
  64-128-256-512; GroupNorm + SiLU residual blocks; one self-attention block at the coarsest
  level). It reduces **time first, then space** at a rate ``"t x h x w"`` (``"2x2x1"``,
  ``"4x4x2"``; power-of-two factors) and projects to a width: tokens [B, N, out_dim] plus
  each token's fractional temporal position (the centre of the history span it summarises).
  The ``compressor`` memory policy runs it as the shared trunk of its per-layer K/V
  compressor, so it lives in the memory layer (:mod:`fademem.memory.compressor_net`, with
  :class:`CompressorConfig`, :class:`Encoded`, :func:`parse_rate`, :func:`parse_channels`) and
  is re-exported here.
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
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The encoder trunk and its knobs live in the memory layer (the ``compressor`` policy runs them);
# re-exported here, where training builds on them.
from fademem.memory.compressor_net import (
    AttnBlock3d,
    CompressorConfig,
    Encoded,
    HistoryEncoder,
    ResBlock3d,
    parse_channels,
    parse_rate,
)

__all__ = ["AttnBlock3d", "CompressorConfig", "Encoded", "HistoryEncoder", "ResBlock3d", "RetrievalDecoder", "build",
           "load", "parse_channels", "parse_rate", "pretrain", "retrieval_loss", "retrieval_metrics", "save", "sincos",
           "world_histories"]


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
