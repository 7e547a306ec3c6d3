"""VBench-Long's optional scene-cut splitting (``--use_semantic_splitting``; ``fademem eval score
--scene-split``): PySceneDetect's cuts on in-memory frames, clips by the 2 s rule inside each scene,
clip-to-clip consistency per scene, and the option off leaving everything as it was."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fademem.cli import main
from fademem.eval.protocol import fuse, split_clips, split_scene_clips

try:
    from tests.test_eval_models import synthetic_frames, write_video
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import synthetic_frames, write_video

pytestmark = pytest.mark.usefixtures("one_thread")

PERMS = [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)]


def scene_video(lengths, h: int = 128, w: int = 160) -> np.ndarray:
    """Scenes of ``lengths`` frames, each its own moving texture (synthetic_frames with another seed)
    in its own colour channel order: hard cuts between them, none inside (ContentDetector scores
    about 20 inside a scene, over 40 at a cut, against VBench-Long's threshold 35)."""
    return np.concatenate([synthetic_frames(n, h, w, seed=k)[..., list(PERMS[k % 4])]
                           for k, n in enumerate(lengths)])


def bounds(lengths) -> list[tuple[int, int]]:
    ends = np.cumsum(lengths).tolist()
    return list(zip([0, *ends[:-1]], ends))


@pytest.mark.parametrize("lengths", [[40, 50], [20, 37, 18, 30], [24, 15, 33]])
def test_scenes_are_cut_exactly_at_the_hard_cuts(lengths):
    """Two or three hard cuts give exactly those scenes; a 15-frame scene (PySceneDetect's
    min_scene_len) is kept."""
    from fademem.eval.scenes import detect_scenes

    assert detect_scenes(scene_video(lengths), 8) == bounds(lengths)


def test_a_flash_shorter_than_min_scene_len_merges_and_no_cut_is_one_scene():
    from fademem.eval.scenes import detect_scenes

    assert detect_scenes(scene_video([30, 8, 30]), 8) == [(0, 30), (30, 68)]  # PySceneDetect's MERGE filter
    assert detect_scenes(synthetic_frames(70, 128, 160), 8) == [(0, 70)]
    assert detect_scenes(synthetic_frames(5, 64, 64), 16) == [(0, 5)]


def test_clips_inside_scenes_follow_the_two_second_rule():
    """8 fps: 16-frame clips inside each scene; a remainder borrows from its own scene only; a scene
    shorter than a clip is one clip; no clip straddles a cut."""
    scenes = bounds([20, 37, 15, 30])
    assert split_scene_clips(scenes, 8) == [(0, 16), (4, 20), (20, 36), (36, 52), (41, 57), (57, 72),
                                            (72, 88), (86, 102)]
    assert split_scene_clips([(0, 100)], 8) == split_clips(100, 8)
    assert split_scene_clips(scenes, 8.9, seconds=1) == [(0, 8), (8, 16), (12, 20), (20, 28), (28, 36), (36, 44),
                                                        (44, 52), (49, 57), (57, 65), (64, 72), (72, 80), (80, 88),
                                                        (88, 96), (94, 102)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 70), min_size=1, max_size=6), st.sampled_from([4, 8, 16, 24.0, 29.97]))
def test_scene_clips_tile_every_scene(lengths, fps):
    seg = int(fps) * 2
    scenes = bounds(lengths)
    clips = split_scene_clips(scenes, fps)
    for a, b in scenes:
        inside = [(s, e) for s, e in clips if a <= s < b]
        assert all(e <= b for _, e in inside)  # never across a cut
        assert all(e - s == min(seg, b - a) for s, e in inside)
        assert sorted({t for s, e in inside for t in range(s, e)}) == list(range(a, b))


def test_a_video_without_cuts_gives_the_plain_clips():
    from fademem.eval.scenes import detect_scenes

    frames = synthetic_frames(70, 128, 160)
    assert split_scene_clips(detect_scenes(frames, 8), 8) == split_clips(70, 8)


