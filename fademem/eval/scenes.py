"""Scene cuts for VBench-Long's optional scene-aware splitting (its ``--use_semantic_splitting``).

VBench-Long (``vbench2_beta_long.utils.split_video_into_scenes``, VBench 0.1.5) runs PySceneDetect's
``SceneManager`` with one ``ContentDetector(threshold=35.0)`` (``VBenchLong.preprocess``'s default
threshold; every other detector setting is PySceneDetect's default: HSV weights (1, 1, 1, 0),
``min_scene_len`` 15 frames with the MERGE flash filter) over the video file opened with
``open_video`` (OpenCV). ``detect_scenes`` here runs the same ``SceneManager`` and detector over frames
already in memory, through a ``VideoStream`` that hands them over as OpenCV would (BGR, in order), so no
file is written or read again. The scenes are ``[(start, stop), ...]`` frame ranges covering the video;
no cut gives one scene, the whole video (VBench-Long then splits the video as without the option).

``pip install 'fademem[eval-scenes]'`` installs PySceneDetect (``scenedetect``).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from fademem.eval._deps import EvalDependencyError

__all__ = ["SCENE_THRESHOLD", "detect_scenes", "require_scenedetect"]

SCENE_THRESHOLD = 35.0  # VBenchLong.preprocess(threshold=35.0), passed to ContentDetector
EXTRA = "pip install 'fademem[eval-scenes]'  (scenedetect, PySceneDetect)"


def require_scenedetect():
    """``import scenedetect`` or raise ``EvalDependencyError`` naming the extra that installs it."""
    try:
        import scenedetect
    except ImportError as e:
        raise EvalDependencyError(f"scene-cut splitting needs PySceneDetect, which is not installed ({e}): "
                                  f"{EXTRA}") from e
    return scenedetect


def _frame_stream(frames: np.ndarray, fps: float):
    """A PySceneDetect ``VideoStream`` over uint8 RGB frames ``[T, H, W, 3]`` (read gives BGR, as OpenCV)."""
    sd = require_scenedetect()

    class FrameStream(sd.VideoStream):
        BACKEND_NAME = "fademem-frames"

        def __init__(self):
            self._frames, self._rate, self._read = frames, Fraction(float(fps)).limit_denominator(1_000_000), 0

        def _tc(self, n: int):
            return sd.FrameTimecode(int(n), fps=self._rate)

        path = property(lambda self: "<frames>")
        name = property(lambda self: "frames")
        is_seekable = property(lambda self: True)
        frame_rate = property(lambda self: self._rate)
        duration = property(lambda self: self._tc(len(self._frames)))
        frame_size = property(lambda self: (int(self._frames.shape[2]), int(self._frames.shape[1])))
        aspect_ratio = property(lambda self: 1.0)
        # the position of the frame read last (0 before any), frame_number the count read, as OpenCV's
        position = property(lambda self: self._tc(max(0, self._read - 1)))
        position_ms = property(lambda self: 1000.0 * max(0, self._read - 1) / float(self._rate))
        frame_number = property(lambda self: self._read)

        def read(self, decode: bool = True):
            if self._read >= len(self._frames):
                return False
            self._read += 1
            return np.ascontiguousarray(self._frames[self._read - 1][..., ::-1]) if decode else True

        def reset(self) -> None:
            self._read = 0

        def seek(self, target) -> None:
            n = target.frame_num if isinstance(target, sd.FrameTimecode) else self._tc(target).frame_num
            if n < 0:
                raise ValueError("cannot seek before the first frame")
            self._read = min(int(n), len(self._frames))

    return FrameStream()


def detect_scenes(frames: np.ndarray, fps: float, threshold: float = SCENE_THRESHOLD) -> list[tuple[int, int]]:
    """The scenes of uint8 RGB ``frames`` ``[T, H, W, 3]`` at ``fps`` as ``[(start, stop), ...]``, from
    PySceneDetect's ``ContentDetector(threshold)`` as VBench-Long runs it; ``[(0, T)]`` without a cut."""
    sd = require_scenedetect()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    n = len(frames)
    if n < 1:
        raise ValueError("a video with no frames cannot be scored")
    manager = sd.SceneManager()
    manager.add_detector(sd.ContentDetector(threshold=float(threshold)))
    manager.detect_scenes(_frame_stream(frames, fps))
    scenes = [(int(a.frame_num), int(b.frame_num)) for a, b in manager.get_scene_list()]
    if not scenes:
        return [(0, n)]
    if scenes[0][0] != 0 or scenes[-1][1] != n or any(scenes[i][1] != scenes[i + 1][0] for i in range(len(scenes) - 1)):
        raise RuntimeError(f"PySceneDetect's scenes {scenes} do not tile the video's {n} frames")
    return scenes
