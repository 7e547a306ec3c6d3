"""omnimem's two-level retrieval (candidates > 0): the segment bounds, the selection rule against an
independent computation, exactness while the candidates fit, fixed device bytes, the window ring
and prompt-switch recache with the history on the host."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fademem.memory import ChunkQuery, build_memory
from fademem.memory.segment_index import SegmentBounds
from fademem.rope import WanRoPE

pytestmark = pytest.mark.usefixtures("one_thread")

B, H, D, F = 2, 2, 16, 3
ROPE = WanRoPE(D)
TOK = 8  # grid 2x4, blocks 1x2: 4 blocks of 2 tokens per frame
KNOBS = "grid=2x4,block_h=1,block_w=2,query_group=4"
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(spec: str):
    return build_memory(spec).bind(ROPE, TOK)


def chunks(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(B, F * TOK, H, D, generator=g) for _ in range(3)) for _ in range(n)]


# -- the index --------------------------------------------------------------------------------------
@FAST
@given(capacity=st.sampled_from([2, 4, 6]), frames=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_segment_bounds_hold_every_block_score(capacity, frames, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(frames, B, 5, H, D, generator=g)  # 5 block keys per frame
    idx = SegmentBounds(capacity)
    for f in range(frames):
        idx.add(f, keys[f])
    span = 1
    while frames > capacity * span:
        span *= 2
    assert idx.span == span and idx.segments(frames) == -(-frames // span) <= capacity
    q = torch.randn(B, H, D, generator=g)
    ub = idx.bounds(q, idx.segments(frames))  # [B, H, S]
    for s in range(idx.segments(frames)):
        seg = keys[s * span:(s + 1) * span]  # [n, B, 5, H, D]
        assert torch.equal(idx.lo[:, s], seg.amin(dim=(0, 2))) and torch.equal(idx.hi[:, s], seg.amax(dim=(0, 2)))
        best = torch.einsum("nbkhd,bhd->bhnk", seg, q).flatten(2).amax(-1)
        assert (ub[:, :, s] >= best - 1e-5).all()


def test_segment_bounds_bad_input_and_rewrites():
    for bad in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match="capacity"):
            SegmentBounds(bad)
    idx = SegmentBounds(2)
    idx.add(0, torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="out of order"):
        idx.add(2, torch.zeros(1, 2, 1, 4))
    idx.add(0, torch.ones(1, 2, 1, 4))  # a rewritten frame widens its segment
    assert torch.equal(idx.lo[:, 0], torch.zeros(1, 1, 4)) and torch.equal(idx.hi[:, 0], torch.ones(1, 1, 4))


# -- the selection rule -----------------------------------------------------------------------------
def reference_select(ks: list[torch.Tensor], q: torch.Tensor, start: int, topk: int, cand: int, span: int,
                     fetch: int) -> list[list[list[int]]]:
    """The two-level rule from the raw inserted keys: per frame the rotated block-mean keys; per
    segment of ``span`` frames the channel-wise min/max; the pooled query; the ``fetch // span``
    best segments by Quest's bound (one more when the last candidate segment is partial, so that
    ``fetch`` whole frames are always fetched); their candidate blocks rescored; the top ``topk``."""
    keys = torch.cat(ks, 1)  # [B, N*TOK, H, D] frame-major
    n = keys.shape[1] // TOK
    blocks = keys.view(B, n, 2, 2, 2, H, D).mean(4).reshape(B, n, 4, H, D)  # (row, block col) order
    blocks = torch.stack([ROPE.rotate_temporal(blocks[:, f], (float(f),)) for f in range(n)], 1)
    qr = ROPE.rotate_temporal(q, tuple(float(start + i) for i in range(F)))
    pooled = sum(qr[:, i:i + 4].mean(1) for i in range(0, F * TOK, 4))  # groups of 4 tokens
    out = []
    for b in range(B):
        out.append([])
        for h in range(H):
            bounds = []
            for s in range(-(-cand // span)):
                seg = blocks[b, s * span:min((s + 1) * span, n), :, h]
                lo, hi = seg.amin((0, 1)), seg.amax((0, 1))
                bounds.append((torch.maximum(pooled[b, h] * lo, pooled[b, h] * hi).sum().item(), s))
            pick = min(len(bounds), fetch // span + (1 if cand % span else 0))
            segs = [s for _, s in sorted(bounds, reverse=True)[:pick]]
            scored = [((blocks[b, f, j, h] @ pooled[b, h]).item(), f * 4 + j)
                      for s in segs for f in range(s * span, min((s + 1) * span, cand)) for j in range(4)]
            out[b].append(sorted(i for _, i in sorted(scored, reverse=True)[:min(topk, fetch * 4)]))
    return out


@pytest.mark.parametrize("segments,cands,topk", [(4, 2, 3), (2, 4, 5), (6, 1, 2), (4, 3, 4)])
@pytest.mark.parametrize("offload", [False, True])
def test_two_level_selects_exactly_what_the_rule_names(segments, cands, topk, offload):
    spec = (f"omnimem:{KNOBS},topk={topk},window_chunks=2,candidates={cands},index_segments={segments},"
            f"offload={str(offload).lower()}")
    m = make(spec)
    data, ks, checked = chunks(9), [], 0
    for c, (q, k, v) in enumerate(data):
        query = ChunkQuery(c * F, F, q)
        cand = m.window_frames(F).start
        if cand:
            idx, got_cand = m.select(query)
            assert got_cand == cand
            span = m.index.span
            fetch = -(-cands // span) * span
            if -(-cand // span) * span > fetch:  # the two-level path (else every block is scored)
                want = reference_select(ks, q, c * F, topk, cand, span, fetch)
                assert idx.tolist() == want, (c, span)
                checked += 1
        m.view(query)
        m.insert(k, v, c * F)
        ks.append(k)
    assert checked >= 3 and m.index.span > 1  # merges happened and the rule was checked after them


@pytest.mark.parametrize("offload", [False, True])
def test_two_level_equals_flat_scoring_while_the_candidates_fit(offload):
    base = f"omnimem:{KNOBS},topk=3,window_chunks=2"
    flat = make(base)
    two = make(f"{base},candidates=64,index_segments=2,offload={str(offload).lower()}")  # spans grow to 16
    for c, (q, k, v) in enumerate(chunks(8, seed=1)):
        query = ChunkQuery(c * F, F, q)
        a, b = flat.view(query), two.view(query)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and str(a.positions) == str(b.positions)
        flat.insert(k, v, c * F)
        two.insert(k, v, c * F)
    assert two.index.span == 16


def test_small_candidate_budget_can_differ_but_keeps_topk_blocks():
    # a budget of one frame at span 4 with a partial last segment: topk distinct candidate blocks
    # from the two best-bounded segments
    m = make(f"omnimem:{KNOBS},topk=3,window_chunks=2,candidates=1,index_segments=8")  # 18 frames: span 4
    for c, (q, k, v) in enumerate(chunks(6, seed=2)):
        m.view(ChunkQuery(c * F, F, q))
        m.insert(k, v, c * F)
    idx, cand = m.select(ChunkQuery(18, F, chunks(1, seed=3)[0][0]))
    frames = torch.div(idx, 4, rounding_mode="floor")
    seg = torch.div(frames, m.index.span, rounding_mode="floor")
    assert m.index.span == 4 and cand == 15 and idx.shape == (B, H, 3) and (frames < cand).all()
    assert all(len(set(r)) <= 2 for r in seg.flatten(0, 1).tolist())
    assert all(len(set(r)) == 3 for r in idx.flatten(0, 1).tolist())


# -- offload: ring, recache, fixed device bytes ---------------------------------------------------------
def test_offload_window_comes_from_the_device_ring(monkeypatch):
    spec = f"omnimem:{KNOBS},topk=3,window_chunks=3"
    dev, host = make(spec), make(f"{spec},offload=true,host_chunk=2")
    reads = []
    real = host.store.read
    monkeypatch.setattr(host.store, "read", lambda *a: reads.append(a) or real(*a))
    for c, (q, k, v) in enumerate(chunks(7, seed=4)):
        query = ChunkQuery(c * F, F, q)
        a, b = dev.view(query), host.view(query)
        if a is not None:
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        dev.insert(k, v, c * F)
        host.insert(k, v, c * F)
    assert len(host.ring_frames) == 6 and sorted(host.ring_frames) == list(range(15, 21))
    assert [r[:2] for r in reads] == [(0, 3)]  # only the chunk whose window was shorter than the ring


def test_offload_prompt_switch_recaches_the_ring_frames():
    spec = f"omnimem:{KNOBS},topk=3,window_chunks=2"
    dev, host = make(spec), make(f"{spec},offload=true,candidates=2,index_segments=4")
    data = chunks(6, seed=5)
    for c, (q, k, v) in enumerate(data):
        dev.view(ChunkQuery(c * F, F, q))
        host.view(ChunkQuery(c * F, F, q))
        dev.insert(k, v, c * F)
        host.insert(k, v, c * F)
    frames = host.recache_frames(limit=12)
    assert frames == [15, 16, 17] == dev.recache_frames(limit=3)
    g = torch.Generator().manual_seed(9)
    k, v = (torch.randn(B, 3 * TOK, H, D, generator=g) for _ in range(2))
    dev.replace(k, v, frames)
    host.replace(k, v, frames)
    got_k, got_v = host.store.read(15, 18, torch.device("cpu"))
    want_k, want_v = dev.store.frames(18)
    assert torch.equal(got_k, want_k[:, 15 * TOK:]) and torch.equal(got_v, want_v[:, 15 * TOK:])
    assert torch.equal(host.block_store.read(15, 18, torch.device("cpu"))[0], dev.blocks[:, 60:72])
    q = chunks(1, seed=6)[0][0]
    a = dev.view(ChunkQuery(18, F, q))
    b = host.view(ChunkQuery(18, F, q))
    w = 3 * TOK  # the window (the recached frames) is identical; the two-level retrieval may differ
    assert torch.equal(a.k[:, :w], b.k[:, :w]) and torch.equal(a.v[:, :w], b.v[:, :w])


def test_state_round_trip_with_the_index_and_host_block_keys():
    spec = f"omnimem:{KNOBS},topk=3,window_chunks=2,offload=true,candidates=2,index_segments=2"
    m = make(spec)
    for c, (q, k, v) in enumerate(chunks(5, seed=7)):
        m.view(ChunkQuery(c * F, F, q))
        m.insert(k, v, c * F)
    m2 = make(spec)
    m2.load_state_dict(m.state_dict())
    assert m2.index.span == m.index.span == 8 and m2.ring_frames == m.ring_frames
    q = chunks(1, seed=8)[0][0]
    a, b = m.view(ChunkQuery(15, F, q)), m2.view(ChunkQuery(15, F, q))
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    bad = m.state_dict()
    del bad["index"]
    with pytest.raises(ValueError, match="index"):
        make(spec).load_state_dict(bad)


@pytest.mark.parametrize("spec,knob", [("omnimem:candidates=-1", "candidates"),
                                       ("omnimem:index_segments=3", "index_segments"),
                                       ("omnimem:index_segments=0", "index_segments")])
def test_bad_two_level_knobs(spec, knob):
    with pytest.raises(ValueError, match=knob):
        build_memory(spec)


def test_candidates_default_follows_offload():
    assert build_memory("omnimem").n_candidates == 0 and build_memory("omnimem").index is None
    m = build_memory("omnimem:offload=true")
    assert m.n_candidates == 16 and m.index.capacity == 1024 and m.block_store is not None
    assert build_memory("omnimem:offload=true,candidates=0").index is None
    assert math.isclose(build_memory("omnimem:candidates=4").n_candidates, 4)
