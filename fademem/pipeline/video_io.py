"""Small video helpers on top of PyAV (FFmpeg): streamed reading of real video files.

Frames are decoded one at a time and never all held in memory.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterator

import numpy as np


def _open(path):
    """Open `path` with PyAV, turning every failure into a ValueError that names the file."""
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"video file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"expected a video file, got a directory: {path}")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} as a video (unreadable container): {exc}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} contains no video stream")
    return container


def count_frames(path) -> int:
    """Number of frames in the first video stream of `path`.

    Uses the container's frame count when it records one, else counts the stream's packets
    (demuxing only, no decoding).
    """
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except av.FFmpegError as exc:
            raise ValueError(f"cannot read {path} as a video: {exc}") from exc


def video_fps(path) -> float | None:
    """Average frame rate of the first video stream, or None if unknown."""
    with _open(path) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def _target_size(size, width: int, height: int) -> tuple[int, int, int, int]:
    """(resize_w, resize_h, crop_w, crop_h): resize to cover the target, then centre-crop.

    `size` is an int S (shorter side to S, then centre-crop S x S) or a (height, width) pair.
    """
    if isinstance(size, int):
        size = (size, size)
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    scale = max(out_h / height, out_w / width)
    res_w = max(out_w, round(width * scale))
    res_h = max(out_h, round(height * scale))
    return res_w, res_h, out_w, out_h


def effective_stride(n_frames: int, stride: int = 1, max_frames: int | None = None) -> int:
    """The subsampling step actually used: `stride`, enlarged so at most `max_frames` frames remain.

    Rule: step = max(stride, ceil(n_frames / max_frames)); frames 0, step, 2*step, ... are kept
    (and the list is cut at `max_frames`), so the analysed frames span the whole video evenly.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is None:
        return stride
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return max(stride, math.ceil(n_frames / max_frames))


