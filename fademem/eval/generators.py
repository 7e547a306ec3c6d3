"""The generators ``fademem eval run`` drives: a causal Wan checkpoint (``load_wan_pipeline``) or the
embedded model, both through ``VideoPipeline.generate`` with the memory spec of the job; and the
embedded model's world critic.

A generator gives uint8 frames ``[T, H, W, 3]`` for (prompt, spec, seed, seconds); memory policies
are reached only through the registry and ``generator_for_memory`` (a policy that declares a generator
adapter gets it merged, whichever it is).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from fademem.eval.store import file_hash

__all__ = ["EmbeddedGenerator", "WanGenerator", "critic_scores"]

WAN_TEMPORAL_STRIDE = 4


def _frames(chunks) -> np.ndarray:
    frames = torch.cat([c.frames for c in chunks], dim=1)
    return frames[0].numpy()


class EmbeddedGenerator:
    """The embedded model (the shipped file, or ``weights``), at its own frame size and fps."""

    def __init__(self, weights=None, device="cpu"):
        from fademem import embedded

        self.path = Path(weights) if weights else embedded.default_path()
        self.bundle = embedded.load(weights, device=device)
        self.fps = float(self.bundle.cfg.fps)
        self.size = f"{self.bundle.cfg.frame_size}x{self.bundle.cfg.frame_size}"
        self.model_id = "embedded" if not weights else f"embedded:{self.path.name}"
        self._models: dict[str, object] = {}

    def checkpoint_hash(self) -> str:
        return file_hash([self.path])

    def check_prompts(self, prompts: list[str]) -> None:
        for i, p in enumerate(prompts):
            try:
                self.bundle.text.tokenize([p])
            except ValueError as e:
                raise ValueError(f"prompt {i + 1} is outside the embedded model's grammar: {e}") from None

    def frames(self, prompt: str, spec: str, seed: int, seconds: float) -> np.ndarray:
        from fademem import embedded
        from fademem.pipeline import embedded_pipeline, generator_for_memory, latent_frames_for_seconds

        if spec not in self._models:
            self._models[spec] = generator_for_memory(self.bundle.model, spec)
        pipe = embedded_pipeline(dataclasses.replace(self.bundle, model=self._models[spec]))
        n = latent_frames_for_seconds(seconds, fps=self.fps, temporal_stride=1)
        return _frames(pipe.generate(prompt, n, memory=spec, seed=seed, latent_shape=embedded.latent_shape(
            self.bundle.cfg), progress=False))


class WanGenerator:
    """A causal Wan checkpoint (+ LoRA files) with the UMT5 encoder and VAE of ``wan_dir``."""

    def __init__(self, checkpoint, wan_dir, lora=(), device="cuda", dtype=torch.bfloat16, height=480, width=832):
        from fademem.pipeline import load_wan_pipeline

        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")
        self.files = [Path(checkpoint), *map(Path, lora)]
        self.pipe = load_wan_pipeline(checkpoint, wan_dir, lora=list(lora), device=device, dtype=dtype)
        self.fps, self.height, self.width = float(self.pipe.fps), height, width
        self.size = f"{height}x{width}"
        self.model_id = "wan:" + "+".join(p.name for p in self.files)
        self._models: dict[str, object] = {}

    def checkpoint_hash(self) -> str:
        return file_hash(self.files)

    def check_prompts(self, prompts: list[str]) -> None:
        return None

    def frames(self, prompt: str, spec: str, seed: int, seconds: float) -> np.ndarray:
        import copy

        from fademem.pipeline import generator_for_memory, latent_frames_for_seconds

        base = self.pipe
        if spec not in self._models:
            self._models[spec] = generator_for_memory(base.model, spec)
        pipe = base
        if self._models[spec] is not base.model:  # the policy's adapter merged into a copy: same pipeline around it
            pipe = copy.copy(base)
            pipe.model = self._models[spec]
        n = latent_frames_for_seconds(seconds, fps=self.fps, temporal_stride=WAN_TEMPORAL_STRIDE)
        shape = (base.decoder.z_dim, self.height // 8, self.width // 8)
        return _frames(pipe.generate(prompt, n, memory=spec, seed=seed, latent_shape=shape, progress=False))


def critic_scores(critic, frames: np.ndarray, prompt: str) -> dict:
    """The world critic over windows of ``frames`` every ``span`` frames: "critic_fidelity" (the share
    of attribute readings that match the prompt, over windows and the attributes observable from the
    prompt, as ``fademem bench fidelity``'s mean) and per attribute; None when the video is shorter
    than one window."""
    from fademem.embedded.critic import score_video

    windows = score_video(critic, torch.from_numpy(np.ascontiguousarray(frames)), prompt)
    per: dict[str, list[bool]] = {}
    for w in windows:
        for k, v in w.items():
            if k != "start" and (v["observable"] is None or v["observable"]):
                per.setdefault(k, []).append(bool(v["correct"]))
    every = [x for v in per.values() for x in v]
    return {"critic_fidelity": float(np.mean(every)) if every else None, "critic_windows": len(windows),
            "critic_attributes": {k: float(np.mean(v)) for k, v in per.items()}}
