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

    @property
    def base_model(self):
        """The plain DiT the specs' adapters merge into (their base-model check)."""
        return self.bundle.model

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
    """A causal Wan checkpoint (+ LoRA files) with the UMT5 encoder and VAE of ``wan_dir``.

    The speed options of ``fademem generate`` (``fademem.pipeline.fast``): ``compile`` (a resolved mode,
    see ``resolve_compile``; 'none' runs eager) compiles each distinct generator once, the first time a
    spec needs it (the per-spec models may be copies with a policy's adapter merged), and keeps its
    ``RegionalCompile`` context entered until ``close()``; ``compile_fallback``: a region that fails to
    compile runs eagerly (the default compile, not asked for). ``fast_decode``: the VAE decoder in
    channels_last_3d and the decode overlapped with the next chunk (same frames). ``fp8``: the DiT's block
    linears in torchao float8 (``apply_fp8``; call ``check_fp8`` first); it changes the model's numbers, so
    ``model_id`` (part of every job's key) says so. ``prepare(specs)`` builds every spec's generator before
    any is converted or compiled (``frames`` does it for a spec not prepared).
    """

    def __init__(self, checkpoint, wan_dir, lora=(), device="cuda", dtype=torch.bfloat16, height=480, width=832,
                 compile="none", compile_fallback=False, fast_decode=False, fp8=False):
        import contextlib

        from fademem.pipeline import load_wan_pipeline
        from fademem.pipeline.fast import check_compile_mode

        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")
        if check_compile_mode(compile) == "auto":
            raise ValueError("WanGenerator needs a resolved compile mode: resolve_compile(mode, device) first")
        self.compile, self.compile_fallback, self.fp8 = compile, bool(compile_fallback), bool(fp8)
        self.fast_decode = bool(fast_decode)
        self.files = [Path(checkpoint), *map(Path, lora)]
        self.pipe = load_wan_pipeline(checkpoint, wan_dir, lora=list(lora), device=device, dtype=dtype)
        self.fps, self.height, self.width = float(self.pipe.fps), height, width
        self.size = f"{height}x{width}"
        self.model_id = "wan:" + "+".join(p.name for p in self.files) + ("@fp8" if self.fp8 else "")
        self._models: dict[str, object] = {}
        self._fp8_done: set[int] = set()   # id() of the models converted to float8
        self._compiled: set[int] = set()   # id() of the models whose RegionalCompile context is entered
        self._stack = contextlib.ExitStack()
        self.notes: list[str] = []
        if self.compile != "none":
            from fademem.pipeline.fast import enable_compile_cache

            cache = enable_compile_cache()
            self.notes.append(f"compile {self.compile}: the DiT blocks and the VAE decoder compile on the first "
                              f"chunk (kernels cached in {cache['dir']}); --compile none runs eager")
        if self.fast_decode:
            from fademem.pipeline.fast import apply_fast_decode

            self.notes.append(apply_fast_decode(self.pipe))

    def checkpoint_hash(self) -> str:
        return file_hash(self.files)

    @property
    def base_model(self):
        """The plain DiT (with ``lora`` merged) the specs' adapters merge into (their base-model check)."""
        return self.pipe.model

    def check_prompts(self, prompts: list[str]) -> None:
        return None

    def options(self) -> dict:
        """What ran, for the results' details: {"compile", "precision", "fast_decode"}."""
        return {"compile": self.compile, "precision": "fp8" if self.fp8 else "dtype", "fast_decode": self.fast_decode}

    def prepare(self, specs) -> None:
        """The generator of every spec in ``specs`` (the plain model, or a copy with the policy's adapter
        merged), then each distinct one converted (fp8) and compiled once. A copy is made from the plain,
        uncompiled model: compiled contexts are left (and entered again) around a late copy; a late copy of a
        model already in float8 is refused (list every spec up front)."""
        from fademem.memory import build_memory
        from fademem.pipeline import generator_for_memory

        new = [s for s in dict.fromkeys(specs) if s not in self._models]
        if not new:
            return
        copies = [s for s in new if build_memory(s).generator_adapter() is not None]
        base = self.pipe.model
        if copies and id(base) in self._fp8_done:
            raise ValueError(f"memory {copies[0]} merges an adapter into a copy of the generator, which is already "
                             "in float8: give every spec to WanGenerator.prepare before the first video")
        if copies and self._compiled:  # never deep-copy a model with compiled wrappers on its blocks
            self.close()
        for s in new:
            self._models[s] = generator_for_memory(base, s)
        self._convert_and_compile()

    def _convert_and_compile(self) -> None:
        from fademem.pipeline.fast import RegionalCompile, apply_fp8

        distinct = list({id(m): m for m in self._models.values()}.values())
        for m in distinct:
            if self.fp8 and id(m) not in self._fp8_done:
                n = apply_fp8(m)
                self._fp8_done.add(id(m))
                self.notes.append(f"fp8: {n} block linears in torchao float8")
            if self.compile != "none" and id(m) not in self._compiled:
                decoder = None if self._compiled else self.pipe.decoder  # the shared decoder compiles once
                self._stack.enter_context(RegionalCompile(m, self.compile, decoder=decoder,
                                                          fallback=self.compile_fallback))
                self._compiled.add(id(m))

    def close(self) -> None:
        """Leave every compile context (undoes the compilation); the generator runs eager after it and
        compiles again on the next ``frames``."""
        try:
            self._stack.close()
        finally:
            self._compiled.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def frames(self, prompt: str, spec: str, seed: int, seconds: float) -> np.ndarray:

        from fademem.pipeline import latent_frames_for_seconds

        base = self.pipe
        if spec not in self._models:
            self.prepare([spec])
        elif self.compile != "none" and id(self._models[spec]) not in self._compiled:  # after a close()
            self._convert_and_compile()
        pipe = base
        if self._models[spec] is not base.model:  # the policy's adapter merged into a copy: same pipeline around it
            pipe = base.with_model(self._models[spec])
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
