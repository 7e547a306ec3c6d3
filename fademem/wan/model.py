"""The causal Wan2.1 DiT (Self-Forcing / LongLive / FadeMem backbone) in one file.

Parameter names follow the original Wan release, so published state dicts load as they are
(``fademem.wan.checkpoints_names`` converts to and from diffusers' names). There are no buffers: RoPE
is evaluated by :class:`fademem.rope.WanRoPE`, which keeps its cos/sin tables on the input's device.

Self-attention is where bounded memory enters. With ``memory=None`` a forward attends over the
frames it is given (bidirectional, or under a dense bool mask / flex_attention ``BlockMask``).
With a :class:`fademem.memory.MemoryStack` every layer follows the contract of
docs/ARCHITECTURE.md: ask the layer's memory for a view, rotate the chunk's queries and keys to
the temporal positions the view assigns, attend over ``[view, chunk]`` (bidirectional inside the
chunk), and on the cache-writing pass hand the chunk's keys (spatial phase only) and values to
the memory. The model knows nothing of any policy.

Precision follows the reference Wan code: the sinusoidal time embedding is computed in float64,
the time MLPs, modulation vectors, layer norms and the gated residual adds in float32 whatever
the weights' dtype; the projections and attention run in the model dtype. Nothing in the
per-layer path reads device values on the host.

Hot path (per layer and forward): q and k are rotated once each, in float32, by one complex table
``[F, h*w, head_dim/2]`` (temporal phase at the positions the memory assigns + spatial phase),
cached per chunk and shared by all layers; the chunk's rotated keys and values are written into
the tail of the memory view's attention buffer (the memory itself is copied there once per
chunk), so attention runs over ``[memory, chunk]`` without a concatenation; the spatial-only keys
a memory stores are computed on the cache-writing pass only. Elementwise float32 steps that follow
a norm are single kernels writing the model dtype (``addcmul`` with an output of that dtype).
Each block's dense parts (everything but ``attend``) take tensors only, so ``torch.compile`` can
compile a block once for all layers; ``attend`` runs outside the compiled graph.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from fademem.memory.base import ChunkQuery
from fademem.rope import WanRoPE, apply_rotary

# Replace with ``torch.compile(flex_attention)`` for fused kernels; the eager function works on
# every device (CPU included) but materialises the score matrix.
flex_attention_fn = flex_attention


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim",
                     "freq_dim", "text_len"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"WanConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"WanConfig: head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig: freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"WanConfig: patch_size must be three positive ints, got {self.patch_size}")
        if self.patch_size[0] != 1:
            raise ValueError("WanConfig: the causal model works frame by frame; temporal patch must be 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def wan_1_3b(cls, **overrides) -> WanConfig:
        return cls(**{**dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), **overrides})

    @classmethod
    def wan_14b(cls, **overrides) -> WanConfig:
        return cls(**{**dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> WanConfig:
        """A few-thousand-parameter model with the real architecture, for tests."""
        base = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, freq_dim=32, text_len=16)
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> WanConfig:
        return dataclasses.replace(self, **changes)


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
# Masks for full-sequence forwards (training, tests)
# ---------------------------------------------------------------------------------------------
def _frame_ok(num_frames: int, frames_per_block: int, budget: int | None, sink: int):
    """Bool [F, F]: query frame i sees key frame j (block-causal, optionally sink + window)."""
    i = torch.arange(num_frames)[:, None]
    j = torch.arange(num_frames)[None, :]
    start = (i // frames_per_block) * frames_per_block
    ok = j < start + frames_per_block
    if budget is not None:  # history: the first `sink` frames plus the newest budget - sink
        ok &= (j >= start) | (j < sink) | (j >= start - (budget - sink))
    return ok


def block_causal_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense bool [L, L] mask (True = attend): each block of frames sees itself and all earlier blocks."""
    ok = _frame_ok(num_frames, frames_per_block, None, 0)
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(device)


