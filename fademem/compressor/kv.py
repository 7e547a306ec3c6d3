"""The K/V-space history compressor behind the ``compressor`` memory policy.

A memory only ever sees per-layer keys and values, so the learned compressor works there: a group
of ``t`` evicted frames of one layer, viewed as a small video ``[2*heads*head_dim, t, grid_h,
grid_w]`` (keys with their spatial RoPE phase, values), becomes ``(grid_h/h)*(grid_w/w)`` tokens
of compressed keys and values at the rate ``"t x h x w"``.

Per-layer encoders with a shared trunk: layer ``l`` has its own 1x1x1 input projection and its
own output head; between them runs one :class:`~fademem.compressor.nets.HistoryEncoder` (3D
convolutions, time reduced before space, attention at the coarsest level). Each token is the
**average pool** of its cell plus the head's correction, and the heads start at zero: an
untrained compressor is plain span averaging (what FadeMem's merges do), and training only has to
learn what averaging loses.

Files (safetensors): ``kv.*`` the compressor, optionally ``decoder.*`` (the retrieval decoder of
pretraining) and ``lora.*`` (a peft LoRA for the generator fine-tuned to read this memory), with
the configs as JSON metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fademem.compressor.nets import CompressorConfig, Encoded, HistoryEncoder, RetrievalDecoder, parse_channels, parse_rate


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


class KVRetrieval(nn.Module):
    """Pretraining decoder: every layer's compressed tokens of a history -> any frame of it."""

    def __init__(self, cfg: KVCompressorConfig, latent_channels: int, latent_hw: tuple[int, int],
                 dec_dim: int = 128, dec_layers: int = 2):
        super().__init__()
        self.cfg = cfg
        self.layer_emb = nn.Parameter(torch.randn(cfg.layers, cfg.width) * 0.02)
        self.decoder = RetrievalDecoder(CompressorConfig(in_channels=latent_channels, out_dim=cfg.width,
                                                         latent_hw=latent_hw, dec_dim=dec_dim, dec_layers=dec_layers))

    def forward(self, compressed: list[tuple[torch.Tensor, torch.Tensor]], centres: torch.Tensor,
                query: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """compressed: per layer (k, v) [B, G*m, H, D]; centres [G] temporal centre of each group;
        query [B, Q, C, h, w] noised frames at levels sigma [B, Q], positions t [B, Q]."""
        cfg = self.cfg
        m = cfg.tokens_per_group
        tokens = torch.cat([torch.cat([k.flatten(2), v.flatten(2)], -1).float() + self.layer_emb[i]
                            for i, (k, v) in enumerate(compressed)], 1)
        _, fh, fw = cfg.factors
        hg, wg = cfg.grid[0] // fh, cfg.grid[1] // fw
        ys = (torch.arange(hg, dtype=torch.float32) + 0.5) / hg
        xs = (torch.arange(wg, dtype=torch.float32) + 0.5) / wg
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(m, 2).to(query.device)
        groups = centres.numel()
        layers = len(compressed)
        enc = Encoded(tokens, centres.float().to(query.device).repeat_interleave(m).repeat(layers),
                      (layers * groups, hg, wg), coords.repeat(layers * groups, 1))
        return self.decoder(enc, query, sigma, t)


# -- files ----------------------------------------------------------------------------------------------
@dataclass
class LoRAInfo:
    rank: int
    alpha: float
    targets: list[str] = field(default_factory=list)


def save(path: str | Path, compressor: KVCompressor, retrieval: KVRetrieval | None = None,
         lora: dict[str, torch.Tensor] | None = None, lora_info: LoRAInfo | None = None,
         info: dict | None = None, dtype=torch.float16) -> None:
    """``lora``: peft LoRA tensors named ``<module>.lora_A.weight`` / ``.lora_B.weight``."""
    from safetensors.torch import save_file

    def put(prefix, sd):
        return {f"{prefix}{k}": v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}

    tensors = put("kv.", compressor.state_dict())
    meta = {"kv_compressor": json.dumps(asdict(compressor.cfg)), "info": json.dumps(info or {})}
    if retrieval is not None:
        tensors.update(put("decoder.", retrieval.state_dict()))
        meta["decoder"] = json.dumps({"latent_channels": retrieval.decoder.cfg.in_channels,
                                      "latent_hw": list(retrieval.decoder.cfg.latent_hw),
                                      "dec_dim": retrieval.decoder.cfg.dec_dim,
                                      "dec_layers": retrieval.decoder.cfg.dec_layers})
    if lora:
        if lora_info is None:
            raise ValueError("saving LoRA tensors needs their LoRAInfo (rank, alpha)")
        tensors.update(put("lora.", lora))
        meta["lora"] = json.dumps(asdict(lora_info))
    save_file(tensors, str(path), metadata=meta)


@dataclass
class KVFile:
    compressor: KVCompressor
    retrieval: KVRetrieval | None
    lora: dict[str, torch.Tensor]  # peft LoRA tensors (empty when the file has none)
    lora_info: LoRAInfo | None
    info: dict


def load(path: str | Path, device="cpu") -> KVFile:
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
    cfg = KVCompressorConfig(**json.loads(meta["kv_compressor"]))

    def part(prefix):
        return {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}

    comp = KVCompressor(cfg)
    comp.load_state_dict(part("kv."))
    retrieval = None
    if "decoder" in meta:
        retrieval = KVRetrieval(cfg, **json.loads(meta["decoder"]))
        retrieval.load_state_dict(part("decoder."))
        retrieval.to(device).eval()
    lora_info = LoRAInfo(**json.loads(meta["lora"])) if "lora" in meta else None
    return KVFile(comp.to(device).eval(), retrieval, part("lora."), lora_info, json.loads(meta.get("info", "{}")))


def default_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("fademem") / "assets" / "compressor.safetensors"))
