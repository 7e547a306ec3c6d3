"""Chunk-wise autoregressive sampling (Self-Forcing / LongLive / FadeMem inference).

The video is generated in chunks of ``frames_per_chunk`` (3) latent frames. For each chunk:

1. four denoising forwards at the warped timesteps (``fademem.wan.sampling``); the memory is only
   read. After each forward ``x0 = x_t - sigma * v``; before the next one the prediction is
   re-noised with fresh noise, ``x = (1 - sigma_next) * x0 + sigma_next * noise``;
2. one forward of the finished (clean) chunk at ``t = context_noise`` (0 by default) with
   ``write_memory=True``: this pass writes the chunk's K/V into the memory. With
   ``context_noise > 0`` the chunk is first re-noised to that level, as Self-Forcing trains it
   (its released inference scripts pass the clean chunk with the timestep only; 0 makes both the same);
3. the chunk is handed to the decoder (streaming: the decoder keeps its own state), checked for
   NaN/inf (one host sync per chunk) and yielded.

Prompt switches (LongLive's interactive mode): at a switch the new prompt gets a fresh text
context (this is the cross-attention cache reset), then the policy names the held frames to
re-encode (``memory.policy.recache_frames(limit=12)``; e.g. sink frames keep their old K/V) and
``model.recache`` recomputes their K/V under the new prompt from their clean latents, which the
pipeline keeps in a ring buffer of the last ``recache_limit`` latent frames. Held frames older
than that buffer keep their K/V.

Randomness: all noise is drawn on the CPU from ``torch.Generator``s seeded by ``seed`` and then
moved, so a seed gives the same video on any device (up to kernel numerics). The initial noise
of the video is drawn chunk by chunk (``initial_noise`` reproduces it); the re-noising draws come
from a second generator, so passing one's own initial ``noise`` leaves them unchanged.

The chunk loop itself runs in ``fademem.pipeline.session.GenerationSession`` (one chunk per ``step()``,
with exact save / resume); the per-chunk pieces (denoising, cache write, recache) are methods here.

The components are protocols, so the embedded pixel-space model (own text encoder, no VAE) and
the real Wan2.1 stack (UMT5 + Wan VAE) plug in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from fademem.pipeline.chunk import Chunk, NonFiniteError  # noqa: F401
from fademem.pipeline.switches import _as_batch, latent_frames_for_seconds, parse_switch, plan_switches  # noqa: F401
from fademem.wan.sampling import DEFAULT_SHIFT, DEFAULT_STEPS, FlowSchedule

log = logging.getLogger(__name__)

RECACHE_LIMIT = 12  # LongLive: recompute at most the last 12 latent frames on a prompt switch
UPDATES = ("renoise", "ode")  # the step rules of VideoPipeline(update=...)


# -- the component protocols ---------------------------------------------------------------------
@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text states [B, L, text_dim]."""


@runtime_checkable
class Decoder(Protocol):
    fps: float

    def reset(self) -> None:
        """Start a new video."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Next latent frames [B, C, F, h, w] -> uint8 frames [B, T, H, W, 3] (streaming)."""


# -- helpers -------------------------------------------------------------------------------------
def initial_noise(seed: int, shape: Sequence[int], frames_per_chunk: int = 3) -> torch.Tensor:
    """The initial noise [B, C, F, h, w] that ``generate(seed=seed)`` draws (CPU, float32)."""
    b, c, f, h, w = shape
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    parts = [torch.randn((b, c, min(frames_per_chunk, f - s), h, w), generator=g)
             for s in range(0, f, frames_per_chunk)]
    return torch.cat(parts, dim=2)


def _param(model) -> torch.Tensor | None:
    try:
        return next(model.parameters())
    except (AttributeError, StopIteration, TypeError):
        return None


def _num_layers(model) -> int:
    for obj in (model, getattr(model, "cfg", None), getattr(model, "config", None)):
        n = getattr(obj, "num_layers", None)
        if isinstance(n, int) and n > 0:
            return n
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        return len(blocks)
    raise ValueError("cannot tell the model's number of layers (no cfg.num_layers, no blocks)")