def iter_video_frames(path, size=None, stride: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield frames of `path` as float32 RGB arrays (H, W, 3) in [0, 1], decoded one at a time.

    size:       None (native), an int S (short side to S then centre-crop S x S) or (H, W)
                (resize to cover, then centre-crop).
    stride:     keep every `stride`-th frame.
    max_frames: at most this many frames; the stride is enlarged evenly (see `effective_stride`).
    """
    import av

    step = stride
    if max_frames is not None:
        step = effective_stride(count_frames(path), stride, max_frames)
    elif stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        kept = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % step:
                    continue
                if size is None:
                    rgb = frame.to_ndarray(format="rgb24")
                else:
                    rw, rh, cw, ch = _target_size(size, frame.width, frame.height)
                    rgb = frame.reformat(width=rw, height=rh, format="rgb24", interpolation="AREA").to_ndarray()
                    top, left = (rh - ch) // 2, (rw - cw) // 2
                    rgb = rgb[top : top + ch, left : left + cw]
                yield rgb.astype(np.float32) / 255.0
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    return
        except av.FFmpegError as exc:
            raise ValueError(f"error while decoding {path}: {exc}") from exc
    finally:
        container.close()


# -- writing -------------------------------------------------------------------------------------


class VideoWriter:
    """Stream uint8 RGB frames into an H.264 mp4 (libx264, yuv420p) as they arrive.

    ::

        with VideoWriter("out.mp4", fps=16) as w:
            for chunk in chunks:          # uint8 [T, H, W, 3] or [H, W, 3], numpy or torch
                w.write(chunk)

    The frame size is taken from the first frame; every later frame must match it. yuv420p needs
    even sizes, so an odd height or width is padded by one replicated edge row / column.
    Nothing is buffered beyond what the encoder holds; the file is complete after ``close()``.

    The file is deterministic: the same frames give the same bytes on every run, under any load or
    CPU affinity. Two x264 defaults would break that: its thread count follows the CPUs this process
    may use (fixed here by ``threads``, default 4; x264 is repeatable for a fixed count), and its
    AVX-512 routines make the output vary from run to run (seen with PyAV 18's x264 at widths such as
    96, 208 and 832), so on x86-64 x264 is held to its SSE2 routines (``asm=SSE2``: the same output as
    its plain C code, on any x86-64 CPU, at about the default speed).
    """

    def __init__(self, path, fps: float = 16, crf: int = 18, preset: str = "medium", threads: int = 4):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ValueError(f"cannot write {self.path}: directory {parent} does not exist")
        self.fps = fps
        self.crf = crf
        self.preset = preset
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        self.threads = threads
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (height, width) of the frames given
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, height: int, width: int) -> None:
        from fractions import Fraction

        import av

        self._container = av.open(self.path, mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        # repeatable bytes (see the class doc): a fixed thread count, and no AVX-512 routines on x86-64
        stream.options = {"crf": str(self.crf), "preset": self.preset, "threads": str(self.threads)}
        if platform.machine().lower() in ("x86_64", "amd64"):
            stream.options = {**stream.options, "x264-params": "asm=SSE2"}
        self._stream = stream
        self._size = (height, width)

    def write(self, frames) -> None:
        """Append one frame [H, W, 3] or a batch [T, H, W, 3] of uint8 RGB frames."""
        import av

        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        if hasattr(frames, "detach"):  # torch tensor
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3] or [H, W, 3] RGB, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        h, w = frames.shape[1:3]
        if self._container is None:
            self._open(h, w)
        elif (h, w) != self._size:
            raise ValueError(f"frame size {h}x{w} differs from the first frame's {self._size[0]}x{self._size[1]}")
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent). A writer that got no frame writes nothing."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()


class VideoInfo(tuple):
    """(frames, fps, size) with size = (height, width); also available as attributes."""

    __slots__ = ()

    def __new__(cls, frames: int, fps: float | None, size: tuple[int, int]):
        return super().__new__(cls, (frames, fps, size))

    frames = property(lambda self: self[0])
    fps = property(lambda self: self[1])
    size = property(lambda self: self[2])


def read_video_info(path) -> VideoInfo:
    """Decode `path` fully and return (frames, fps, (height, width)): an exact frame count."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        n, size = 0, (stream.codec_context.height, stream.codec_context.width)
        try:
            for frame in container.decode(stream):
                n += 1
                size = (frame.height, frame.width)
        except av.FFmpegError as exc:
            raise ValueError(f"error while decoding {path}: {exc}") from exc
    return VideoInfo(n, float(rate) if rate else None, size)


# -- start material: an image or a clip's last seconds, fitted to a model's frame size ---------------
def fit_image(picture, height: int, width: int) -> np.ndarray:
    """A Pillow image as uint8 RGB [height, width, 3] by the one rule ``--image`` / ``--video`` state:
    center-crop the largest region of the target's aspect ratio, then resize it (bicubic). Any size is
    accepted (smaller images are upscaled); a picture of zero area is refused."""
    from PIL import Image

    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    w, h = picture.size
    if w < 1 or h < 1:
        raise ValueError(f"the picture has no pixels ({w}x{h})")
    if w * height <= h * width:  # taller than the target: full width
        cw, ch = w, max(1, round(w * height / width))
    else:
        cw, ch = max(1, round(h * width / height)), h
    left, top = (w - cw) // 2, (h - ch) // 2
    out = picture.convert("RGB").crop((left, top, left + cw, top + ch))
    out = out.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.uint8).copy()


def read_clip_tail(path, frames: int, fps: float, size: tuple[int, int]) -> np.ndarray:
    """The last ``frames`` frames of ``path`` at ``fps`` frames per second, fitted to ``size`` (height,
    width) by ``fit_image``: uint8 [n, H, W, 3], n <= frames (fewer when the clip is shorter).

    Resampling in time: the last frame is the clip's last frame; frame j of n is the clip's frame
    whose timestamp is nearest ``t_last - (n - 1 - j) / fps`` (ties to the earlier one), so a clip at
    the model's rate gives its last n frames unchanged and a faster or slower one is thinned or
    repeated. Timestamps are the container's (frame index / average rate when it has none). The clip
    is decoded once, one frame at a time; only the frames within the window are kept."""
    import collections

    import av

    if frames < 1 or fps <= 0:
        raise ValueError(f"need frames >= 1 and fps > 0, got {frames}, {fps}")
    span = frames / fps
    kept: collections.deque = collections.deque()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else fps
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / rate
                kept.append((t, fit_image(frame.to_image(), *size)))
                while len(kept) > 1 and kept[0][0] < t - span - 1.0 / rate:
                    kept.popleft()
        except av.FFmpegError as exc:
            raise ValueError(f"error while decoding {path}: {exc}") from exc
    finally:
        container.close()
    if not kept:
        raise ValueError(f"{path} has no decodable video frames")
    times = [t for t, _ in kept]
    t_last, t_first = times[-1], times[0]
    n = min(frames, int(math.floor((t_last - t_first) * fps + 1e-6)) + 1)
    out = []
    for j in range(n):
        target = t_last - (n - 1 - j) / fps
        best = min(range(len(times)), key=lambda i: (abs(times[i] - target), i))
        out.append(kept[best][1])
    return np.stack(out)
