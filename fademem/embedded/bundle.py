"""The embedded default generator: a small causal Wan DiT of our own, shipped in the package.

It is the real model code (``fademem.wan.model``) at a small configuration, trained on the
procedural world (``fademem.embedded.world``) by ``fademem train``. Three parts travel in one
safetensors file (``fademem/assets/embedded.safetensors``):

* ``dit.*``   the causal Wan DiT (original Wan names under the prefix);
* ``text.*``  a small word-level text encoder over the world's prompt vocabulary;
* metadata    the configs as JSON, so the file alone rebuilds the bundle.

The "latent" space is pixels folded by space-to-depth: a 64x64 RGB frame becomes
[48, 16, 16] (4x4 pixel cells as channels), so the DiT's (1, 2, 2) patches are 8x8-pixel
tokens and a frame is 64 tokens. One latent frame is one video frame, at 8 fps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fademem.wan.model import CausalWanModel, WanConfig

ASSET = "embedded.safetensors"


@dataclass
class EmbeddedConfig:
    frame_size: int = 64  # pixels, square
    fold: int = 4  # space-to-depth factor: latent is [3*fold^2, size/fold, size/fold]
    fps: int = 8
    text_len: int = 64
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4

    @property
    def channels(self) -> int:
        return 3 * self.fold ** 2

    @property
    def latent_hw(self) -> int:
        return self.frame_size // self.fold

    def dit_config(self, dim: int = 256, layers: int = 6, heads: int = 4, ffn: int = 1024) -> WanConfig:
        return WanConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, in_dim=self.channels,
                         out_dim=self.channels, text_dim=self.text_dim, freq_dim=128, text_len=self.text_len)


class PixelCodec:
    """Frames <-> folded-pixel latents in [-1, 1]. Also the pipeline's streaming decoder."""

    def __init__(self, cfg: EmbeddedConfig):
        self.cfg = cfg
        self.fps = cfg.fps

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, T, H, W, 3] float in [0, 1] (or uint8) -> latents [B, C, T, h, w]."""
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [batch, time, height, width, 3], got {tuple(frames.shape)}")
        if frames.shape[2] != self.cfg.frame_size or frames.shape[3] != self.cfg.frame_size:
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[3]}, the embedded model works at "
                             f"{self.cfg.frame_size}x{self.cfg.frame_size}")
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        b, t = x.shape[:2]
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, self.cfg.frame_size, self.cfg.frame_size)
        z = F.pixel_unshuffle(x * 2 - 1, self.cfg.fold)  # [B*T, C, h, w]
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def to_frames(self, z: torch.Tensor) -> torch.Tensor:
        """latents [B, C, T, h, w] -> float frames [B, T, H, W, 3] in [0, 1]."""
        b, c, t, h, w = z.shape
        x = F.pixel_shuffle(z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float(), self.cfg.fold)
        x = ((x.clamp(-1, 1) + 1) / 2).reshape(b, t, 3, h * self.cfg.fold, w * self.cfg.fold)
        return x.permute(0, 1, 3, 4, 2)

    # -- the pipeline's Decoder protocol: stateless, so streaming is exact --------------------
    def reset(self) -> None:
        pass

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.to_frames(z) * 255).round().to(torch.uint8)


class WordTextEncoder(nn.Module):
    """Word embeddings + a small transformer over the world's prompt vocabulary."""

    def __init__(self, cfg: EmbeddedConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.text_dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, cfg.text_len, cfg.text_dim))
        layer = nn.TransformerEncoderLayer(cfg.text_dim, cfg.text_heads, 2 * cfg.text_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)

    @property
    def device(self) -> torch.device:
        return self.pos.device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        from fademem.embedded.world import parse_prompt, tokenize

        for p in prompts:
            parse_prompt(p)  # the embedded model only knows its world: a clear error listing the grammar
        ids = torch.zeros(len(prompts), self.cfg.text_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            tok = tokenize(p)
            if len(tok) > self.cfg.text_len:
                raise ValueError(f"prompt has {len(tok)} words, the embedded text encoder takes "
                                 f"{self.cfg.text_len}: {p!r}")
            ids[i, :len(tok)] = torch.tensor(tok, dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.embed(ids) + self.pos[:, :ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=pad))
        return x.masked_fill(pad[..., None], 0.0)  # padding positions zeroed, as Wan does with T5

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's TextEncoder protocol: prompts -> [B, text_len, text_dim]."""
        return self(self.tokenize(prompts).to(self.device))


@dataclass
class EmbeddedBundle:
    cfg: EmbeddedConfig
    model: CausalWanModel
    text: WordTextEncoder
    codec: PixelCodec
    info: dict

    def to(self, device=None, dtype=None) -> EmbeddedBundle:
        self.model.to(device=device, dtype=dtype)
        self.text.to(device=device)
        return self


def build(cfg: EmbeddedConfig | None = None, dit: WanConfig | None = None) -> EmbeddedBundle:
    from fademem.embedded.world import VOCABULARY

    cfg = cfg or EmbeddedConfig()
    dit = dit or cfg.dit_config()
    return EmbeddedBundle(cfg, CausalWanModel(dit), WordTextEncoder(cfg, len(VOCABULARY) + 1),
                          PixelCodec(cfg), {})


def save(bundle: EmbeddedBundle, path: str | Path, info: dict | None = None, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    tensors = {f"dit.{k}": v.detach().to(dtype).contiguous().cpu() for k, v in bundle.model.state_dict().items()}
    tensors.update({f"text.{k}": v.detach().to(dtype).contiguous().cpu()
                    for k, v in bundle.text.state_dict().items()})
    meta = {"embedded": json.dumps(asdict(bundle.cfg)), "dit": json.dumps(asdict(bundle.model.config)),
            "info": json.dumps(info or bundle.info)}
    save_file(tensors, str(path), metadata=meta)


def default_path() -> Path:
    return Path(str(resources.files("fademem") / "assets" / ASSET))


def load(path: str | Path | None = None, device="cpu", dtype=torch.float32) -> EmbeddedBundle:
    """Load the shipped model (no network): DiT, text encoder, pixel codec."""
    from safetensors import safe_open

    path = Path(path) if path else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"embedded model weights not found at {path}: the package was installed "
                                "without its assets, or train one with `fademem train`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "embedded" not in meta or "dit" not in meta:
            raise ValueError(f"{path} is not a fademem embedded-model file (no config metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = EmbeddedConfig(**json.loads(meta["embedded"]))
    dit_kw = json.loads(meta["dit"])
    dit_kw["patch_size"] = tuple(dit_kw["patch_size"])
    bundle = build(cfg, WanConfig(**dit_kw))
    bundle.info = json.loads(meta.get("info", "{}"))
    for prefix, module in (("dit.", bundle.model), ("text.", bundle.text)):
        sd = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: {prefix[:-1]} weights do not match the config: missing {missing[:10]}, "
                             f"unexpected {unexpected[:10]}")
    bundle.model.eval().requires_grad_(False)
    bundle.text.eval().requires_grad_(False)
    return bundle.to(device, dtype)


def latent_shape(cfg: EmbeddedConfig) -> tuple[int, int, int]:
    return cfg.channels, cfg.latent_hw, cfg.latent_hw


def opening(bundle: EmbeddedBundle, prompts: list[str], seed: int, seconds: float,
            frames_per_chunk: int = 3) -> torch.Tensor:
    """True opening latents [B, C, P, h, w] rendered by the procedural world for each prompt (P whole chunks)."""
    import math

    import numpy as np

    from fademem.embedded.world import World

    n = frames_per_chunk * math.ceil(seconds * bundle.cfg.fps / frames_per_chunk - 1e-9)
    if n <= 0:
        raise ValueError(f"opening must be positive, got {seconds} s")
    video = np.stack([World(p, seed, bundle.cfg.frame_size, bundle.cfg.fps).render(n) for p in prompts])
    return bundle.codec.encode(torch.from_numpy(video))
