"""What the pipeline yields: one finished chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Chunk:
    """One finished chunk, as ``VideoPipeline.generate`` yields it."""

    index: int  # chunk number (0-based)
    start: int  # first latent frame
    latents: torch.Tensor  # clean latents [B, C, F, h, w] (model device and dtype)
    frames: torch.Tensor | None  # decoded uint8 frames [B, T, H, W, 3] on the CPU, None without decoder
    prompts: list[str] = field(default_factory=list)  # the prompts in effect (one per batch item)
    recached: list[int] = field(default_factory=list)  # frames re-encoded by a switch before this chunk
    cache_only: bool = False  # denoising skipped (generate(cache_only=...)): latents are its noise

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    @property
    def end(self) -> int:
        """One past the last latent frame."""
        return self.start + self.num_frames


class NonFiniteError(FloatingPointError):
    """The sampler produced NaN or inf values."""
