"""The pieces of the causal Wan2.1 DiT below the model: the timestep embedding, float32 time MLPs and
norms, per-frame modulation and gated residual adds, attention, the q/k/v/o projections and the
transformer block and output head. ``fademem.wan.model`` assembles them (and re-exports every name).

Precision follows the reference Wan code (see ``fademem.wan.model``): float64 sinusoidal embedding,
float32 time MLPs, modulation, layer norms and gated adds; projections and attention in the model dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from fademem.wan.config import WanConfig

# Replace with ``torch.compile(flex_attention)`` for fused kernels; the eager function works on
# every device (CPU included) but materialises the score matrix. ``attention`` reads this module's
# global, so replace it here (``fademem.wan.layers.flex_attention_fn``); ``fademem.wan.model`` only
# re-exports the name.
flex_attention_fn = flex_attention


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of t * 10000^(-i/half), in float64. t: [...] -> [..., dim]."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t[..., None] * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


_F32_CACHE: dict[int, tuple] = {}


def _f32(p: torch.Tensor | None) -> torch.Tensor | None:
    """A float32 copy of a parameter, cached while the parameter is unchanged (inference only:
    with autograd recording, the live ``p.float()`` keeps gradients flowing)."""
    if p is None or p.dtype == torch.float32:
        return p
    if torch.is_grad_enabled() and p.requires_grad:
        return p.float()
    key = id(p)
    hit = _F32_CACHE.get(key)
    stamp = (p.data_ptr(), p._version, p.device, p.shape)
    if hit is None or hit[0] is not p or hit[1] != stamp:
        hit = (p, stamp, p.detach().float())
        _F32_CACHE[key] = hit
    return hit[2]


def mlp32(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Linear/activation stack in float32 whatever the weights' dtype (Wan's time MLPs);
    float32 copies of low-precision weights are cached between calls."""
    x = x.float()
    for m in seq:
        if isinstance(m, nn.Linear):
            x = F.linear(x, _f32(m.weight), _f32(m.bias))
        else:
            x = m(x)
    return x


class RMSNorm(nn.Module):
    """Wan's RMSNorm over the full width: normalise in float32, round to the input dtype, then
    scale in the model dtype (``F.rms_norm`` computes in float32 for low-precision inputs)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (returns float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, _f32(self.weight), _f32(self.bias), self.eps)

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x).to(x.dtype)`` in one kernel: layer_norm computes low-precision inputs in
        float32 (weights upcast exactly) and rounds once."""
        if self.weight is not None and self.weight.dtype != x.dtype:
            return self(x).to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """[B, Lq, H, D] x [B, Lk, H, D] -> [B, Lq, H*D]; mask: None, bool/additive tensor or BlockMask."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if isinstance(mask, BlockMask):
        out = flex_attention_fn(q, k, v, block_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def _needs_grad(*ts: torch.Tensor) -> bool:
    """Training: the single-kernel ``out=`` forms below do not support autograd."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def modulate(x32: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """x32 * (1 + scale) + shift in float32, returned in ``dtype`` (default float32).
    x32: [B, F*N, D] float32; shift/scale: [B, F, 1, D], one vector per frame."""
    b, n, d = x32.shape
    f = shift.shape[1]
    x4 = x32.view(b, f, n // f, d)
    if torch.compiler.is_compiling() or dtype in (None, torch.float32) or _needs_grad(x32, shift, scale):
        return (x4 * (1 + scale) + shift).view(b, n, d).to(dtype or torch.float32)
    out = torch.empty((b, n, d), dtype=dtype, device=x32.device)
    torch.addcmul(shift, x4, 1 + scale, out=out.view(b, f, n // f, d))  # float32 math, one rounding
    return out


def gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate in float32 (gate per frame), back to x's dtype (one kernel in eager)."""
    b, n, d = x.shape
    f = gate.shape[1]
    if torch.compiler.is_compiling() or x.dtype == torch.float32 or _needs_grad(x, y, gate):
        return (x.float() + (y.float().view(b, f, n // f, d) * gate).view(b, n, d)).to(x.dtype)
    out = torch.empty_like(x)
    torch.addcmul(x.view(b, f, n // f, d), y.view(b, f, n // f, d), gate, out=out.view(b, f, n // f, d))
    return out


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """q/k/v/o projections with Wan's full-width RMSNorm on q and k."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))  # [B, L, H, D]

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.norm_k(self.k(src))), self.split(self.v(src))


class SelfAttention(Attention):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised q, k and v [B, L, H, D], no RoPE phase yet (``attend`` applies it)."""
        k, v = self.project_kv(x)
        return self.split(self.norm_q(self.q(x))), k, v


@torch.compiler.disable
def _call_attend(attend, q, k, v):
    """Memory attention (RoPE, the policy's view, SDPA, memory writes) stays out of compiled graphs."""
    return attend(q, k, v)


class CrossAttention(Attention):
    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.split(self.norm_q(self.q(x)))
        return self.o(attention(q, k, v))


class Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, e0, ctx_k, ctx_v, attend):
        """attend(q, k, v) -> [B, L, H*D]: q/k/v without RoPE phase (the model's memory attention)."""
        # e0: [B, F, 6, D] float32 -> six [B, F, 1, D] vectors, one per frame
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = \
            (self.modulation.float()[:, None] + e0).chunk(6, dim=2)
        q, k, v = self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa, x.dtype))
        y = self.self_attn.o(_call_attend(attend, q, k, v))
        x = gated_add(x, y, gate_msa)
        x = x + self.cross_attn(self.norm3.cast(x), ctx_k, ctx_v)
        y = self.ffn(modulate(self.norm2(x), shift_ffn, scale_ffn, x.dtype))
        return gated_add(x, y, gate_ffn)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).chunk(2, dim=2)
        return self.head(modulate(self.norm(x), shift, scale, x.dtype))
