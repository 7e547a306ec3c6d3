"""The optimised hot path (fused RoPE table, attention buffers in the memory view, one-kernel
elementwise steps) against the plain computation, on CPU at a tiny config: float32 to 1e-5, bf16
to bf16 tolerance.

Reference 1: the masked full-sequence forward (memory-free path) that a chunk-wise run with
``full`` / ``sink`` memory must reproduce. Reference 2: the previous unfused formulation of the
memory attention, kept here as ``old_attend_memory`` (spatial phase, then temporal phase in
separate float32 passes, ``torch.cat`` of memory and chunk every forward), swapped into the model.
"""

from __future__ import annotations

import types

import pytest
import torch

from fademem.memory import ChunkQuery, MemoryStack, build_memory
from fademem.rope import WanRoPE, apply_rotary
from fademem.wan.model import CausalWanModel, WanConfig, attention, block_causal_mask, sink_window_mask

CFG = WanConfig.tiny()
H = W = 8
TPF = (H // 2) * (W // 2)
FPC = 3


def make_model(dtype=torch.float32, seed: int = 0) -> CausalWanModel:
    torch.manual_seed(seed)
    model = CausalWanModel(CFG).eval().requires_grad_(False)
    with torch.no_grad():  # move norms and modulations off their trivial init
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 + 0.2 * torch.randn_like(p)) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif "modulation" in name:
                p.normal_(0.0, 0.3)
    return model.to(dtype)


