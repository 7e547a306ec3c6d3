"""A small frame autoencoder: the embedded model's latent space (the role the Wan VAE plays for Wan).

A 64x64 RGB frame becomes a latent [C=8, 16, 16] (spatial stride 4) and back. Encoder and decoder
are per-frame 2D conv nets (ResNet blocks, GroupNorm, SiLU): a frame's pixels depend on its own
latent only, so decoding is exactly streaming (``decode`` frame by frame == all at once) and the
pipeline's Decoder protocol needs no state (``reset`` is a no-op).

Latent regulariser: a *fixed-variance VAE*. During training the decoder sees ``z + noise_std * eps``
and the loss carries ``l2_weight * mean(z^2)``: with a fixed posterior variance the KL to N(0, 1) is
exactly 0.5 z^2 + const, so this is a light KL that keeps latents bounded and the decoder tolerant
of small latent errors (what a diffusion model makes). After training, per-channel mean and std of
the latents over fresh renders are stored in the config (``latent_mean`` / ``latent_std``, like
Wan's latents_mean / latents_std); ``LatentCodec.encode`` returns normalised latents (about zero
mean, unit variance per channel) and ``to_frames`` / ``decode`` take normalised latents.

    codec = load_codec("ae.safetensors")
    z = codec.encode(frames)          # [B, T, 64, 64, 3] uint8 or float in [0, 1] -> [B, 8, T, 16, 16]
    video = codec.decode(z)           # -> uint8 [B, T, 64, 64, 3]

Training renders random worlds of the prompt grammar in DataLoader workers (a pool of worlds per
worker; frames at random times, so camera pans, motions and occluders all occur); it lives in
``fademem.embedded.autoencoder_train`` (its names stay importable from here, loaded on first use):

    train_autoencoder(AutoencoderConfig(), "ae.safetensors", device="cuda", time_limit=600)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "fademem.embedded.autoencoder/1"


@dataclass
class AutoencoderConfig:
    frame_size: int = 64
    stride: int = 4  # spatial downsampling, a power of 2
    latent_channels: int = 8
    fps: int = 8
    # encoder: pixel-unshuffle by 2, then one level per remaining factor of 2
    enc_channels: tuple[int, ...] = (64, 128)  # at size/2, size/4, ...
    enc_blocks: tuple[int, ...] = (1, 2)
    # decoder: from the latent resolution upwards; the last level's output is pixel-shuffled by 2
    dec_channels: tuple[int, ...] = (64, 32)  # at size/4, size/2
    dec_blocks: tuple[int, ...] = (1, 1)
    groups: int = 8
    # fixed-variance VAE regulariser (see module doc)
    noise_std: float = 0.1
    l2_weight: float = 1e-3
    grad_weight: float = 0.5  # weight of the L1 loss on image gradients (sharp edges)
    # normalisation stats, filled after training
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None

    def __post_init__(self):
        self.enc_channels, self.enc_blocks = tuple(self.enc_channels), tuple(self.enc_blocks)
        self.dec_channels, self.dec_blocks = tuple(self.dec_channels), tuple(self.dec_blocks)
        levels = int(round(math.log2(self.stride)))
        if self.stride < 2 or 2 ** levels != self.stride:
            raise ValueError(f"stride must be a power of 2 >= 2, got {self.stride}")
        if self.frame_size % self.stride:
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of stride {self.stride}")
        for name in ("enc", "dec"):
            ch, bl = getattr(self, f"{name}_channels"), getattr(self, f"{name}_blocks")
            if len(ch) != levels or len(bl) != levels:
                raise ValueError(f"{name}_channels and {name}_blocks need {levels} entries for stride "
                                 f"{self.stride}, got {ch} and {bl}")

    @property
    def latent_hw(self) -> int:
        return self.frame_size // self.stride


def _gn(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, c), c)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _gn(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.enc_channels
        self.conv_in = nn.Conv2d(12, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (c, n) in enumerate(zip(ch, cfg.enc_blocks)):
            if i:
                layers.append(nn.Conv2d(ch[i - 1], c, 3, stride=2, padding=1))
            layers += [ResBlock(c, c, cfg.groups) for _ in range(n)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _gn(ch[-1], cfg.groups)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x):  # [N, 3, H, W] in [-1, 1] -> [N, C, h, w] (raw, unnormalised)
        h = self.body(self.conv_in(F.pixel_unshuffle(x, 2)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.dec_channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (c, n) in enumerate(zip(ch, cfg.dec_blocks)):
            if i:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i - 1], c, 3, padding=1)]
            layers += [ResBlock(c, c, cfg.groups) for _ in range(n)]
        self.body = nn.Sequential(*layers)
        self.norm_out = _gn(ch[-1], cfg.groups)
        self.conv_out = nn.Conv2d(ch[-1], 12, 3, padding=1)

    def forward(self, z):  # [N, C, h, w] raw -> [N, 3, H, W] in about [-1, 1]
        h = self.body(self.conv_in(z))
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2)


class LatentCodec(nn.Module):
    """Frames <-> normalised latents. Also the pipeline's (stateless, streaming) Decoder."""

    def __init__(self, cfg: AutoencoderConfig | None = None, max_batch: int = 256):
        super().__init__()
        self.cfg = cfg or AutoencoderConfig()
        self.fps = self.cfg.fps
        self.max_batch = max_batch  # frames per conv call (bounds memory on long videos)
        self.encoder, self.decoder = Encoder(self.cfg), Decoder(self.cfg)
        c = self.cfg.latent_channels
        mean = torch.tensor(self.cfg.latent_mean if self.cfg.latent_mean else [0.0] * c, dtype=torch.float32)
        std = torch.tensor(self.cfg.latent_std if self.cfg.latent_std else [1.0] * c, dtype=torch.float32)
        if mean.numel() != c or std.numel() != c:
            raise ValueError(f"latent_mean/latent_std need {c} entries")
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_std", std, persistent=False)

    @property
    def channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def latent_hw(self) -> int:
        return self.cfg.latent_hw

    @property
    def _param(self) -> torch.Tensor:
        return self.decoder.conv_in.weight

    def set_stats(self, mean, std) -> None:
        """Store per-channel latent stats (config and buffers): encode/decode then use them."""
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        self.cfg.latent_mean, self.cfg.latent_std = mean, std
        self.latent_mean.copy_(torch.tensor(mean))
        self.latent_std.copy_(torch.tensor(std))

    def _stat(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device, like.dtype)[:, None, None]

    # -- raw (unnormalised) per-frame maps --------------------------------------------------
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> raw latents [N, C, h, w]."""
        p = self._param
        return torch.cat([self.encoder(c.to(p.device, p.dtype)) for c in x.split(self.max_batch)]) if len(x) else \
            x.new_zeros(0, self.channels, self.latent_hw, self.latent_hw)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """raw latents [N, C, h, w] -> [N, 3, H, W] in about [-1, 1]."""
        p = self._param
        s = self.cfg.frame_size
        return torch.cat([self.decoder(c.to(p.device, p.dtype)) for c in z.split(self.max_batch)]) if len(z) else \
            z.new_zeros(0, 3, s, s)

    # -- public API (same names as PixelCodec) ----------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, H, W, 3] uint8 or float in [0, 1] -> normalised latents [B, C, T, h, w] (float32)."""
        frames = torch.as_tensor(frames)
        s = self.cfg.frame_size
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [batch, time, height, width, 3], got {tuple(frames.shape)}")
        if frames.shape[2] != s or frames.shape[3] != s:
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[3]}, the autoencoder works at {s}x{s}")
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        b, t = x.shape[:2]
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, s, s).to(self._param.device)
        z = self.encode_raw(x * 2 - 1).float()
        z = (z - self._stat(self.latent_mean, z)) / self._stat(self.latent_std, z)
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def to_frames(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, T, h, w] -> float frames [B, T, H, W, 3] in [0, 1] (float32)."""
        c, hw = self.channels, self.latent_hw
        if z.dim() != 5 or z.shape[1] != c or z.shape[3] != hw or z.shape[4] != hw:
            raise ValueError(f"expected latents [batch, {c}, time, {hw}, {hw}], got {tuple(z.shape)}")
        b, _, t = z.shape[:3]
        zz = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, hw, hw).float().to(self._param.device)
        zz = zz * self._stat(self.latent_std, zz) + self._stat(self.latent_mean, zz)
        x = ((self.decode_raw(zz).float().clamp(-1, 1) + 1) / 2)
        s = self.cfg.frame_size
        return x.reshape(b, t, 3, s, s).permute(0, 1, 3, 4, 2)

    # -- the pipeline's Decoder protocol: stateless, so streaming is exact --------------------
    def reset(self) -> None:
        pass

    def stream_state(self) -> dict:
        """The streaming decoder's state between chunks (stateless: nothing; for exact resume)."""
        return {}

    def load_stream_state(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, C, T, h, w] -> uint8 frames [B, T, H, W, 3]."""
        return (self.to_frames(z) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- files
def codec_state(codec: LatentCodec, prefix: str = "", dtype=torch.float16) -> tuple[dict, str]:
    """(tensors {prefix + name: tensor}, config JSON): embed in any safetensors file under a prefix."""
    tensors = {prefix + k: v.detach().to(dtype).contiguous().cpu() for k, v in codec.state_dict().items()}
    return tensors, json.dumps({"format": FORMAT, "config": asdict(codec.cfg)})


def codec_from_state(tensors: dict, meta_json: str, prefix: str = "", device="cpu") -> LatentCodec:
    """Rebuild a codec from `codec_state`'s output (only keys under `prefix` are read); eval mode, no grads."""
    meta = json.loads(meta_json)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a fademem autoencoder state (format {meta.get('format')!r}, want {FORMAT!r})")
    codec = LatentCodec(AutoencoderConfig(**meta["config"]))
    sd = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = codec.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"autoencoder weights do not match the config: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]}")
    return codec.eval().requires_grad_(False).to(device)


def save_codec(codec: LatentCodec, path: str | Path, info: dict | None = None, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    tensors, meta = codec_state(codec, dtype=dtype)
    save_file(tensors, str(path), metadata={"autoencoder": meta, "info": json.dumps(info or {})})


def load_codec(path: str | Path, device="cpu") -> LatentCodec:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "autoencoder" not in meta:
            raise ValueError(f"{path} is not a fademem autoencoder file (no 'autoencoder' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    codec = codec_from_state(tensors, meta["autoencoder"], device=device)
    codec.info = json.loads(meta.get("info", "{}"))
    return codec


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
