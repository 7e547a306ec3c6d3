"""One generation in progress, chunk by chunk: ``VideoPipeline.generate`` runs through it, and it
saves and restores everything needed to continue a generation exactly (``fademem generate --state``
/ ``--resume``).

A session owns the memory stack, the two noise generators, the chunk index, the prompt-switch
plan with the text context in effect, the recache ring of recent clean latents and the decoder's
streaming state. ``step()`` produces the next chunk (the chunk loop of ``fademem.pipeline.sampler``
lives here, once); ``state_dict()`` / ``load_state_dict()`` capture and restore it between chunks.
A session loaded from the state of another session, then stepped to the end, gives the same
latents and decoded frames, bit for bit, as the uninterrupted one (same device and build).

Resuming may extend the video (a larger ``num_frames``) and change the plan after the resume
point (new switches, e.g. a new prompt at the resume frame); the switches before it, the initial
prompts, the seed, the latent shape and the sampler settings must be those of the state.

Long runs: a memory given as a spec (not a built ``MemoryStack``) runs as the policy's
``Memory.for_run(num_frames, trained_frames)`` says, e.g. FadeMem in compact positions for a video
longer than the model's trained window (``trained_frames``: the argument, else ``pipe.trained_frames``,
else 21 latent frames, the Wan2.1 / Self-Forcing window). A resumed run keeps the spec its state was
saved with when that is the same policy's choice for another length. ``positions_used()`` reports
the lowest and highest temporal position the memory gave so far.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from fademem.memory import MemoryStack, build_memory
from fademem.pipeline.chunk import Chunk, NonFiniteError
from fademem.pipeline.decode import _DecodeQueue
from fademem.pipeline.state import FORMAT, StateError, identity_difference, model_identity
from fademem.pipeline.switches import _as_batch, plan_switches

_STEP_SEED_OFFSET = 0x5DEECE66D  # second generator: re-noising draws
DEFAULT_TRAINED_FRAMES = 21  # Wan2.1 (81 video frames) / Self-Forcing's 21-frame cache, in latent frames


def trained_frames_of(pipe, trained_frames: int | None = None) -> int:
    """The temporal positions ``0 .. n-1`` the pipeline's model was trained on: ``trained_frames`` when
    given, else ``pipe.trained_frames`` when set, else ``DEFAULT_TRAINED_FRAMES``."""
    n = trained_frames if trained_frames is not None else getattr(pipe, "trained_frames", None)
    n = DEFAULT_TRAINED_FRAMES if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"trained_frames must be a positive integer, got {n!r}")
    return n


class GenerationSession:
    """A generation of ``num_frames`` latent frames with ``pipe`` (a ``VideoPipeline``); arguments as
    in ``VideoPipeline.generate``. ``model_files``: weights files whose identity a saved state records."""

    def __init__(self, pipe, prompts: str | Sequence[str], num_frames: int, memory="full", seed: int = 0,
                 noise: torch.Tensor | None = None, switches=None, latent_shape: Sequence[int] | None = None,
                 prefix: torch.Tensor | None = None, cache_only=None, model_files: Sequence = (),
                 trained_frames: int | None = None):
        prompts = _as_batch(prompts)
        batch = len(prompts)
        fpc = pipe.frames_per_chunk
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
        if num_frames % fpc:
            raise ValueError(f"num_frames ({num_frames}) must be a multiple of frames_per_chunk ({fpc}); "
                             f"use {fpc * math.ceil(num_frames / fpc)}")
        # None: the pipeline's own (an embedded pipeline knows its latents), else Wan's at 480x832
        c, h, w = (int(s) for s in (latent_shape or getattr(pipe, "latent_shape", None) or (16, 60, 104)))
        shape = (batch, c, num_frames, h, w)
        if noise is not None:
            if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
                raise ValueError(f"noise must be a tensor of shape {list(shape)} [B, C, F, h, w], "
                                 f"got {list(getattr(noise, 'shape', [])) or type(noise).__name__}")
            if not noise.is_floating_point():
                raise ValueError(f"noise must be floating point, got {noise.dtype}")
        if prefix is not None:
            if (not isinstance(prefix, torch.Tensor) or prefix.dim() != 5 or not prefix.is_floating_point()
                    or tuple(prefix.shape[:2]) != shape[:2] or tuple(prefix.shape[3:]) != shape[3:]):
                raise ValueError(f"prefix must be floating-point latents [B, C, P, h, w] = [{batch}, {c}, P, {h}, "
                                 f"{w}], got {list(getattr(prefix, 'shape', [])) or type(prefix).__name__}")
            if prefix.shape[2] % fpc or prefix.shape[2] > num_frames:
                raise ValueError(f"prefix has {prefix.shape[2]} frames: need a multiple of frames_per_chunk "
                                 f"({fpc}) and at most num_frames ({num_frames})")
        self.plan = plan_switches(switches, num_frames, fpc, batch)
        self.stack = pipe._build_memory(memory)  # a bad spec fails here, not at the first chunk
        self.trained_frames = trained_frames_of(pipe, trained_frames)
        self._memory_arg = None if isinstance(memory, MemoryStack) else memory  # a built stack runs as given
        if self._memory_arg is not None:
            chosen = self.stack.policy.for_run(num_frames, self.trained_frames, fpc)
            if chosen != self.stack.spec:
                self.stack = pipe._build_memory(chosen)
        if cache_only is not None and not callable(cache_only):
            cache_only = frozenset(int(i) for i in cache_only).__contains__
        self.pipe, self.prompts, self.num_frames, self.seed = pipe, prompts, num_frames, int(seed)
        self.shape, self.noise, self.prefix, self.cache_only = shape, noise, prefix, cache_only
        self.model_files = list(model_files)
        self.device, self.dtype = pipe._device_dtype()
        self.g_init = torch.Generator(device="cpu").manual_seed(self.seed)
        self.g_step = torch.Generator(device="cpu").manual_seed((self.seed + _STEP_SEED_OFFSET) % 2 ** 63)
        self.index = 0  # the next chunk
        self.ring: deque[tuple[int, torch.Tensor]] = deque(maxlen=pipe.recache_limit)
        self.current = list(prompts)
        self.next_switch = 0
        self.states: list[torch.Tensor] | None = None
        self.ctx = None
        self._decode: _DecodeQueue | None = None
        self._decoder_state = None  # from load_state_dict, applied when the session begins

    # -- running ------------------------------------------------------------------------------------
    @property
    def start(self) -> int:
        """The first latent frame of the next chunk (= latent frames done)."""
        return self.index * self.pipe.frames_per_chunk

    @property
    def done(self) -> bool:
        return self.start >= self.num_frames

    def _randn(self, n: int, g: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """[B, C, n, h, w] noise from ``g`` on the host; a list of generators gives one draw per
        generator, in order, stacked [len(g), B, C, n, h, w]. The values are those of separate
        ``torch.randn`` calls; they are drawn into one pinned buffer and copied without a sync."""
        batch, c, _, h, w = self.shape
        gens = [g] if isinstance(g, torch.Generator) else list(g)
        host = torch.empty((len(gens), batch, c, n, h, w), pin_memory=self.device.type == "cuda")
        for i, gen in enumerate(gens):
            torch.randn((batch, c, n, h, w), generator=gen, out=host[i])
        out = host.to(self.device, non_blocking=True).to(self.dtype)
        return out[0] if isinstance(g, torch.Generator) else out

    def _begin(self) -> None:
        """Encode every prompt (errors surface before any sampling), reset the decoder (or restore
        its streaming state) and build the text context in effect."""
        if self._decode is not None:
            return
        pipe, batch = self.pipe, self.shape[0]
        with torch.no_grad():
            states = [pipe.text_encoder.encode(self.prompts)] + [pipe.text_encoder.encode(p) for _, p in self.plan]
        for i, s in enumerate(states):
            if not isinstance(s, torch.Tensor) or s.dim() != 3 or s.shape[0] != batch:
                raise ValueError(f"text encoder returned {getattr(s, 'shape', type(s))} for "
                                 f"{'the initial prompts' if i == 0 else f'switch {i}'}; expected [{batch}, L, D]")
        self.states = states
        pipe.memory = self.stack
        if pipe.decoder is not None:
            pipe.decoder.reset()
            if self._decoder_state is not None:
                pipe.decoder.load_stream_state(self._decoder_state)
        if pipe.graphed is not None:
            pipe.graphed.reset()
        self._decode = _DecodeQueue(pipe.decoder, self.device, pipe.overlap_decode)
        with torch.no_grad():
            self.ctx = pipe._context(states[self.next_switch].to(self.device))

    def step(self) -> list[Chunk]:
        """Sample the next chunk; returns the chunks decoded by now (with overlapped decoding, the
        previous one)."""
        if self.done:
            raise ValueError(f"the session is finished ({self.num_frames} latent frames)")
        self._begin()
        pipe, stack, fpc = self.pipe, self.stack, self.pipe.frames_per_chunk
        device, dtype, noise, prefix, plan = self.device, self.dtype, self.noise, self.prefix, self.plan
        index, start = self.index, self.start
        recached: list[int] = []
        skipped = self.cache_only is not None and self.cache_only(index)
        with torch.no_grad():
            if self.next_switch < len(plan) and plan[self.next_switch][0] == start:
                self.current = plan[self.next_switch][1]
                self.next_switch += 1
                self.ctx = pipe._context(self.states[self.next_switch].to(device))
                recached = pipe._recache(stack, self.ring, self.ctx)
            if prefix is not None and start < prefix.shape[2]:  # teacher forcing
                x0 = prefix[:, :, start:start + fpc].to(device=device, dtype=dtype)
                # draw what sampling would have drawn, so later chunks get the same noise
                batch, c, _, h, w = self.shape
                for g in ([self.g_init] if noise is None else []) + [self.g_step] * (len(pipe.schedule) - 1):
                    torch.randn((batch, c, fpc, h, w), generator=g)
            elif skipped:
                x0 = pipe._chunk_noise(start, fpc, noise, self.g_init, self.g_step, self._randn, device, dtype)
            else:
                x0 = pipe._denoise_chunk(stack, self.ctx, start, fpc, noise, self.g_init, self.g_step, self._randn,
                                         device, dtype)
            if not skipped and not bool(torch.isfinite(x0).all()):  # the one host sync of the chunk
                raise NonFiniteError(
                    f"chunk {index} (latent frames {start}-{start + fpc - 1}) contains NaN/inf after "
                    f"denoising (model dtype {dtype}); the checkpoint or the memory may be broken, "
                    "or try float32")
            pipe._write_memory(stack, self.ctx, x0, start, self.g_step, fpc, self._randn)
            if pipe.recache_limit:
                for f in range(fpc):
                    self.ring.append((start + f, x0[:, :, f].clone()))
            # queued after this chunk's DiT work; with overlap it runs beside the next chunk's
            self._decode.put(Chunk(index, start, x0, None, list(self.current), recached, skipped))
        self.index += 1
        return self._decode.ready()

    def drain(self) -> list[Chunk]:
        """The chunks still being decoded (overlapped decoding), finished."""
        return self._decode.drain() if self._decode is not None else []

    def close(self) -> None:
        if self._decode is not None:
            self._decode.close()

    # -- state ----------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        pipe = self.pipe
        return {"batch": self.shape[0], "latent_shape": list(self.shape[1:2] + self.shape[3:]),
                "frames_per_chunk": pipe.frames_per_chunk, "steps": [float(t) for t in pipe.schedule.steps],
                "shift": float(pipe.schedule.shift), "context_noise": pipe.context_noise,
                "recache_limit": pipe.recache_limit, "seed": self.seed, "prompts": list(self.prompts),
                "memory": self.stack.spec, "dtype": str(self.dtype).replace("torch.", "")}

    def positions_used(self) -> tuple[float, float] | None:
        """(lowest, highest) temporal RoPE position the memory has given a key or query so far."""
        return self.stack.positions_used()

    def _adopt_memory(self, spec) -> bool:
        """Run ``spec`` (a saved state's) instead when it is this memory's choice for another video
        length (``Memory.for_run``): a resumed run keeps the positions it started with."""
        if self._memory_arg is None or not isinstance(spec, str):
            return False
        policy, fpc = build_memory(self._memory_arg), self.pipe.frames_per_chunk
        if spec not in (policy.spec(), policy.for_run(1 << 40, 1, fpc)):
            return False
        self.stack = self.pipe._build_memory(spec)
        return True

    def identity(self) -> dict[str, Any]:
        if getattr(self, "_identity", None) is None:
            self._identity = model_identity(self.pipe.model, self.model_files)
        return self._identity

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the chunks done so far (call between chunks, with
        every decoded chunk taken: after ``drain()`` when decoding overlaps)."""
        if self.noise is not None or self.cache_only is not None:
            raise ValueError("a session with caller-given noise or cache_only chunks cannot be saved")
        if self._decode is not None and (self._decode.pending or self._decode.out):
            raise ValueError("chunks are still being decoded: take them with drain() before state_dict()")
        decoder = self.pipe.decoder
        dec_state = None
        if decoder is not None:
            get = getattr(decoder, "stream_state", None)
            if not callable(get):
                raise ValueError(f"the decoder ({type(decoder).__name__}) has no stream_state(): its streaming "
                                 "state cannot be saved, so this generation cannot be resumed")
            dec_state = get() if self._decode is not None else self._decoder_state
        return {"format": FORMAT, "model": self.identity(), "settings": self._settings(),
                "chunk_index": self.index, "start_frame": self.start, "num_frames": self.num_frames,
                "plan": [[f, list(p)] for f, p in self.plan], "current": list(self.current),
                "next_switch": self.next_switch, "memory": self.stack.state_dict(),
                "rng": {"init": self.g_init.get_state(), "step": self.g_step.get_state()},
                "ring": [[f, x] for f, x in self.ring], "decoder": dec_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a fresh session only). Raises ``StateError`` naming what differs
        when the state is of another format, model, memory policy, settings or past plan."""
        if self._decode is not None or self.index:
            raise ValueError("load_state_dict needs a fresh session (no chunk generated yet)")
        if state.get("format") != FORMAT:
            raise StateError(f"state format '{state.get('format')}'; this fademem reads '{FORMAT}'")
        diff = identity_difference(state.get("model", {}), self.identity())
        if diff:
            raise StateError(f"the state was saved from another model: {diff}")
        saved, here = state.get("settings", {}), self._settings()
        if saved.get("memory") != here["memory"] and self._adopt_memory(saved.get("memory")):
            here = self._settings()
        if saved.get("memory") != here["memory"]:
            raise StateError(f"the state is for memory '{saved.get('memory')}', this run uses '{here['memory']}'")
        diff = [f"{k} {saved.get(k)!r} (state) vs {here[k]!r} (here)" for k in here if saved.get(k) != here[k]]
        if diff:
            raise StateError("the state was saved with other settings: " + "; ".join(diff))
        start = int(state["start_frame"])
        if start > self.num_frames:
            raise StateError(f"the state has {start} latent frames done, more than this run's {self.num_frames}")
        past = [[f, list(p)] for f, p in self.plan if f < start]
        if past != state["plan"][:len(past)] or any(f < start for f, _ in state["plan"][len(past):]):
            raise StateError(f"the prompt switches before latent frame {start} differ from the state's: "
                             f"{[f for f, _ in state['plan'] if f < start]} (state) vs {[f for f, _ in past]} (here)")
        self.stack.load_state_dict(state["memory"])
        self.g_init.set_state(state["rng"]["init"])
        self.g_step.set_state(state["rng"]["step"])
        self.index = int(state["chunk_index"])
        self.next_switch = len(past)
        self.current = list(state["current"])
        for f, x in state["ring"]:
            self.ring.append((int(f), x.to(device=self.device)))
        self._decoder_state = state.get("decoder")

    def switch_prompt(self, prompts: str | Sequence[str]) -> int:
        """A prompt switch decided while generating (``fademem serve``): ``prompts`` take effect at
        the next chunk, with the same KV-recache as a planned switch, and replace the switches
        planned from there on. Returns the latent frame it takes effect at. The prompts are encoded
        now, so one the text encoder refuses raises ValueError and changes nothing."""
        at = self.start
        if self.done:
            raise ValueError(f"the session is finished ({self.num_frames} latent frames)")
        if at == 0:
            raise ValueError("no chunk generated yet: a prompt for frame 0 is the initial prompt")
        new = _as_batch(prompts, self.shape[0], what="switch")
        keep = [(f, p) for f, p in self.plan if f < at]  # applied already: next_switch == len(keep)
        with torch.no_grad():
            encoded = self.pipe.text_encoder.encode(new)
        if self.states is not None:  # else _begin() encodes the whole plan
            self.states = self.states[:len(keep) + 1] + [encoded]
        self.plan = keep + [(at, new)]
        return at


def iterate(session: GenerationSession, progress: bool = True) -> Iterator[Chunk]:
    """Step ``session`` to its end, yielding each decoded chunk in order."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=session.num_frames // session.pipe.frames_per_chunk, initial=session.index,
                   desc="chunks", unit="chunk")
    try:
        while not session.done:
            for chunk in session.step():
                if bar is not None:
                    bar.update(1)
                yield chunk
        for chunk in session.drain():
            if bar is not None:
                bar.update(1)
            yield chunk
    finally:
        session.close()
        if bar is not None:
            bar.close()
