"""The K/V compressor, its two training stages and the ``compressor`` memory policy (issue 8).

CPU, tiny configs: plumbing, exact equivalences and bounds, not compression quality (that is
benchmarks/compressor_rates.py and ``fademem bench memory`` on a GPU).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fademem.compressor import kv as KV
from fademem.compressor import train as CT
from fademem.memory import ChunkQuery, MemoryStack, build_memory
from fademem.memory import compressor as MC
from fademem.pipeline import VideoPipeline, generator_for_memory
from fademem.wan.fingerprint import weights_digest
from fademem.wan.model import CausalWanModel, WanConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = "compressor:window=3,budget=2,channels=8-16,allow_random=true"


def kv_cfg(rate="2x2x1", layers=2, **kw) -> KV.KVCompressorConfig:
    return KV.KVCompressorConfig(**{**dict(layers=layers, heads=4, head_dim=16, grid=(4, 4), rate=rate,
                                           channels=(8, 16), hidden=16), **kw})


def trained_like(cfg, seed=0) -> KV.KVCompressor:
    """A compressor whose heads are not zero (an untrained one is plain averaging)."""
    torch.manual_seed(seed)
    comp = KV.KVCompressor(cfg)
    for h in comp.heads:
        torch.nn.init.normal_(h.weight, std=0.05)
    return comp.eval()


def rand_kv(frames, tokens=16, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, frames * tokens, 4, 16, generator=g), torch.randn(b, frames * tokens, 4, 16, generator=g)


# -- the compressor ---------------------------------------------------------------------------------------
def test_untrained_compressor_is_span_averaging_and_shapes_follow_the_rate():
    comp = KV.KVCompressor(kv_cfg("2x2x1"))
    k, v = rand_kv(4)  # two groups of 2 frames on a 4x4 grid
    ck, cv = comp.compress(1, k, v)
    assert ck.shape == (1, 2 * 8, 4, 16) and comp.cfg.tokens_per_group == 8
    # group 0, token (row 0, col 0) = mean over frames 0-1, rows 0-1, col 0
    grid = k.reshape(1, 4, 4, 4, 4, 16)  # [B, F, rows, cols, H, D]
    want = grid[:, 0:2, 0:2, 0].mean(dim=(1, 2))
    assert torch.allclose(ck[:, 0], want, atol=1e-6)
    assert torch.allclose(cv[:, 15], v.reshape(1, 4, 4, 4, 4, 16)[:, 2:4, 2:4, 3].mean(dim=(1, 2)), atol=1e-6)
    assert KV.KVCompressor(kv_cfg("4x4x2")).compress(0, *rand_kv(4))[0].shape == (1, 2, 4, 16)


def test_layers_have_their_own_encoders_and_groups_are_independent():
    comp = trained_like(kv_cfg())
    k, v = rand_kv(4)
    a0, a1 = comp.compress(0, k, v)[0], comp.compress(1, k, v)[0]
    assert not torch.allclose(a0, a1)
    alone = comp.compress(0, k[:, :32], v[:, :32])[0]  # the first group by itself
    assert torch.allclose(alone, a0[:, :8], atol=1e-5)


def test_compressor_bad_input_is_a_clear_error():
    comp = KV.KVCompressor(kv_cfg())
    k, v = rand_kv(4)
    with pytest.raises(ValueError, match="2 layers, asked for layer 2"):
        comp.compress(2, k, v)
    with pytest.raises(ValueError, match="whole groups of 2 frames"):
        comp.compress(0, k[:, :16], v[:, :16])
    with pytest.raises(ValueError, match=r"4 heads x 16.*got 2 x 16"):
        comp.compress(0, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="one shape"):
        comp.compress(0, k, v[:, :16])
    with pytest.raises(ValueError, match="not divisible"):
        kv_cfg("2x4x1", grid=(6, 4))
    with pytest.raises(ValueError, match="rate"):
        kv_cfg("3x1x1")


def test_file_round_trip_with_decoder_and_lora(tmp_path):
    cfg = kv_cfg()
    comp = trained_like(cfg)
    ret = KV.KVRetrieval(cfg, 16, (8, 8), dec_dim=16, dec_layers=1)
    lora = {"blocks.0.self_attn.q.lora_A.weight": torch.randn(2, 64),
            "blocks.0.self_attn.q.lora_B.weight": torch.randn(64, 2)}
    path = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match="LoRAInfo"):
        KV.save(path, comp, ret, lora=lora)
    KV.save(path, comp, ret, lora=lora, lora_info=KV.LoRAInfo(2, 2.0), info={"a": 1}, dtype=torch.float32)
    f = KV.load(path)
    assert f.compressor.cfg == cfg and f.info == {"a": 1} and f.lora_info.rank == 2
    k, v = rand_kv(2)
    assert torch.equal(f.compressor.compress(1, k, v)[0], comp.compress(1, k, v)[0])
    assert set(f.lora) == set(lora) and f.retrieval is not None
    with pytest.raises(FileNotFoundError):
        KV.load(tmp_path / "nope.safetensors")


# -- the policy -----------------------------------------------------------------------------------------------
def bound(spec=SPEC, grid=4, layer=0):
    model = CausalWanModel(WanConfig.tiny())
    mem = build_memory(spec).bind(model.rope, grid * grid)
    mem.layer = layer
    return mem, model


def kv(start, n, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + start)
    return torch.randn(1, n * tokens, 4, 16, generator=g), torch.randn(1, n * tokens, 4, 16, generator=g)


def test_policy_needs_weights_unless_random_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(MC, "default_path", lambda: tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="no weights given"):
        build_memory("compressor")
    with pytest.raises(ValueError, match="not found"):
        build_memory(f"compressor:weights={tmp_path}/none.safetensors")
    with pytest.raises(ValueError, match="rate"):
        build_memory("compressor:rate=3x1x1,allow_random=true")
    m = build_memory(SPEC)
    assert m.spec() == build_memory(m.spec()).spec() and "allow_random=True" in m.spec()
    path = tmp_path / "c.safetensors"
    KV.save(path, trained_like(kv_cfg(grid=(2, 8))), dtype=torch.float32)
    mem, _ = bound(f"compressor:weights={path},window=2")  # 4x4 frames: the file wants 2x8
    with pytest.raises(ValueError, match=r"2x8.*4x4"):
        mem.insert(*kv(0, 4), 0)
    with pytest.raises(ValueError, match="trained at rate 2x2x1"):
        build_memory(f"compressor:weights={path},rate=4x4x2")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200), st.integers(1, 8), st.sampled_from([1, 2, 4]), st.integers(1, 12))
def test_layout_covers_the_newest_frames_within_budget(seen, window, t, budget):
    groups, raw = MC.layout(seen, window, t, budget)
    assert len(groups) <= budget and window <= len(raw) + (0 if seen >= window else window - seen) <= window + t - 1
    assert raw.stop == seen and (not groups or groups.stop * t == raw.start)
    if groups.start > 0:
        assert len(groups) == budget  # only a full buffer drops the oldest group


def test_policy_stays_within_budget_with_positions_inside_history():
    mem, _ = bound()
    sizes, tokens = [], []
    for f in range(0, 30, 3):
        view = mem.view(ChunkQuery(start=f, num_frames=3))
        if view is not None:
            assert all(0 <= p <= f - 1 for p in view.positions)
            assert view.query_positions == (f, f + 1, f + 2)
            assert torch.isfinite(view.k).all() and torch.isfinite(view.v).all()
            tokens.append(view.tokens)
        mem.insert(*kv(f, 3), f)
        sizes.append(mem.nbytes())
    assert len(set(sizes[2:])) == 1  # flat once both stores are allocated
    assert max(tokens) <= 4 * 16 + 2 * 8  # window 3 + 1 waiting raw frames + 2 groups of 2x4 tokens
    entries = mem.entries()
    comp = [e for e in entries if e.kind == "compressed"]
    assert [e.mu for e in comp] == [22.5, 24.5] and all(e.span == 2 for e in comp)
    assert [e.first for e in entries if e.kind == "frame"] == [26, 27, 28, 29]


def test_policy_view_equals_the_training_views_inside_the_model(tmp_path):
    """What fine-tuning trains on is exactly what the policy gives the model at generation."""
    torch.manual_seed(0)
    model = CausalWanModel(WanConfig.tiny()).eval()
    path = tmp_path / "c.safetensors"
    comp = trained_like(kv_cfg("2x2x1"))
    KV.save(path, comp, dtype=torch.float32)
    comp = KV.load(path).compressor
    x = torch.randn(1, 16, 18, 8, 8)
    ctx = model.encode_text(torch.randn(1, 16, 32))
    s = 15
    history = CT.history_kv(model, x[:, :, :s], ctx, 0, window=5)
    stack = MemoryStack(f"compressor:weights={path},window=3,budget=3", 2).bind(model.rope, 16)
    for layer, (k, v) in zip(stack, history):
        layer.insert(k, v, 0)
    assert len(stack[0].groups_held()) == 3 and list(stack[0].raw_frames()) == [12, 13, 14]
    views = CT.compressed_views(comp, history, 0, s, 3, 3, model.rope, 16)
    chunk, t = x[:, :, s:], torch.full((1,), 500.0)
    want = model(chunk, t, ctx, memory=stack, start_frame=s)
    got = model(chunk, t, ctx, memory=CT.GivenViews(views, s), start_frame=s)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # a later start the history does not cover is refused
    with pytest.raises(ValueError, match="history K/V start at frame 9, the memory needs frame 6"):
        CT.compressed_views(comp, [(k[:, 144:], v[:, 144:]) for k, v in history], 9, s, 3, 3, model.rope, 16)


class ToyText:
    def encode(self, prompts):
        return torch.stack([torch.randn(8, 32, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                            for p in prompts])


def test_policy_runs_inside_the_model_through_the_pipeline():
    torch.manual_seed(0)
    model = CausalWanModel(WanConfig.tiny()).eval()
    pipe = VideoPipeline(model, ToyText(), None, steps=(1000.0, 500.0))
    chunks = list(pipe.generate("a red circle", 15, memory=SPEC, latent_shape=(16, 8, 8), progress=False))
    assert len(chunks) == 5 and all(torch.isfinite(c.latents).all() for c in chunks)
    mem = pipe.memory[0]
    assert mem.frames_seen == 15 and mem.groups_done() == 6 and len(mem.groups_held()) == 2
    assert pipe.memory[1].encoder is not mem.encoder  # random compressors: one per layer


def test_state_dict_round_trip():
    a, _ = bound()
    for f in range(0, 15, 3):
        a.insert(*kv(f, 3), f)
    b, _ = bound()
    b.load_state_dict(a.state_dict())
    q = ChunkQuery(start=15, num_frames=3)
    va, vb = a.view(q), b.view(q)
    assert va.positions == vb.positions and torch.equal(va.k, vb.k) and torch.equal(va.v, vb.v)
    with pytest.raises(ValueError, match="state"):
        build_memory("compressor:window=4,allow_random=true").load_state_dict(a.state_dict())


# -- training -------------------------------------------------------------------------------------------------
class IdText(torch.nn.Module):
    def __init__(self, dim=32, length=16):
        super().__init__()
        self.emb = torch.nn.Embedding(8, dim)
        self.length = length

    def forward(self, ids):
        return self.emb(ids[:, :self.length])


def tiny_train_cfg(**kw):
    return CT.CompressorTrainConfig(**{**dict(rate="2x2x1", channels="8-16", hidden=16, window=3, budget=4,
                                              history=8, queries=2, batch=2, workers=0, warmup=1, log_every=1,
                                              lr=2e-3, lora_lr=2e-3, lora_rank=2, pretrain_seconds=None,
                                              finetune_seconds=None), **kw})


def test_pretraining_on_a_tiny_wan_config_lowers_the_retrieval_loss():
    """The training code is not tied to the embedded model: user latents and any Wan config."""
    torch.manual_seed(0)
    model = CausalWanModel(WanConfig.tiny())
    # frames of smooth patterns that change over time: retrievable structure, not white noise
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 8), torch.linspace(0, 3, 8), indexing="ij")
    ch = torch.arange(16.0)[:, None, None, None]
    tt = torch.arange(8.0)[None, :, None, None]
    latents = torch.stack([torch.sin(xx * (1 + ch % 3) + 0.7 * tt + b) * torch.cos(yy + 0.1 * ch) for b in (0, 1)])
    batch = {"latents": latents, "ids": torch.randint(0, 8, (2, 16))}
    cfg = tiny_train_cfg(pretrain_steps=40)
    comp, ret, hist = CT.pretrain(model, IdText(), None, cfg, "cpu", batches=[batch] * 40, log=lambda m: None)
    losses = [h["loss"] for h in hist]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert comp.cfg.grid == (4, 4) and comp.cfg.layers == 2 and not any(p.requires_grad for p in comp.parameters())


def test_finetuning_trains_lora_and_compressor_through_the_memory(tmp_path):
    torch.manual_seed(0)
    model = CausalWanModel(WanConfig.tiny())
    comp = KV.KVCompressor(kv_cfg())
    cfg = tiny_train_cfg(finetune_steps=4)
    # s = 15: window 3 -> groups 0..5 done, budget 4 keeps groups 2..5 (frames 4..11), raw 12..14
    batches = [{"latents": torch.randn(2, 16, 18, 8, 8), "ids": torch.randint(0, 8, (2, 16)), "lo": 0, "s": 15}] * 4
    before = [p.clone() for p in comp.parameters()]
    lora, info, hist = CT.finetune(model, IdText(), None, comp, cfg, "cpu", batches=batches, log=lambda m: None)
    assert len(hist) == 4 and all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, comp.parameters()))  # gradients reached it
    assert len(lora) == 2 * 4 * 2 and any(t.abs().sum() > 0 for n, t in lora.items() if "lora_B" in n)
    # the saved LoRA merges into a fresh copy of the generator and reproduces the trained model
    path = tmp_path / "c.safetensors"
    KV.save(path, comp, lora=lora, lora_info=info, dtype=torch.float32)
    base = CausalWanModel(WanConfig.tiny())
    base.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
    merged = generator_for_memory(base, f"compressor:weights={path}")
    assert merged is not base and info.base_digest == weights_digest(base)  # the LoRA records its base
    other = CausalWanModel(WanConfig.tiny())  # another base model: its LoRA is refused
    with pytest.raises(ValueError, match="trained on a different base model.*fademem train-compressor"):
        generator_for_memory(other, f"compressor:weights={path}")
    assert generator_for_memory(base, f"compressor:weights={path},generator_lora=false") is base
    assert generator_for_memory(base, "fademem") is base
    x, ctx = torch.randn(1, 16, 3, 8, 8), torch.randn(1, 16, 32)
    assert torch.allclose(merged(x, 500.0, ctx), model(x, 500.0, ctx), atol=1e-5)


def test_world_stage_smoke_with_the_embedded_model():
    from fademem import embedded

    bundle = embedded.load()
    cfg = CT.CompressorTrainConfig(rate="4x4x2", channels="8-16", hidden=16, history=8, batch=2, workers=0, pool=2,
                                   pretrain_steps=2, pretrain_seconds=None, finetune_steps=2, finetune_seconds=None,
                                   max_start=24, window=4, budget=2, queries=1, log_every=1)
    comp, ret, hist = CT.pretrain(bundle.model, bundle.text, bundle.codec, cfg, "cpu", log=lambda m: None)
    assert len(hist) == 2 and comp.cfg.grid == (8, 8) and comp.cfg.width == 512
    row = CT.retrieval_eval(bundle.model, bundle.text, bundle.codec, comp, ret, cfg, "cpu", clips=2)
    assert row["compression"] == 32 and math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1
    _, _, hist = CT.finetune(bundle.model, bundle.text, bundle.codec, comp, cfg, "cpu", log=lambda m: None)
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)


# -- the shipped compressor ------------------------------------------------------------------------------------
def test_compressor_without_weights_is_a_clear_error_before_generating(tmp_path, monkeypatch):
    # a package without a compressor file (or a user's stripped install): refuse before generating, say how
    from click.testing import CliRunner

    from fademem.cli import main

    monkeypatch.setattr(MC, "default_path", lambda: tmp_path / "absent.safetensors")
    out = tmp_path / "c.mp4"
    prompt = "a large red circle bouncing over a striped blue background , camera is static"
    res = CliRunner().invoke(main, ["generate", "--prompt", prompt, "--seconds", "3", "--memory", "compressor",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "no weights given" in res.output and "train-compressor" in res.output and not out.exists()


def test_shipped_compressor_fits_the_shipped_model_and_generates(tmp_path):
    # the v2 compressor ships (fademem/assets/compressor.safetensors): trained for the shipped model's K/V
    # (layers, heads, head_dim, token grid), with its generator LoRA; `--memory compressor` runs as is
    from click.testing import CliRunner

    from fademem import embedded
    from fademem.cli import main

    shipped = MC.load(MC.default_path())
    cfg, model_cfg = shipped.compressor.cfg, embedded.load().model.config
    assert cfg.layers == model_cfg.num_layers and cfg.heads == model_cfg.num_heads
    assert cfg.head_dim == model_cfg.dim // model_cfg.num_heads and cfg.rate == "4x4x2" and shipped.lora
    out = tmp_path / "c.mp4"
    prompt = "a large red circle bouncing over a striped blue background , camera is static"
    res = CliRunner().invoke(main, ["generate", "--prompt", prompt, "--seconds", "3", "--memory", "compressor",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0 and out.stat().st_size > 0, res.output


def test_train_compressor_cli_smoke(tmp_path):
    from click.testing import CliRunner

    from fademem.cli import main

    out = tmp_path / "c.safetensors"
    args = ["train-compressor", "--out", str(out), "--device", "cpu", "--batch", "2", "--workers", "0", "--pool", "2",
            "--channels", "8-16", "--pretrain-steps", "1", "--finetune-steps", "1", "--max-start", "12",
            "--eval-clips", "2", "--budget", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    f = KV.load(out)
    assert f.lora and f.retrieval is not None and "retrieval_after_finetune" in f.info
    res = CliRunner().invoke(main, ["train-compressor", "--out", str(out), "--device", "cpu",
                                    "--pretrain-seconds", "0"])
    assert res.exit_code != 0 and "nothing to fine-tune" in res.output