# -- the pipeline --------------------------------------------------------------------------------
class VideoPipeline:
    """Chunk-wise sampler over a causal DiT with a bounded memory.

    model:         ``encode_text(states) -> context``; ``forward(x, t, context, memory=, start_frame=,
                   write_memory=)`` -> flow v; ``recache(x_clean, context, memory, frames)``
                   (only used with prompt switches); ``cfg.num_layers``.
    text_encoder:  ``TextEncoder`` (prompts -> [B, L, text_dim]).
    decoder:       ``Decoder`` or None (latents only).
    overlap_decode: decode chunk i on a side CUDA stream while the DiT denoises chunk i+1. Chunk i
                   is then yielded once chunk i+1 has been sampled (and its memory written), with
                   the same frames as without overlap. Off by default here (both compete for the
                   same SMs); ``fademem generate`` turns it on on CUDA with a compile mode, where it
                   pays on an H200 (``fademem.pipeline.fast.apply_fast_decode``; ``fademem bench
                   speed`` measures it). Off CUDA the decode runs in place (same order of yields).
                   It can also be set on the attribute before ``generate`` / ``session``.
    cuda_graph:    replay the denoising forwards from a CUDA graph once a bounded memory is full
                   (``fademem.pipeline.cuda_graph.GraphedDenoiser``; query-aware policies stay eager).
                   Off CUDA the same static-buffer path runs without a graph.
    update:        how a step moves to the next noise level. ``"renoise"`` (distilled few-step models,
                   as Self-Forcing / LongLive sample): the x0 prediction re-noised with fresh noise.
                   ``"ode"`` (multi-step flow-matching teachers): the deterministic Euler step of the
                   flow, ``x + (sigma_next - sigma) v``; re-noising a posterior-mean prediction would
                   collapse a teacher's samples to flat means. The noise draws are the same either way.
    """

    def __init__(self, model, text_encoder: TextEncoder, decoder: Decoder | None = None, *,
                 frames_per_chunk: int = 3, steps: Sequence[float] = DEFAULT_STEPS,
                 shift: float = DEFAULT_SHIFT, context_noise: float = 0.0,
                 recache_limit: int = RECACHE_LIMIT, overlap_decode: bool = False,
                 cuda_graph: bool = False, update: str = "renoise"):
        if update not in UPDATES:
            raise ValueError(f"update must be one of {', '.join(UPDATES)}, got {update!r}")
        if frames_per_chunk <= 0:
            raise ValueError(f"frames_per_chunk must be positive, got {frames_per_chunk}")
        if not 0.0 <= context_noise < 1000.0:
            raise ValueError(f"context_noise is a timestep in [0, 1000), got {context_noise}")
        if recache_limit < 0:
            raise ValueError(f"recache_limit must be >= 0, got {recache_limit}")
        if not callable(getattr(text_encoder, "encode", None)):
            raise TypeError("text_encoder must have encode(prompts) -> Tensor [B, L, text_dim]")
        if decoder is not None and not (callable(getattr(decoder, "decode", None))
                                        and callable(getattr(decoder, "reset", None))):
            raise TypeError("decoder must have reset() and decode(latents) -> uint8 [B, T, H, W, 3]")
        self.model = model
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.frames_per_chunk = frames_per_chunk
        self.schedule = FlowSchedule(tuple(steps), shift)
        self.update = update
        self.context_noise = float(context_noise)
        self.recache_limit = recache_limit
        self.overlap_decode = bool(overlap_decode)
        self.graphed = None
        if cuda_graph:
            from fademem.pipeline.cuda_graph import GraphedDenoiser

            self.graphed = GraphedDenoiser(model)
        self.memory = None  # the MemoryStack of the last generate() call
        # set by builders that know the model (embedded_pipeline): generate()'s default latent shape, and the
        # temporal positions 0..n-1 the model was trained on (the session's Memory.for_run); None: Wan's
        self.latent_shape: tuple[int, int, int] | None = None
        self.trained_frames: int | None = None

    @property
    def fps(self) -> float:
        return float(getattr(self.decoder, "fps", 16))

    def with_model(self, model) -> VideoPipeline:
        """The same pipeline (text encoder, decoder, schedule, options) around another generator, e.g. one a
        policy's adapter was merged into; a CUDA graph is captured anew for it, never replayed from this one."""
        import copy

        out = copy.copy(self)
        out.model = model
        if self.graphed is not None:
            from fademem.pipeline.cuda_graph import GraphedDenoiser

            out.graphed = GraphedDenoiser(model)
        return out

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = _param(self.model)
        if p is None:
            return torch.device("cpu"), torch.float32
        return p.device, p.dtype

    def _build_memory(self, memory):
        from fademem.memory import MemoryStack

        if isinstance(memory, MemoryStack):
            if len(memory) != _num_layers(self.model):
                raise ValueError(f"memory stack has {len(memory)} layers, the model {_num_layers(self.model)}")
            memory.reset()
            return memory
        return MemoryStack(memory, _num_layers(self.model))

    def _context(self, states: torch.Tensor):
        encode = getattr(self.model, "encode_text", None)
        return encode(states) if callable(encode) else states

    # -- sampling -------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], num_frames: int, memory="full", seed: int = 0,
                 noise: torch.Tensor | None = None, switches=None, latent_shape: Sequence[int] | None = None,
                 progress: bool = True, prefix: torch.Tensor | None = None,
                 cache_only=None) -> Iterator[Chunk]:
        """Yield each finished chunk (clean latents, and decoded frames when a decoder is set).

        prompts:      one prompt or one per batch item.
        num_frames:   latent frames; a whole number of chunks.
        memory:       a memory spec ("full", "sink:...", "fademem:budget=12") or a MemoryStack (reset here).
        noise:        optional initial noise [B, C, num_frames, h, w]; default: drawn from ``seed``.
        switches:     [(latent_frame, prompt or prompts), ...]; see ``plan_switches``.
        latent_shape: (C, h, w) of one latent frame; default: the pipeline's ``latent_shape`` when set
                      (embedded pipelines), else Wan's at 480x832, (16, 60, 104).
        prefix:       optional clean latents [B, C, P, h, w], P a multiple of frames_per_chunk and at most
                      num_frames: teacher forcing. The first P frames are not sampled but taken as given;
                      each of their chunks goes through the same cache-writing forward as a generated one
                      and is yielded like one. Their noise is still drawn, so the chunks after the prefix
                      get the same noise as without it (a prefix equal to the model's own first P frames
                      reproduces the unforced video).
        cache_only:   chunk indices (a collection, or a callable index -> bool) whose four denoising
                      forwards are skipped: the cache-writing forward runs on the chunk's initial
                      noise and the chunk is yielded with ``cache_only=True``. For speed measurements
                      of long videos: the memory receives every chunk at the right frames and
                      positions (its shapes and bookkeeping are a real run's) at a fifth of the cost;
                      the K/V values, and the video, are not. Noise draws stay aligned.
        """
        from fademem.pipeline.session import GenerationSession, iterate

        session = GenerationSession(self, prompts, num_frames, memory=memory, seed=seed, noise=noise,
                                    switches=switches, latent_shape=latent_shape, prefix=prefix,
                                    cache_only=cache_only)
        return iterate(session, progress)

    def session(self, prompts: str | Sequence[str], num_frames: int, **kwargs):
        """A ``GenerationSession`` (``fademem.pipeline.session``): ``generate`` one chunk at a time, with
        ``state_dict()`` / ``load_state_dict()`` to stop and resume exactly. Arguments as in ``generate``."""
        from fademem.pipeline.session import GenerationSession

        return GenerationSession(self, prompts, num_frames, **kwargs)

    def _chunk_noise(self, start, fpc, noise, g_init, g_step, randn, device, dtype) -> torch.Tensor:
        """A cache-only chunk's input: its initial noise, drawn exactly as ``_denoise_chunk`` draws."""
        n = len(self.schedule.timesteps)
        gens = ([] if noise is not None else [g_init]) + [g_step] * (n - 1)
        drawn = randn(fpc, gens) if gens else None
        if noise is not None:
            return noise[:, :, start:start + fpc].to(device=device, dtype=dtype)
        return drawn[0]

    def _denoise_chunk(self, stack, ctx, start, fpc, noise, g_init, g_step, randn, device, dtype):
        sched = self.schedule
        n = len(sched.timesteps)
        # All of the chunk's noise in one host-to-device copy: the initial draw (g_init) and the
        # n - 1 re-noising draws (g_step), in the order separate draws would take them.
        gens = ([] if noise is not None else [g_init]) + [g_step] * (n - 1)
        drawn = randn(fpc, gens) if gens else None
        if noise is not None:
            x = noise[:, :, start:start + fpc].to(device=device, dtype=dtype)
            renoise = drawn
        else:
            x, renoise = drawn[0], drawn[1:]
        batch = x.shape[0]
        x0 = x
        forward = self.graphed if self.graphed is not None else self.model
        for i, t in enumerate(sched.timesteps):
            tt = torch.full((batch, fpc), t, device=device, dtype=torch.float32)
            v = forward(x, tt, ctx, memory=stack, start_frame=start, write_memory=False)
            x0, x = self.denoise_step(x, v, i, renoise[i] if i + 1 < n and self.update != "ode" else None)
        return x0

    def denoise_step(self, x: torch.Tensor, v: torch.Tensor, i: int, renoise: torch.Tensor | None):
        """One sampler step from level ``i`` given the flow ``v`` predicted at ``x``: (x0 prediction, the input
        at level ``i + 1``: an Euler step for ``update="ode"``, else x0 re-noised with ``renoise``; None after
        the last level)."""
        sched = self.schedule
        x0 = sched.x0_from_flow(x, v, sched.sigmas[i])
        if i + 1 >= len(sched.timesteps):
            return x0, None
        if self.update == "ode":  # Euler: x + (s' - s) v = x0 + s' * (x - x0) / s
            return x0, sched.euler_step(x, v, sched.sigmas[i], sched.sigmas[i + 1])
        return x0, sched.add_noise(x0, renoise, sched.sigmas[i + 1])

    def _write_memory(self, stack, ctx, x0, start, g_step, fpc, randn) -> None:
        batch = x0.shape[0]
        x = x0
        if self.context_noise > 0:
            x = self.schedule.add_noise(x0, randn(fpc, g_step), self.context_noise / 1000.0)
        tt = torch.full((batch, fpc), self.context_noise, device=x0.device, dtype=torch.float32)
        self.model(x, tt, ctx, memory=stack, start_frame=start, write_memory=True)

    def _recache(self, stack, ring, ctx) -> list[int]:
        """Re-encode the policy's chosen held frames under the new prompt; returns those frames."""
        if not self.recache_limit or stack.frames_seen == 0:
            return []
        frames = list(stack.policy.recache_frames(limit=self.recache_limit))
        have = dict(ring)
        missing = [f for f in frames if f not in have]
        if missing:
            log.info("prompt switch: frames %s are older than the last %d and keep their K/V",
                     missing, self.recache_limit)
            frames = [f for f in frames if f in have]
        if not frames:
            return []
        x_clean = torch.stack([have[f] for f in frames], dim=2)
        self.model.recache(x_clean, ctx, stack, frames)
        return frames

    # -- convenience ----------------------------------------------------------------------------
    def generate_video(self, prompts: str | Sequence[str], num_frames: int, *, out, memory="full",
                       seed: int = 0, noise: torch.Tensor | None = None, switches=None,
                       latent_shape: Sequence[int] | None = None, progress: bool = True,
                       return_latents: bool = False, prefix: torch.Tensor | None = None, crf: int = 18):
        """Generate and stream the decoded frames into mp4 file(s).

        ``out``: a path, or one path per batch item; a single path with a batch of B > 1 becomes
        ``<stem>_<i><suffix>``; ``crf``: x264 quality (0: lossless). Returns the list of paths written (and the
        clean latents [B, C, F, h, w] on the CPU when ``return_latents``).
        """
        from fademem.pipeline.output import generate_video

        return generate_video(self, prompts, num_frames, out=out, memory=memory, seed=seed, noise=noise,
                              switches=switches, latent_shape=latent_shape, progress=progress,
                              return_latents=return_latents, prefix=prefix, crf=crf)
