"""The embedded default generator: a small causal Wan DiT of our own, shipped in the package.

It is the real model code (``fademem.wan.model``) at a small configuration, trained on the
procedural world (``fademem.embedded.world``) by ``fademem train``. Three parts travel in one
safetensors file (``fademem/assets/embedded.safetensors``):

* ``dit.*``   the causal Wan DiT (original Wan names under the prefix);
* ``text.*``  a small word-level text encoder over the world's prompt vocabulary;
* ``codec.*`` (v2, ``codec="autoencoder"``) the frozen ``LatentCodec`` the DiT works in;
* metadata    the configs as JSON, so the file alone rebuilds the bundle.

Metadata keys (all JSON strings):

* ``embedded``  ``EmbeddedConfig`` (``codec``: "pixel" | "autoencoder"; ``latent_channels`` and
                ``latent_size`` give the autoencoder's latent frame, 0 for pixel files);
* ``dit``       ``WanConfig``;
* ``info``      free-form training record;
* ``codec``     (autoencoder files only) the codec's own config, ``codec_state``'s meta JSON;
* ``schedule``  the sampling schedule the model was trained or distilled for,
                ``{"kind": "flow-matching" | "distilled-4step", "steps": [...], "shift": 5.0}``
                (nominal timesteps, warped by ``shift`` as ``fademem.wan.sampling`` does). Files
                without it (v1) were sampled with the default four steps (1000, 750, 500, 250),
                shift 5: that is what ``load`` infers for them.

The v1 "latent" space is pixels folded by space-to-depth: a 64x64 RGB frame becomes
[48, 16, 16] (4x4 pixel cells as channels), so the DiT's (1, 2, 2) patches are 8x8-pixel
tokens and a frame is 64 tokens. One latent frame is one video frame, at 8 fps. v2 files carry a
learned autoencoder (``fademem.embedded.autoencoder``, default [8, 16, 16] per frame) instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fademem.wan.model import CausalWanModel, WanConfig

ASSET = "embedded.safetensors"
CODECS = ("pixel", "autoencoder")
SCHEDULE_KINDS = ("flow-matching", "distilled-4step")


@dataclass
class EmbeddedConfig:
    frame_size: int = 64  # pixels, square
    fold: int = 4  # space-to-depth factor: latent is [3*fold^2, size/fold, size/fold]
    fps: int = 8
    text_len: int = 64
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    codec: str = "pixel"  # "pixel" (folded pixels, v1) or "autoencoder" (a LatentCodec inside the file)
    latent_channels: int = 0  # autoencoder only: channels of one latent frame
    latent_size: int = 0  # autoencoder only: its (square) height and width

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec kind {self.codec!r}: expected one of {', '.join(CODECS)}")
        if self.codec == "autoencoder" and (self.latent_channels <= 0 or self.latent_size <= 0):
            raise ValueError("an autoencoder EmbeddedConfig needs latent_channels and latent_size "
                             f"(got {self.latent_channels}, {self.latent_size})")

    @property
    def channels(self) -> int:
        return 3 * self.fold ** 2 if self.codec == "pixel" else self.latent_channels

    @property
    def latent_hw(self) -> int:
        return self.frame_size // self.fold if self.codec == "pixel" else self.latent_size

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

    def stream_state(self) -> dict:
        """The streaming decoder's state between chunks (stateless: nothing; for exact resume)."""
        return {}

    def load_stream_state(self, state: dict) -> None:
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


