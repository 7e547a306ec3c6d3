"""window, sink and memrope: views checked against an independent reading of each policy's rule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fademem.memory import ChunkQuery, MemoryStack, build_memory, parse_spec
from fademem.memory.memrope import MemRoPEMemory
from fademem.memory.sink import SinkMemory
from fademem.memory.window import WindowMemory
from fademem.rope import WanRoPE

B, TOK, H, D = 2, 4, 2, 16
F = 3  # frames of the chunk that asks for a view
ROPE = WanRoPE(D)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frames(n: int, seed: int = 0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ks = [torch.randn(B, TOK, H, D, generator=g).to(dtype=dtype, device=device) for _ in range(n)]
    vs = [torch.randn(B, TOK, H, D, generator=g).to(dtype=dtype, device=device) for _ in range(n)]
    return ks, vs


def make(spec: str):
    return build_memory(spec).bind(ROPE, TOK)


def feed(m, ks, vs, start: int, size: int) -> None:
    m.insert(torch.cat(ks[start:start + size], 1), torch.cat(vs[start:start + size], 1), start)


def cut(chunks: list[int]) -> list[tuple[int, int]]:
    out, s = [], 0
    for c in chunks:
        out.append((s, c))
        s += c
    return out


def check_view(view, expected: dict[float, tuple[torch.Tensor, torch.Tensor]], atol: float = 1e-5) -> None:
    """Each visible slot, un-rotated at its position, is exactly what the rule puts at that position."""
    assert sorted(view.positions) == sorted(expected), (view.positions, sorted(expected))
    assert view.k.shape == view.v.shape == (B, len(expected) * TOK, H, D)
    k = ROPE.rotate_temporal(view.k.float(), view.positions, inverse=True)
    for i, p in enumerate(view.positions):
        ek, ev = expected[p]
        sl = slice(i * TOK, (i + 1) * TOK)
        torch.testing.assert_close(k[:, sl], ek.float(), atol=atol, rtol=1e-4)
        torch.testing.assert_close(view.v[:, sl].float(), ev.float(), atol=atol, rtol=1e-4)


# -- independent rules ---------------------------------------------------------------------------
def window_rule(n: int, budget: int, sink: int, mode: str):
    """(position -> frame, chunk positions) for window (sink=0) and sink after n frames, next chunk at n."""
    sinks = list(range(min(n, sink)))
    recent = list(range(max(sink, n - (budget - sink)), n))
    if mode == "absolute":
        held = {float(f): f for f in sinks + recent}
        q = tuple(float(n + i) for i in range(F))
    else:
        held = {float(i): f for i, f in enumerate(sinks + recent)}
        q = tuple(float(len(held) + i) for i in range(F))
    return held, q


def ema_closed_form(xs: list[torch.Tensor], a: float) -> torch.Tensor:
    """EMA started at x_1: (1-a)^(n-1) x_1 + sum_{j>=2} a (1-a)^(n-j) x_j (float64)."""
    n = len(xs)
    out = (1 - a) ** (n - 1) * xs[0].double()
    for j in range(1, n):
        out = out + a * (1 - a) ** (n - 1 - j) * xs[j].double()
    return out


def memrope_expected(calls: list[tuple[int, int]], ks, vs, sink: int, recent: int, al: float, ash: float,
                     mode: str):
    """Groups evicted per insert call are frames [max(S, n_prev-R), max(S, n-R)); layout is slot order."""
    groups, n_prev = [], 0
    for s, c in calls:
        n = s + c
        g = list(range(max(sink, n_prev - recent), max(sink, n - recent)))
        if g:
            groups.append(g)
        n_prev = n
    n = n_prev
    layout: list[tuple[torch.Tensor, torch.Tensor]] = [(ks[f], vs[f]) for f in range(min(n, sink))]
    if groups:
        xk, xv = [], []
        for g in groups:
            gk = torch.stack([ks[f].double() for f in g]).mean(0)
            gv = torch.stack([vs[f].double() for f in g]).mean(0)
            if mode == "global":
                gk = gk.mean(1, keepdim=True).expand(B, TOK, H, D)
                gv = gv.mean(1, keepdim=True).expand(B, TOK, H, D)
            xk.append(gk)
            xv.append(gv)
        for a in (al, ash):
            layout.append((ema_closed_form(xk, a), ema_closed_form(xv, a)))
    layout += [(ks[f], vs[f]) for f in range(max(sink, n - recent), n)]
    return {float(i): kv for i, kv in enumerate(layout)}, groups


# -- window and sink -----------------------------------------------------------------------------
chunk_lists = st.lists(st.integers(1, 5), min_size=1, max_size=12)


@FAST
@given(budget=st.integers(1, 10), sink=st.integers(0, 9), chunks=chunk_lists,
       mode=st.sampled_from(["absolute", "compact"]), policy=st.sampled_from(["window", "sink"]))
def test_window_and_sink_hold_what_their_rule_says(budget, sink, chunks, mode, policy):
    if policy == "window":
        sink = 0
        m = make(f"window:budget={budget},positions={mode}")
    else:
        sink = min(sink, budget - 1)
        m = make(f"sink:budget={budget},sink={sink},positions={mode}")
    total = sum(chunks)
    ks, vs = frames(total, seed=budget * 100 + total)
    assert m.view(ChunkQuery(0, F)) is None
    bytes_full = None
    for s, c in cut(chunks):
        feed(m, ks, vs, s, c)
        n = s + c
        view = m.view(ChunkQuery(n, F))
        held, q = window_rule(n, budget, sink, mode)
        check_view(view, {p: (ks[f], vs[f]) for p, f in held.items()})
        assert view.query_positions == q
        assert view.tokens <= budget * TOK  # history budget never exceeded
        assert [e.first for e in m.entries()] == sorted(held.values())
        assert [e.position for e in m.entries()] == [p for p, _ in sorted(held.items(), key=lambda x: x[1])]
        if mode == "compact":
            assert max(view.positions + view.query_positions) < budget + F
        bytes_full = bytes_full or m.nbytes()
        assert m.nbytes() == bytes_full == 2 * B * budget * TOK * H * D * 4  # preallocated, flat


def test_defaults_match_self_forcing_and_longlive():
    w, s, r = make("window"), make("sink"), make("memrope")
    assert (w.budget, s.budget, s.sink, r.sink, r.recent, r.budget) == (18, 9, 3, 3, 4, 9)
    ks, vs = frames(30)
    for start in range(0, 30, 3):
        for m in (w, s, r):
            feed(m, ks, vs, start, 3)
    # LongLive: 3 sink + 6 recent history frames, chunk at its true index.
    v = s.view(ChunkQuery(30, 3))
    assert sorted(v.positions) == [0, 1, 2, 24, 25, 26, 27, 28, 29] and v.query_positions == (30, 31, 32)
    v = w.view(ChunkQuery(30, 3))
    assert sorted(v.positions) == list(range(12, 30))
    # MemRoPE: the 12-position window, queries at 9..11.
    v = r.view(ChunkQuery(30, 3))
    assert sorted(v.positions) == list(range(9)) and v.query_positions == (9.0, 10.0, 11.0)
    assert [e.kind for e in r.entries()] == ["sink"] * 3 + ["ema-long", "ema-short"] + ["frame"] * 4


# -- memrope -------------------------------------------------------------------------------------
alphas = st.sampled_from([0.01, 0.1, 0.5, 1.0])


@FAST
@given(sink=st.integers(0, 4), recent=st.integers(0, 5), chunks=chunk_lists, al=alphas, ash=alphas,
       mode=st.sampled_from(["global", "position"]))
def test_memrope_streams_equal_closed_form_ema(sink, recent, chunks, al, ash, mode):
    m = make(f"memrope:sink={sink},recent={recent},alpha_long={al},alpha_short={ash},mode={mode}")
    total = sum(chunks)
    ks, vs = frames(total, seed=7 * total + sink)
    calls, bytes_full = [], None
    for s, c in cut(chunks):
        feed(m, ks, vs, s, c)
        calls.append((s, c))
        view = m.view(ChunkQuery(s + c, F))
        expected, groups = memrope_expected(calls, ks, vs, sink, recent, al, ash, mode)
        check_view(view, expected, atol=2e-5)
        budget = sink + 2 + recent
        assert view.tokens <= budget * TOK
        # Online RoPE indexing: slots take 0..m-1, the chunk right after; never beyond the window.
        assert view.query_positions == tuple(float(len(expected) + i) for i in range(F))
        assert max(view.positions + view.query_positions) < budget + F
        ents = m.entries()
        assert [e.position for e in ents] == [float(i) for i in range(len(expected))]
        if groups:
            folded = [f for g in groups for f in g]
            ema = [e for e in ents if e.kind.startswith("ema")]
            assert [e.kind for e in ema] == ["ema-long", "ema-short"]
            assert all(e.span == len(folded) and e.first == folded[0] for e in ema)
            mus = [sum(g) / len(g) for g in groups]
            for e, a in zip(ema, (al, ash)):
                assert e.mu == pytest.approx(float(ema_closed_form([torch.tensor(x) for x in mus], a)))
            bytes_full = bytes_full or m.nbytes()
            assert m.nbytes() == bytes_full  # flat once the EMA slots exist
    assert m.ema.k is None or m.ema.k.dtype == torch.float32


def test_memrope_folds_each_calls_evicted_group_once():
    m = make("memrope:alpha_long=0.5,alpha_short=0.5")
    ks, vs = frames(15)
    for s in range(0, 15, 3):
        feed(m, ks, vs, s, 3)
    # recent overflowed after frames 6..8 (evicting 3, 4), after 9..11 (5, 6, 7), after 12..14 (8, 9, 10)
    assert m.folded == 8 and m.first_folded == 3
    grp = [[3, 4], [5, 6, 7], [8, 9, 10]]
    xs = [torch.stack([ks[f] for f in g]).mean(0).mean(1, keepdim=True) for g in grp]
    want = ema_closed_form(xs, 0.5)
    torch.testing.assert_close(m.ema.k[:, 0].double(), want, atol=1e-6, rtol=1e-6)
    # a per-frame EMA of the same frames is a different (nearby) value
    per_frame = ema_closed_form([ks[f].mean(1, keepdim=True) for g in grp for f in g], 0.5)
    assert not torch.allclose(per_frame, want, atol=1e-3)


def test_memrope_bf16_keeps_float32_state():
    m = make("memrope:mode=position")
    ks, vs = frames(24, dtype=torch.bfloat16)
    for s in range(0, 24, 3):
        feed(m, ks, vs, s, 3)
    view = m.view(ChunkQuery(24, 3))
    assert view.k.dtype == view.v.dtype == torch.bfloat16
    assert m.ema.k.dtype == m.ema.v.dtype == torch.float32
    assert m.ema.n_tok == TOK and make("memrope").ema.n_tok == 0
    g = make("memrope")
    for s in range(0, 24, 3):
        feed(g, ks, vs, s, 3)
    assert g.ema.n_tok == 1  # global mode keeps one float32 vector per head and stream


def test_no_host_device_sync_in_insert_and_view():
    """On the meta device any .item() / tensor-valued branch would raise."""
    for spec in ("window:budget=5", "sink:positions=compact", "memrope", "memrope:mode=position"):
        m = make(spec)
        ks, vs = frames(21, device="meta")
        for s in range(0, 21, 3):
            m.view(ChunkQuery(s, 3))
            feed(m, ks, vs, s, 3)
        assert m.view(ChunkQuery(21, 3)).k.device.type == "meta"


# -- prompt switches -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,held,recachable", [
    ("window:budget=5", range(7, 12), range(7, 12)),
    ("sink:budget=6,sink=2", [0, 1, 8, 9, 10, 11], range(8, 12)),
    ("memrope:sink=2,recent=3", [0, 1, 9, 10, 11], range(9, 12)),
])
def test_recache_and_replace(spec, held, recachable):
    m = make(spec)
    ks, vs = frames(12)
    for s in range(0, 12, 3):
        feed(m, ks, vs, s, 3)
    assert sorted(m.frame_slots()) == list(recachable)
    assert m.recache_frames(100) == list(recachable)
    assert m.recache_frames(2) == list(recachable)[-2:] and m.recache_frames(0) == []
    before = m.view(ChunkQuery(12, 3))
    newk, newv = frames(2, seed=99)
    redo = m.recache_frames(2)
    m.replace(torch.cat(newk, 1), torch.cat(newv, 1), redo)
    after = m.view(ChunkQuery(12, 3))
    assert after is not before and after.positions == before.positions
    changed = {ks[f]: newk[i] for i, f in enumerate(redo)}
    k_after = ROPE.rotate_temporal(after.k, after.positions, inverse=True)
    k_before = ROPE.rotate_temporal(before.k, before.positions, inverse=True)
    n_changed = 0
    for i in range(len(after.positions)):
        sl = slice(i * TOK, (i + 1) * TOK)
        old = k_before[:, sl]
        hit = [new for o, new in changed.items() if torch.allclose(old, o, atol=1e-5)]
        want = hit[0] if hit else old
        n_changed += bool(hit)
        torch.testing.assert_close(k_after[:, sl], want, atol=1e-5, rtol=1e-5)
    assert n_changed == 2
    with pytest.raises(ValueError, match="not held individually"):
        m.replace(newk[0], newv[0], [0])  # a sink frame (or, for window, an evicted one)
    with pytest.raises(ValueError, match="2 frames of K/V for 1"):
        m.replace(torch.cat(newk, 1), torch.cat(newv, 1), [redo[0]])


def test_sink_frames_never_recached():
    m = make("sink")
    ks, vs = frames(5)
    feed(m, ks, vs, 0, 3)
    assert m.recache_frames(12) == []  # only sink frames so far
    feed(m, ks, vs, 3, 2)
    assert m.recache_frames(12) == [3, 4]


# -- state dict ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["window:budget=4", "window:positions=compact", "sink",
                                  "sink:budget=5,sink=1,positions=compact", "memrope",
                                  "memrope:mode=position,alpha_long=0.3", "memrope:sink=0,recent=1"])
def test_state_dict_round_trip(spec):
    ks, vs = frames(27, seed=3)
    a = make(spec)
    for s in range(0, 12, 3):
        feed(a, ks, vs, s, 3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint would: no tensors shared with `a`
    buf.seek(0)
    b = make(spec)
    b.load_state_dict(torch.load(buf))
    assert b.entries() == a.entries() and b.frames_seen == 12
    for s in range(12, 27, 3):
        va, vb = a.view(ChunkQuery(s, 3)), b.view(ChunkQuery(s, 3))
        assert va.positions == vb.positions and va.query_positions == vb.query_positions
        assert torch.equal(va.k, vb.k) and torch.equal(va.v, vb.v)
        feed(a, ks, vs, s, 3)
        feed(b, ks, vs, s, 3)
    assert a.entries() == b.entries() and a.nbytes() == b.nbytes()
    with pytest.raises(ValueError, match="saved from memory"):
        make("full").load_state_dict(a.state_dict())


def test_stack_and_specs():
    st_ = MemoryStack("sink:budget=12,positions=compact", 3).bind(ROPE, TOK)
    assert st_.spec == "sink:budget=12,positions=compact" and len(st_) == 3
    cls, kw = parse_spec("memrope:alpha-long=0.05,mode=position")
    assert cls is MemRoPEMemory and kw == {"alpha_long": 0.05, "mode": "position"}
    assert build_memory("memrope:alpha_long=0.05,mode=position").spec() == "memrope:alpha_long=0.05,mode=position"
    assert isinstance(build_memory("window"), WindowMemory) and isinstance(build_memory("sink"), SinkMemory)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,match", [
    ("window:budget=0", "budget"), ("window:budget=-3", "budget"), ("window:budget=2.5", "budget"),
    ("window:positions=relative", "positions"), ("window:bogus=1", "unknown knob 'bogus'"),
    ("sink:budget=0", "budget"), ("sink:budget=3,sink=3", "sink"), ("sink:budget=3,sink=5", "sink"),
    ("sink:sink=-1", "sink"), ("sink:positions=x", "positions"),
    ("memrope:alpha_long=0", "alpha_long"), ("memrope:alpha_short=1.5", "alpha_short"),
    ("memrope:alpha_long=-0.1", "alpha_long"), ("memrope:alpha_short=nan", "alpha_short"),
    ("memrope:recent=-1", "recent"), ("memrope:sink=-2", "sink"), ("memrope:mode=local", "mode"),
    ("memrope:budget=9", "unknown knob 'budget'"),
])
def test_bad_knobs(spec, match):
    with pytest.raises(ValueError, match=match):
        build_memory(spec)


def test_bad_knobs_direct():
    with pytest.raises(ValueError, match="budget"):
        WindowMemory(budget=True)
    with pytest.raises(ValueError, match="budget"):
        SinkMemory(budget=4.0)
    with pytest.raises(ValueError, match="alpha_long"):
        MemRoPEMemory(alpha_long=math.inf)
    with pytest.raises(ValueError, match="mode"):
        MemRoPEMemory(mode="Global")


@pytest.mark.parametrize("spec", ["window:budget=4", "sink:budget=4,sink=1", "memrope:sink=1,recent=1"])
def test_bad_tensors(spec):
    m = make(spec)
    ks, vs = frames(9)
    feed(m, ks, vs, 0, 3)
    view = m.view(ChunkQuery(3, 3))
    k, v = torch.cat(ks[3:6], 1), torch.cat(vs[3:6], 1)
    cases = [
        ((k, v[:, :8]), "shapes differ"),
        ((k, v.double()), "dtypes differ"),
        ((k, torch.empty_like(v, device="meta")), "different devices"),
        ((k[:, :6], v[:, :6]), "whole frames"),
        ((k[..., :8], v[..., :8]), "does not match|do not match"),
        ((k[:, :, :1], v[:, :, :1]), "does not match|do not match"),
        ((k.double(), v.double()), "memory holds"),
        ((k.to("meta"), v.to("meta")), "memory holds"),
        ((k[0], v[0]), "batch, tokens, heads, head_dim"),
    ]
    for (kk, vv), match in cases:
        with pytest.raises(ValueError, match=match):
            m.insert(kk, vv, 3)
        assert m.frames_seen == 3 and m.view(ChunkQuery(3, 3)) is view  # nothing changed
    with pytest.raises(ValueError, match="in order"):
        m.insert(k, v, 4)
    feed(m, ks, vs, 3, 3)
    assert m.frames_seen == 6
    with pytest.raises(ValueError, match="already holds"):
        m.view(ChunkQuery(3, 3))
