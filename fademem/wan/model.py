"""The causal Wan2.1 DiT (Self-Forcing / LongLive / FadeMem backbone).

This module assembles the model (``CausalWanModel``: embedding, blocks, head; the forward with or
without a memory; the prompt-switch recache). Its configuration is in ``fademem.wan.config``, the
layers (norms, modulation, attention, ``Block``, ``Head``) in ``fademem.wan.layers`` and the masks
for full-sequence forwards in ``fademem.wan.masks``; all their names are re-exported here.

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

Gradient checkpointing (training only, off by default: ``enable_gradient_checkpointing()``): with
autograd recording, each block runs under ``torch.utils.checkpoint`` (non-reentrant) and is recomputed
in the backward pass. The recompute of a memory forward asks the policy for nothing: it reuses the
view object the forward got (kept per forward), so it writes the same rotated keys and values into
the same attention buffer again and a query-aware policy does not select twice. A cache-writing
forward (``write_memory=True``) would hand its K/V to the memory a second time in the recompute, so
it is refused while checkpointing is on and autograd records (the inference path, under no_grad, is
untouched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fademem.memory.base import ChunkQuery
from fademem.rope import WanRoPE, apply_rotary

# The configuration, the layers and the masks live in their own modules; every name this module
# had before the split is re-exported here (``from fademem.wan.model import attention`` etc.).
from fademem.wan.config import WanConfig  # noqa: F401
from fademem.wan.layers import (  # noqa: F401
    _F32_CACHE,
    Attention,
    Block,
    CrossAttention,
    Head,
    LayerNorm32,
    RMSNorm,
    SelfAttention,
    _call_attend,
    _f32,
    _needs_grad,
    attention,
    flex_attention_fn,
    gated_add,
    mlp32,
    modulate,
    sinusoidal_embedding,
)
from fademem.wan.masks import _frame_ok, block_causal_mask, flex_block_causal_mask, sink_window_mask  # noqa: F401


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
        self.gradient_checkpointing = False  # enable_gradient_checkpointing(); only while autograd records

    def enable_gradient_checkpointing(self, on: bool = True) -> CausalWanModel:
        """Recompute each block in the backward pass instead of keeping its activations (training; the
        module docstring says how it meets the memory). Forwards under no_grad are unaffected."""
        self.gradient_checkpointing = bool(on)
        return self

    def _checkpointing(self) -> bool:
        return getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled()

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
        if self._checkpointing():  # no dropout or other randomness in a block: no RNG state to keep
            for i, block in enumerate(self.blocks):
                tokens = checkpoint(block, tokens, e0, ctx.k[i], ctx.v[i], partial(attend_for_layer, i),
                                    use_reentrant=False, preserve_rng_state=False)
        else:
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
        if write_memory and self._checkpointing():
            raise ValueError("write_memory=True with gradient checkpointing while autograd records: the backward "
                             "pass's recompute would hand the chunk's K/V to the memory twice; write the memory "
                             "under torch.no_grad() (as the sampler does), or enable_gradient_checkpointing(False)")
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
            if self._checkpointing():  # the forward's views, for the recompute (module docstring)
                attend = partial(attend, views={})
        out_shape = (x.shape[0], self.config.out_dim, *x.shape[2:])
        return self._run(tokens, e, e0, ctx, (f, h, w), attend, out_shape)

    def _attend_plain(self, i, q, k, v, *, positions, mask, hw):
        freqs = self.rope.freqs(positions, *hw, q.device)
        return attention(apply_rotary(q, freqs), apply_rotary(k, freqs), v, mask)

    def _view_of(self, mem, i, q, ctx, start, num_frames, hw):
        q_query = None
        if mem.needs_queries:  # ChunkQuery.q carries the spatial phase, no temporal phase
            q_query = apply_rotary(q, self.rope.freqs(None, *hw, q.device))
        return mem.view(ChunkQuery(start=start, num_frames=num_frames, q=q_query,
                                   context_k=ctx.k[i] if mem.needs_context else None))

    def _attend_memory(self, i, q, k, v, *, memory, ctx, start, num_frames, write, hw, views=None):
        mem = memory[i]
        rope = self.rope
        if views is None:
            view = self._view_of(mem, i, q, ctx, start, num_frames, hw)
        elif i in views:  # checkpointing's recompute: the forward's own view (the policy is asked once)
            view = views[i]
        else:  # checkpointing: a view carries no gradient (its K/V are the memory's; queries only select)
            with torch.no_grad():
                view = views[i] = self._view_of(mem, i, q, ctx, start, num_frames, hw)
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
