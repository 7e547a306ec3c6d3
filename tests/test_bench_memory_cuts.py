"""`fademem bench memory --episodes-kind cuts` (issue 18): scene A, cut to B, cut back to A."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fademem.bench import memory_cuts, memory_policy
from fademem.bench.memory_episodes import Episode
from fademem.cli import main
from fademem.embedded.world import World, frame_at
from fademem.embedded.world.revisit import revisit_onsets

pytestmark = pytest.mark.usefixtures("one_thread")
C1, C2, OPENING, T = 12, 30, 18, 48


def _episode(seed=5):  # A has a bouncing object: its frames depend on A's own time
    eps, lags, skipped = memory_cuts.cut_episodes(1, seed, T, OPENING, (C1, C2))
    assert skipped == []
    return eps[0], lags[0]


def _expected_truth(ep, n):
    """Frame by frame from the two worlds: A until C1, B until C2, then A resuming at its frame C1."""
    out = []
    for t in range(n):
        if t < C1:
            out.append(frame_at(ep.prompt, ep.world_seed, t))
        elif t < C2:
            out.append(frame_at(ep.prompt_b, ep.world_seed_b, t - C1))
        else:
            out.append(frame_at(ep.prompt, ep.world_seed, t - (C2 - C1)))
    return np.stack(out)


def test_cut_truth_is_the_concatenation_of_the_two_worlds():
    ep, _ = _episode()
    assert ep.prompt != ep.prompt_b and ep.world_seed != ep.world_seed_b and ep.cut_frames == (C1, C2)
    a, b = memory_cuts.cut_pair(5)
    assert a.colour != b.colour and a.texture != b.texture and a.camera.move == b.camera.move == "static"
    video = ep.render(T)
    np.testing.assert_array_equal(video, _expected_truth(ep, T))
    # hard cuts: the frames across each cut differ a lot; the return resumes A where it left
    assert np.abs(video[C1] - video[C1 - 1]).mean() > 0.05
    assert np.abs(video[C2] - video[C2 - 1]).mean() > 0.05
    np.testing.assert_array_equal(video[C2], World(ep.prompt, ep.world_seed).frame_at(C1))
    assert np.abs(video[-1] - World(ep.prompt, ep.world_seed).frame_at(T - 1)).max() > 0.1  # A did not run on


def test_lags_mark_the_return_to_a_as_a_revisit_with_the_gap():
    ep, lags = _episode()
    assert lags.shape == (T,)
    assert (lags[:C2] == 0).all()  # A's first visit and B: new content, no revisit
    assert (lags[C2:] == C2 - C1 + 1).all()  # A's content, last seen at C1 - 1
    assert revisit_onsets(lags, start=OPENING) == [C2] and ep.return_frame == C2
    aligned, after = memory_cuts.return_masks([ep], [lags], 6, OPENING, T)
    want = np.zeros(T, bool)
    want[C2:C2 + 6] = True
    np.testing.assert_array_equal(aligned[0], want[OPENING:])
    np.testing.assert_array_equal(after[0], (np.arange(T) >= C2)[OPENING:])


def test_cut_frames_must_put_the_first_cut_in_the_opening():
    with pytest.raises(ValueError, match="cut frames"):
        memory_cuts.cut_episodes(1, 0, T, OPENING, (OPENING, C2))
    with pytest.raises(ValueError, match="cut frames"):
        memory_cuts.cut_episodes(1, 0, T, OPENING, (C1, T))
    ep, _ = _episode()
    assert memory_cuts.group_switches([ep, ep], [0, 1]) == [(C1, [ep.prompt_b] * 2), (C2, [ep.prompt] * 2)]
    assert memory_cuts.group_switches([Episode(0, "p", 0, 0, "x")], [0]) is None  # plain episodes: no switch


def test_cli_cuts_end_to_end(tiny_weights, tmp_path, monkeypatch):
    """1.5 s cut, 3.75 s return (8 fps: frames 12 and 30), opening 2.25 s (18), video 6 s (48): the truth the
    policies are scored against, the prompts in effect per chunk, and the report."""
    real, seen = memory_policy.run_policy, []

    def spy(st, requested, spec, note, log=print):
        gen = st.pipe.generate

        def recording(*a, **k):
            for chunk in gen(*a, **k):
                seen.append((spec, chunk.start, list(chunk.prompts)))
                yield chunk

        st.pipe.generate = recording
        try:
            for i, ep in enumerate(st.episodes):
                np.testing.assert_array_equal(st.truth[i].numpy(), _expected_truth(ep, st.num_frames))
            return real(st, requested, spec, note, log)
        finally:
            del st.pipe.generate

    monkeypatch.setattr(memory_policy, "run_policy", spy)
    out = tmp_path / "cuts"
    r = CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, "--episodes-kind", "cuts",
                                  "--cuts", "1.5,3.75", "--episodes", "2", "--seconds", "6", "--opening-seconds",
                                  "2.25", "--budget", "6", "--policies", "full,window:budget=6", "--out", str(out),
                                  "--no-progress", "--no-plot"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "memory.json").read_text())
    cfg = rep["config"]
    assert cfg["episodes_kind"] == "cuts" and cfg["cut_frames"] == [C1, C2] and cfg["latent_frames"] == T
    eps = rep["episodes"]
    assert [e["source"] for e in eps] == ["cut_pair(0)", "cut_pair(1)"] and eps[1]["noise_seed"] == 1
    assert all(e["return_frame"] == C2 and e["lags"][C2] == C2 - C1 + 1 for e in eps)
    # the prompts in effect: A before the first cut, B until the return, A after it (both policies)
    for spec in ("full", "window:budget=6"):
        chunks = [(s, p) for sp, s, p in seen if sp == spec]
        assert [s for s, _ in chunks] == list(range(0, T, 3))
        for start, prompts in chunks:
            want = [e["prompt_b"] if C1 <= start < C2 else e["prompt"] for e in eps]
            assert prompts == want, start
    assert rep["revisit"]["aligned_frames"] == [6, 6]
    for pol in rep["policies"]:
        assert pol["error"] is None and pol["after_return"]["n_frames"] == 2 * (T - C2)
        assert pol["revisit"]["n_frames"] == 12 and len(pol["episodes"][0]["psnr"]) == T - OPENING
        after = np.mean([np.mean(e["psnr"][C2 - OPENING:]) for e in pol["episodes"]])
        assert pol["after_return"]["psnr"][0] == pytest.approx(after)
    pw = rep["pairwise"]["after_return"]["psnr"]["overall"]
    assert [(e["a"], e["b"], e["n"]) for e in pw] == [("full", "window:budget=6", 2)]
    table = (out / "memory.txt").read_text()
    assert "Cuts (A, cut at frame 12 to B, cut back to A at frame 30)" in table
    assert "full - window:budget=6" in table


def test_cli_cuts_rejects_a_cut_after_the_opening(tiny_weights, tmp_path):
    r = CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, "--episodes-kind", "cuts",
                                  "--cuts", "3,4", "--episodes", "1", "--seconds", "6", "--opening-seconds", "2.25",
                                  "--policies", "full", "--out", str(tmp_path / "x"), "--no-progress", "--no-plot"])
    assert r.exit_code != 0 and "cut frames must satisfy" in r.output
    r = CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, "--episodes-kind", "cuts",
                                  "--cuts", "1.5", "--policies", "full", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "two cut times" in r.output

