"""Temporal RoPE positions (issue 16, hour-long runs): every policy keeps the positions of every key
and query inside the range it states (``Memory.position_range``), compact / online indexing gives a
range that does not grow with the video, ``positions_used()`` reports what the views gave, and FadeMem
runs in compact positions by default only when the video outgrows the model's trained window."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_golden import ToyText

from fademem.memory import REGISTRY, ChunkQuery, build_memory
from fademem.pipeline import VideoPipeline
from fademem.pipeline.session import DEFAULT_TRAINED_FRAMES
from fademem.pipeline.state import load_state, save_state
from fademem.rope import WanRoPE
from fademem.wan.model import CausalWanModel, WanConfig

pytestmark = pytest.mark.usefixtures("one_thread")
B, TOK, H, D = 1, 4, 2, 16
ROPE = WanRoPE(D)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (spec, range independent of the video length); 4-token frames (a 2x2 grid)
SPECS = [
    ("full", False),
    ("window:budget=5", False), ("window:budget=5,positions=compact", True),
    ("sink:budget=5,sink=2", False), ("sink:budget=5,sink=2,positions=compact", True),
    ("memrope:recent=3", True), ("memrope:sink=0,recent=1,mode=position", True),
    ("fademem:budget=6", False), ("fademem:budget=6,positions=compact", True),
    ("fademem:budget=5,preset=release", True), ("fademem:budget=18,positions=compact", True),
    ("fademem:budget=4,anchor=false,positions=compact,merge=max", True),
    ("deepforcing:cache=6,budget=5,sink=2,recent=2", False),
    ("deepforcing:cache=6,budget=5,sink=2,recent=2,positions=unified", False),
    ("deepforcing:mode=sink-only,cache=6,sink=2", False),
    ("omnimem:topk=2,block_h=1,block_w=2,query_group=2,window_chunks=2,grid=2x2", False),
    ("memflow:sink=2,window=3,bank=2,every=1", False),
    ("memflow:sink=2,window=3,bank=2,every=2,positions=compact", True),
    ("compressor:window=2,budget=3,rate=2x1x1,grid_w=2,allow_random=true", False),
]


def test_every_policy_is_covered():
    assert {s.split(":")[0] for s, _ in SPECS} == set(REGISTRY)


def _device_positions(mem) -> list[float]:
    """Positions a view rotates per token on the device (reported as nan in MemoryView.positions)."""
    if mem.name == "deepforcing":
        p = mem.token_positions()
        return [] if p is None else p.flatten().tolist()
    if mem.name == "memflow" and mem.bank_pos is not None and mem.positions == "absolute":
        nb, _ = mem._visible_bank()
        return mem.bank_pos[:, :nb].flatten().tolist()
    return []


def run_policy(spec: str, chunks: int, chunk: int, seed: int = 0):
    """Feed ``chunks`` chunks of random frames; every position every view gave (host and device),
    the host-known ones alone, and the memory."""
    mem = build_memory(spec).bind(ROPE, TOK)
    g = torch.Generator().manual_seed(seed)
    every, host = [], []
    for c in range(chunks):
        start = c * chunk
        q = torch.randn(B, chunk * TOK, H, D, generator=g)
        ctx = torch.randn(B, 5, H, D, generator=g)
        view = mem.view(ChunkQuery(start, chunk, q, ctx))
        if view is None:
            pos = [float(start + i) for i in range(chunk)]
        else:
            pos = [p for p in view.positions + view.query_positions if not math.isnan(p)]
        host += pos
        every += pos + _device_positions(mem)
        mem.insert(torch.randn(B, chunk * TOK, H, D, generator=g), torch.randn(B, chunk * TOK, H, D, generator=g),
                   start)
    return every, host, mem


@pytest.mark.parametrize("spec,bounded", SPECS)
@FAST
@given(chunks=st.integers(1, 16), chunk=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_positions_stay_in_the_stated_range(spec, bounded, chunks, chunk, seed):
    every, host, mem = run_policy(spec, chunks, chunk, seed)
    lo, hi = mem.position_range(chunks * chunk, chunk)
    assert min(every) >= lo and max(every) <= hi, (spec, min(every), max(every), lo, hi)
    assert mem.positions_used() == (min(host), max(host))
    assert mem.positions_bounded(chunk) == bounded


@pytest.mark.parametrize("spec,bounded", SPECS)
def test_the_range_is_reached_and_bounded_ranges_do_not_grow(spec, bounded):
    """Over a long run the stated top is reached (the statement is tight), and a bounded policy's is
    the same for 40 frames as for an hour of Wan video (14,400 latent frames)."""
    every, _, mem = run_policy(spec, 40, 3)
    lo, hi = mem.position_range(120, 3)
    assert max(every) == hi and min(every) == lo
    if bounded:
        assert mem.position_range(14_400, 3) == (lo, hi) and hi <= 20
    else:
        assert mem.position_range(14_400, 3) == (0.0, 14_399.0)


def test_position_range_refuses_bad_lengths():
    mem = build_memory("sink")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_frames must be a positive integer"):
            mem.position_range(bad)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        mem.position_range(9, 0)


def test_positions_used_survive_a_state_round_trip():
    _, _, mem = run_policy("window:budget=5", 6, 3)
    state = mem.state_dict()
    fresh = build_memory("window:budget=5").bind(ROPE, TOK)
    assert fresh.positions_used() is None
    fresh.load_state_dict(state)
    assert fresh.positions_used() == mem.positions_used() == (0.0, 17.0)
    del state["positions_used"]  # a state saved before positions were recorded still loads
    fresh.load_state_dict(state)
    assert fresh.positions_used() is None


# -- FadeMem's default for long runs ---------------------------------------------------------------
def test_fademem_for_run_chooses_compact_only_past_the_trained_window():
    mem = build_memory("fademem")
    assert mem.for_run(21, 21) == "fademem" and mem.for_run(22, 21) == "fademem:positions=compact"
    assert mem.for_run(603, 603) == "fademem"
    for kept in ("fademem:positions=absolute", "fademem:positions=compact", "fademem:preset=release",
                 "fademem:budget=19"):  # given positions, the release's own, a budget the layout cannot hold
        assert build_memory(kept).for_run(10 ** 6, 21) == build_memory(kept).spec()
    assert build_memory("sink").for_run(10 ** 6, 21) == "sink"  # other policies: as given


def _pipe():
    torch.manual_seed(0)
    cfg = WanConfig.tiny()
    return VideoPipeline(CausalWanModel(cfg).eval(), ToyText(cfg.text_dim)), (cfg.in_dim, 4, 6)


def _latents(session):
    out = []
    while not session.done:
        out += session.step()
    out += session.drain()
    return torch.cat([c.latents for c in out], dim=2)


def test_long_runs_use_compact_positions_and_short_ones_do_not():
    pipe, shape = _pipe()
    assert DEFAULT_TRAINED_FRAMES == 21
    short = pipe.session("a cat", 21, memory="fademem:budget=6", seed=1, latent_shape=shape)
    assert short.stack.spec == "fademem:budget=6"
    _latents(short)
    assert short.positions_used() == (0.0, 20.0)
    long = pipe.session("a cat", 30, memory="fademem:budget=6", seed=1, latent_shape=shape)
    assert long.stack.spec == "fademem:budget=6,positions=compact"
    got = _latents(long)
    assert long.positions_used() == (0.0, 20.0)  # absolute would reach 29
    want = _latents(pipe.session("a cat", 30, memory="fademem:budget=6,positions=compact", seed=1,
                                 latent_shape=shape))
    assert torch.equal(got, want)
    absolute = pipe.session("a cat", 30, memory="fademem:budget=6,positions=absolute", seed=1, latent_shape=shape)
    assert not torch.equal(_latents(absolute), want) and absolute.positions_used() == (0.0, 29.0)
    # the model's window can be stated per session or per pipeline
    assert pipe.session("a cat", 30, memory="fademem", trained_frames=30, latent_shape=shape).stack.spec == "fademem"
    pipe.trained_frames = 603
    assert pipe.session("a cat", 30, memory="fademem", latent_shape=shape).stack.spec == "fademem"
    with pytest.raises(ValueError, match="trained_frames must be a positive integer"):
        pipe.session("a cat", 30, memory="fademem", trained_frames=0, latent_shape=shape)


def test_a_resumed_run_keeps_the_positions_it_started_with(tmp_path):
    """Saved from a 15-frame run (absolute: it fits the window), resumed to 30 frames: still absolute,
    equal to an uninterrupted 30-frame absolute run; and a compact state resumed shorter stays compact."""
    pipe, shape = _pipe()
    s = pipe.session("a cat", 15, memory="fademem:budget=6", seed=2, latent_shape=shape)
    head = _latents(s)
    path = save_state(tmp_path / "a.state", s.state_dict())
    s2 = pipe.session("a cat", 30, memory="fademem:budget=6", seed=2, latent_shape=shape)
    assert s2.stack.spec == "fademem:budget=6,positions=compact"
    s2.load_state_dict(load_state(path))
    assert s2.stack.spec == "fademem:budget=6"
    got = torch.cat([head, _latents(s2)], dim=2)
    want = _latents(pipe.session("a cat", 30, memory="fademem:budget=6,positions=absolute", seed=2,
                                 latent_shape=shape))
    assert torch.equal(got, want) and s2.positions_used() == (0.0, 29.0)

    s3 = pipe.session("a cat", 30, memory="fademem:budget=6", seed=2, latent_shape=shape)
    for _ in range(3):
        s3.step()
    path = save_state(tmp_path / "b.state", s3.state_dict())
    s4 = pipe.session("a cat", 18, memory="fademem:budget=6", seed=2, latent_shape=shape)
    s4.load_state_dict(load_state(path))
    assert s4.stack.spec == "fademem:budget=6,positions=compact"
    from fademem.pipeline.state import StateError

    s5 = pipe.session("a cat", 30, memory="fademem:budget=7", seed=2, latent_shape=shape)
    with pytest.raises(StateError, match="memory 'fademem:budget=6,positions=compact'"):
        s5.load_state_dict(load_state(path))


def test_generate_states_the_positions_of_the_run():
    from fademem.cli.generate_input import position_note
    from fademem.pipeline import embedded_pipeline

    pipe = embedded_pipeline()
    assert pipe.trained_frames == 603  # the shipped file: targets up to 600 frames into a video, 3-frame chunks
    hour = 60 * 60 * 8
    assert position_note(pipe, "fademem", hour) == ("memory fademem runs as fademem:positions=compact: temporal "
                                                    "positions 0..20, inside the model's trained 0..602")
    assert position_note(pipe, "fademem", 480) == ("memory fademem: temporal positions 0..479, inside the model's "
                                                   "trained 0..602")
    assert position_note(pipe, "sink", hour).endswith("up to 28799 (true frame indices); the model was trained on "
                                                      "0..602 (positions=compact keeps them inside)")
    assert position_note(pipe, "fademem:budget=19", hour).endswith("trained on 0..602")  # no compact layout for it
    assert "0..11, inside" in position_note(pipe, "memrope", hour)
