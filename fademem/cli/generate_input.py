"""``fademem generate --image FILE`` / ``--video FILE``: what a generation starts from.

The start material is fitted to the model's frame (one rule for both: center-crop the largest
region of the frame's aspect ratio, resize bicubic; any size is accepted), encoded by the model's
own encoder (the embedded model's codec, or the Wan VAE for a ``--checkpoint``) and handed to the
session as ``prefix``: the first chunks are teacher-forced through the cache-writing pass, so they
become the memory's history, and the video goes on from them. The output starts with them.

* ``--image``: the image held for one chunk (3 latent frames: 3 video frames for the embedded
  model, 9 for Wan, whose VAE makes 4P - 3 video frames of P latent frames).
* ``--video``: the clip's last ``--video-seconds``, resampled to the model's fps (the frame nearest
  each instant, counted back from the clip's last frame; ``video_io.read_clip_tail``), rounded down
  to whole chunks (at least one).

Unreadable files and a clip too short for one chunk are usage errors, raised before generation. A
resumed run that stopped inside the teacher-forced frames reads the file again and refuses one that
changed since (size and digest recorded in the state); past them it needs the file no more.
"""

from __future__ import annotations

import math
import os

import click

DEFAULT_VIDEO_SECONDS = 3.0


class StartFrom:
    """The start material of one run: ``kind`` "image" or "video", its file, and (from a state) the
    latent frames it became and the file's identity."""

    def __init__(self, kind: str, path: str, video_seconds: float = DEFAULT_VIDEO_SECONDS,
                 latent_frames: int | None = None, identity: dict | None = None):
        self.kind, self.path, self.video_seconds = kind, os.path.abspath(path), float(video_seconds)
        self.latent_frames, self.identity = latent_frames, identity
        self.hint = f"--{kind}"
        self._picture = None

    # -- from the command line / from a state ----------------------------------------------------
    @classmethod
    def from_options(cls, image, video, video_seconds, seconds, opening, video_seconds_given: bool) -> StartFrom | None:
        """Usage checks and a cheap read of the file (errors before any model loads)."""
        if image is not None and video is not None:
            raise click.UsageError("--image and --video both give the start of the video: give one")
        if (image is not None or video is not None) and opening:
            raise click.UsageError(f"{'--image' if image is not None else '--video'} and --opening both set the "
                                   "first frames: give one")
        if video is None and video_seconds_given:
            raise click.UsageError("--video-seconds goes with --video FILE")
        if image is None and video is None:
            return None
        if video is None:
            start = cls("image", image)
            start._picture = read_image(image)
            return start
        if not video_seconds_given:  # the default: 3 s, at most half the video
            video_seconds = min(video_seconds, seconds / 2)
        if not math.isfinite(video_seconds) or video_seconds <= 0:
            raise click.BadParameter(f"must be > 0 seconds, got {video_seconds}", param_hint="--video-seconds")
        start = cls("video", video, video_seconds)
        start._check_video()
        if video_seconds >= seconds:
            raise click.BadParameter(f"the clip's last {video_seconds:g} s must be shorter than the video (--seconds "
                                     f"{seconds:g}): the generation goes on after them", param_hint="--video-seconds")
        return start

    @classmethod
    def from_state(cls, cli: dict) -> StartFrom | None:
        for kind in ("image", "video"):
            if cli.get(kind):
                return cls(kind, cli[kind], cli.get("video_seconds") or DEFAULT_VIDEO_SECONDS,
                           cli.get("start_frames"), cli.get("start_file"))
        return None

    def meta(self) -> dict:
        """What a state records (``cli``), so that a resumed run can rebuild the start."""
        return {"image": self.path if self.kind == "image" else None,
                "video": self.path if self.kind == "video" else None,
                "video_seconds": self.video_seconds if self.kind == "video" else None,
                "start_frames": self.latent_frames, "start_file": self.identity}

    # -- reading ---------------------------------------------------------------------------------
    def _check_video(self) -> None:
        from fademem.pipeline.video_io import count_frames

        if not os.path.isfile(self.path):
            raise click.BadParameter(f"video file not found: {self.path}", param_hint="--video")
        try:
            n = count_frames(self.path)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--video") from None
        if n < 1:
            raise click.BadParameter(f"{self.path} has no video frames", param_hint="--video")

    def frames(self, height: int, width: int, fps: float, video_frames_for, fpc: int):
        """(uint8 frames [T, H, W, 3], latent frames P): T = ``video_frames_for(P)``, P a multiple of
        ``fpc``; one chunk for an image, the most whole chunks the clip's tail gives for a video."""
        import numpy as np

        from fademem.pipeline.video_io import fit_image, read_clip_tail

        if self.kind == "image":
            if self._picture is None:
                self._picture = read_image(self.path)
            return np.repeat(fit_image(self._picture, height, width)[None], video_frames_for(fpc), axis=0), fpc
        wanted = max(1, math.floor(self.video_seconds * fps + 1e-9))
        try:
            clip = read_clip_tail(self.path, wanted, fps, (height, width))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--video") from None
        p = fpc * (len(clip) // fpc)
        while p and video_frames_for(p) > len(clip):
            p -= fpc
        if p == 0:
            raise click.BadParameter(
                f"{self.path}: its last {self.video_seconds:g} s give {len(clip)} frames at {fps:g} fps; one chunk "
                f"needs {video_frames_for(fpc)} (a longer clip or a larger --video-seconds)", param_hint="--video")
        return clip[len(clip) - video_frames_for(p):], p

    def prefix(self, encode, height: int, width: int, fps: float, video_frames_for, fpc: int, num_frames: int,
               done: int = 0):
        """The teacher-forced latents [1, C, P, h, w] (``encode``: the model's encoder, uint8 [1, T, H, W, 3]
        -> latents), or None when a resumed run has ``done`` them already."""
        import torch

        from fademem.pipeline.state import file_identity

        known = self.latent_frames if self.latent_frames is not None else (fpc if self.kind == "image" else None)
        if known is not None and done >= known:  # (states from before start_frames was recorded: images only)
            return None
        if not os.path.isfile(self.path):
            raise click.BadParameter(f"{self.kind} file not found: {self.path}", param_hint=self.hint)
        ident = file_identity(self.path)
        if self.identity is not None and ident != self.identity:
            raise click.BadParameter(f"{self.path} changed since the state was saved (its first frames are not "
                                     "done yet and must be read again)", param_hint="--resume")
        frames, p = self.frames(height, width, fps, video_frames_for, fpc)
        if p >= num_frames:
            raise click.BadParameter(f"the {self.kind} gives {p} latent frames, the whole video has {num_frames}: "
                                     "give more --seconds", param_hint=self.hint)
        self.latent_frames, self.identity = p, ident
        with torch.no_grad():
            return encode(torch.from_numpy(frames)[None])

    def describe(self) -> str:
        if self.kind == "image":
            return f"starting from {self.path} (held for the first chunk)"
        return f"continuing {self.path} (its last {self.latent_frames} latent frames, teacher-forced)"


def read_image(path):
    """The --image file as an RGB Pillow image; an unreadable file is a usage error."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise click.BadParameter(f"image file not found: {path}", param_hint="--image")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise click.BadParameter(f"cannot read {path} as an image: {e}", param_hint="--image") from None


def image_frames(picture, size: int, frames: int):
    """uint8 video [1, frames, size, size, 3]: the image center-cropped to a square, resized to size x size
    (bicubic), repeated."""
    import torch

    from fademem.pipeline.video_io import fit_image

    return torch.from_numpy(fit_image(picture, size, size))[None, None].repeat(1, frames, 1, 1, 1)


def position_note(pipe, requested: str, num_frames: int) -> str:
    """What the run's memory does with temporal positions (``Memory.for_run``, ``position_range``), for the
    start of the run (a resumed run keeps the spec of its state, which may differ)."""
    from fademem.memory import build_memory
    from fademem.pipeline.session import trained_frames_of

    trained, fpc = trained_frames_of(pipe), pipe.frames_per_chunk
    chosen = build_memory(requested).for_run(num_frames, trained, fpc)
    policy = build_memory(chosen)
    lo, hi = policy.position_range(num_frames, fpc)
    head = f"memory {requested}" + (f" runs as {chosen}" if chosen != build_memory(requested).spec() else "")
    if hi < trained:
        return f"{head}: temporal positions {lo:g}..{hi:g}, inside the model's trained 0..{trained - 1}"
    what = "the policy's compact layout" if policy.positions_bounded(fpc) else "true frame indices"
    note = f"{head}: temporal positions up to {hi:g} ({what}); the model was trained on 0..{trained - 1}"
    if not policy.positions_bounded(fpc) and _compact_variant(policy, fpc):
        note += " (positions=compact keeps them inside)"
    return note


def _compact_variant(policy, fpc: int) -> bool:
    """Whether the policy has a compact positions mode this configuration accepts."""
    from fademem.memory import build_memory

    if "positions" not in policy.knobs():
        return False
    try:
        return build_memory(policy, positions="compact").positions_bounded(fpc)
    except (ValueError, TypeError):
        return False


def positions_used_note(pipe) -> str | None:
    """The largest temporal position the run's memory gave (after the run), for the summary."""
    used = pipe.memory.positions_used() if getattr(pipe, "memory", None) is not None else None
    return None if used is None else f"temporal positions used: {used[0]:g}..{used[1]:g}"
