"""The ``fademem`` policy: schedule rules of both presets, tensor merges, layouts, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fademem.memory import ChunkQuery, MemoryStack, build_memory
from fademem.memory import fademem_schedule as fs
from fademem.memory.fademem import FadeMemMemory
from fademem.rope import WanRoPE

HEAD_DIM, TOK = 12, 2  # tiny frames: 2 tokens, 1 head, 12 dims (2 temporal pairs)


def bound(spec: str) -> FadeMemMemory:
    return build_memory(spec).bind(WanRoPE(HEAD_DIM), TOK)


def frames(n: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 1, TOK, 1, HEAD_DIM, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(n, 1, TOK, 1, HEAD_DIM, generator=g, dtype=torch.float64).to(dtype)
    return k, v


def feed(mem: FadeMemMemory, k, v, chunk: int = 3) -> None:
    n = k.shape[0]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        mem.insert(k[s:e, 0].reshape(1, -1, 1, HEAD_DIM), v[s:e, 0].reshape(1, -1, 1, HEAD_DIM), s)


def run_schedule(budget, beta, steps, anchor=True, preset="paper", chunk=3):
    """Drive the policy's schedule; yield (pre-state mus, step, post-state) per frame."""
    sched = FadeMemMemory(budget=budget, beta=beta, anchor=anchor, preset=preset,
                          positions="absolute").new_schedule()
    for s in range(0, steps, chunk):
        end = min(s + chunk, steps)
        for f in range(s, end):
            before = [fs.Meta(**vars(e)) for e in sched.entries]
            step = sched.add(f, end)
            yield f, end, before, step, sched.entries


# -- schedule invariants -------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(budget=st.integers(2, 20), beta=st.floats(0.05, 1.0), steps=st.integers(0, 150),
       anchor=st.booleans(), preset=st.sampled_from(["paper", "release"]), chunk=st.integers(1, 4))
def test_schedule_invariants(budget, beta, steps, anchor, preset, chunk):
    if budget < fs.min_budget(preset, anchor):
        with pytest.raises(ValueError, match="budget"):
            FadeMemMemory(budget=budget, beta=beta, anchor=anchor, preset=preset, positions="absolute")
        return
    for f, end, before, step, ents in run_schedule(budget, beta, steps, anchor, preset, chunk):
        assert len(ents) <= budget and len(ents) == min(f + 1, budget)
        assert sum(e.span for e in ents) == f + 1
        assert ents[0].first == 0
        for a, b in zip(ents, ents[1:]):
            assert b.first == a.first + a.span  # every frame covered once, in order
        for e in ents:
            assert e.first <= e.mu <= e.last
        assert sorted(e.slot for e in ents) == list(range(len(ents)))  # live slots: a prefix
        # the newest entry is never merged the step it enters
        assert (ents[-1].mu, ents[-1].span, ents[-1].first) == (f, 1, f)
        assert step.slot == ents[-1].slot
        if len(before) + 1 <= budget:
            assert step.merge is None
            continue
        # exactly one merge, the argmin over eligible pairs, ties to the oldest (brute force)
        work = [e.mu for e in before] + [float(f)]
        now = f if preset == "paper" else end
        lo = 1 if (anchor and preset == "paper") else 0
        gaps = {i: abs((now - work[i + 1]) ** beta - (now - work[i]) ** beta) for i in range(lo, len(work) - 2)}
        best = min(gaps.values())
        assert step.merge.index == min(i for i, g in gaps.items() if g == best)
        if preset == "paper":
            for e in ents:
                assert e.mu == pytest.approx(e.first + (e.span - 1) / 2)  # exact span-weighted mean
        if anchor and preset == "paper":
            assert (ents[0].anchor, ents[0].mu, ents[0].span) == (True, 0.0, 1)
        if anchor and preset == "release":
            assert ents[0].anchor and ents[0].mu == 0.0 and ents[0].first == 0  # span may grow
        if not anchor:
            assert not any(e.anchor for e in ents)


# -- hand-checked cases --------------------------------------------------------------------------
def merges(budget, beta, steps, **kw):
    out = []
    for f, _, _, step, ents in run_schedule(budget, beta, steps, **kw):
        out.append([(e.mu, e.span) for e in ents])
    return out


