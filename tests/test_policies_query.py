"""deepforcing, omnimem and memflow: selection rules on hand-made tensors, budgets, equivalence
with the masked full attention each claims, state round trips, and runs inside the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fademem.memory import ChunkQuery, MemoryStack, build_memory
from fademem.rope import WanRoPE
from fademem.wan.model import attention

B, H, D = 2, 2, 16
F = 3
ROPE = WanRoPE(D)
PT = ROPE.t_pairs * 2  # dims 0..PT-1 carry the temporal phase; zero them to make scores position-free
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(spec: str, tok: int):
    return build_memory(spec).bind(ROPE, tok)


def rand(n_tok: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(B, n_tok, H, D, generator=g)


def attend(view, q, k, v, start):
    """The model's attention over [view, chunk] (as CausalWanModel._attend_memory)."""
    pos = view.query_positions if view is not None else tuple(float(start + i) for i in range(F))
    qr, kr = ROPE.rotate_temporal(q, pos), ROPE.rotate_temporal(k, pos)
    if view is None:
        return attention(qr, kr, v)
    return attention(qr, torch.cat([view.k, kr], 1), torch.cat([view.v, v], 1), view.attn_mask)


def run_pair(spec_a: str, spec_b: str, tok: int, chunks: int, seed: int = 0, ctx: bool = False):
    """Feed both memories the same chunks; yield (chunk, attention output a, attention output b)."""
    g = torch.Generator().manual_seed(seed)
    a, b = make(spec_a, tok), make(spec_b, tok)
    for c in range(chunks):
        q, k, v = rand(F * tok, g), rand(F * tok, g), rand(F * tok, g)
        ck = rand(5, g) if ctx else None
        query = ChunkQuery(c * F, F, q, ck)
        yield c, attend(a.view(query), q, k, v, c * F), attend(b.view(query), q, k, v, c * F), a, b
        a.insert(k, v, c * F)
        b.insert(k, v, c * F)