@dataclass(frozen=True)
class SamplingSchedule:
    """The sampling schedule a model file was trained or distilled for (nominal steps + shift)."""

    kind: str = "flow-matching"
    steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    inferred: bool = False  # not recorded in the file (v1): what v1 was sampled with

    def __post_init__(self):
        from fademem.wan.sampling import warp_timesteps

        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}: expected one of {', '.join(SCHEDULE_KINDS)}")
        object.__setattr__(self, "steps", tuple(float(x) for x in self.steps))
        object.__setattr__(self, "shift", float(self.shift))
        warp_timesteps(self.steps, self.shift)  # validates: decreasing, in (0, 1000], shift > 0

    @classmethod
    def uniform(cls, n: int, shift: float = 5.0, kind: str = "flow-matching") -> SamplingSchedule:
        """``n`` uniform nominal steps 1000, 1000 - 1000/n, ..., 1000/n (n=4: the default four steps)."""
        if n < 1:
            raise ValueError(f"need at least one sampling step, got {n}")
        return cls(kind, tuple(1000.0 * (n - i) / n for i in range(n)), shift)

    @classmethod
    def distilled(cls) -> SamplingSchedule:
        """The few-step schedule of Self-Forcing / LongLive: (1000, 750, 500, 250), shift 5."""
        from fademem.wan.sampling import DEFAULT_SHIFT, DEFAULT_STEPS

        return cls("distilled-4step", DEFAULT_STEPS, DEFAULT_SHIFT)

    @classmethod
    def v1(cls) -> SamplingSchedule:
        """What files without a recorded schedule (v1) were sampled with: the default four steps."""
        from fademem.wan.sampling import DEFAULT_SHIFT, DEFAULT_STEPS

        return cls("flow-matching", DEFAULT_STEPS, DEFAULT_SHIFT, inferred=True)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "steps": list(self.steps), "shift": self.shift})

    @classmethod
    def from_json(cls, text: str) -> SamplingSchedule:
        d = json.loads(text)
        return cls(str(d["kind"]), tuple(d["steps"]), float(d["shift"]))

    def matches(self, steps, shift) -> bool:
        steps = tuple(float(x) for x in steps)
        return (len(steps) == len(self.steps) and all(abs(a - b) < 1e-6 for a, b in zip(steps, self.steps))
                and abs(float(shift) - self.shift) < 1e-9)

    @property
    def update(self) -> str:
        """The sampler's step rule for this schedule (``VideoPipeline(update=...)``): a flow-matching
        teacher recorded with its schedule follows its ODE; distilled and v1 models re-noise x0."""
        return "ode" if self.kind == "flow-matching" and not self.inferred else "renoise"

    def describe(self) -> str:
        st = ", ".join(f"{x:g}" for x in self.steps) if len(self.steps) <= 8 else \
            f"{len(self.steps)} steps {self.steps[0]:g} .. {self.steps[-1]:g}"
        return f"{self.kind} ({st}; shift {self.shift:g}){' [inferred: v1 file]' if self.inferred else ''}"


@dataclass
class EmbeddedBundle:
    cfg: EmbeddedConfig
    model: CausalWanModel
    text: WordTextEncoder
    codec: nn.Module | PixelCodec  # PixelCodec, or a LatentCodec (fademem.embedded.autoencoder)
    info: dict
    schedule: SamplingSchedule = field(default_factory=SamplingSchedule.v1)

    def to(self, device=None, dtype=None) -> EmbeddedBundle:
        self.model.to(device=device, dtype=dtype)
        self.text.to(device=device)
        if isinstance(self.codec, nn.Module):
            self.codec.to(device=device)  # the codec stays float32: it is small and decodes pixels
        return self

    @property
    def steps(self) -> tuple[float, ...]:
        return self.schedule.steps

    @property
    def shift(self) -> float:
        return self.schedule.shift


def _latent_hw(codec) -> int:
    hw = codec.latent_hw
    if isinstance(hw, (tuple, list)):
        if len(set(int(x) for x in hw)) != 1:
            raise ValueError(f"the embedded model needs square latent frames, the codec gives {tuple(hw)}")
        hw = hw[0]
    return int(hw)


def config_for_codec(cfg: EmbeddedConfig, codec) -> EmbeddedConfig:
    """``cfg`` with the codec kind and latent frame shape of ``codec`` (PixelCodec or LatentCodec)."""
    if isinstance(codec, PixelCodec):
        return replace(cfg, codec="pixel", latent_channels=0, latent_size=0, frame_size=codec.cfg.frame_size,
                       fold=codec.cfg.fold)
    return replace(cfg, codec="autoencoder", latent_channels=int(codec.channels), latent_size=_latent_hw(codec),
                   fps=int(round(float(getattr(codec, "fps", cfg.fps)))))


def build(cfg: EmbeddedConfig | None = None, dit: WanConfig | None = None, codec=None,
          schedule: SamplingSchedule | None = None) -> EmbeddedBundle:
    """A fresh (untrained) bundle. ``codec``: None = folded pixels, or a ``LatentCodec`` (frozen here);
    the config's codec fields follow the codec, and the default DiT config takes its channels."""
    from fademem.embedded.world import VOCABULARY

    cfg = cfg or EmbeddedConfig()
    if codec is None:
        if cfg.codec != "pixel":
            raise ValueError("an autoencoder EmbeddedConfig needs its codec: build(cfg, codec=LatentCodec)")
        codec = PixelCodec(cfg)
    else:
        cfg = config_for_codec(cfg, codec)
        if isinstance(codec, nn.Module):
            codec.eval().requires_grad_(False)
    dit = dit or cfg.dit_config()
    if dit.in_dim != cfg.channels or dit.out_dim != cfg.channels:
        raise ValueError(f"the DiT works on {dit.in_dim}-channel latents (out {dit.out_dim}), the codec gives "
                         f"{cfg.channels}")
    return EmbeddedBundle(cfg, CausalWanModel(dit), WordTextEncoder(cfg, len(VOCABULARY) + 1), codec, {},
                          schedule or SamplingSchedule.v1())