def test_paper_budget4_beta1_by_hand():
    # beta 1: warped gaps are plain centre differences. Frame 4: memory 0,1,2,3,4, now 4;
    # eligible pairs (1,2) and (2,3) (not the anchor pair, not the pair with newest 4) both gap 1
    # -> tie -> the oldest pair (1,2) -> mu 1.5.  Frame 5: d = 5,3.5,2,1,0: (1.5,3) gap 1.5,
    # (3,4) gap 1 -> merge 3,4.  Frame 6: d = 6,4.5,2.5,1,0: gaps 2, 1.5 -> (3.5,5) -> mu 4 span 3.
    got = merges(4, 1.0, 7)
    assert got[3] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert got[4] == [(0, 1), (1.5, 2), (3, 1), (4, 1)]
    assert got[5] == [(0, 1), (1.5, 2), (3.5, 2), (5, 1)]
    assert got[6] == [(0, 1), (1.5, 2), (4.0, 3), (6, 1)]


def test_paper_budget4_beta03_by_hand():
    # beta 0.3 compresses the past, so older pairs merge first.
    # Frame 4: d 4,3,2,1,0 -> u 1.516,1.390,1.231,1: gaps (1,2) .159 < (2,3) .231 -> mu 1.5.
    # Frame 5: d 5,3.5,2,1,0 -> u 1.621,1.456,1.231,1: (1.5,3) .225 < (3,4) .231 -> mu 2 span 3
    #          (beta 1 merged (3,4) here).
    # Frame 6: d 6,4,2,1,0 -> u 1.712,1.516,1.231,1: (2,4) .285 > (4,5) .231 -> mu 4.5 span 2.
    # Frame 7: d 7,5,2.5,1,0 -> u 1.793,1.621,1.316,1: (2,4.5) .304 < (4.5,6) .316 -> mu 3 span 5.
    got = merges(4, 0.3, 8)
    assert got[4] == [(0, 1), (1.5, 2), (3, 1), (4, 1)]
    assert got[5] == [(0, 1), (2.0, 3), (4, 1), (5, 1)]
    assert got[6] == [(0, 1), (2.0, 3), (4.5, 2), (6, 1)]
    assert got[7] == [(0, 1), (3.0, 5), (6, 1), (7, 1)]


def test_paper_no_anchor_merges_first_pair():
    # without the anchor, frame 0 is an ordinary entry: beta 1, budget 3, frame 3: 0,1,2,3 gaps 1,1
    # (pair (2,3) excluded) -> oldest pair (0,1) -> mu 0.5.
    got = merges(3, 1.0, 4, anchor=False)
    assert got[3] == [(0.5, 2), (2, 1), (3, 1)]


def test_release_budget4_beta1_by_hand():
    # Chunks of 3; frames reach the bank measured from the next chunk's first frame.
    # Frames 0-2 (now 3) and 3 (now 6) fit. Frame 4 (now 6): ages 6,5,4,3,2, all gaps 1, the
    # anchor competes -> tie -> pair (0,1): anchor keeps frame 0, span 2.
    # Frame 5: ages 6,4,3,2,1: gaps 2,1,[1 excluded] -> (2,3) -> round(2.5) = 2 (half to even).
    # Frame 6 (now 9): ages 9,7,5,4,3: gaps 2,2,1 -> (4,5) -> round(4.5) = 4.
    # Frame 7: ages 9,7,5,3,2: gaps 2,2,2 -> anchor pair -> anchor span 4 (frames 0-3).
    # Frame 8: ages 9,5,3,2,1: gaps 4,2,1 -> (6,7) -> round(6.5) = 6.
    got = merges(4, 1.0, 9, preset="release")
    assert got[3] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert got[4] == [(0, 2), (2, 1), (3, 1), (4, 1)]
    assert got[5] == [(0, 2), (2, 2), (4, 1), (5, 1)]
    assert got[6] == [(0, 2), (2, 2), (4, 2), (6, 1)]
    assert got[7] == [(0, 4), (4, 2), (6, 1), (7, 1)]
    assert got[8] == [(0, 4), (4, 2), (6, 2), (8, 1)]


# -- tensor merges -------------------------------------------------------------------------------
def check_entries_against(mem: FadeMemMemory, expected: dict[int, tuple[torch.Tensor, torch.Tensor]], atol):
    view = mem.view(ChunkQuery(mem.frames_seen, 3))
    rope = mem.rope
    k_unrot = rope.rotate_temporal(view.k, view.positions, inverse=True)
    for e in mem.schedule.entries:
        ek, ev = expected[e.first]
        sl = slice(e.slot * TOK, (e.slot + 1) * TOK)
        torch.testing.assert_close(mem.store.k[0, e.slot].double(), ek.double(), atol=atol, rtol=0)
        torch.testing.assert_close(mem.store.v[0, e.slot].double(), ev.double(), atol=atol, rtol=0)
        torch.testing.assert_close(k_unrot[0, sl].double(), ek.double(), atol=max(atol, 1e-5), rtol=0)
        torch.testing.assert_close(view.v[0, sl].double(), ev.double(), atol=atol, rtol=0)