class Recording:
    """A Scorer whose per-clip measure is cheap and known: the mean frame index of what it is given
    (each frame carries its index in its top-left pixel), recording every call."""

    @staticmethod
    def make(weights, **kw):
        from fademem.eval.scorer import Scorer

        class RecordingScorer(Scorer):
            def clip_score(self, dimension, frames, fps):
                idx = [int(f[0, 0, 0]) + 256 * int(f[0, 0, 1]) for f in frames]
                self.calls.append((dimension, idx))
                return Recording.measure(idx)

        s = RecordingScorer(weights, ("subject_consistency", "dynamic_degree"), "cpu", **kw)
        s.calls = []
        return s

    @staticmethod
    def measure(idx) -> float:
        return 0.9 + 0.001 * float(np.mean(idx)) / len(idx)

    @staticmethod
    def stamp(frames):
        frames = frames.copy()
        t = np.arange(len(frames))
        frames[:, 0, 0, 0], frames[:, 0, 0, 1], frames[:, 0, 0, 2] = t % 256, t // 256, 0
        return frames


@pytest.fixture
def dummy_weights(tmp_path):
    for name in ("dino_vitbase16_pretrain.pth", "raft-things.pth"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("slow_fast", [False, True])
def test_scorer_scores_clips_per_scene_and_clip_to_clip_per_scene(dummy_weights, slow_fast):
    """Clips come from each scene; clip-to-clip runs over the first frames of one scene's clips (None
    for a scene of one clip); every clip is fused with its own scene's clip-to-clip score."""
    lengths = [40, 15, 33]
    frames = Recording.stamp(scene_video(lengths))
    scorer = Recording.make(dummy_weights, scene_split=True, slow_fast=slow_fast)
    v = scorer.score_frames(frames, 8, path="v")
    scenes = bounds(lengths)
    clips = split_scene_clips(scenes, 8)
    assert v.scenes == scenes and v.clip_ranges == clips == [(0, 16), (16, 32), (24, 40), (40, 55), (55, 71),
                                                             (71, 87), (72, 88)]
    sc = [(d, i) for d, i in scorer.calls if d == "subject_consistency"]
    assert [i for _, i in sc[:len(clips)]] == [list(range(a, b)) for a, b in clips]
    assert [i for _, i in sc[len(clips):]] == [[0, 16, 24], [55, 71, 72]]  # scenes 0 and 2; scene 1 has one clip
    assert [i for d, i in scorer.calls if d == "dynamic_degree"] == [list(range(a, b)) for a, b in clips]
    c2c = v.clip2clip["subject_consistency"]
    assert len(c2c) == 3 and c2c[1] is None and c2c[0] is not None and c2c[2] is not None
    scene_of = [0, 0, 0, 1, 2, 2, 2]
    per_clip = v.clips["subject_consistency"]
    want = np.mean([fuse("subject_consistency", s, c2c[k], slow_fast)[0] for s, k in zip(per_clip, scene_of)])
    assert v.scores["subject_consistency"] == pytest.approx(want, abs=1e-12)
    if not slow_fast:  # VBench-Long's default weights (1, 0): the in-clip mean
        assert v.scores["subject_consistency"] == pytest.approx(np.mean(per_clip), abs=1e-12)
    assert v.to_dict()["scenes"] == scenes


def test_option_off_leaves_scoring_unchanged(dummy_weights, monkeypatch):
    """Off (the default): plain 2 s clips across the cuts, one clip-to-clip score over all clips, no
    scenes in the result, and PySceneDetect is never imported (it may be absent)."""
    monkeypatch.setitem(sys.modules, "scenedetect", None)
    frames = Recording.stamp(scene_video([40, 15, 33]))
    scorer = Recording.make(dummy_weights)
    v = scorer.score_frames(frames, 8, path="v")
    clips = split_clips(88, 8)
    assert v.scenes is None and "scenes" not in v.to_dict() and v.clip_ranges == clips
    sc = [i for d, i in scorer.calls if d == "subject_consistency"]
    assert sc == [list(range(a, b)) for a, b in clips] + [[a for a, _ in clips]]
    inclip = np.mean(v.clips["subject_consistency"])
    assert v.clip2clip["subject_consistency"] == Recording.measure([a for a, _ in clips])
    assert v.scores["subject_consistency"] == fuse("subject_consistency", inclip,
                                                   v.clip2clip["subject_consistency"])[0]


def test_no_cut_with_the_option_scores_as_without(dummy_weights):
    frames = Recording.stamp(synthetic_frames(70, 128, 160))
    on = Recording.make(dummy_weights, scene_split=True, slow_fast=True).score_frames(frames, 8)
    off = Recording.make(dummy_weights, slow_fast=True).score_frames(frames, 8)
    assert on.scenes == [(0, 70)] and on.clip_ranges == off.clip_ranges
    assert on.clip2clip["subject_consistency"] == [off.clip2clip["subject_consistency"]]
    for d in off.scores:
        assert on.scores[d] == pytest.approx(off.scores[d], abs=1e-12)


def tiny_dino(root):
    from fademem.eval._deps import require

    vt = require("timm.models.vision_transformer")
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    dino = vt.VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=1, num_heads=1, num_classes=0)
    torch.save(dino.state_dict(), root / "dino_vitbase16_pretrain.pth")
    return root


