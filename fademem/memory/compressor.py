"""``compressor``: recent frames as they are, older history as learned compressed K/V (issue 8).

After Zhang et al., "Pretraining Frame Preservation in Autoregressive Video Memory Compression",
in the K/V space a memory sees (``fademem.memory.compressor_net``): per-layer encoders with a shared 3D
convolutional trunk turn each group of ``t`` evicted frames of a layer into compressed keys and
values at the rate ``"t x h x w"``.

* Recent frames: the last ``window`` frames stay as ordinary frames (plus up to ``t - 1`` frames
  waiting to fill a group), in a ring ``SlotStore`` of ``window + t`` slots.
* Evicted frames are compressed **incrementally**, one group of ``t`` frames at a time, as soon
  as the group has left the window; each group becomes one slot of ``(grid_h/h)*(grid_w/w)``
  tokens in a ring ``SlotStore`` of ``budget`` groups (the oldest group is dropped). Device
  memory is fixed: ``window + t`` frames plus ``budget`` groups, whatever the video length.
* Positions: absolute. A group's keys are rotated to the centre of the span it summarises
  (``first + (t - 1) / 2``, fractional); the chunk sits at its true indices. The encoder sees keys
  with the spatial RoPE phase only and outputs keys that carry whatever spatial phase they need.
* Weights: ``weights=`` a file from ``fademem train-compressor`` (read by ``compressor_net.load``);
  by default the one shipped for the embedded model. Its config fixes the rate, the layers and
  the K/V width; a model of another size gets a clear error. The file may also hold a generator
  LoRA trained to read this memory: generation and the memory benchmark merge it into (a copy of)
  the embedded model when ``generator_lora=true`` (default); the policy itself never touches the
  model. The LoRA's metadata records the base it was trained on (``LoRAInfo.base_digest``): merging it
  into another model is an error. ``allow_random=true`` builds untrained per-layer compressors (plain
  span averaging, see ``compressor_net.py``) for tests and plumbing checks.
* Prompt switches recompute only the raw recent frames (compressed groups keep their K/V).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from fademem.memory.base import ChunkQuery, Entry, GeneratorAdapter, Memory, MemoryView, SlotStore
from fademem.memory.compressor_net import (
    KVCompressor,
    KVCompressorConfig,
    default_path,
    file_rate,
    load,
    parse_channels,
    parse_rate,
)
from fademem.memory.registry import build_memory, register
from fademem.memory.window import check_int
from fademem.rope import apply_rotary

_COMPRESSORS: dict[tuple, KVCompressor] = {}  # one module per (file or random config, device)
# how to retrain the generator LoRA of a compressor file for another base model (its base-model check's error)
RETRAIN = ("`fademem train-compressor --weights MODEL.safetensors --out FILE` (with the options of its 'info' "
           "metadata), then compressor:weights=FILE")


def layout(frames_seen: int, window: int, t: int, budget: int) -> tuple[range, range]:
    """(compressed groups held, raw frames held) after ``frames_seen`` frames: every group of ``t``
    frames that has left the ``window`` is compressed; the newest ``budget`` groups are kept."""
    done = max(0, frames_seen - window) // t
    return range(max(0, done - budget), done), range(done * t, frames_seen)


def group_centre(group: int, t: int) -> float:
    return group * t + (t - 1) / 2


def shared_compressor(weights: str | None, rate: str, channels: str, seed: int, heads: int, head_dim: int,
                      grid: tuple[int, int], layer: int, device: torch.device) -> tuple[KVCompressor, int]:
    """(compressor, index of this layer's encoder in it). Random compressors are one per layer."""
    if weights is not None:
        key = (weights, str(device))
        comp = _COMPRESSORS.get(key)
        if comp is None:
            comp = load(weights).compressor
            _COMPRESSORS[key] = comp = comp.to(device).eval().requires_grad_(False)
        cfg = comp.cfg
        if (cfg.heads, cfg.head_dim) != (heads, head_dim) or cfg.grid != tuple(grid):
            raise ValueError(f"compressor: {weights} was trained for K/V of {cfg.heads} heads x {cfg.head_dim} "
                             f"on a {cfg.grid[0]}x{cfg.grid[1]} token grid; this model has {heads} x {head_dim} "
                             f"on {grid[0]}x{grid[1]}")
        if layer >= cfg.layers:
            raise ValueError(f"compressor: {weights} has encoders for {cfg.layers} layers, the model has more "
                             f"(layer {layer})")
        if rate != "auto" and parse_rate(rate) != cfg.factors:
            raise ValueError(f"compressor: {weights} was trained at rate {cfg.rate}, the policy asks {rate}")
        return comp, layer
    rate = "2x2x1" if rate == "auto" else rate
    key = (None, rate, channels, seed, heads, head_dim, tuple(grid), layer, str(device))
    comp = _COMPRESSORS.get(key)
    if comp is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + layer)
            comp = KVCompressor(KVCompressorConfig(layers=1, heads=heads, head_dim=head_dim, grid=grid,
                                                   rate=rate, channels=parse_channels(channels)))
        _COMPRESSORS[key] = comp = comp.to(device).eval().requires_grad_(False)
    return comp, 0