@pytest.mark.parametrize("merge", ["weighted", "nearest", "max"])
@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_closed_form_merges(merge, beta):
    mem = bound(f"fademem:budget=5,beta={beta},merge={merge}")
    k, v = frames(40)
    feed(mem, k, v)
    expected = {}
    for e in mem.schedule.entries:
        cover = slice(e.first, e.first + e.span)
        if merge == "weighted":  # span weights compose to the plain mean of the covered frames
            expected[e.first] = (k[cover, 0].mean(0), v[cover, 0].mean(0))
        elif merge == "nearest":  # always the frame nearest the present
            expected[e.first] = (k[e.last, 0], v[e.last, 0])
        else:
            expected[e.first] = (k[cover, 0].amax(0), v[cover, 0].amax(0))
    assert any(e.span > 2 for e in mem.schedule.entries)
    check_entries_against(mem, expected, atol=1e-9)


@pytest.mark.parametrize("spec,rule", [
    ("fademem:budget=5,merge=average", "average"),
    ("fademem:budget=6,preset=release,positions=absolute", "release"),
    ("fademem:budget=6,preset=release,span_gamma=1.0,beta=0.7", "release-linear"),
])
def test_replayed_merges(spec, rule):
    """average: 1/2-1/2; release: span**gamma weights, anchor keeps frame 0's K/V.

    A second schedule run in lockstep names each merged pair; the reference K/V are rebuilt from
    the original frames with plain tensor arithmetic (no slots, none of the policy's tensor code).
    """
    mem = bound(spec)
    k, v = frames(45, seed=1)
    gamma, release = mem.gamma, mem.preset == "release"
    sched = mem.new_schedule()
    ref: list[tuple] = []  # (k, v, span, anchor) in temporal order
    for s in range(0, 45, 3):
        mem.insert(k[s:s + 3, 0].reshape(1, -1, 1, HEAD_DIM), v[s:s + 3, 0].reshape(1, -1, 1, HEAD_DIM), s)
        for f in range(s, s + 3):
            step = sched.add(f, s + 3)
            ref.append((k[f, 0], v[f, 0], 1, f == 0))
            if step.merge is None:
                continue
            i = step.merge.index
            (ka, va, sa, an), (kb, vb, sb, _) = ref[i], ref[i + 1]
            if an and release:
                merged = (ka, va, sa + sb, True)
            elif rule == "average":
                merged = ((ka + kb) / 2, (va + vb) / 2, sa + sb, False)
            else:
                wa, wb = sa ** gamma, sb ** gamma
                merged = ((wa * ka + wb * kb) / (wa + wb), (wa * va + wb * vb) / (wa + wb), sa + sb, False)
            ref[i:i + 2] = [merged]
    ents = mem.schedule.entries
    assert [e.span for e in ents] == [r[2] for r in ref]
    if release:
        assert ents[0].span > 1  # the anchor absorbed neighbours and still holds frame 0's K/V
        torch.testing.assert_close(mem.store.k[0, ents[0].slot], k[0, 0])
    check_entries_against(mem, {e.first: r[:2] for e, r in zip(ents, ref)}, atol=1e-9)


def test_release_weights_are_sqrt_span():
    sched = fs.Schedule(budget=4, beta=1.0, preset="release", span_gamma=0.5)
    assert sched.weights(2, 1) == pytest.approx((math.sqrt(2) / (math.sqrt(2) + 1), 1 / (math.sqrt(2) + 1)))
    assert FadeMemMemory(preset="release").gamma == 0.5 and FadeMemMemory().gamma == 1.0


def test_bf16_merge_accumulates_in_float32():
    mem = bound("fademem:budget=3,beta=1.0")
    k, v = frames(12)
    feed(mem, k.bfloat16(), v.bfloat16())
    for e in mem.schedule.entries:
        cover = slice(e.first, e.first + e.span)
        assert mem.store.k.dtype == torch.bfloat16
        torch.testing.assert_close(mem.store.k[0, e.slot].float(), k[cover, 0].bfloat16().float().mean(0),
                                   atol=0.03 * e.span, rtol=0.02)


