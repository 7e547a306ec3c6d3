"""Writing a generation to files: the decoded frames of each batch item streamed into its own mp4
(``VideoPipeline.generate_video``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fademem.pipeline.switches import _as_batch


def generate_video(pipe, prompts: str | Sequence[str], num_frames: int, *, out, memory="full",
                   seed: int = 0, noise: torch.Tensor | None = None, switches=None,
                   latent_shape: Sequence[int] | None = None, progress: bool = True,
                   return_latents: bool = False, prefix: torch.Tensor | None = None, crf: int = 18):
    """``pipe.generate_video(...)``: generate with ``pipe`` (a ``VideoPipeline``) and stream the
    decoded frames into mp4 file(s) (x264 at ``crf``; 0 is lossless); see there."""
    from fademem.pipeline.video_io import VideoWriter

    if pipe.decoder is None:
        raise ValueError("generate_video needs a decoder")
    batch = len(_as_batch(prompts))
    paths = _out_paths(out, batch)
    latents = []
    writers = [VideoWriter(p, fps=pipe.fps, crf=crf) for p in paths]
    try:
        for chunk in pipe.generate(prompts, num_frames, memory=memory, seed=seed, noise=noise,
                                   switches=switches, latent_shape=latent_shape, progress=progress,
                                   prefix=prefix):
            for b, wr in enumerate(writers):
                wr.write(chunk.frames[b].numpy())
            if return_latents:
                latents.append(chunk.latents.cpu())
    finally:
        for wr in writers:
            wr.close()
    if return_latents:
        return paths, torch.cat(latents, dim=2)
    return paths


def _out_paths(out, batch: int) -> list[str]:
    if isinstance(out, (str, os.PathLike)):
        out = os.fspath(out)
        if batch == 1:
            return [out]
        stem, ext = os.path.splitext(out)
        return [f"{stem}_{i}{ext or '.mp4'}" for i in range(batch)]
    paths = [os.fspath(p) for p in out]
    if len(paths) != batch:
        raise ValueError(f"got {len(paths)} output paths for a batch of {batch}")
    return paths

