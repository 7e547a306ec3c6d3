"""Streaming decoder adapter over diffusers' ``AutoencoderKLWan`` (the Wan2.1 VAE).

The Wan VAE decoder is causal in time: diffusers' ``_decode`` runs it one latent frame at a time
and carries a per-conv feature cache between frames (the first frame with ``first_chunk=True``
yields 1 video frame, every later one 4), so T latent frames decode to 4T-3 video frames. Its
public ``decode()`` clears that cache at the start and the end, so it cannot continue a video.
:class:`WanVAEDecoder` runs the same loop itself with a cache of its own that lives across
calls: ``reset()`` once per video, then ``decode(chunk)`` for each chunk of latent frames as the
sampler finishes it. The result equals one-shot ``vae.decode`` on the whole latent video, and a
long video never holds more than one chunk of frames.

Latents from the DiT are normalised; like diffusers' Wan pipeline the caller denormalises:
``z = latent * latents_std + latents_mean`` (per channel, from the VAE config). ``encode`` goes the
other way for start material (``fademem generate --image / --video``): 4P - 3 video frames to P
normalised latent frames, the posterior mean of the VAE's causal encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WAN_FPS = 16


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] on the CPU (rounded)."""
    return uint8_frames(video).cpu()


def uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> contiguous uint8 [B, T, H, W, 3] on the video's device."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous()


class PendingFrames:
    """Decoded frames on their way to the host: ``result()`` waits for them (uint8 [B, T, H, W, 3], CPU).

    On CUDA the device-to-host copy goes into pinned memory without blocking the host; an event
    recorded after it on the stream that ran the decode says when the frames are there.
    """

    def __init__(self, frames: torch.Tensor, event=None):
        self._frames, self._event = frames, event

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._frames