# -- positions -----------------------------------------------------------------------------------
def release_after(n_frames: int, budget: int = 12, beta: float = 0.3, anchor: bool = True) -> FadeMemMemory:
    mem = bound(f"fademem:preset=release,budget={budget},beta={beta},anchor={anchor}")
    k, v = frames(n_frames)
    feed(mem, k, v)
    return mem


@pytest.mark.parametrize("n", [3, 9, 12, 15])
def test_release_absolute_before_frame_18(n):
    mem = release_after(n)
    view = mem.view(ChunkQuery(n, 3))
    ents = mem.schedule.entries
    assert [view.positions[e.slot] for e in ents] == [e.mu for e in ents]
    assert view.query_positions == (n, n + 1, n + 2)


def test_release_absolute_until_bank_full():
    # budget 12 but only 9 frames generated, chunk asked at 18: the bank is not full -> absolute
    mem = release_after(9)
    pos, chunk0 = mem._positions(18)
    assert pos == [e.mu for e in mem.schedule.entries] and chunk0 == 18
    assert not fs.use_window(11, 12, 30) and fs.use_window(12, 12, 18) and not fs.use_window(12, 12, 17)


@pytest.mark.parametrize("n", [18, 21, 60, 240])
def test_release_compact_layout(n):
    mem = release_after(n)
    view = mem.view(ChunkQuery(n, 3))
    ents = mem.schedule.entries
    pos = [view.positions[e.slot] for e in ents]
    assert view.query_positions == (18.0, 19.0, 20.0)
    assert pos[0] == 0 and ents[0].anchor
    assert pos[-3:] == [15, 16, 17]
    assert len(set(pos)) == len(pos) and all(p == int(p) for p in pos)
    assert all(1 <= p <= 14 for p in pos[1:-3]) and pos == sorted(pos)
    assert [e.position for e in mem.entries()] == pos


def brute_force_gaps(targets: list[float], beta: float) -> list[int]:
    """Over every strictly decreasing assignment of gaps 4..17 to the far entries (oldest first),
    the lexicographically best (error, gap) sequence: what the greedy released allocator claims."""
    best_key, best = None, None
    for combo in itertools.combinations(range(fs.MAX_GAP, fs.FAR_MIN_GAP - 1, -1), len(targets)):
        key = tuple(x for g, t in zip(combo, targets)
                    for x in (abs(g ** beta - min(max(t, 4), 17) ** beta), g))
        if best_key is None or key < best_key:
            best_key, best = key, list(combo)
    return best


@settings(max_examples=40, deadline=None)
@given(mus=st.lists(st.integers(1, 400), min_size=0, max_size=11, unique=True),
       start_extra=st.integers(1, 50), beta=st.sampled_from([0.1, 0.3, 0.5, 1.0]), anchor=st.booleans())
def test_layout_gaps_match_brute_force(mus, start_extra, beta, anchor):
    mus = ([0.0] if anchor else []) + sorted(float(m) for m in mus)
    start = int(max(mus, default=0)) + start_extra
    pos = fs.window_layout(mus, anchor, start, beta)
    normals = mus[1:] if anchor else mus
    npos = pos[1:] if anchor else pos
    if anchor:
        assert pos[0] == 0
    nb = min(3, len(normals))
    assert npos[len(npos) - nb:] == list(range(18 - nb, 18))
    far = normals[:len(normals) - nb]
    gaps = [18 - p for p in npos[:len(far)]]
    assert gaps == brute_force_gaps([max(1.0, start - m) for m in far], beta)
    assert len(set(pos)) == len(pos)


def test_layout_rejects_too_many_entries():
    with pytest.raises(ValueError, match="distinct gaps"):
        fs.window_layout([0.0] + [float(i) for i in range(1, 19)], True, 30, 0.3)


def test_paper_positions():
    mem = bound("fademem:budget=6")
    k, v = frames(30)
    feed(mem, k, v)
    view = mem.view(ChunkQuery(30, 3))
    ents = mem.schedule.entries
    assert [view.positions[e.slot] for e in ents] == [e.mu for e in ents]  # fractional mu
    assert any(e.mu != int(e.mu) for e in ents)
    assert view.query_positions == (30.0, 31.0, 32.0)
    compact = bound("fademem:budget=6,positions=compact")
    feed(compact, k, v)
    cview = compact.view(ChunkQuery(30, 3))
    cpos = sorted(cview.positions)
    assert cpos[0] == 0 and cpos[-3:] == [15, 16, 17] and cview.query_positions == (18.0, 19.0, 20.0)