def sink_window_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int, budget: int,
                     sink: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense bool [L, L] mask of the ``sink`` policy: each block sees itself, the first ``sink``
    frames and the newest ``budget - sink`` earlier frames (``budget`` frames of history)."""
    if not 0 <= sink <= budget:
        raise ValueError(f"sink_window_mask: need 0 <= sink <= budget, got sink={sink}, budget={budget}")
    ok = _frame_ok(num_frames, frames_per_block, budget, sink)
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(device)


def flex_block_causal_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int,
                           device: torch.device | str = "cpu") -> BlockMask:
    """The block-causal mask as a flex_attention BlockMask (no padding needed in torch >= 2.5)."""
    block = frames_per_block * tokens_per_frame
    n = num_frames * tokens_per_frame

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx // block <= q_idx // block

    return create_block_mask(mask_mod, None, None, n, n, device=device)


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


@dataclass
class TextContext:
    """A prompt, encoded once: the text embedding and every layer's cross-attention K/V."""

    embedding: torch.Tensor  # [B, text_len, dim]
    k: list[torch.Tensor] = field(repr=False)  # per layer [B, text_len, H, D] (after norm_k)
    v: list[torch.Tensor] = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.embedding.shape[0]


class CausalWanModel(nn.Module):
    """Causal Wan2.1 DiT: ``model(x, t, context, memory=None, start_frame=0, write_memory=False,
    attn_mask=None)``, ``encode_text(text_states)``, ``recache(x_clean, context, memory, frames)``."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.rope = WanRoPE(cfg.head_dim, cfg.rope_theta)  # plain object: no buffers, device-lazy

    @classmethod
    def from_config(cls, cfg: WanConfig) -> CausalWanModel:
        return cls(cfg)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # -- inputs -----------------------------------------------------------------------------------
    def encode_text(self, text_states: torch.Tensor) -> TextContext:
        """[B, L, text_dim] encoder states (L <= text_len) -> TextContext, zero-padded to text_len."""
        cfg = self.config
        if not isinstance(text_states, torch.Tensor) or text_states.dim() != 3:
            raise ValueError(f"text_states must be a [batch, tokens, {cfg.text_dim}] tensor, "
                             f"got {getattr(text_states, 'shape', type(text_states))}")
        b, n, c = text_states.shape
        if c != cfg.text_dim:
            raise ValueError(f"text_states width {c} does not match text_dim {cfg.text_dim}")
        if n > cfg.text_len:
            raise ValueError(f"text_states has {n} tokens, more than text_len {cfg.text_len}")
        states = text_states.to(device=self.patch_embedding.weight.device, dtype=self.dtype)
        states = F.pad(states, (0, 0, 0, cfg.text_len - n))
        emb = self.text_embedding(states)
        kv = [blk.cross_attn.project_kv(emb) for blk in self.blocks]
        return TextContext(emb, [k for k, _ in kv], [v for _, v in kv])

    def _context(self, context, batch: int) -> TextContext:
        ctx = context if isinstance(context, TextContext) else self.encode_text(context)
        if ctx.batch_size == batch:
            return ctx
        if ctx.batch_size != 1:
            raise ValueError(f"text context has batch {ctx.batch_size}, latents have batch {batch}")
        grow = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        return TextContext(grow(ctx.embedding), [grow(k) for k in ctx.k], [grow(v) for v in ctx.v])

    def _check_latents(self, x: torch.Tensor, what: str = "x") -> tuple[int, int, int, int]:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"{what} must be a [batch, {cfg.in_dim}, frames, height, width] tensor, "
                             f"got {getattr(x, 'shape', type(x))}")
        b, c, f, h, w = x.shape
        if c != cfg.in_dim:
            raise ValueError(f"{what} has {c} channels, the model expects in_dim={cfg.in_dim}")
        _, ph, pw = cfg.patch_size
        if f == 0 or h % ph or w % pw or h == 0 or w == 0:
            raise ValueError(f"{what}: latent height/width {h}x{w} must be non-zero multiples of the "
                             f"patch size {ph}x{pw} (and frames > 0, got {f})")
        return b, f, h // ph, w // pw

    @staticmethod
    def _timesteps(t, b: int, f: int, device: torch.device) -> torch.Tensor:
        """Scalar, [B] or [B, F] timesteps -> [B, F]."""
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            return t.expand(b, f)
        if t.dim() == 1 and t.shape[0] == b:
            return t[:, None].expand(b, f)
        if t.dim() == 2 and tuple(t.shape) == (b, f):
            return t
        raise ValueError(f"t must be a scalar, [batch={b}] or [batch={b}, frames={f}], got shape {tuple(t.shape)}")

    def _embed(self, x, t, context):
        """Patchify and embed: tokens [B, F*h*w, dim], e [B, F, dim], e0 [B, F, 6, dim] (float32)."""
        b, f, h, w = self._check_latents(x)
        t = self._timesteps(t, b, f, x.device)
        ctx = self._context(context, b)
        tokens = self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)
        e = mlp32(self.time_embedding, sinusoidal_embedding(t, self.config.freq_dim))
        e0 = mlp32(self.time_projection, e).unflatten(-1, (6, self.config.dim))
        return tokens, e, e0, ctx, (f, h, w)

    def _run(self, tokens, e, e0, ctx, grid, attend_for_layer, out_shape):
        f, h, w = grid
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, ctx.k[i], ctx.v[i], partial(attend_for_layer, i))
        y = self.head(tokens, e)  # [B, F*h*w, prod(patch) * out]
        _, ph, pw = self.config.patch_size
        b = y.shape[0]
        y = y.view(b, f, h, w, ph, pw, self.config.out_dim).permute(0, 6, 1, 2, 4, 3, 5)
        return y.reshape(out_shape)

    def _bind(self, memory, tokens_per_frame: int) -> None:
        if len(memory) != len(self.blocks):
            raise ValueError(f"memory has {len(memory)} layers, the model has {len(self.blocks)}")
        first = memory[0]
        if first.rope is not self.rope or first.tokens_per_frame != tokens_per_frame:
            memory.bind(self.rope, tokens_per_frame)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t, context, memory=None, start_frame: int = 0,
                write_memory: bool = False, attn_mask=None, positions=None) -> torch.Tensor:
        """Flow prediction v [B, out_dim, F, H, W] for latents x [B, in_dim, F, H, W].

        t: timesteps in [0, 1000], scalar / [B] / [B, F] (one per latent frame).
        context: a TextContext (from ``encode_text``) or raw [B, L, text_dim] text states.
        memory=None: attend over the given frames at temporal positions start_frame.., with
        ``attn_mask`` (None = bidirectional, bool [L, L] with True = attend, or a BlockMask).
        memory=MemoryStack: the chunk starting at ``start_frame`` attends to each layer's memory
        view plus itself (bidirectionally); ``write_memory`` hands its K/V to the memory afterwards.
        positions: memory-free forwards only; explicit temporal positions, one per frame (a
        sequence or a float tensor [F]) instead of start_frame.. -- training on memory-shaped
        contexts whose frames are not contiguous.
        """
        if memory is None and write_memory:
            raise ValueError("write_memory=True needs a memory to write to")
        if memory is not None and attn_mask is not None:
            raise ValueError("attn_mask is for memory-free forwards; with memory the policy's view decides")
        tokens, e, e0, ctx, (f, h, w) = self._embed(x, t, context)
        n = tokens.shape[1]
        if attn_mask is not None:
            shape = tuple(attn_mask.shape[-2:])
            if shape != (n, n):
                raise ValueError(f"attn_mask covers {shape} query/key tokens, the input has {n} tokens")
        if positions is not None:
            if memory is not None:
                raise ValueError("positions are for memory-free forwards; with memory the policy assigns them")
            count = positions.numel() if isinstance(positions, torch.Tensor) else len(positions)
            if count != f:
                raise ValueError(f"positions gives {count} temporal positions for {f} frames")
        if memory is None:
            if positions is None:
                positions = tuple(float(start_frame + i) for i in range(f))
            attend = partial(self._attend_plain, positions=positions, mask=attn_mask, hw=(h, w))
        else:
            self._bind(memory, h * w)
            attend = partial(self._attend_memory, memory=memory, ctx=ctx, start=start_frame,
                             num_frames=f, write=write_memory, hw=(h, w))
        out_shape = (x.shape[0], self.config.out_dim, *x.shape[2:])
        return self._run(tokens, e, e0, ctx, (f, h, w), attend, out_shape)

    def _attend_plain(self, i, q, k, v, *, positions, mask, hw):
        freqs = self.rope.freqs(positions, *hw, q.device)
        return attention(apply_rotary(q, freqs), apply_rotary(k, freqs), v, mask)

    def _attend_memory(self, i, q, k, v, *, memory, ctx, start, num_frames, write, hw):
        mem = memory[i]
        rope = self.rope
        q_query = None
        if mem.needs_queries:  # ChunkQuery.q carries the spatial phase, no temporal phase
            q_query = apply_rotary(q, rope.freqs(None, *hw, q.device))
        view = mem.view(ChunkQuery(start=start, num_frames=num_frames, q=q_query,
                                   context_k=ctx.k[i] if mem.needs_context else None))
        pos = view.query_positions if view is not None else tuple(float(start + j) for j in range(num_frames))
        freqs = rope.freqs(pos, *hw, q.device)
        qr = apply_rotary(q, freqs)
        mask = None
        if view is None:
            k_all, v_all = apply_rotary(k, freqs), v
        elif view.chunk_tokens == k.shape[1] and view.k_all.dtype == k.dtype:
            apply_rotary(k, freqs, out=view.chunk_k)  # the chunk's keys and values go behind the memory
            view.chunk_v.copy_(v)
            k_all, v_all, mask = view.k_all, view.v_all, view.attn_mask
        else:  # a view without room for this chunk
            k_all = torch.cat([view.k.to(k.dtype), apply_rotary(k, freqs)], dim=1)
            v_all = torch.cat([view.v.to(v.dtype), v], dim=1)
            mask = view.attn_mask
        out = attention(qr, k_all, v_all, mask)
        if write:  # keys handed to the memory carry the spatial phase only
            mem.insert(apply_rotary(k, rope.freqs(None, *hw, k.device)), v, start)
        return out

    # -- prompt switch (LongLive KV-recache) ------------------------------------------------------
    @torch.no_grad()
    def recache(self, x_clean: torch.Tensor, context, memory, frames: list[int],
                attend_held: bool = True, t: float = 0.0) -> None:
        """Recompute the K/V of ``frames`` (clean latents [B, C, len(frames), H, W]) under a new
        prompt at timestep ``t`` (LongLive's ``context_noise``, 0 by default) and write them back
        with ``memory[i].replace``.

        As in LongLive v1.0 (``_recache_after_switch``: one cached forward over the recached
        frames, no mask), the recached frames attend to each other bidirectionally at their true
        frame positions. With ``attend_held`` they also see, with their old K/V and at their true
        positions, the frames the memory holds individually but does not recache: LongLive's
        ``global_sink: true`` keeps the sink this way. Those frames come from the layer's
        ``held_slots()`` where the policy defines it, else from ``frame_slots()``. Merged
        summaries are not seen. Returns nothing.
        """
        frames = [int(fr) for fr in frames]
        if x_clean.dim() != 5 or x_clean.shape[2] != len(frames):
            raise ValueError(f"recache: x_clean must hold one latent frame per frame index "
                             f"({len(frames)}), got shape {tuple(x_clean.shape)}")
        if len(frames) == 0:
            return
        if sorted(set(frames)) != frames:
            raise ValueError(f"recache: frames must be distinct and increasing, got {frames}")
        tokens, e, e0, ctx, (f, h, w) = self._embed(x_clean, t, context)
        self._bind(memory, h * w)
        attend = partial(self._attend_recache, memory=memory, frames=frames, attend_held=attend_held, hw=(h, w))
        out_shape = (x_clean.shape[0], self.config.out_dim, *x_clean.shape[2:])
        self._run(tokens, e, e0, ctx, (f, h, w), attend, out_shape)

    def _attend_recache(self, i, q, k_raw, v, *, memory, frames, attend_held, hw):
        mem = memory[i]
        pos = tuple(float(fr) for fr in frames)
        freqs = self.rope.freqs(pos, *hw, q.device)
        q = apply_rotary(q, freqs)
        k = apply_rotary(k_raw, freqs)
        k_unrot = apply_rotary(k_raw, self.rope.freqs(None, *hw, k_raw.device))
        v_all = v
        if attend_held:  # `held_slots` (every individually held frame) where a policy offers it
            slots = mem.held_slots()
            recached = set(frames)
            keep = [fr for fr in sorted(slots) if fr not in recached]
            if keep:
                old_k = torch.cat([slots[fr][0].k[:, slots[fr][1]] for fr in keep], dim=1)
                old_v = torch.cat([slots[fr][0].v[:, slots[fr][1]] for fr in keep], dim=1)
                old_k = self.rope.rotate_temporal(old_k, tuple(float(fr) for fr in keep))
                k = torch.cat([old_k.to(k.dtype), k], dim=1)
                v_all = torch.cat([old_v.to(v.dtype), v], dim=1)
        out = attention(q, k, v_all)
        mem.replace(k_unrot, v, frames)
        return out
