"""Procedural world: grammar round trip, deterministic rendering, revisit ground truth."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fademem.embedded.world import (
    BENCHMARK_SCENES,
    GRAMMAR,
    MAX_PROMPT_WORDS,
    PAD_ID,
    SHAPES,
    VOCABULARY,
    ObjectSpec,
    World,
    detokenize,
    frame_at,
    home_return_frames,
    iter_frames,
    last_seen,
    parse_prompt,
    render,
    revisit_scene,
    sample_prompt,
    sample_scene,
    tokenize,
)

PAN = "a large red circle standing still over a dotted green background, camera pans right and returns after {} seconds"


def test_render_deterministic_per_seed():
    p = sample_prompt(3)
    a, b = render(p, 7, 24), render(p, 7, 24)
    assert a.shape == (24, 64, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert not np.array_equal(a, render(p, 8, 24))


@pytest.mark.parametrize("seed", range(8))
def test_sampled_scenes_render(seed):
    v = render(sample_scene(seed), seed, 6, size=32)
    assert v.shape == (6, 32, 32, 3) and np.isfinite(v).all()
    assert v.std() > 0.01  # not blank


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_prompt_round_trip(seed):
    p = sample_prompt(seed)
    spec = parse_prompt(p)
    assert spec.to_prompt() == p
    assert parse_prompt(p.upper() + ".") == spec  # case and a final period do not matter
    ids = tokenize(p, max_len=MAX_PROMPT_WORDS)
    assert len(ids) == MAX_PROMPT_WORDS and all(0 <= i <= len(VOCABULARY) for i in ids)
    assert detokenize(ids) == p


def test_vocabulary_and_tokenize():
    assert VOCABULARY == sorted(set(VOCABULARY)) and PAD_ID == 0
    assert {"circle", "striped", "curtain", ",", "64"} <= set(VOCABULARY)
    with pytest.raises(ValueError, match="unknown word"):
        tokenize("a small red blob")
    with pytest.raises(ValueError, match="max_len"):
        tokenize(sample_prompt(0), max_len=3)


@pytest.mark.parametrize("bad", [
    "a small red blob standing still over a plain red background, camera is static",
    "a small red circle over a plain red background, camera is static",
    "a small red circle standing still over a plain red background, camera is static, extra words",
    "",
])
def test_unparseable_prompt_lists_grammar(bad):
    with pytest.raises(ValueError) as e:
        parse_prompt(bad)
    msg = str(e.value)
    assert GRAMMAR in msg and "<prompt>" in msg and "::=" in msg
    assert all(s in msg for s in SHAPES)


def test_invalid_specs_raise():
    with pytest.raises(ValueError):
        ObjectSpec("small", "red", "circle", "drift")  # drift needs a direction
    with pytest.raises(ValueError):
        ObjectSpec("huge", "red", "circle")


def test_frame_at_equals_stream():
    p = "a small blue star drifting up and a large pink ring orbiting over a wavy gray background, " \
        "camera quickly keeps panning left, a narrow yellow wall passes"
    w = World(p, 5)
    frames = list(iter_frames(p, 5, 40))
    for t in (0, 1, 17, 39):
        assert np.array_equal(w.frame_at(t), frames[t])
    assert np.array_equal(frame_at(p, 5, 33), frames[33])
    assert np.array_equal(np.stack(list(w.iter_frames(10, start=30))), np.stack(frames[30:40]))
    assert np.array_equal(render(p, 5, 10, start=30), np.stack(frames[30:40]))


def test_pan_returns_to_identical_view():
    p = PAN.format(4)
    w = World(p, 0)
    back = home_return_frames(p, 200)
    assert back == [64, 128, 192]  # (2 s hold + 2 s out + 2 s away + 2 s back) * 8 fps
    assert np.array_equal(w.frame_at(back[0]), w.frame_at(0))
    assert not np.array_equal(w.frame_at(back[0] // 2), w.frame_at(0))


@pytest.mark.parametrize("gap_s,fps", [(2, 8), (8, 8), (4, 10)])
def test_last_seen_camera_gap(gap_s, fps):
    p = PAN.format(gap_s)
    back = home_return_frames(p, 10 ** 6, fps=fps)[:2]
    lag = last_seen(p, 0, back[1] + 1, fps=fps)
    assert lag[0] == 0 and lag[5] == 0  # first sighting
    for t in back:
        assert abs(lag[t] - gap_s * fps) <= 2
        assert abs(lag[t + 3 if t + 3 < len(lag) else t] - gap_s * fps) <= 2


def test_last_seen_object_gap_and_modes():
    p = "a large green star leaving and returning after 4 seconds over a plain gray background, camera is static"
    lag, maps = last_seen(p, 6, 120, per_pixel=True, reduce="max")
    assert maps.shape == (120, 64, 64) and maps.dtype == np.int32
    assert abs(lag.max() - 32) <= 2  # the star is away 4 s = 32 frames
    since = last_seen(p, 6, 40, mode="since")
    assert since[0] == 0 and (since[1:] == 1).all()  # static background: seen one frame ago
    with pytest.raises(ValueError):
        last_seen(p, 6, 4, mode="bogus")


def test_benchmark_scenes():
    for prompt, seed in BENCHMARK_SCENES:
        assert parse_prompt(prompt).to_prompt() == prompt
    spec = revisit_scene(11, gap_seconds=16)
    assert spec.camera.move == "return" and spec.camera.seconds == 16
    assert revisit_scene(11, 16) == spec
    lag = last_seen(BENCHMARK_SCENES[1][0], BENCHMARK_SCENES[1][1], 80, size=32)
    assert abs(lag[home_return_frames(BENCHMARK_SCENES[1][0], 80)[0]] - 32) <= 2