# -- misc contract -------------------------------------------------------------------------------
def test_frame_slots_recache_and_state_dict():
    mem = release_after(30, budget=8)
    slots = mem.frame_slots()
    ents = mem.schedule.entries
    assert sorted(slots) == [e.first for e in ents if e.span == 1 and not e.anchor]
    assert 0 not in slots
    held = mem.held_slots()
    assert held == {**slots, 0: (mem.store, ents[0].slot)} and ents[0].span > 1
    assert 0 not in bound("fademem:budget=4,anchor=false").held_slots()
    stack = MemoryStack(mem, 2).bind(WanRoPE(HEAD_DIM), TOK)
    k, v = frames(30)
    for layer in stack:
        feed(layer, k, v)
    state = stack.state_dict()
    other = MemoryStack(mem, 2).bind(WanRoPE(HEAD_DIM), TOK)
    other.load_state_dict(state)
    more_k, more_v = frames(3, seed=5)
    for s in (stack, other):
        s[0].insert(more_k[:, 0].reshape(1, -1, 1, HEAD_DIM), more_v[:, 0].reshape(1, -1, 1, HEAD_DIM), 30)
    assert [(e.mu, e.span) for e in stack[0].entries()] == [(e.mu, e.span) for e in other[0].entries()]
    torch.testing.assert_close(stack[0].view(ChunkQuery(33, 3)).k, other[0].view(ChunkQuery(33, 3)).k)


def test_spec_roundtrip_and_defaults():
    mem = build_memory("fademem:preset=release,budget=10,positions=absolute,span_gamma=0.7")
    assert build_memory(mem.spec()).knobs() == mem.knobs()
    assert FadeMemMemory().position_mode == "absolute" and FadeMemMemory(preset="release").position_mode == "compact"
    assert build_memory("fademem:positions=none").positions is None


@pytest.mark.parametrize("spec,match", [
    ("fademem:budget=2", "budget 2 is too small"),
    ("fademem:budget=1,anchor=false", "budget 1 is too small"),
    ("fademem:budget=-3", "too small"),
    ("fademem:beta=0", "beta must be in"),
    ("fademem:beta=1.5", "beta must be in"),
    ("fademem:beta=-0.3", "beta must be in"),
    ("fademem:span_gamma=-1", "span_gamma"),
    ("fademem:budget=19,preset=release", "compact"),
    ("fademem:budget=18,preset=release,anchor=false", "compact"),
    ("fademem:colour=blue", "unknown knob 'colour'"),
    ("fademem:merge=median", "merge must be one of"),
    ("fademem:preset=official", "preset must be one of"),
    ("fademem:budget=twelve", "budget must be int"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        build_memory(spec)


def test_bad_tensors():
    mem = bound("fademem:budget=4")
    k, v = frames(3)
    with pytest.raises(ValueError, match="shapes differ"):
        mem.insert(k[0, 0][None], v[:2, 0].reshape(1, -1, 1, HEAD_DIM), 0)
    with pytest.raises(ValueError, match="dtypes differ"):
        mem.insert(k[0, 0][None], v[0, 0][None].float(), 0)
    with pytest.raises(ValueError, match="whole frames"):
        mem.insert(k[0, 0][None, :1], v[0, 0][None, :1], 0)
    mem.insert(k[0, 0][None], v[0, 0][None], 0)
    with pytest.raises(ValueError, match="float64"):
        mem.insert(k[1, 0][None].float(), v[1, 0][None].float(), 1)
    with pytest.raises(ValueError, match="does not match"):
        mem.insert(torch.zeros(2, TOK, 1, HEAD_DIM, dtype=torch.float64),
                   torch.zeros(2, TOK, 1, HEAD_DIM, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="in order"):
        mem.insert(k[1, 0][None], v[1, 0][None], 5)
    assert mem.frames_seen == 1 and len(mem.schedule.entries) == 1  # failed inserts left no trace
    with pytest.raises(ValueError, match="in order"):
        fs.Schedule(budget=3, beta=0.3).add(2)
    with pytest.raises(ValueError, match="no eligible pair"):
        fs.choose_pair([0.0, 1.0, 2.0], 2, 0.3, skip_first=True)
