"""The generator a live page runs, behind one small record: the embedded model or a Wan checkpoint.

A ``LiveModel`` says how to get a pipeline for a memory spec, how to check a prompt before it is
used, and what a state file must record to be resumed by ``fademem generate --resume`` (the
options of ``fademem generate`` under ``cli``, the weights files whose identity it checks).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EMBEDDED_EXAMPLES = (
    "a large red circle bouncing over a striped blue background , camera pans right and returns after 8 seconds",
    "a large yellow square standing still over a plain green background , camera is static",
    "a medium white star orbiting and a small pink ring drifting left over a checkered purple background , "
    "camera slowly sweeps back and forth",
)


@dataclass
class LiveModel:
    name: str  # "embedded" or "wan", as `fademem generate` records it under cli.kind
    build: Callable[[str], object]  # memory spec -> VideoPipeline (with what the policy declares merged)
    latent_shape: tuple[int, int, int]
    fps: float
    temporal_stride: int  # video frames per latent frame (the Wan VAE: 4; the embedded codec: 1)
    frame_size: tuple[int, int]  # (height, width) of decoded frames
    check: Callable[[str], None] = lambda p: None  # raises ValueError for a prompt the model cannot take
    files: Sequence[str] = ()  # weights files whose identity a saved state records
    cli: dict = field(default_factory=dict)  # `fademem generate` options a state records
    grammar: str | None = None  # the prompt grammar, where the model has one
    examples: Sequence[str] = ()

    def check_prompt(self, prompt) -> str:
        """The prompt, stripped; ValueError with a readable reason when it cannot be used."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("empty prompt: type a scene description")
        prompt = " ".join(prompt.split())
        self.check(prompt)
        return prompt


def embedded_model(weights=None, device="cpu", dtype="float32", context_noise: float = 0.0) -> LiveModel:
    """The small model shipped in the package (or ``weights``); ValueError / FileNotFoundError for a
    bad weights file."""
    import torch

    from fademem import embedded
    from fademem.embedded.world.grammar import GRAMMAR
    from fademem.pipeline import embedded_pipeline, generator_for_memory

    bundle = embedded.load(weights, device=device, dtype=getattr(torch, dtype))

    def build(spec: str):
        model = generator_for_memory(bundle.model, spec)  # e.g. the compressor's generator LoRA
        return embedded_pipeline(dataclasses.replace(bundle, model=model), context_noise=context_noise)

    size = bundle.cfg.frame_size
    return LiveModel(name="embedded", build=build, latent_shape=tuple(embedded.latent_shape(bundle.cfg)),
                     fps=float(bundle.cfg.fps), temporal_stride=1, frame_size=(size, size),
                     check=lambda p: bundle.text.tokenize([p]), files=[weights or embedded.default_path()],
                     cli=dict(kind="embedded", weights=weights and os.path.abspath(weights), opening=0.0, image=None),
                     grammar=GRAMMAR, examples=EMBEDDED_EXAMPLES)


def wan_model(checkpoint, wan_dir, lora=(), device="cuda", dtype="bfloat16", height: int = 480, width: int = 832,
              context_noise: float = 0.0) -> LiveModel:
    """A causal Wan generator with the Wan2.1 text encoder and VAE, as ``fademem generate --checkpoint``
    loads it; FileNotFoundError / ValueError for missing or mismatched files."""
    import torch

    from fademem.pipeline import generator_for_memory, load_wan_pipeline

    pipe = load_wan_pipeline(checkpoint, wan_dir, lora=list(lora), device=device, dtype=getattr(torch, dtype),
                             context_noise=context_noise)
    merged: dict = {}  # the last policy's generator with its adapter merged (one kept: a 1.3B copy is large)

    def build(spec: str):
        if spec in merged:
            return merged[spec]
        model = generator_for_memory(pipe.model, spec)  # e.g. FadeMem-FT's lora=DIR, the compressor's LoRA
        if model is pipe.model:
            return pipe
        merged.clear()
        merged[spec] = pipe.with_model(model)
        return merged[spec]

    return LiveModel(name="wan", build=build, latent_shape=(pipe.decoder.z_dim, height // 8, width // 8),
                     fps=float(pipe.fps), temporal_stride=4, frame_size=(height, width), files=[checkpoint, *lora],
                     cli=dict(kind="wan", checkpoint=os.path.abspath(checkpoint),
                              lora=[os.path.abspath(x) for x in lora], wan_dir=os.path.abspath(wan_dir),
                              height=height, width=width))

