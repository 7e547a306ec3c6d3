"""``Scorer``: the six VBench-Long dimensions of one video, from local weight files.

    scorer = Scorer("~/.cache/vbench", device="cuda")   # MissingWeights here, before any work
    result = scorer.score_file("video.mp4")             # VideoScore: per video, per clip, clip-to-clip
    result.scores["subject_consistency"]

Models load on first use and stay loaded. Frames come from PyAV (RGB24), all held in memory (a 60 s
480x832 video at 16 fps is 1.1 GB of uint8).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from fademem.eval import dimensions as dims
from fademem.eval import extractors as ex
from fademem.eval.amt import load_amt
from fademem.eval.protocol import (
    CLIP_SECONDS,
    CONSISTENCY,
    VideoScore,
    clip_scene_index,
    finish,
    split_clips,
    split_scene_clips,
)
from fademem.eval.scenes import SCENE_THRESHOLD
from fademem.eval.weights import DIMENSIONS, find_weights

__all__ = ["Scorer", "read_frames"]


def read_frames(path) -> tuple[np.ndarray, float]:
    """All frames of ``path`` as uint8 RGB ``[T, H, W, 3]`` and its average frame rate."""
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"video file not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path} contains no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    if not frames:
        raise ValueError(f"{path} has no frames")
    if not rate:
        raise ValueError(f"{path} records no frame rate")
    return np.stack(frames), float(rate)


class Scorer:
    """Scores videos on ``dimensions`` (default: all six) with the weight files in ``weights_dir``.

    ``slow_fast``: fuse clip-to-clip consistency with VBench-Long's slow-fast weights (its
    ``--dev_flag``) instead of its default in-clip-only score. ``imaging_mode``: VBench's imaging
    quality preprocessing (default 'longer'). ``batch``: frames (or frame pairs) per forward.
    ``scene_split``: split at PySceneDetect's scene cuts first (VBench-Long's ``--use_semantic_splitting``,
    ``fademem.eval.protocol`` 6; needs ``fademem[eval-scenes]``, checked here), ``scene_threshold`` its
    ``ContentDetector`` threshold (VBench-Long's 35).
    """

    def __init__(self, weights_dir, dimensions: Sequence[str] = DIMENSIONS, device="cpu", *,
                 slow_fast: bool = False, imaging_mode: str = "longer", clip_seconds: int = CLIP_SECONDS,
                 batch: int = 8, scene_split: bool = False, scene_threshold: float = SCENE_THRESHOLD):
        if scene_split:
            from fademem.eval.scenes import require_scenedetect

            require_scenedetect()
        self.dimensions = tuple(dimensions)
        self.paths = find_weights(weights_dir, self.dimensions)
        self.device = torch.device(device)
        self.slow_fast, self.imaging_mode = slow_fast, imaging_mode
        self.clip_seconds, self.batch = int(clip_seconds), int(batch)
        self.scene_split, self.scene_threshold = bool(scene_split), float(scene_threshold)
        self._models: dict[str, object] = {}

    def _model(self, key: str):
        if key not in self._models:
            loader = {"dino": ex.load_dino, "clip_b32": ex.load_clip, "clip_l14": ex.load_clip,
                      "aesthetic": ex.load_aesthetic_head, "musiq": ex.load_musiq, "raft": ex.load_raft,
                      "amt": load_amt}[key]
            self._models[key] = loader(self.paths[key], self.device)
        return self._models[key]

    def load(self) -> Scorer:
        """Load every model now (so a bad file fails before the first video)."""
        for key in self.paths:
            self._model(key)
        return self

    def clip_score(self, dimension: str, frames, fps: float) -> float:
        dev, b = self.device, self.batch
        if dimension == "subject_consistency":
            return dims.subject_consistency(frames, self._model("dino"), dev, batch=b)
        if dimension == "background_consistency":
            return dims.background_consistency(frames, self._model("clip_b32"), dev, batch=32)
        if dimension == "aesthetic_quality":
            return dims.aesthetic_quality(frames, self._model("clip_l14"), self._model("aesthetic"), dev, batch=32)
        if dimension == "imaging_quality":
            return dims.imaging_quality(frames, self._model("musiq"), dev, mode=self.imaging_mode, batch=b)
        if dimension == "dynamic_degree":
            return dims.dynamic_degree(frames, self._model("raft"), int(fps), dev, batch=b)
        if dimension == "motion_smoothness":
            return dims.motion_smoothness(frames, self._model("amt"), dev, batch=b)
        raise ValueError(f"unknown dimension {dimension!r}")

    def score_frames(self, frames: np.ndarray, fps: float, path: str = "") -> VideoScore:
        """Score uint8 RGB frames ``[T, H, W, 3]`` recorded at ``fps``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if self.scene_split:
            from fademem.eval.scenes import detect_scenes

            scenes = detect_scenes(frames, fps, self.scene_threshold)
            ranges = split_scene_clips(scenes, fps, self.clip_seconds)
        else:
            scenes, ranges = None, split_clips(len(frames), fps, self.clip_seconds)
        video = VideoScore(path=path, frames=len(frames), fps=float(fps), clip_ranges=ranges, scenes=scenes)
        for d in self.dimensions:
            scores = [self.clip_score(d, frames[a:b], fps) for a, b in ranges]
            c2c = None
            if d in CONSISTENCY and scenes is None and len(ranges) > 1:
                c2c = self.clip_score(d, frames[[a for a, _ in ranges]], fps)
            elif d in CONSISTENCY and scenes is not None:
                c2c = self._scene_clip2clip(d, frames, fps, ranges, scenes)
            finish(video, d, scores, c2c, self.slow_fast)
        return video

    def _scene_clip2clip(self, dimension: str, frames, fps: float, ranges, scenes) -> list[float | None]:
        """Per scene: the consistency over the first frames of its clips; None for a scene of one clip."""
        scene = clip_scene_index(ranges, scenes)
        firsts = [[a for (a, _), k in zip(ranges, scene) if k == i] for i in range(len(scenes))]
        return [self.clip_score(dimension, frames[f], fps) if len(f) > 1 else None for f in firsts]

    def score_file(self, path) -> VideoScore:
        frames, fps = read_frames(path)
        return self.score_frames(frames, fps, path=os.fspath(path))
