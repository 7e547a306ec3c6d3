"""The K/V-space history compressor behind the ``compressor`` memory policy.

A memory only ever sees per-layer keys and values, so the learned compressor works there: a group
of ``t`` evicted frames of one layer, viewed as a small video ``[2*heads*head_dim, t, grid_h,
grid_w]`` (keys with their spatial RoPE phase, values), becomes ``(grid_h/h)*(grid_w/w)`` tokens
of compressed keys and values at the rate ``"t x h x w"``.

Per-layer encoders with a shared trunk: layer ``l`` has its own 1x1x1 input projection and its
own output head; between them runs one :class:`~fademem.memory.compressor_net.HistoryEncoder` (3D
convolutions, time reduced before space, attention at the coarsest level). Each token is the
**average pool** of its cell plus the head's correction, and the heads start at zero: an
untrained compressor is plain span averaging (what FadeMem's merges do), and training only has to
learn what averaging loses.

The compressor itself (:class:`KVCompressor`, :class:`KVCompressorConfig`), the LoRA metadata and
reading a file's compressor and LoRA live in :mod:`fademem.memory.compressor_net` (the policy runs
them; the memory layer cannot import training code) and are re-exported here. This module adds
what training needs: the retrieval decoder (:class:`KVRetrieval`), :func:`save`, and :func:`load`,
which also reads the decoder.

Files (safetensors): ``kv.*`` the compressor, optionally ``decoder.*`` (the retrieval decoder of
pretraining) and ``lora.*`` (a peft LoRA for the generator fine-tuned to read this memory), with
the configs as JSON metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fademem.compressor.nets import CompressorConfig, Encoded, RetrievalDecoder
from fademem.memory.compressor_net import (
    KVCompressor,
    KVCompressorConfig,
    LoRAInfo,
    default_path,
    part,
    read,
    weights_from,
)

# KVCompressor, KVCompressorConfig, LoRAInfo, default_path: the memory layer's (the policy runs them).
__all__ = ["KVCompressor", "KVCompressorConfig", "KVFile", "KVRetrieval", "LoRAInfo", "default_path", "load", "save"]


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
    """Everything in a compressor file: what the policy reads (:func:`fademem.memory.compressor_net.load`)
    plus the retrieval decoder, when the file has one."""
    meta, tensors = read(path)
    w = weights_from(meta, tensors, device)
    retrieval = None
    if "decoder" in meta:
        retrieval = KVRetrieval(w.compressor.cfg, **json.loads(meta["decoder"]))
        retrieval.load_state_dict(part(tensors, "decoder."))
        retrieval.to(device).eval()
    return KVFile(w.compressor, retrieval, w.lora, w.lora_info, w.info)


def __getattr__(name: str):
    if name in ("generator_for_memory", "merge_generator_lora"):
        raise AttributeError(f"fademem.compressor.kv.{name} is gone: use fademem.pipeline.generator_for_memory(model, "
                             "spec), which merges whatever a policy declares through Memory.generator_adapter()")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
