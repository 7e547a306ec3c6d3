"""VBench-Long's protocol (``vbench2_beta_long``, VBench 0.1.5) around the per-clip scores.

1. **Clips** (``split_clips``, its ``split_video_into_clips``): a video of ``n`` frames at ``fps``
   (VBench-Long reads ``int(fps)``) is cut into clips of ``int(fps) * seconds`` frames (2 s in its
   ``long_custom_input`` mode); a remainder becomes one more clip of the full length that borrows frames
   from the clip before it; a video shorter than one clip is one clip, the whole video.
2. **Within clips**: each dimension's score of every clip (``fademem.eval.dimensions``); a video's
   in-clip score is the mean over its clips (``reorganize_clips_results``; imaging quality / 100).
3. **Clip to clip** (subject and background consistency): the first frame of every clip, in order,
   scored as one clip by the same consistency measure (``create_video_from_first_frames``); skipped for a
   video of one clip.
4. **Fusion** (``fuse_inclip_clip2clip``): the clip-to-clip score is mapped onto the in-clip scale
   through VBench-Long's table (linear between its 0.01 steps), and fused as ``w_in * inclip + w_c2c *
   mapped`` (the in-clip score alone when the mapped score is 0). VBench-Long's default weights are
   (1, 0) (``eval_long.py`` sets them unless ``--dev_flag``); ``slow_fast=True`` uses its slow-fast
   weights (0.5, 0.5).
5. A method's score per dimension is the mean over all its clips, pooled over videos: VBench-Long's
   ``reorganize_clips_results`` groups by the part of a clip's path before ``filtered_clips``, which
   plain clip paths do not contain, so every clip is its own entry. Videos thus weigh by their clip
   counts (for videos of one length: the mean of the per-video scores). Per video, fademem reports the
   mean over its clips (fused as in 4 for the consistency dimensions).
6. **Scene cuts** (optional, off by default as VBench-Long's ``--use_semantic_splitting``;
   ``Scorer(scene_split=True)``, ``fademem eval score|run --scene-split``): PySceneDetect's
   ``ContentDetector(threshold=35.0)`` (``VBenchLong.preprocess``'s threshold) finds the cuts
   (``fademem.eval.scenes``, as its ``split_video_into_scenes``; a cut within 15 frames of the previous
   one is merged away, PySceneDetect's ``min_scene_len``), the video is cut into scenes there, and every
   scene is split into clips
   by the rule of 1 on its own (``split_scene_clips``): clips never straddle a cut, a scene shorter than
   one clip is one clip (shorter than 2 s), a scene's remainder borrows frames from the same scene only.
   No cut found: the clips of 1. Clip to clip (3) is then per scene, over the first frames of that
   scene's clips (VBench-Long's ``split_clip`` folder per scene), skipped for a scene of one clip; each
   clip is fused (4) with its own scene's clip-to-clip score and the video's score is the mean over its
   clips (5). ``VideoScore.scenes`` holds the scenes and ``clip2clip[dim]`` a list, one per scene.

Not done here: VBench-Long writes every clip back to an H.264 file (``torchvision.io.write_video``,
libx264 defaults) and scores the decoded file; fademem scores the decoded frames of the input video
directly, so lossy re-encoding does not enter. With scene cuts VBench-Long also writes every scene to
an H.264 file before splitting it and runs PySceneDetect on the file decoded by OpenCV; fademem runs the
same ``SceneManager`` and detector (the installed PySceneDetect's defaults besides the threshold,
including its downscaling to about 256 pixels wide) on the frames as PyAV decodes them, so a cut whose
content score sits at the threshold may fall differently where the two decoders' colour conversions
differ. VBench-Long reads scenes and clips back with ``os.listdir`` (unordered); fademem keeps them in
time order, which only changes the order of its lists, not a score.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from fademem.eval.vbench_long_tables import KEYS, MAPPING, SLOW_FAST_WEIGHTS
from fademem.eval.weights import DIMENSIONS

__all__ = ["CLIP_SECONDS", "DYNAMIC_WEIGHT", "VideoScore", "aggregate", "fuse", "paper_average", "split_clips",
           "split_scene_clips"]

CLIP_SECONDS = 2
DYNAMIC_WEIGHT = 0.5  # FadeMem Table 1's "Avg.": dynamic degree counts half
CONSISTENCY = ("subject_consistency", "background_consistency")


def split_clips(n_frames: int, fps: float, seconds: int = CLIP_SECONDS) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` frame ranges of VBench-Long's clips."""
    if n_frames < 1:
        raise ValueError("a video with no frames cannot be scored")
    seg = int(fps) * int(seconds)
    if seg < 1:
        raise ValueError(f"fps {fps} gives clips of {seg} frames")
    if n_frames < seg:
        return [(0, n_frames)]
    total, rem = divmod(n_frames, seg)
    clips = [(i * seg, (i + 1) * seg) for i in range(total)]
    if rem:
        clips.append((max(0, total * seg - (seg - rem)), n_frames))
    return clips


def split_scene_clips(scenes: list[tuple[int, int]], fps: float, seconds: int = CLIP_SECONDS) -> list[tuple[int, int]]:
    """The clips of every scene ``(start, stop)`` in turn, each scene split as ``split_clips`` splits a
    video (VBench-Long's ``split_video_into_clips`` on every scene file)."""
    if not scenes:
        raise ValueError("a video with no frames cannot be scored")
    clips = []
    for a, b in scenes:
        clips += [(a + s, a + e) for s, e in split_clips(b - a, fps, seconds)]
    return clips


