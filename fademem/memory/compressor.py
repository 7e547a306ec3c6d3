"""``compressor``: recent frames as they are, older history as learned compressed tokens (issue 8).

Design (fits the Memory contract with no model change). A memory receives per-layer K/V, never
latents, so the policy cannot run the latent-space history encoder of ``fademem.compressor``
and project its tokens to K/V. Instead it **compresses the K/V sequences directly**: the
same ``HistoryEncoder`` architecture (3D convs, GroupNorm/SiLU, one attention block at the
coarsest level, time reduced before space) runs over a layer's K and V viewed as a video

    [B, 2*heads*head_dim, t, grid_h, grid_w]  (K and V concatenated on channels)

and its ``out_dim = 2*heads*head_dim`` tokens are split back into compressed keys and values.

* Recent frames: the last ``window`` frames stay as ordinary frames (plus up to ``t - 1``
  frames waiting to fill a compression group), in a ring ``SlotStore`` of ``window + t`` slots.
* Evicted frames are compressed **incrementally**, one group of ``t`` frames (the rate's time
  factor) at a time, as soon as a group has left the window; each group becomes one slot of
  ``(grid_h / h) * (grid_w / w)`` tokens in a ring ``SlotStore`` of ``budget`` groups (the
  oldest group is dropped). Device memory is therefore fixed: ``window + t`` frames plus
  ``budget`` groups, whatever the video length.
* Positions: absolute. Each compressed group's keys are rotated to the centre of the span it
  summarises (``first + (t - 1) / 2``, fractional); the chunk sits at its true indices. The
  encoder sees keys with the spatial RoPE phase only and learns whatever spatial phase its
  output keys need; only the temporal phase is applied by the memory.
* Keys of one frame are assumed to lie on a ``grid_h x grid_w`` token grid in row-major order
  (the model's patch grid): square by default, or ``grid_w`` given as a knob.
* Weights: ``weights=`` a file written by ``fademem.compressor.save`` whose encoder takes and
  returns ``2*heads*head_dim`` channels at this rate. Without weights the policy refuses to
  build unless ``allow_random=true`` (tests, plumbing checks): random compression must never
  be used silently for generation. One encoder is shared by every layer (and every policy
  instance built from the same weights on the same device), because the Memory contract builds
  identical per-layer policies from one spec and does not tell a policy its layer index.

Not yet: trained K/V-space weights (pretraining on the frozen DiT's per-layer K/V with
``fademem.compressor.retrieval_loss``, or end-to-end with generator LoRAs), per-layer encoders,
gradients through the memory (the encoder runs under ``no_grad``), prompt-switch recache of
compressed groups (only the raw recent frames are recomputable).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..compressor import CompressorConfig, HistoryEncoder, load, parse_channels, parse_rate
from ..rope import apply_rotary
from .base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from .registry import register
from .window import check_int

_ENCODERS: dict[tuple, HistoryEncoder] = {}  # shared across layers / instances (see module docstring)


def shared_encoder(weights: str | None, seed: int, channels: str, rate: str, width: int,
                   device: torch.device) -> HistoryEncoder:
    """The K/V encoder for ``width = 2*heads*head_dim`` channels (loaded once per file and device)."""
    key = (weights, seed if weights is None else None, channels, rate, width, str(device))
    enc = _ENCODERS.get(key)
    if enc is None:
        if weights is not None:
            enc, _, _ = load(weights)
            cfg = enc.cfg
            if cfg.in_channels != width or cfg.out_dim != width:
                raise ValueError(f"compressor: {weights} encodes {cfg.in_channels} -> {cfg.out_dim} channels, "
                                 f"this model's K/V need {width} -> {width} (2 * heads * head_dim)")
            if parse_rate(cfg.rate) != parse_rate(rate):
                raise ValueError(f"compressor: {weights} was trained at rate {cfg.rate}, the policy asks {rate}")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                enc = HistoryEncoder(CompressorConfig(in_channels=width, out_dim=width,
                                                      channels=parse_channels(channels), rate=rate))
        enc = enc.to(device).eval().requires_grad_(False)
        _ENCODERS[key] = enc
    return enc


@register
@dataclass
class CompressorMemory(Memory):
    """Recent `window` frames plus a bounded buffer of learned compressed history (issue 8)."""

    name = "compressor"

    window: int = 6
    budget: int = 8  # compressed groups of t frames kept (the oldest is dropped)
    rate: str = "2x2x1"  # (time x height x width) reduction of the K/V token grid
    channels: str = "64-128-256-512"  # encoder channel ladder when weights=None (random init)
    grid_w: int = 0  # token-grid width of one frame; 0: square grid
    weights: str | None = None
    allow_random: bool = False
    seed: int = 0

    def validate(self) -> None:
        check_int(self.name, "window", self.window, 1)
        check_int(self.name, "budget", self.budget, 1)
        check_int(self.name, "grid_w", self.grid_w, 0)
        try:
            parse_rate(self.rate)
            parse_channels(self.channels)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        if self.weights is None and not self.allow_random:
            raise ValueError(f"{self.name}: no weights given. Pass weights=<file from fademem.compressor.save>; "
                             f"allow_random=true builds an untrained encoder (tests only, not for generation)")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"{self.name}: weights file {self.weights} not found")

    def spec(self) -> str:
        # The base class compares with type(self)(), which this policy refuses to build.
        diff = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rope", "tokens_per_frame") and getattr(self, f.name) != f.default}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in diff.items()) if diff else "")

    @property
    def factors(self) -> tuple[int, int, int]:
        return parse_rate(self.rate)

    @property
    def ring(self) -> int:
        return self.window + self.factors[0]

    def reset(self) -> None:
        super().reset()
        self.recent_store = SlotStore(capacity=self.ring)
        self.compressed_store = SlotStore(capacity=self.budget)
        self.encoder: HistoryEncoder | None = None

    # -- host-side layout (frame indices only) ------------------------------------------------------
    def grid(self) -> tuple[int, int]:
        n = self.tokens_per_frame
        if self.grid_w:
            if n % self.grid_w:
                raise ValueError(f"{self.name}: frames of {n} tokens do not fit grid_w={self.grid_w}")
            return n // self.grid_w, self.grid_w
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(f"{self.name}: frames of {n} tokens are not a square grid; give grid_w")
        return s, s

    def groups_done(self) -> int:
        """Groups of t frames compressed so far (every group that has left the window)."""
        return max(0, self.frames_seen - self.window) // self.factors[0]

    def raw_frames(self) -> range:
        """Frames held uncompressed: the window plus frames waiting for a full group."""
        return range(self.groups_done() * self.factors[0], self.frames_seen)

    def groups_held(self) -> range:
        g = self.groups_done()
        return range(max(0, g - self.budget), g)

    def centre(self, group: int) -> float:
        t = self.factors[0]
        return group * t + (t - 1) / 2

    # -- Memory ---------------------------------------------------------------------------------
    def _insert_frame(self, k, v, index: int) -> None:
        self.recent_store.write(index % self.ring, k, v)
        t = self.factors[0]
        done = max(0, index + 1 - self.window) // t
        if done > max(0, index - self.window) // t:  # group done-1 has just left the window
            self._compress(done - 1)

    @torch.no_grad()
    def _compress(self, group: int) -> None:
        t, fh, fw = self.factors
        gh, gw = self.grid()
        if gh % fh or gw % fw:
            raise ValueError(f"{self.name}: token grid {gh}x{gw} is not divisible by the rate's spatial "
                             f"factors {fh}x{fw} ({self.rate})")
        slots = [f % self.ring for f in range(group * t, group * t + t)]
        k, v = self.recent_store.k[:, slots], self.recent_store.v[:, slots]  # [B, t, n, H, D]
        b, _, n, h, d = k.shape
        if self.encoder is None:
            self.encoder = shared_encoder(self.weights, self.seed, self.channels, self.rate, 2 * h * d, k.device)
        x = torch.cat([k, v], -2).reshape(b, t, gh, gw, 2 * h * d).permute(0, 4, 1, 2, 3)
        tokens = self.encoder(x.float()).tokens.to(k.dtype)  # [B, (gh/fh)*(gw/fw), 2*H*D]
        tokens = tokens.reshape(b, -1, 2, h, d)
        self.compressed_store.write(group % self.budget, tokens[:, :, 0], tokens[:, :, 1])

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        raw, groups = self.raw_frames(), self.groups_held()
        if not raw and not groups:
            return None
        parts, positions = [], []
        if groups:  # compressed slots 0..m-1 are in use; map each back to its group
            m = len(groups)
            group_of_slot = [0] * m
            for g in groups:
                group_of_slot[g % self.budget] = g
            pos = tuple(self.centre(g) for g in group_of_slot)
            parts.append((*self.compressed_store.frames(m), pos))
            positions += pos
        if raw:  # the raw frames' ring slots (after a compression the ring may have free slots)
            used = sorted(f % self.ring for f in raw)
            frame_of_slot = {f % self.ring: f for f in raw}
            k, v = self.recent_store.k[:, used].flatten(1, 2), self.recent_store.v[:, used].flatten(1, 2)
            pos = tuple(float(frame_of_slot[s]) for s in used)
            parts.append((k, v, pos))
            positions += pos
        ref = parts[0][0]
        s = sum(p[0].shape[1] for p in parts)
        room = getattr(self, "_chunk_room", 0)
        kbuf = torch.empty((ref.shape[0], s + room, *ref.shape[2:]), dtype=ref.dtype, device=ref.device)
        vbuf = torch.empty_like(kbuf)
        o = 0
        for k, v, pos in parts:
            n = k.shape[1]
            freqs = self.rope.temporal_freqs(pos, k.device).expand(-1, n // len(pos), -1)
            apply_rotary(k, freqs, out=kbuf[:, o:o + n])
            vbuf[:, o:o + n].copy_(v)
            o += n
        # Prefixes of buffers with room for the chunk: MemoryView.with_buffers adopts them.
        return MemoryView(kbuf[:, :s], vbuf[:, :s], tuple(positions), self.chunk_positions(query))

    def frame_slots(self):
        return {f: (self.recent_store, f % self.ring) for f in self.raw_frames()}

    def entries(self) -> list[Entry]:
        t = self.factors[0]
        return ([Entry(mu=self.centre(g), span=t, position=self.centre(g), first=g * t, kind="compressed")
                 for g in self.groups_held()]
                + [Entry(mu=float(f), span=1, position=float(f), first=f) for f in self.raw_frames()])