@register
@dataclass
class CompressorMemory(Memory):
    """Recent `window` frames plus a bounded buffer of learned compressed history (issue 8)."""

    name = "compressor"

    window: int = 4
    budget: int = 40  # compressed groups of t frames kept (the oldest is dropped)
    rate: str = "auto"  # "auto": the weights' rate; else (time x height x width), must match them
    weights: str | None = None  # None: the shipped file (embedded model)
    generator_lora: bool = True  # callers merge the file's generator LoRA (the policy never does)
    grid_w: int = 0  # token-grid width of one frame; 0: square grid
    allow_random: bool = False
    channels: str = "32-64-128"  # trunk channel ladder of random compressors
    seed: int = 0

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        """Equal visible tokens: raw window (+ up to t-1 frames waiting for a group) + compressed groups."""
        t, fh, fw = cls().factors
        window = max(1, budget // 3)
        groups = (budget - window - (t - 1)) * fh * fw
        if groups < 1:
            raise ValueError(f"compressor needs budget > {window + t - 1} frames at rate {t}x{fh}x{fw}, got {budget}")
        spec = f"{cls.name}:window={window},budget={groups}"
        build_memory(spec)
        return spec, (f"window {window} raw frames (+ up to {t - 1} waiting for a group) + {groups} groups of "
                      f"1/{fh * fw} frame of tokens each = at most {budget} frames of tokens")

    def validate(self) -> None:
        check_int(self.name, "window", self.window, 1)
        check_int(self.name, "budget", self.budget, 1)
        check_int(self.name, "grid_w", self.grid_w, 0)
        try:
            if self.rate != "auto":
                parse_rate(self.rate)
            parse_channels(self.channels)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"{self.name}: weights file {self.weights} not found")
        if self.weights is None and not self.allow_random and not default_path().is_file():
            raise ValueError(f"{self.name}: no weights given and none shipped at {default_path()}. Pass "
                             f"weights=<file from `fademem train-compressor`>; allow_random=true builds untrained "
                             f"compressors (tests only, not for generation)")
        if self.allow_random and self.weights is not None:
            raise ValueError(f"{self.name}: give weights= or allow_random=true, not both")
        if self.rate != "auto" and self.weights_path is not None and \
                file_rate(self.weights_path) != parse_rate(self.rate):
            have = "x".join(map(str, file_rate(self.weights_path)))
            raise ValueError(f"{self.name}: {self.weights_path} was trained at rate {have}, "
                             f"the policy asks {self.rate}")

    def spec(self) -> str:
        # The base class compares with type(self)(), which may refuse to build without weights.
        diff = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rope", "tokens_per_frame") and getattr(self, f.name) != f.default}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in diff.items()) if diff else "")

    def generator_adapter(self) -> GeneratorAdapter | None:
        """The generator LoRA stored beside the compressor (``generator_lora=true`` and a file with one)."""
        if not self.generator_lora or self.weights_path is None:
            return None
        f = load(self.weights_path)
        if not f.lora:
            return None
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in f.lora.items():
            module, _, ab = name.rpartition(".lora_")
            pairs.setdefault(module, {})[ab.split(".")[0]] = t
        return GeneratorAdapter(pairs, float(f.lora_info.alpha), self.weights_path, f.lora_info.base_digest,
                                RETRAIN)

    @property
    def weights_path(self) -> str | None:
        """The compressor file in use (None for random compressors)."""
        if self.allow_random:
            return None
        return self.weights or str(default_path())

    @property
    def factors(self) -> tuple[int, int, int]:
        if self.rate != "auto":
            return parse_rate(self.rate)
        if self.weights_path is None:
            return parse_rate("2x2x1")
        return file_rate(self.weights_path)

    @property
    def ring(self) -> int:
        return self.window + self.factors[0]

    def reset(self) -> None:
        super().reset()
        self.recent_store = SlotStore(capacity=self.ring)
        self.compressed_store = SlotStore(capacity=self.budget)
        self.encoder: KVCompressor | None = None
        self.encoder_index = 0

    # -- host-side layout (frame indices only) ------------------------------------------------------
    def grid(self) -> tuple[int, int]:
        n = self.tokens_per_frame
        if self.grid_w:
            if n % self.grid_w:
                raise ValueError(f"{self.name}: frames of {n} tokens do not fit grid_w={self.grid_w}")
            return n // self.grid_w, self.grid_w
        s = int(round(n ** 0.5))
        if s * s != n:
            raise ValueError(f"{self.name}: frames of {n} tokens are not a square grid; give grid_w")
        return s, s

    def groups_done(self) -> int:
        """Groups of t frames compressed so far (every group that has left the window)."""
        return max(0, self.frames_seen - self.window) // self.factors[0]

    def raw_frames(self) -> range:
        """Frames held uncompressed: the window plus frames waiting for a full group."""
        return layout(self.frames_seen, self.window, self.factors[0], self.budget)[1]

    def groups_held(self) -> range:
        return layout(self.frames_seen, self.window, self.factors[0], self.budget)[0]

    def centre(self, group: int) -> float:
        return group_centre(group, self.factors[0])

    # -- Memory ---------------------------------------------------------------------------------
    def _insert_frame(self, k, v, index: int) -> None:
        self.recent_store.write(index % self.ring, k, v)
        t = self.factors[0]
        done = max(0, index + 1 - self.window) // t
        if done > max(0, index - self.window) // t:  # group done-1 has just left the window
            self._compress(done - 1)

    @torch.no_grad()
    def _compress(self, group: int) -> None:
        t = self.factors[0]
        slots = [f % self.ring for f in range(group * t, group * t + t)]
        k, v = self.recent_store.k[:, slots].flatten(1, 2), self.recent_store.v[:, slots].flatten(1, 2)
        if self.encoder is None:
            self.encoder, self.encoder_index = shared_compressor(
                self.weights_path, self.rate, self.channels, self.seed, k.shape[2], k.shape[3], self.grid(),
                self.layer, k.device)
        ck, cv = self.encoder.compress(self.encoder_index, k, v)
        self.compressed_store.write(group % self.budget, ck, cv)

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        groups, raw = self.groups_held(), self.raw_frames()
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

