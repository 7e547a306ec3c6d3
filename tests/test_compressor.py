"""Learned memory compression (issue 8): the history encoder, retrieval pretraining, the policy.

CPU, tiny configs. The policy runs with ``allow_random=true`` (untrained encoder): these tests
check plumbing, shapes, bounds and determinism, not compression quality.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from fademem import compressor as C
from fademem.memory import ChunkQuery, MemoryStack, build_memory
from fademem.model import CausalWanModel, WanConfig
from fademem.pipeline import VideoPipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = "compressor:window=3,budget=2,channels=8-16,allow_random=true"


def tiny_cfg(rate="2x2x1", **kw) -> C.CompressorConfig:
    return C.CompressorConfig(**{**dict(in_channels=48, out_dim=16, channels=(8, 16), rate=rate, dec_dim=16,
                                        dec_layers=1, latent_hw=(8, 8)), **kw})


@pytest.fixture(scope="module")
def world_batch():
    return C.world_histories(2, 4, rng=0)[..., :8, :8].contiguous()  # [2, 48, 4, 8, 8]


# -- encoder / decoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,tokens,centre", [("2x2x1", 2 * 4 * 8, 0.5), ("4x4x2", 1 * 2 * 4, 1.5)])
def test_shapes_for_both_rates(rate, tokens, centre):
    torch.manual_seed(0)
    enc, dec = C.build(tiny_cfg(rate))
    x = torch.randn(2, 48, 4, 8, 8)
    out = enc(x, start=10)
    assert out.tokens.shape == (2, tokens, 16)
    assert out.positions.shape == (tokens,) and out.coords.shape == (tokens, 2)
    assert out.positions[0].item() == 10 + centre  # the centre of the span each token summarises
    assert out.positions.min() >= 10 and out.positions.max() <= 13
    q = torch.randn(2, 3, 48, 8, 8)
    pred = dec(out, q, torch.rand(2, 3), torch.tensor([[10.0, 11, 13]] * 2))
    assert pred.shape == q.shape and torch.isfinite(pred).all()


def test_time_is_reduced_before_space():
    enc = C.HistoryEncoder(tiny_cfg("4x4x2"))
    assert enc.strides == ((2, 1, 1), (2, 1, 1), (1, 2, 2), (1, 2, 1))
    first_space = next(i for i, s in enumerate(enc.strides) if s[1:] != (1, 1))
    assert all(s[0] == 1 for s in enc.strides[first_space:])  # no time reduction after space starts
    assert C.HistoryEncoder(tiny_cfg("2x2x1")).strides == ((2, 1, 1), (1, 2, 1))
    # channel ladder: each downsampling step moves one rung up, then stays on the last
    convs = [m for m in enc.down if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 16]


def test_bad_input_is_a_clear_error():
    for bad in ("3x2x1", "2x2", "axbxc", "0x1x1"):
        with pytest.raises(ValueError, match="rate"):
            C.parse_rate(bad)
    with pytest.raises(ValueError, match="channels"):
        C.parse_channels("8-x")
    enc, dec = C.build(tiny_cfg("4x4x2"))
    with pytest.raises(ValueError, match=r"2 frames.*4 frames"):
        enc(torch.randn(1, 48, 2, 8, 8))
    with pytest.raises(ValueError, match=r"16 latent channels.*48"):
        enc(torch.randn(1, 16, 4, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.randn(1, 48, 4, 6, 8))
    out = enc(torch.randn(1, 48, 4, 8, 8))
    with pytest.raises(ValueError, match=r"32 wide.*takes 16"):
        dec(C.Encoded(torch.randn(1, 8, 32), out.positions, out.grid, out.coords),
            torch.randn(1, 1, 48, 8, 8), torch.ones(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="query must be"):
        dec(out, torch.randn(1, 1, 16, 8, 8), torch.ones(1, 1), torch.zeros(1, 1))


def test_smoke_pretraining_overfits_a_fixed_batch_and_saves(world_batch, tmp_path):
    path = tmp_path / "c.safetensors"
    enc, dec, losses = C.pretrain(tiny_cfg(), 30, data=world_batch, lr=2e-3, seed=0, out=path)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    _, _, again = C.pretrain(tiny_cfg(), 3, data=world_batch, lr=2e-3, seed=0)
    assert again == losses[:3]  # seeded
    enc2, dec2, info = C.load(path)
    assert info["steps"] == 30 and enc2.cfg == enc.cfg
    x = world_batch[:1]
    assert torch.equal(enc2(x).tokens, enc.eval()(x).tokens)
    m = C.retrieval_metrics(enc2, dec2, world_batch)
    assert m["rate"] == "2x2x1" and m["tokens"] == 64 and math.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1
    _, _, short = C.pretrain(tiny_cfg(), 1000, data=world_batch, seconds=0.0)
    assert short == []  # time limit


# -- the memory policy --------------------------------------------------------------------------------
def bound(spec=SPEC, grid=4):
    model = CausalWanModel(WanConfig.tiny())
    return build_memory(spec).bind(model.rope, grid * grid), model


def kv(start, n, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + start)
    return torch.randn(1, n * tokens, 4, 16, generator=g), torch.randn(1, n * tokens, 4, 16, generator=g)


def test_policy_needs_weights_unless_random_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="no weights given"):
        build_memory("compressor")
    with pytest.raises(ValueError, match="not found"):
        build_memory(f"compressor:weights={tmp_path}/none.safetensors")
    with pytest.raises(ValueError, match="rate"):
        build_memory("compressor:rate=3x1x1,allow_random=true")
    m = build_memory(SPEC)
    assert m.spec() == build_memory(m.spec()).spec() and "allow_random=True" in m.spec()
    # weights from a file of the wrong width are refused, naming both widths
    path = tmp_path / "latent.safetensors"
    C.save(path, C.HistoryEncoder(tiny_cfg()))
    mem, _ = bound(f"compressor:weights={path},window=2")
    with pytest.raises(ValueError, match=r"48 -> 16 channels.*128 -> 128"):
        mem.insert(*kv(0, 4), 0)


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
    # window 3 + t 2 raw frames (16 tokens) + 2 groups of 2x4 compressed tokens at most
    assert max(tokens) <= 5 * 16 + 2 * 8
    entries = mem.entries()
    comp = [e for e in entries if e.kind == "compressed"]
    assert [e.mu for e in comp] == [22.5, 24.5] and all(e.span == 2 for e in comp)
    # 30 frames, window 3, t 2: groups 0..12 compressed (11, 12 kept), frames 26..29 raw
    assert [e.first for e in entries if e.kind == "frame"] == [26, 27, 28, 29]
    assert mem.groups_done() * 2 + len(mem.raw_frames()) == mem.frames_seen


def test_incremental_compression_matches_the_encoder():
    mem, _ = bound()
    k, v = kv(0, 6)
    mem.insert(k, v, 0)  # frames 0..5: window 3 -> group 0 (frames 0, 1) compressed, frames 2.. raw
    assert mem.groups_done() == 1 and list(mem.raw_frames()) == [2, 3, 4, 5]
    x = torch.cat([k[:, :32].reshape(1, 2, 16, 64), v[:, :32].reshape(1, 2, 16, 64)], -1)
    x = x.reshape(1, 2, 4, 4, 128).permute(0, 4, 1, 2, 3)
    want = mem.encoder(x).tokens.reshape(1, -1, 2, 4, 16)
    assert torch.allclose(mem.compressed_store.k[:, 0], want[:, :, 0])
    assert torch.allclose(mem.compressed_store.v[:, 0], want[:, :, 1])
    view = mem.view(ChunkQuery(start=6, num_frames=3))
    assert view.positions[0] == 0.5 and sorted(view.positions[1:]) == [2.0, 3.0, 4.0, 5.0]  # slot order
    assert view.tokens == 8 + 4 * 16


def test_state_dict_round_trip():
    a, _ = bound()
    for f in range(0, 15, 3):
        a.insert(*kv(f, 3), f)
    b, _ = bound()
    b.load_state_dict(a.state_dict())
    q = ChunkQuery(start=15, num_frames=3)
    va, vb = a.view(q), b.view(q)
    assert va.positions == vb.positions and torch.equal(va.k, vb.k) and torch.equal(va.v, vb.v)
    for m in (a, b):
        m.insert(*kv(15, 3), 15)
    q = ChunkQuery(start=18, num_frames=3)
    assert torch.equal(a.view(q).k, b.view(q).k)
    stack = MemoryStack(SPEC, 2)
    with pytest.raises(ValueError, match="state"):
        build_memory("compressor:window=4,allow_random=true").load_state_dict(a.state_dict())
    assert stack.spec == a.spec()


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
    assert pipe.memory[1].encoder is mem.encoder  # one encoder shared by the layers