def inputs(frames: int, seed: int = 1, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CFG.in_dim, frames, H, W, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    text = torch.randn(batch, 7, CFG.text_dim, generator=g)
    return x, t, text


def old_attend_memory(self, i, q, k, v, *, memory, ctx, start, num_frames, write, hw):
    """The unfused formulation the fast path replaced (reference only)."""
    rope = self.rope
    q = rope.rotate_spatial(q, *hw)
    k_unrot = rope.rotate_spatial(k, *hw)
    mem = memory[i]
    view = mem.view(ChunkQuery(start=start, num_frames=num_frames, q=q if mem.needs_queries else None,
                               context_k=ctx.k[i] if mem.needs_context else None))
    pos = view.query_positions if view is not None else tuple(float(start + j) for j in range(num_frames))
    qr = rope.rotate_temporal(q, pos)
    kr = rope.rotate_temporal(k_unrot, pos)
    mask = None
    v_all = v
    if view is not None:
        # the stored keys re-encoded the old way, from the memory's own (unrotated) keys
        k_mem = rope.rotate_temporal(rope.rotate_temporal(view.k, view.positions, inverse=True), view.positions)
        kr = torch.cat([k_mem.to(kr.dtype), kr], dim=1)
        v_all = torch.cat([view.v.to(v.dtype), v], dim=1)
        mask = view.attn_mask
    out = attention(qr, kr, v_all, mask)
    if write:
        mem.insert(k_unrot, v, start)
    return out


@torch.no_grad()
def run_chunks(model, x, t, ctx, spec, denoise_forwards: int = 2):
    """Pipeline-shaped run: per chunk some read-only forwards (the denoising steps, here on
    perturbed inputs) and the cache-writing forward; returns the write-pass outputs and the
    outputs of every read-only forward."""
    stack = MemoryStack(spec, CFG.num_layers)
    writes, reads = [], []
    for c in range(x.shape[2] // FPC):
        sl = slice(c * FPC, (c + 1) * FPC)
        xc, tc = x[:, :, sl], t[:, sl]
        for s in range(denoise_forwards):
            reads.append(model(xc * (1 + 0.1 * s), tc, ctx, memory=stack, start_frame=c * FPC))
        writes.append(model(xc, tc, ctx, memory=stack, start_frame=c * FPC, write_memory=True))
    return torch.cat(writes, 2), reads


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# -- RoPE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fused_rope_matches_separate_passes(dtype, tol):
    rope = WanRoPE(CFG.head_dim)
    pos = (3.0, 7.25, 11.0)
    x = torch.randn(2, 3 * 20, 4, CFG.head_dim).to(dtype)
    ref = rope.rotate_temporal(rope.rotate_spatial(x.float(), 4, 5), pos)
    fused = apply_rotary(x, rope.freqs(pos, 4, 5, x.device))
    assert fused.dtype == dtype
    assert rel(fused, ref) < tol
    spatial = apply_rotary(x, rope.freqs(None, 4, 5, x.device))
    assert rel(spatial, rope.rotate_spatial(x.float(), 4, 5)) < tol
    temporal = apply_rotary(x, rope.temporal_freqs(pos, x.device).expand(-1, 20, -1))
    assert rel(temporal, rope.rotate_temporal(x.float(), pos)) < tol
    out = torch.full_like(x, float("nan"))  # every element of an `out` buffer is written
    apply_rotary(x, rope.freqs(pos, 4, 5, x.device), out=out)
    assert torch.equal(out, fused)


# -- the whole model -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,mask", [("full", None), ("sink:budget=4,sink=1", (4, 1))])
def test_chunked_fast_path_matches_masked_full_sequence_forward(spec, mask):
    model = make_model()
    x, t, text = inputs(frames=12, seed=3)
    ctx = model.encode_text(text)
    m = block_causal_mask(12, FPC, TPF) if mask is None else sink_window_mask(12, FPC, TPF, *mask)
    with torch.no_grad():
        ref = model(x, t, ctx, attn_mask=m)
    out, _ = run_chunks(model, x, t, ctx, spec)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    # bf16 fast path against the float32 reference: bf16 tolerance
    mb = make_model(torch.bfloat16)
    out_b, _ = run_chunks(mb, x, t, mb.encode_text(text), spec)
    assert out_b.dtype == torch.bfloat16
    assert rel(out_b, ref) < 2e-2


@pytest.mark.parametrize("spec", ["fademem:budget=4", "fademem:budget=4,preset=release", "window:budget=5",
                                  "memrope"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fast_path_matches_unfused_formulation(spec, dtype, tol):
    x, t, text = inputs(frames=15, seed=5)
    fast = make_model(dtype)
    ctx = fast.encode_text(text)
    out_fast, reads_fast = run_chunks(fast, x, t, ctx, spec)
    old = make_model(dtype)
    old._attend_memory = types.MethodType(old_attend_memory, old)
    out_old, reads_old = run_chunks(old, x, t, old.encode_text(text), spec)
    if dtype == torch.float32:
        torch.testing.assert_close(out_fast, out_old, atol=tol, rtol=tol)
        for a, b in zip(reads_fast, reads_old):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    else:
        assert rel(out_fast, out_old) < tol
        assert max(rel(a, b) for a, b in zip(reads_fast, reads_old)) < tol
        ref, _ = run_chunks(make_model(), x, t, make_model().encode_text(text), spec)
        assert rel(out_fast, ref) < tol


def test_recache_fast_path_matches_unfused():
    """The prompt-switch pass (memory-free attention over the recached and held frames)."""
    model = make_model()
    x, t, text = inputs(frames=9, seed=7)
    ctx = model.encode_text(text)
    stacks = []
    for _ in range(2):
        stack = MemoryStack("sink:budget=6,sink=1", CFG.num_layers)
        with torch.no_grad():
            for c in range(3):
                sl = slice(c * FPC, (c + 1) * FPC)
                model(x[:, :, sl], t[:, sl], ctx, memory=stack, start_frame=c * FPC, write_memory=True)
        stacks.append(stack)
    frames = stacks[0].policy.recache_frames(12)
    x_clean = x[:, :, frames]
    model.recache(x_clean, ctx, stacks[0], frames)
    rope = model.rope

    def old_recache(self, i, q, k, v, *, memory, frames, attend_held, hw):
        mem = memory[i]
        q, k_unrot = rope.rotate_spatial(q, *hw), rope.rotate_spatial(k, *hw)
        pos = tuple(float(fr) for fr in frames)
        q, k = rope.rotate_temporal(q, pos), rope.rotate_temporal(k_unrot, pos)
        slots = mem.held_slots()
        keep = [fr for fr in sorted(slots) if fr not in set(frames)]
        v_all = v
        if keep:
            old_k = torch.cat([slots[fr][0].k[:, slots[fr][1]] for fr in keep], dim=1)
            old_v = torch.cat([slots[fr][0].v[:, slots[fr][1]] for fr in keep], dim=1)
            k = torch.cat([rope.rotate_temporal(old_k, tuple(float(fr) for fr in keep)), k], 1)
            v_all = torch.cat([old_v, v], 1)
        out = attention(q, k, v_all)
        mem.replace(k_unrot, v, frames)
        return out

    ref_model = make_model()
    ref_model._attend_recache = types.MethodType(old_recache, ref_model)
    ref_model.recache(x_clean, ctx, stacks[1], frames)
    for a, b in zip(stacks[0], stacks[1]):
        torch.testing.assert_close(a.store.k, b.store.k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.store.v, b.store.v, atol=1e-5, rtol=1e-5)


# -- the view's attention buffers ------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["fademem:budget=4", "sink:budget=4,sink=1", "window:budget=3", "full", "memrope"])
def test_view_buffers_hold_memory_then_room_for_the_chunk(spec):
    rope = WanRoPE(CFG.head_dim)
    mem = build_memory(spec).bind(rope, TPF)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        k = torch.randn(2, FPC * TPF, 4, CFG.head_dim, generator=g)
        mem.insert(k, torch.randn(k.shape, generator=g), c * FPC)
    view = mem.view(ChunkQuery(start=3 * FPC, num_frames=FPC))
    assert view.chunk_tokens == FPC * TPF
    assert view.k_all.shape[1] == view.k.shape[1] + FPC * TPF == view.v_all.shape[1]
    assert view.k.data_ptr() == view.k_all.data_ptr() and view.v.data_ptr() == view.v_all.data_ptr()
    assert torch.equal(view.k_all[:, :view.tokens], view.k)
    before = view.k.clone(), view.v.clone()
    view.chunk_k.fill_(1.0)  # the model writes the chunk here every forward: memory untouched
    view.chunk_v.fill_(2.0)
    assert torch.equal(view.k, before[0]) and torch.equal(view.v, before[1])
    assert mem.view(ChunkQuery(start=3 * FPC, num_frames=FPC)) is view  # cached for the chunk
    # the keys are the stored keys rotated the old way (rotate_temporal), values as stored
    k_st, v_st = mem.store.frames(len(view.positions))
    torch.testing.assert_close(view.k, rope.rotate_temporal(k_st, view.positions), atol=1e-6, rtol=1e-6)
    assert torch.equal(view.v, v_st)


def test_time_mlp_float32_cache_follows_weight_updates():
    model = make_model(torch.bfloat16)
    x, t, text = inputs(frames=3)
    ctx = model.encode_text(text)
    with torch.no_grad():
        a = model(x, t, ctx)
        model.time_projection[1].weight.mul_(0.5)  # in-place update: the cached float32 copy must follow
        b = model(x, t, ctx)
        fresh = make_model(torch.bfloat16)
        fresh.time_projection[1].weight.mul_(0.5)
        c = fresh(x, t, fresh.encode_text(text))
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, c, atol=0, rtol=0)


# -- torch.compile: dense parts compile once for every block and every forward ---------------------
def test_block_compiles_once_for_all_layers_and_forwards():
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    model = make_model()
    x, t, text = inputs(frames=9, seed=2)
    ctx = model.encode_text(text)
    dynamo.reset()
    counters.clear()
    for blk in model.blocks:
        blk.compile(backend="eager", dynamic=False)
    try:
        for spec in ("fademem:budget=4", "sink:budget=4,sink=1"):
            run_chunks(model, x, t, ctx, spec, denoise_forwards=2)
        recompiles = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
        frames = counters["stats"]["unique_graphs"]
    finally:
        for blk in model.blocks:
            blk._compiled_call_impl = None
        dynamo.reset()
    # one graph before and one after the (compile-disabled) memory attention, for the no-memory
    # first chunk and the memory chunks alike; nothing per layer or per forward
    assert frames <= 4, dict(counters["stats"])
    assert recompiles == 0, dict(counters["recompiles"])
