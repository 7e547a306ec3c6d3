"""The causal Wan DiT: architecture (vs diffusers), causality with memories, parameter count, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fademem.memory import MemoryStack
from fademem.wan.checkpoints_names import diffusers_to_original, original_to_diffusers
from fademem.wan.model import (
    CausalWanModel,
    TextContext,
    WanConfig,
    block_causal_mask,
    flex_block_causal_mask,
    sink_window_mask,
    sinusoidal_embedding,
)

CFG = WanConfig.tiny()
H = W = 8  # latent size -> 4x4 = 16 tokens per frame
TPF = (H // 2) * (W // 2)


def make_model(seed: int = 0, cfg: WanConfig = CFG) -> CausalWanModel:
    torch.manual_seed(seed)
    model = CausalWanModel(cfg).eval()
    with torch.no_grad():  # move norms and modulations off their trivial init so names matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 + 0.2 * torch.randn_like(p)) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif "modulation" in name:
                p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    return make_model()


def inputs(frames: int, seed: int = 1, batch: int = 1, text_tokens: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CFG.in_dim, frames, H, W, generator=g)
    t = torch.rand(batch, frames, generator=g) * 1000
    text = torch.randn(batch, text_tokens, CFG.text_dim, generator=g)
    return x, t, text


# -- architecture ------------------------------------------------------------------------------
def test_param_count_1_3b_on_meta():
    with torch.device("meta"):
        m = CausalWanModel.from_config(WanConfig.wan_1_3b())
    sd = m.state_dict()
    assert len(sd) == 825
    assert sum(v.numel() for v in sd.values()) == 1_418_996_800 == m.num_parameters()
    assert not list(m.buffers())
    assert "blocks.29.self_attn.norm_q.weight" in sd and "blocks.0.norm3.bias" in sd
    assert sd["blocks.0.modulation"].shape == (1, 6, 1536) and sd["head.modulation"].shape == (1, 2, 1536)
    assert sd["head.head.weight"].shape == (64, 1536) and "time_projection.1.weight" in sd
    assert not any(k.startswith(("blocks.0.norm1", "blocks.0.norm2", "head.norm")) for k in sd)


def test_configs():
    c = WanConfig.wan_14b()
    assert (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.head_dim) == (5120, 13824, 40, 40, 128)
    assert WanConfig.tiny(num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match="num_heads"):
        WanConfig.tiny(num_heads=5)


def diffusers_model(cfg: WanConfig):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads", eps=cfg.eps).eval()


def test_name_conversion_matches_diffusers_converter(model):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = model.state_dict()
    ours = original_to_diffusers(sd)
    theirs = convert_wan_transformer_to_diffusers(dict(sd))
    assert ours.keys() == theirs.keys() == diffusers_model(CFG).state_dict().keys()
    assert all(ours[k] is theirs[k] for k in ours)
    back = diffusers_to_original(theirs)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    with pytest.raises(ValueError, match="img_emb"):
        original_to_diffusers({**sd, "img_emb.proj.0.weight": torch.zeros(1)})
    assert "img_emb.proj.0.weight" in original_to_diffusers({**sd, "img_emb.proj.0.weight": torch.zeros(1)},
                                                            strict=False)


def test_sinusoid_matches_diffusers():
    from diffusers.models.embeddings import Timesteps

    t = torch.tensor([0.0, 1.0, 250.0, 625.0, 937.5, 1000.0])
    ref = Timesteps(CFG.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    ours = sinusoidal_embedding(t, CFG.freq_dim)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), ref, atol=2e-4, rtol=0)  # diffusers works in float32


def test_rope_matches_diffusers(model):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    f, h, w = 5, 4, 4
    cos, sin = WanRotaryPosEmbed(CFG.head_dim, CFG.patch_size, 1024)(torch.zeros(1, 16, f, 2 * h, 2 * w))
    x = torch.randn(2, f * h * w, CFG.num_heads, CFG.head_dim, dtype=torch.float64)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    ref = torch.stack((x1 * cos[..., 0::2] - x2 * sin[..., 1::2], x1 * sin[..., 1::2] + x2 * cos[..., 0::2]), -1)
    ours = model.rope.rotate(x.float(), list(range(f)), h, w)
    torch.testing.assert_close(ours, ref.flatten(-2).float(), atol=1e-5, rtol=1e-5)


def test_matches_diffusers_bidirectional(model):
    ref = diffusers_model(CFG)
    ref.load_state_dict(original_to_diffusers(model.state_dict()), strict=True)
    # Wan computes the sinusoid in float64, diffusers in float32: give diffusers Wan's.
    ref.condition_embedder.timesteps_proj.forward = lambda t: sinusoidal_embedding(t, CFG.freq_dim).float()
    x, t, text = inputs(frames=4, batch=2)
    padded = torch.nn.functional.pad(text, (0, 0, 0, CFG.text_len - text.shape[1]))
    with torch.no_grad():
        ours = model(x, t, text)
        theirs = ref(x, t.repeat_interleave(TPF, dim=1), padded, return_dict=False)[0]
        ours_same_t = model(x, t[:, 0], text)
        theirs_same_t = ref(x, t[:, 0], padded, return_dict=False)[0]
    assert ours.shape == (2, CFG.out_dim, 4, H, W)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_same_t, theirs_same_t, atol=1e-5, rtol=1e-5)


def test_text_context(model):
    x, t, text = inputs(frames=2)
    ctx = model.encode_text(text)
    assert isinstance(ctx, TextContext) and ctx.embedding.shape == (1, CFG.text_len, CFG.dim)
    assert len(ctx.k) == CFG.num_layers and ctx.k[0].shape == (1, CFG.text_len, CFG.num_heads, CFG.head_dim)
    padded = torch.cat([text, torch.zeros(1, CFG.text_len - text.shape[1], CFG.text_dim)], 1)
    with torch.no_grad():
        a, b, c = model(x, t, ctx), model(x, t, text), model(x, t, padded)
        d = model(x.expand(2, -1, -1, -1, -1), t.expand(2, -1), ctx)  # batch-1 context broadcasts
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(d[1:], a, atol=1e-6, rtol=1e-6)


# -- causality and memory -------------------------------------------------------------------------
def chunked(model, x, t, ctx, spec: str, fpb: int = 3):
    """Generation-style: per chunk a read-only forward, then the cache-writing pass."""
    mem = MemoryStack(spec, CFG.num_layers)
    outs = []
    for s in range(0, x.shape[2], fpb):
        xc, tc = x[:, :, s:s + fpb], t[:, s:s + fpb]
        out = model(xc, tc, ctx, memory=mem, start_frame=s)
        again = model(xc, tc, ctx, memory=mem, start_frame=s, write_memory=True)
        torch.testing.assert_close(out, again, atol=0, rtol=0)
        outs.append(out)
    assert mem.frames_seen == x.shape[2]
    return outs


@torch.no_grad()
def test_full_memory_equals_block_causal_forward(model):
    x, t, text = inputs(frames=9, seed=3)
    ctx = model.encode_text(text)
    ref = model(x, t, ctx, attn_mask=block_causal_mask(9, 3, TPF))
    for i, out in enumerate(chunked(model, x, t, ctx, "full")):
        torch.testing.assert_close(out, ref[:, :, 3 * i:3 * i + 3], atol=1e-5, rtol=1e-5)
    # the mask matters: a bidirectional forward differs in the first chunk
    assert (model(x, t, ctx)[:, :, :3] - ref[:, :, :3]).abs().max() > 1e-3


@torch.no_grad()
def test_sink_memory_equals_sink_window_forward(model):
    x, t, text = inputs(frames=12, seed=4)
    ctx = model.encode_text(text)
    ref = model(x, t, ctx, attn_mask=sink_window_mask(12, 3, TPF, budget=4, sink=1))
    for i, out in enumerate(chunked(model, x, t, ctx, "sink:budget=4,sink=1")):
        torch.testing.assert_close(out, ref[:, :, 3 * i:3 * i + 3], atol=1e-5, rtol=1e-5)
    causal = model(x, t, ctx, attn_mask=block_causal_mask(12, 3, TPF))
    assert (causal[:, :, 9:] - ref[:, :, 9:]).abs().max() > 1e-3  # the window really drops frames


@torch.no_grad()
def test_flex_block_mask_matches_dense(model):
    x, t, text = inputs(frames=6, seed=5)
    ctx = model.encode_text(text)
    dense = model(x, t, ctx, attn_mask=block_causal_mask(6, 3, TPF))
    flex = model(x, t, ctx, attn_mask=flex_block_causal_mask(6, 3, TPF))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    mem_out = chunked(model, x, t, ctx, "full")
    torch.testing.assert_close(torch.cat(mem_out, 2), flex, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_start_frame_shifts_only_absolute_position(model):
    x, t, text = inputs(frames=3, seed=6)
    ctx = model.encode_text(text)
    a, b = model(x, t, ctx, start_frame=0), model(x, t, ctx, start_frame=17)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # RoPE is relative inside one forward


def stored(mem: MemoryStack, frames):
    out = []
    for layer in mem:
        slots = layer.frame_slots()
        out.append(torch.cat([slots[f][0].k[:, slots[f][1]] for f in frames] +
                             [slots[f][0].v[:, slots[f][1]] for f in frames], 1).clone())
    return out


@torch.no_grad()
def test_recache_same_prompt_is_identity(model):
    x, _, text = inputs(frames=6, seed=7)
    ctx = model.encode_text(text)
    mem = MemoryStack("full", CFG.num_layers)
    for s in (0, 3):  # clean cache-writing passes at t=0, as the pipeline does
        model(x[:, :, s:s + 3], 0.0, ctx, memory=mem, start_frame=s, write_memory=True)
    before = stored(mem, [3, 4, 5])
    model.recache(x[:, :, 3:6], ctx, mem, [3, 4, 5])  # sees held frames 0-2 + itself: the same pass
    for a, b in zip(before, stored(mem, [3, 4, 5])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _, _, other = inputs(frames=6, seed=8)
    model.recache(x[:, :, 3:6], other, mem, [3, 4, 5])
    assert (before[1] - stored(mem, [3, 4, 5])[1]).abs().max() > 1e-3
    assert mem.frames_seen == 6
    out = model(x[:, :, :3], 500.0, other, memory=mem, start_frame=6)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_recache_sees_the_sink(model):
    x, _, text = inputs(frames=6, seed=10)
    ctx = model.encode_text(text)
    mem = MemoryStack("sink:budget=6,sink=1", CFG.num_layers)
    for s in (0, 3):
        model(x[:, :, s:s + 3], 0.0, ctx, memory=mem, start_frame=s, write_memory=True)
    frames = mem[0].recache_frames(3)
    assert frames == [3, 4, 5]
    before = stored(mem, frames)
    model.recache(x[:, :, 3:6], ctx, mem, frames)  # the sink (frame 0) keeps its K/V and is seen
    for a, b in zip(before, stored(mem, frames)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_low_precision_runs():
    m = make_model(cfg=CFG).to(torch.bfloat16)
    x, t, text = inputs(frames=6, seed=9)
    mem = MemoryStack("sink:budget=4,sink=1", CFG.num_layers)
    for s in (0, 3):
        out = m(x[:, :, s:s + 3], t[:, s:s + 3], text, memory=mem, start_frame=s, write_memory=True)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    ref = make_model(cfg=CFG)(x, t, text, attn_mask=sink_window_mask(6, 3, TPF, 4, 1))
    assert (out.float() - ref[:, :, 3:]).abs().max() < 0.1 * ref.abs().max()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda x, t, c: (x[:, :8], t, c), "channels"),
    (lambda x, t, c: (x, t[:, :2], c), "t must be"),
    (lambda x, t, c: (x, torch.zeros(2, 3), c), "t must be"),
    (lambda x, t, c: (x, t, torch.zeros(1, 4, CFG.text_dim + 1)), "text_dim"),
    (lambda x, t, c: (x, t, torch.zeros(1, CFG.text_len + 1, CFG.text_dim)), "text_len"),
    (lambda x, t, c: (x[..., :7], t, c), "multiples of the patch"),
    (lambda x, t, c: (x[0], t, c), "frames, height, width"),
])
def test_bad_inputs(model, make, match):
    x, t, text = inputs(frames=3)
    with pytest.raises(ValueError, match=match):
        model(*make(x, t, text))


def test_bad_memory_and_mask(model):
    x, t, text = inputs(frames=3)
    with pytest.raises(ValueError, match="layers"):
        model(x, t, text, memory=MemoryStack("full", CFG.num_layers + 1))
    with pytest.raises(ValueError, match="attn_mask"):
        model(x, t, text, memory=MemoryStack("full", CFG.num_layers), attn_mask=block_causal_mask(3, 3, TPF))
    with pytest.raises(ValueError, match="write_memory"):
        model(x, t, text, write_memory=True)
    with pytest.raises(ValueError, match="attn_mask covers"):
        model(x, t, text, attn_mask=block_causal_mask(4, 3, TPF))
    with pytest.raises(ValueError, match="sink"):
        sink_window_mask(6, 3, TPF, budget=2, sink=3)
    assert math.prod(block_causal_mask(2, 1, 3).shape) == 36


@torch.no_grad()
def test_model_built_under_a_device_context_keeps_rope_tables_on_the_host():
    # Regression: `with torch.device("cuda"): CausalWanModel(cfg)` once put RoPE frequency tables
    # on the device and every memory forward then mixed devices. "meta" stands in for the GPU here.
    cfg = WanConfig.tiny()
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    assert model.rope.inv_t.device.type == "cpu"
    x = torch.randn(1, cfg.in_dim, 3, 4, 4, device="meta")
    ctx = model.encode_text(torch.randn(1, 8, cfg.text_dim, device="meta"))
    stack = MemoryStack("fademem", cfg.num_layers)
    for start in (0, 3):
        out = model(x, torch.zeros(1, 3, device="meta"), ctx, memory=stack, start_frame=start, write_memory=True)
    assert out.device.type == "meta"


def test_training_backward_under_bf16_autocast():
    """The hot path's single-kernel out= forms step aside when gradients are needed."""
    torch.manual_seed(0)
    model = CausalWanModel(WanConfig.tiny())
    x, ctx = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, torch.tensor([500.0]), ctx).float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.blocks[0].parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference keeps the fused forms
        assert torch.isfinite(model(x, torch.tensor([500.0]), ctx)).all()
