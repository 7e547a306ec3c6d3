"""Analytic FLOP counts of the causal Wan DiT (``fademem bench speed``).

Linear layers 2*tokens*in*out (self-attention q, k, v, o; cross-attention q, o; FFN up and down;
patch embedding; head; the per-frame time MLPs), attention 4*Lq*Lk*head_dim per head (QK^T and
PV), cross-attention over ``text_len`` (512) text tokens. The text K/V projections are counted
once per prompt (``text_flops``), not per forward. Elementwise work (norms, RoPE, modulation) is
not counted.
"""

from __future__ import annotations

import math


def forward_flops(cfg, q_tokens: int, kv_tokens: int, frames: int, text_tokens: int | None = None) -> dict[str, int]:
    """FLOPs of one DiT forward over ``q_tokens`` query tokens (``frames`` latent frames) that
    attend to ``kv_tokens`` keys (memory + the chunk itself). Breakdown by part, plus 'total'."""
    d, f, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    t = cfg.text_len if text_tokens is None else text_tokens
    p = math.prod(cfg.patch_size)
    lq, lk = int(q_tokens), int(kv_tokens)
    out = {
        "self_qkvo": layers * 4 * 2 * lq * d * d,
        "self_attention": layers * 4 * lq * lk * d,  # sum over heads of 4*Lq*Lk*head_dim
        "cross_qo": layers * 2 * 2 * lq * d * d,
        "cross_attention": layers * 4 * lq * t * d,
        "ffn": layers * 2 * 2 * lq * d * f,
        "patch_embedding": 2 * lq * cfg.in_dim * p * d,
        "head": 2 * lq * d * p * cfg.out_dim,
        "time_mlp": frames * 2 * (cfg.freq_dim * d + d * d + d * 6 * d),
    }
    out["total"] = sum(out.values())
    return out


def text_flops(cfg, text_tokens: int | None = None) -> int:
    """FLOPs of encoding one prompt's context: text embedding MLP + every layer's cross K/V."""
    t = cfg.text_len if text_tokens is None else text_tokens
    d = cfg.dim
    return 2 * t * (cfg.text_dim * d + d * d) + cfg.num_layers * 2 * 2 * t * d * d


def chunk_flops(cfg, tokens_per_frame: int, frames_per_chunk: int, memory_frames: int, forwards: int = 5) -> int:
    """FLOPs of one chunk: ``forwards`` forwards (4 denoising + 1 cache-writing) of the chunk's
    tokens over ``memory_frames`` visible memory slots plus the chunk itself."""
    lq = tokens_per_frame * frames_per_chunk
    lk = tokens_per_frame * (memory_frames + frames_per_chunk)
    return forwards * forward_flops(cfg, lq, lk, frames_per_chunk)["total"]