def clip_scene_index(clip_ranges: list[tuple[int, int]], scenes: list[tuple[int, int]]) -> list[int]:
    """The scene each clip lies in (clips from ``split_scene_clips`` never straddle a cut)."""
    starts = [a for a, _ in scenes]
    return [bisect_right(starts, a) - 1 for a, _ in clip_ranges]


def map_clip2clip(dimension: str, score: float) -> float:
    table = MAPPING[dimension]
    i = bisect_left(KEYS, score)
    if i == 0:
        return table[KEYS[0]]
    if i == len(KEYS):
        return table[KEYS[-1]]
    k0, k1 = KEYS[i - 1], KEYS[i]
    return table[k0] + (table[k1] - table[k0]) * (score - k0) / (k1 - k0)


def fuse(dimension: str, inclip: float, clip2clip: float | None, slow_fast: bool = False) -> tuple[float, float]:
    """(fused score, mapped clip-to-clip score) as ``fuse_inclip_clip2clip``; a missing clip-to-clip
    score counts as 0, as VBench-Long's ``dict.get(..., 0)``."""
    w_in, w_c2c = SLOW_FAST_WEIGHTS[dimension] if slow_fast else (1.0, 0.0)
    mapped = map_clip2clip(dimension, 0 if clip2clip is None else clip2clip)
    return (inclip * w_in + mapped * w_c2c if mapped != 0.0 else inclip), mapped


@dataclass
class VideoScore:
    """One video's scores: ``scores[dim]`` (what VBench-Long reports per video, imaging quality in
    [0, 1]), ``clips[dim]`` (per clip, as the dimension computes it: imaging quality 0-100),
    ``clip2clip[dim]`` (consistency dimensions, None for one clip). With scene cuts (6): ``scenes``, the
    scenes' frame ranges, and ``clip2clip[dim]`` a list, one score (or None) per scene."""

    path: str
    frames: int
    fps: float
    clip_ranges: list[tuple[int, int]]
    scores: dict[str, float] = field(default_factory=dict)
    clips: dict[str, list[float]] = field(default_factory=dict)
    clip2clip: dict[str, float | None | list[float | None]] = field(default_factory=dict)
    inclip: dict[str, float] = field(default_factory=dict)
    scenes: list[tuple[int, int]] | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "frames": self.frames, "fps": self.fps, "clip_ranges": self.clip_ranges,
               "scores": self.scores, "inclip": self.inclip, "clip2clip": self.clip2clip, "clips": self.clips}
        if self.scenes is not None:
            out["scenes"] = self.scenes
        return out


def finish(video: VideoScore, dimension: str, clip_scores: list[float],
           clip2clip: float | None | list[float | None] = None, slow_fast: bool = False) -> None:
    """Fill ``video`` for ``dimension`` from its per-clip scores and clip-to-clip score (with scene cuts:
    one per scene of ``video.scenes``; each clip is fused with its scene's, as ``fuse_inclip_clip2clip``
    fuses every clip entry, and the video's score is their mean)."""
    inclip = sum(clip_scores) / len(clip_scores)
    if dimension == "imaging_quality":
        inclip = inclip / 100.0
    video.clips[dimension] = list(clip_scores)
    video.inclip[dimension] = inclip
    if dimension not in CONSISTENCY:
        video.scores[dimension] = inclip
        return
    video.clip2clip[dimension] = clip2clip
    if video.scenes is None:
        video.scores[dimension] = fuse(dimension, inclip, clip2clip, slow_fast)[0]
        return
    if not isinstance(clip2clip, list) or len(clip2clip) != len(video.scenes):
        raise ValueError(f"expected one clip-to-clip score per scene ({len(video.scenes)}), got {clip2clip!r}")
    scene = clip_scene_index(video.clip_ranges, video.scenes)
    fused = [fuse(dimension, s, clip2clip[k], slow_fast)[0] for s, k in zip(clip_scores, scene)]
    video.scores[dimension] = sum(fused) / len(fused)


def paper_average(scores: dict[str, float]) -> float | None:
    """FadeMem Table 1's "Avg.": the mean of the six dimensions with dynamic degree weighted 1/2
    (sum of weight x score over the sum of weights, 5.5); None unless all six are present."""
    if any(d not in scores or scores[d] is None for d in DIMENSIONS):
        return None
    w = {d: (DYNAMIC_WEIGHT if d == "dynamic_degree" else 1.0) for d in DIMENSIONS}
    return sum(w[d] * scores[d] for d in DIMENSIONS) / sum(w.values())


def aggregate(videos: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """A method's scores from its videos' ``(scores, clip count)``: per dimension the clip-weighted mean
    (VBench-Long's pooled mean over clips, see 5), plus "avg" (``paper_average``)."""
    out: dict[str, float] = {}
    for d in DIMENSIONS:
        pairs = [(v[d], n) for v, n in videos if v.get(d) is not None]
        if pairs:
            out[d] = float(sum(s * n for s, n in pairs) / sum(n for _, n in pairs))
    avg = paper_average(out)
    if avg is not None:
        out["avg"] = avg
    return out