def test_cli_scene_split_end_to_end(tmp_path):
    """`fademem eval score --scene-split` on a lossless video with two cuts: the JSON holds the scenes,
    the clips inside them and one clip-to-clip score per scene; without the flag, the plain clips."""
    weights = tiny_dino(tmp_path / "w")
    lengths = [40, 15, 33]
    video = write_video(tmp_path / "cuts.mp4", scene_video(lengths), fps=8)
    base = ["eval", "score", str(video), "--weights-dir", str(weights), "--device", "cpu",
            "--dimensions", "subject_consistency"]
    res = CliRunner().invoke(main, [*base, "--scene-split", "--out", str(tmp_path / "on.json")])
    assert res.exit_code == 0, res.output
    assert "7 clip(s) in 3 scene(s)" in res.output
    on = json.loads((tmp_path / "on.json").read_text())
    v = on["videos"][0]
    assert on["scene_split"] is True
    assert [tuple(s) for s in v["scenes"]] == bounds(lengths)
    assert [tuple(c) for c in v["clip_ranges"]] == split_scene_clips(bounds(lengths), 8)
    c2c = v["clip2clip"]["subject_consistency"]
    assert len(c2c) == 3 and c2c[1] is None and all(0 < c <= 1 for c in (c2c[0], c2c[2]))
    assert v["scores"]["subject_consistency"] == pytest.approx(np.mean(v["clips"]["subject_consistency"]))
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "off.json")])
    assert res.exit_code == 0, res.output
    off = json.loads((tmp_path / "off.json").read_text())
    assert off["scene_split"] is False and "scenes" not in off["videos"][0]
    assert [tuple(c) for c in off["videos"][0]["clip_ranges"]] == split_clips(88, 8)
    assert isinstance(off["videos"][0]["clip2clip"]["subject_consistency"], float)


def test_missing_scenedetect_is_named_before_any_work(tmp_path, dummy_weights, monkeypatch):
    from fademem.eval._deps import EvalDependencyError
    from fademem.eval.scorer import Scorer

    monkeypatch.setitem(sys.modules, "scenedetect", None)
    video = write_video(tmp_path / "v.mp4", synthetic_frames(4, 64, 64), fps=8)
    res = CliRunner().invoke(main, ["eval", "score", str(video), "--weights-dir", str(tmp_path / "nowhere"),
                                    "--scene-split"])
    assert res.exit_code == 2 and "fademem[eval-scenes]" in res.output and "Traceback" not in res.output
    with pytest.raises(EvalDependencyError, match=r"fademem\[eval-scenes\]"):
        Scorer(dummy_weights, ("subject_consistency",), scene_split=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    res = CliRunner().invoke(main, ["eval", "run", "--prompts", str(prompts), "--memory", "fademem:budget=3",
                                    "--store", str(tmp_path / "s.sqlite"), "--weights-dir", str(dummy_weights),
                                    "--dimensions", "subject_consistency", "--device", "cpu", "--scene-split"])
    assert res.exit_code == 2 and "fademem[eval-scenes]" in res.output, res.output
    assert not (tmp_path / "s.sqlite").exists()
    res = CliRunner().invoke(main, ["eval", "run", "--prompts", str(prompts), "--memory", "fademem:budget=3",
                                    "--store", str(tmp_path / "s.sqlite"), "--critic", str(prompts),
                                    "--device", "cpu", "--scene-split"])
    assert res.exit_code == 2 and "--scene-split" in res.output and "give --weights-dir" in res.output, res.output