def save(bundle: EmbeddedBundle, path: str | Path, info: dict | None = None, dtype=torch.float16,
         schedule: SamplingSchedule | None = None) -> None:
    """One safetensors file: ``dit.*``/``text.*``/``codec.*`` (autoencoder) in ``dtype``,
    configs and the sampling schedule (``schedule`` or the bundle's) as JSON metadata."""
    from safetensors.torch import save_file

    tensors = {f"dit.{k}": v.detach().to(dtype).contiguous().cpu() for k, v in bundle.model.state_dict().items()}
    tensors.update({f"text.{k}": v.detach().to(dtype).contiguous().cpu()
                    for k, v in bundle.text.state_dict().items()})
    cfg = bundle.cfg
    meta = {"embedded": json.dumps(asdict(cfg)), "dit": json.dumps(asdict(bundle.model.config)),
            "info": json.dumps(info or bundle.info),
            "schedule": (schedule or bundle.schedule).to_json()}
    if cfg.codec == "autoencoder":
        from fademem.embedded.autoencoder import codec_state

        ctensors, cmeta = codec_state(bundle.codec, dtype=dtype)  # fp16 by default, as codec files are
        tensors.update({f"codec.{k}": v.detach().contiguous().cpu() for k, v in ctensors.items()})
        meta["codec"] = cmeta
    elif not isinstance(bundle.codec, PixelCodec):
        raise ValueError("the bundle's config says codec='pixel' but its codec is not a PixelCodec")
    save_file(tensors, str(path), metadata=meta)


def default_path() -> Path:
    return Path(str(resources.files("fademem") / "assets" / ASSET))


def load(path: str | Path | None = None, device="cpu", dtype=torch.float32) -> EmbeddedBundle:
    """Load the shipped model (no network) or a trained file: DiT, text encoder, codec (folded pixels, or
    the autoencoder stored inside) and the sampling schedule (``bundle.schedule``; inferred for v1)."""
    from safetensors import SafetensorError, safe_open

    shipped = not path
    path = Path(path) if path else default_path()
    if shipped and not path.is_file():
        raise FileNotFoundError(f"the shipped embedded model is missing ({path}): the package was installed "
                                "without its assets; reinstall it, or train one with `fademem train` and pass "
                                "its file")
    if not path.exists():
        raise FileNotFoundError(f"embedded model weights file not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"embedded model weights must be a file, got a directory or special file: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if "embedded" not in meta or "dit" not in meta:
                raise ValueError(f"{path} is a safetensors file but not a fademem embedded-model file (no "
                                 "'embedded'/'dit' config metadata; `fademem train` writes those)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (empty, truncated or corrupt: {e})") from None
    cfg = EmbeddedConfig(**json.loads(meta["embedded"]))
    dit_kw = json.loads(meta["dit"])
    dit_kw["patch_size"] = tuple(dit_kw["patch_size"])
    codec = None
    if cfg.codec == "autoencoder":
        from fademem.embedded.autoencoder import codec_from_state

        if "codec" not in meta:
            raise ValueError(f"{path}: an autoencoder bundle without its codec config (metadata 'codec')")
        codec = codec_from_state({k[len("codec."):]: v.float() for k, v in tensors.items()
                                  if k.startswith("codec.")}, meta["codec"])
        got = config_for_codec(cfg, codec)
        if (got.latent_channels, got.latent_size) != (cfg.latent_channels, cfg.latent_size):
            raise ValueError(f"{path}: the codec inside gives [{got.latent_channels}, {got.latent_size}, "
                             f"{got.latent_size}] latents, the config says [{cfg.latent_channels}, "
                             f"{cfg.latent_size}, {cfg.latent_size}]")
    schedule = SamplingSchedule.from_json(meta["schedule"]) if "schedule" in meta else SamplingSchedule.v1()
    bundle = build(cfg, WanConfig(**dit_kw), codec=codec, schedule=schedule)
    if codec is not None:
        bundle.cfg = cfg  # keep the file's config exactly (fps etc.)
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
    """(C, h, w) of one latent frame in the bundle's codec space (pixel: (48, 16, 16))."""
    return cfg.channels, cfg.latent_hw, cfg.latent_hw


def opening(bundle: EmbeddedBundle, prompts: list[str], seed: int, seconds: float,
            frames_per_chunk: int = 3) -> torch.Tensor:
    """True opening latents [B, C, P, h, w] rendered by the procedural world for each prompt (P whole chunks),
    encoded by the bundle's codec (on the codec's device)."""
    import math

    import numpy as np

    from fademem.embedded.world import World

    n = frames_per_chunk * math.ceil(seconds * bundle.cfg.fps / frames_per_chunk - 1e-9)
    if n <= 0:
        raise ValueError(f"opening must be positive, got {seconds} s")
    video = torch.from_numpy(np.stack([World(p, seed, bundle.cfg.frame_size, bundle.cfg.fps).render(n)
                                       for p in prompts]))
    if isinstance(bundle.codec, nn.Module):  # a LatentCodec: encode where it lives, without grad
        with torch.no_grad():
            return bundle.codec.encode(video.to(_module_device(bundle.codec)))
    return bundle.codec.encode(video)


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