class WanVAEDecoder:
    """Chunk-by-chunk decoding of normalised Wan latents (the pipeline's ``Decoder`` protocol)."""

    fps = WAN_FPS

    def __init__(self, vae, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        from fademem._compat import hf_ready

        hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        if device is not None or dtype is not None:
            vae = vae.to(device=device, dtype=dtype)
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        z = int(cfg.z_dim)
        for name in ("latents_mean", "latents_std"):
            vals = getattr(cfg, name, None)
            if vals is None or len(vals) != z:
                raise ValueError(f"VAE config '{name}' must list {z} values (z_dim), got {vals}")
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        # per-device copies: a pageable host->device copy per chunk would wait for the stream
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.z_dim = z
        self.temporal_scale = 2 ** sum(bool(b) for b in cfg.temperal_downsample)
        self.spatial_scale = int(getattr(cfg, "scale_factor_spatial", None) or 8)
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.reset()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> WanVAEDecoder:
        """Load ``<wan-dir>/vae`` (the Wan2.1 Diffusers layout), or a VAE directory directly."""
        from fademem._compat import hf_ready

        hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
        from diffusers import AutoencoderKLWan

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"VAE directory not found: {root}")
        vae_dir = root / "vae" if (root / "vae").is_dir() else root
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(f"no Wan VAE in {root}: expected {root / 'vae' / 'config.json'} "
                                    "(the Wan2.1 Diffusers layout, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
        if not any(p.suffix in (".safetensors", ".bin") for p in vae_dir.iterdir()):
            raise FileNotFoundError(f"no VAE weights (*.safetensors / *.bin) in {vae_dir}")
        try:
            vae = AutoencoderKLWan.from_pretrained(str(vae_dir), torch_dtype=dtype)
        except Exception as exc:  # diffusers raises many types here
            raise ValueError(f"cannot load an AutoencoderKLWan from {vae_dir}: {exc}") from exc
        return cls(vae, device=device)

    # -- streaming ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def reset(self) -> None:
        """Start a new video: forget the decoder's causal feature cache."""
        self._feat_cache: list = [None] * self._num_convs
        self._first = True
        self.latent_frames = 0

    def stream_state(self) -> dict:
        """The causal feature cache between chunks (tensors, None or diffusers' ``"Rep"`` marker), for an
        exact resume (``fademem generate --resume``)."""
        return {"feat_cache": [x.clone() if isinstance(x, torch.Tensor) else x for x in self._feat_cache],
                "first": self._first, "latent_frames": self.latent_frames}

    def load_stream_state(self, state: dict) -> None:
        cache = list(state["feat_cache"])
        if len(cache) != self._num_convs or not all(x is None or isinstance(x, torch.Tensor | str) for x in cache):
            raise ValueError(f"VAE stream state has {len(cache)} cache entries, this VAE {self._num_convs} convs")
        self._feat_cache = [x.to(self.device) if isinstance(x, torch.Tensor) else x for x in cache]
        self._first = bool(state["first"])
        self.latent_frames = int(state["latent_frames"])

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT latents -> VAE latents: latents * std + mean (in float32, per channel)."""
        dev = latents.device
        if dev not in self._stats:
            self._stats[dev] = (self.mean.to(dev), self.std.to(dev))
        mean, std = self._stats[dev]
        return latents.float() * std + mean

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Next latent frames [B, C, F, h, w] -> video [B, 3, T, H, W] in [-1, 1], continuing the video.

        T = 1 + 4(F-1) for the first call after ``reset()``, else 4F.
        """
        if latents.dim() != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"expected latents [B, {self.z_dim}, F, h, w], got {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise ValueError("got a chunk of zero latent frames")
        z = self.denormalize(latents) if normalized else latents
        z = z.to(device=self.device, dtype=self.dtype)
        vae = self.vae
        x = vae.post_quant_conv(z)  # 1x1x1 causal conv: no temporal state, safe per chunk
        outs = []
        for i in range(x.shape[2]):
            out = vae.decoder(x[:, :, i:i + 1], feat_cache=self._feat_cache, feat_idx=[0],
                              first_chunk=self._first)
            self._first = False
            outs.append(out)
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            from fademem._compat import hf_ready

            hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        self.latent_frames += latents.shape[2]
        return out.clamp(-1.0, 1.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Next latent frames [B, C, F, h, w] (normalised) -> uint8 frames [B, T, H, W, 3] on the CPU."""
        return to_uint8(self.decode_float(latents))

    def decode_async(self, latents: torch.Tensor) -> PendingFrames:
        """``decode`` without waiting for the frames: the work is queued on the current stream (the
        pipeline's side stream when it overlaps decoding with the next chunk) and the host copy
        is non-blocking; ``result()`` of the returned handle gives what ``decode`` would have.
        Off CUDA this is ``decode``."""
        frames = uint8_frames(self.decode_float(latents))
        if frames.device.type != "cuda":
            return PendingFrames(frames.cpu())
        host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        host.copy_(frames, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingFrames(host, event)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 video [B, T, H, W, 3] with T = 4P - 3 -> normalised latents [B, z, P, H/8, W/8] (float32,
        on the VAE's device): diffusers' ``vae.encode`` (its causal encoder, the first frame alone, then
        groups of 4), the posterior mean, then ``(z - latents_mean) / latents_std`` as the DiT sees
        latents. Independent of the streaming decode state."""
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[-1] != 3 \
                or frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames [B, T, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
                             f"{tuple(getattr(frames, 'shape', ()))}")
        t, h, w = frames.shape[1:4]
        if t < 1 or (t - 1) % self.temporal_scale:
            raise ValueError(f"the Wan VAE encodes 1 + {self.temporal_scale}k frames, got {t}")
        if h % self.spatial_scale or w % self.spatial_scale:
            raise ValueError(f"frame size {h}x{w} is not a multiple of the VAE's {self.spatial_scale}")
        x = frames.to(device=self.device).permute(0, 4, 1, 2, 3).to(self.dtype) / 127.5 - 1.0
        z = self.vae.encode(x).latent_dist.mode().float()
        dev = z.device
        if dev not in self._stats:
            self._stats[dev] = (self.mean.to(dev), self.std.to(dev))
        mean, std = self._stats[dev]
        return (z - mean) / std

    @staticmethod
    def video_frames(latent_frames: int) -> int:
        """Video frames decoded from ``latent_frames`` latent frames: 4T - 3."""
        return 0 if latent_frames <= 0 else 4 * latent_frames - 3