# -- deepforcing ----------------------------------------------------------------------------------
def test_deepforcing_keeps_exactly_the_top_scored_tokens():
    tok = 4
    m = make("deepforcing:cache=4,budget=3,sink=1,recent=1", tok)  # keeps 1 frame (4 tokens) of top tokens
    g = torch.Generator().manual_seed(1)
    ks = torch.randn(B, 6 * tok, H, D, generator=g)
    ks[..., :PT] = 0  # no temporal phase: scores do not depend on positions
    vs = torch.randn(B, 6 * tok, H, D, generator=g)
    m.insert(ks[:, :3 * tok], vs[:, :3 * tok], 0)
    m.insert(ks[:, 3 * tok:], vs[:, 3 * tok:], 3)  # 5 tail frames > cache - sink = 3: compress at the view
    q = torch.zeros(B, F * tok, H, D)
    q[..., PT] = 1.0  # every query = e_PT: score of key j = sum_heads k_j[PT] * F*tok / (sqrt(D) H)
    view = m.view(ChunkQuery(6, F, q))
    # candidates: frames 1..4 (sink 0 and the newest frame 5 protected)
    cand = ks[:, tok:5 * tok]
    score = cand[..., PT].sum(-1)  # [B, 4*tok]
    for b in range(B):
        want = torch.topk(score[b], tok).indices.sort().values + tok
        got_k = view.k[b, tok:2 * tok]  # sink frame, then the kept tokens, then frame 5
        kept = ROPE.rotate_temporal(got_k[None].float(), torch.tensor([0.0]), inverse=True)  # phase-free keys
        torch.testing.assert_close(kept[0], ks[b, want])
        torch.testing.assert_close(view.v[b, tok:2 * tok], vs[b, want])
        # each kept token sits at its own frame; the sink right before the oldest kept token's frame
        pos = m.token_positions()[b]
        frames = (want // tok).float()
        torch.testing.assert_close(pos[tok:2 * tok], frames)
        assert pos[0].item() == frames.min().item() - 1
    torch.testing.assert_close(view.k[:, 2 * tok:].float(), ROPE.rotate_temporal(ks[:, 5 * tok:], (5.0,)))
    assert m.held_tokens() == 3 * tok and m.whole == [5] and m.n_comp == 1
    assert [e.kind for e in m.entries()] == ["sink", "tokens", "frame"]


@FAST
@given(st.integers(2, 10), st.integers(0, 4), st.integers(0, 3), st.integers(0, 4), st.integers(1, 4),
       st.integers(0, 100), st.sampled_from(["frame", "unified", "absolute"]))
def test_deepforcing_budget_sink_and_recent_invariants(cache, sink, recent, extra, fpc, seed, positions):
    sink = min(sink, cache - 1)
    recent = min(recent, cache - sink)
    budget = max(1, min(cache, sink + recent + extra))
    tok = 2
    m = make(f"deepforcing:cache={cache},budget={budget},sink={sink},recent={recent},positions={positions}", tok)
    g = torch.Generator().manual_seed(seed)
    frames = []
    for c in range(8):
        q = rand(fpc * tok, g)
        overflowing = m.overflowing()
        view = m.view(ChunkQuery(c * fpc, fpc, q))
        held = m.held_tokens()
        assert held <= cache * tok
        if view is not None:
            assert view.k.shape[1] == held and len(view.positions) * tok == held
        if overflowing:  # a compression leaves exactly budget frames' worth of tokens
            assert held == budget * tok
        # sink frames kept unchanged; the newest `recent` frames kept whole
        for j in range(min(c * fpc, sink)):
            torch.testing.assert_close(m.sink_store.k[:, j], frames[j][0])
        newest = list(range(max(sink, c * fpc - recent), c * fpc))
        assert m.whole[len(m.whole) - len(newest):] == newest or not newest
        k, v = rand(fpc * tok, g), rand(fpc * tok, g)
        frames += [(k[:, i * tok:(i + 1) * tok], None) for i in range(fpc)]
        m.insert(k, v, c * fpc)


@pytest.mark.parametrize("positions", ["frame", "unified", "absolute"])
def test_deepforcing_equals_full_while_history_fits(positions):
    for c, out, ref, a, _ in run_pair(f"deepforcing:cache=40,budget=30,sink=4,positions={positions}", "full", 4, 6):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert a.n_comp == 0


def test_deepforcing_sink_only_fifo():
    tok = 2
    m = make("deepforcing:mode=sink-only,cache=6,sink=4", tok)
    g = torch.Generator().manual_seed(0)
    for c in range(4):
        m.view(ChunkQuery(c * F, F))
        m.insert(rand(F * tok, g), rand(F * tok, g), c * F)
    view = m.view(ChunkQuery(12, F))
    assert m.whole == [10, 11] and view.positions == (6.0, 7.0, 8.0, 9.0, 10.0, 11.0)
    assert view.query_positions == (12.0, 13.0, 14.0)


# -- omnimem --------------------------------------------------------------------------------------
def test_omnimem_per_head_topk_blocks_and_window_exclusion():
    # grid 2x4, blocks 1x2 -> 4 blocks of 2 tokens per frame; window = chunk + 1 previous chunk
    tok = 8
    m = make("omnimem:grid=2x4,block_h=1,block_w=2,topk=2,query_group=4,window_chunks=2", tok)
    g = torch.Generator().manual_seed(0)
    ks = torch.randn(B, 6 * tok, H, D, generator=g) * 0.01
    ks[..., :PT] = 0
    vs = torch.randn(B, 6 * tok, H, D, generator=g)
    # frame-major token index: frame f, row r, col c -> f*8 + r*4 + c; block (r, c//2)
    want = {0: [(1, 1, 0), (2, 0, 1)], 1: [(0, 0, 0), (2, 1, 1)]}  # head -> (frame, row, block col)
    for h, blocks in want.items():
        for f, r, bc in blocks:
            i = f * tok + r * 4 + 2 * bc
            ks[:, i:i + 2, h, PT] = 5.0
    # frames 3..5 are in the window: give them even larger scores, they must not be selected
    ks[:, 3 * tok:, :, PT] = 50.0
    m.insert(ks[:, :3 * tok], vs[:, :3 * tok], 0)
    m.insert(ks[:, 3 * tok:], vs[:, 3 * tok:], 3)
    q = torch.zeros(B, F * tok, H, D)
    q[..., PT] = 1.0
    view = m.view(ChunkQuery(6, F, q))
    w = 3 * tok
    assert view.k.shape == (B, w + 2 * 2, H, D) and view.attn_mask is None
    assert view.positions[:3] == (3.0, 4.0, 5.0) and all(math.isnan(p) for p in view.positions[3:])
    for h, blocks in want.items():
        idx = [f * tok + r * 4 + 2 * bc + j for f, r, bc in sorted(blocks) for j in range(2)]
        frames = [float(f) for f, _, _ in sorted(blocks) for _ in range(2)]
        got = view.k[:, w:, h:h + 1]
        unrot = ROPE.rotate_temporal(got.reshape(1, -1, 1, D), torch.tensor(frames * B), inverse=True)
        torch.testing.assert_close(unrot.reshape(B, 4, D), ks[:, idx, h])
        torch.testing.assert_close(view.v[:, w:, h], vs[:, idx, h])


@pytest.mark.parametrize("spec", ["omnimem:grid=2x4,block_h=1,block_w=2,topk=1000,window_chunks=1",
                                  "omnimem:grid=2x4,block_h=2,block_w=2,topk=1000,window_chunks=3,exclude_window=false",
                                  "omnimem:grid=2x4,block_h=1,block_w=4,topk=1000,window_chunks=2,offload=true"])
def test_omnimem_with_all_blocks_equals_full_attention(spec):
    for c, out, ref, a, _ in run_pair(spec, "full", 8, 5):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_omnimem_offload_keeps_history_on_host():
    tok = 8
    dev = make("omnimem:grid=2x4,block_h=1,block_w=2", tok)
    host = make("omnimem:grid=2x4,block_h=1,block_w=2,offload=true,index_segments=2", tok)
    g = torch.Generator().manual_seed(0)
    for c in range(6):
        k, v = rand(F * tok, g), rand(F * tok, g)
        dev.insert(k, v, c * F)
        host.insert(k, v, c * F)
    assert host.host_nbytes() > 0 and dev.host_nbytes() == 0
    assert host.nbytes() < dev.nbytes() and all(c.device.type == "cpu" for c in host.store.chunks)
    assert host.device_nbytes()["history"] == 0 and dev.device_nbytes()["history"] == dev.store.nbytes()
    assert host.frame_slots() == {} and len(dev.frame_slots()) == 18


def test_omnimem_grid_knobs():
    with pytest.raises(ValueError, match="block_w"):
        build_memory("omnimem:grid=30x52,block_w=15")
    with pytest.raises(ValueError, match="grid"):
        build_memory("omnimem:grid=30by52")
    with pytest.raises(ValueError, match="grid"):
        build_memory("omnimem").bind(ROPE, 6)
    m = build_memory("omnimem").bind(ROPE, 1560)
    assert m.blocks_per_frame == 52 and m.block_tokens == 30


# -- memflow --------------------------------------------------------------------------------------
def test_memflow_keeps_top_prompt_scored_prototypes_plus_newest():
    tok = 2
    m = make("memflow:sink=1,window=2,bank=2,every=1", tok)
    g = torch.Generator().manual_seed(0)
    ctx = torch.zeros(B, 4, H, D)
    ctx[..., 0] = 1.0
    firsts = {}
    for c in range(4):  # chunk 0's first frame is the sink: prototypes = frames 3, 6, 9
        k, v = rand(F * tok, g), rand(F * tok, g)
        if c:
            sign = {1: 1.0, 2: -1.0, 3: 0.0}[c]
            k[:, :tok, :, 0] = sign * torch.tensor([5.0, -5.0])[:, None, None]
            firsts[3 * c] = (k[:, :tok].clone(), v[:, :tok].clone())
        m.view(ChunkQuery(c * F, F, context_k=ctx))
        m.insert(k, v, c * F)
    view = m.view(ChunkQuery(12, F, context_k=ctx))  # bank 3, 6, 9 -> keep best of {3, 6} + 9
    assert m.bank_frames == [None, 9]
    # batch 0: frame 3 scores +5, frame 6 -5 -> keep 3; batch 1 the opposite -> keep 6
    torch.testing.assert_close(m.bank_pos[:, :2], torch.tensor([[3.0, 9.0], [6.0, 9.0]]))
    t0 = (1 + 2) * tok  # sink + window slots come first
    for b, f in ((0, 3), (1, 6)):
        got = ROPE.rotate_temporal(view.k[b:b + 1, t0:t0 + tok], (float(f),), inverse=True)
        torch.testing.assert_close(got[0], firsts[f][0][b])
    assert view.k.shape[1] == (1 + 2 + 2) * tok and view.attn_mask is None


def full_mask(frames_visible: list[int], n: int, tok: int) -> torch.Tensor:
    ok = torch.zeros(n + F, dtype=torch.bool)
    ok[frames_visible] = True
    ok[n:] = True
    return ok.repeat_interleave(tok)[None, :]


@pytest.mark.parametrize("every", [1, 2, 3])
def test_memflow_large_bank_equals_masked_full_attention(every):
    tok = 2
    g = torch.Generator().manual_seed(every)
    m, full = make(f"memflow:sink=2,window=3,bank=50,every={every}", tok), make("full", tok)
    for c in range(7):
        q, k, v = rand(F * tok, g), rand(F * tok, g), rand(F * tok, g)
        query = ChunkQuery(c * F, F, q, rand(4, g))
        n = c * F
        visible = sorted(set(range(min(n, 2))) | set(range(max(2, n - 3), n))
                         | {3 * j for j in range(0, c, every) if 3 * j >= 2})
        fv = full.view(query)
        out = attend(m.view(query), q, k, v, n)
        if fv is None:
            ref = attend(None, q, k, v, n)
        else:
            fv.attn_mask = full_mask(visible, n, tok)
            ref = attend(fv, q, k, v, n)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        m.insert(k, v, n)
        full.insert(k, v, n)


def test_memflow_masks_scored_prototypes_that_may_be_in_the_window():
    tok = 2
    g = torch.Generator().manual_seed(0)
    m = make("memflow:sink=1,window=8,bank=2,every=1", tok)
    for c in range(5):
        m.view(ChunkQuery(c * F, F, context_k=rand(4, g)))
        m.insert(rand(F * tok, g), rand(F * tok, g), c * F)
    view = m.view(ChunkQuery(15, F, context_k=rand(4, g)))  # bank {3 or 6 or 9} + 12; window 7..14
    assert m.bank_frames == [None, 12]  # 12 is in the window (hidden); the kept older one is per batch
    hidden = (m.bank_pos[:, 0] >= 7)
    assert view.attn_mask.shape == (B, 1, 1, (1 + 8 + 1 + F) * tok)
    assert torch.equal(view.attn_mask[:, 0, 0, 9 * tok], ~hidden)


# -- all three ------------------------------------------------------------------------------------
SPECS = ["deepforcing:cache=5,budget=4,sink=2,recent=1", "deepforcing:mode=sink-only,cache=5,sink=3",
         "deepforcing:cache=5,budget=4,sink=2,recent=1,positions=unified",
         "omnimem:grid=2x3,block_h=1,block_w=3,topk=2,window_chunks=2",
         "omnimem:grid=2x3,block_h=2,block_w=1,topk=3,offload=true,exclude_window=false",
         "memflow:sink=1,window=3,bank=2,every=1", "memflow:positions=compact,bank=1"]


@pytest.mark.parametrize("spec", SPECS)
def test_state_round_trip_and_recache(spec):
    tok = 6
    g = torch.Generator().manual_seed(0)
    m = make(spec, tok)
    for c in range(6):
        m.view(ChunkQuery(c * F, F, rand(F * tok, g), rand(4, g)))
        m.insert(rand(F * tok, g), rand(F * tok, g), c * F)
    state = m.state_dict()
    m2 = make(spec, tok)
    m2.load_state_dict(state)
    q, ctx = rand(F * tok, g), rand(4, g)
    a, b = m.view(ChunkQuery(18, F, q, ctx)), m2.view(ChunkQuery(18, F, q, ctx))
    torch.testing.assert_close(a.k, b.k)
    torch.testing.assert_close(a.v, b.v)
    assert len(a.positions) == len(b.positions)
    frames = m.recache_frames(limit=2)
    if frames:
        k, v = rand(len(frames) * tok, g), rand(len(frames) * tok, g)
        m.replace(k, v, frames)
        held = m.frame_slots()
        for i, f in enumerate(frames):
            store, slot = held[f]
            got = store.v[:, slot]
            want = v[:, i * tok:(i + 1) * tok]
            assert torch.equal(got.sort(dim=1).values, want.sort(dim=1).values)  # omnimem stores block-major


@pytest.mark.parametrize("spec,knob", [("deepforcing:budget=20", "budget"), ("deepforcing:sink=-1", "sink"),
                                       ("deepforcing:mode=bogus", "mode"), ("deepforcing:sink=12,recent=5", "budget"),
                                       ("deepforcing:mode=sink-only,cache=10", "sink"),
                                       ("omnimem:topk=-1", "topk"), ("omnimem:window_chunks=0", "window_chunks"),
                                       ("omnimem:block_h=7", "block_h"), ("memflow:bank=0", "bank"),
                                       ("memflow:every=0", "every"), ("memflow:positions=wrong", "positions")])
def test_bad_knobs_name_the_knob(spec, knob):
    with pytest.raises(ValueError, match=knob):
        MemoryStack(spec, 2)


@pytest.fixture(scope="module")
def tiny_model():
    from fademem.wan.model import CausalWanModel, WanConfig

    torch.manual_seed(0)
    return CausalWanModel(WanConfig.tiny()).eval()


class ToyText:
    def encode(self, prompts):
        g = torch.Generator().manual_seed(len(prompts))
        return torch.randn(len(prompts), 8, 32, generator=g)


@pytest.mark.parametrize("spec", ["deepforcing:cache=6,budget=5,sink=2,recent=2",
                                  "deepforcing:mode=sink-only,cache=5,sink=3",
                                  "omnimem:grid=2x3,block_h=1,block_w=3,topk=2",
                                  "memflow:bank=2,every=1"])
def test_runs_inside_the_tiny_model(tiny_model, spec):
    from fademem.pipeline import VideoPipeline

    stack = MemoryStack(spec, tiny_model.config.num_layers)
    assert stack.spec == build_memory(spec).spec()
    pipe = VideoPipeline(tiny_model, ToyText())
    with torch.no_grad():
        chunks = list(pipe.generate(["a", "b"], 15, memory=stack, latent_shape=(16, 4, 6), progress=False,
                                    switches=[(9, ["c", "d"])]))
    assert len(chunks) == 5
    assert all(torch.isfinite(c.latents).all() for c in chunks)
    assert stack.frames_seen == 15


def test_bench_speed_takes_the_specs():
    from fademem.bench import speed as sp
    from fademem.cli import main

    res = CliRunner().invoke(main, ["bench", "speed", "--help"])
    assert res.exit_code == 0 and "--policies" in res.output
    setup = sp.SpeedSetup(config="tiny", latent=(16, 4, 6), device="cpu", dtype="float32", warmup=1)
    model = sp.build_model(setup)
    for spec in ["deepforcing:cache=6,budget=5,sink=2,recent=2", "omnimem:grid=2x3,block_h=1,block_w=3",
                 "memflow"]:
        out = sp.run_policy(model, spec, 9, setup)
        assert out["error"] is None and out["frames_run"] == 9, out
