"""``memrope``: MemRoPE's memory tokens (dual EMA streams) with online RoPE indexing.

History layout, in position order: ``[sink S][long EMA 1][short EMA 1][recent R]`` and then the
current chunk; with the defaults (3, 1, 1, 4 + a 3-frame chunk) that is 12 positions, the window
the base model was trained on.

Rule. New frames enter ``recent`` (the first ``sink`` frames of the video go to the sink instead).
When ``recent`` overflows, its oldest frames are evicted and folded into both EMA streams::

    long  <- alpha_long  * x + (1 - alpha_long)  * long
    short <- alpha_short * x + (1 - alpha_short) * short      (both start at the first x)

Folding granularity. The official code evicts the 3 oldest recent frames on a chunk's first
forward and folds their *mean* once. Three sequential folds of frames a, b, c would give
``a(1-α)²α + b(1-α)α + cα`` instead of ``α(a+b+c)/3``: close for small α but not equal. Since
``insert`` receives a chunk's frames together, we evict everything that overflows ``recent``
after appending the whole call's frames and fold the mean of that evicted group once: the same
group and the same single fold as the official eviction at the next chunk's first forward. The
first overflow of a stream can evict fewer frames (e.g. frames 3, 4 when 3..8 arrive in two
chunks of 3 and R = 4). A caller that inserts one frame at a time gets one fold per frame.

``mode``:
  * ``global``: x is the per-head mean of the group's keys (unrotated) and values over all of
    its tokens, a [B, 1, H, D] vector tiled over the slot's tokens (as the official code).
  * ``position``: x is the per-token mean over the group's frames, an EMA per spatial position.

EMA state is kept in float32 in its own small store (one token per slot in ``global`` mode) and
cast to the storage dtype for the view. Keys are stored unrotated and rotated at view time at
their slot index (online RoPE indexing): sink ``0..S-1``, long ``S``, short ``S+1``, recent
``S+2 .. S+1+R``, chunk right after. Before the memory is full only the slots that exist take a
position, in the same order, and the chunk follows the last one; until the first fold that is
just every frame at its true index.

Physical slots are handed out in order of first use and recycled (a new recent frame takes the
slot of an evicted one), so the used slots always form a prefix of the store.
Prompt switches recompute only the recent frames: the sink keeps its K/V as in LongLive, and the
EMA slots are summaries, not frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore, check_kv
from fademem.memory.registry import build_memory, register
from fademem.memory.window import check_int

MODES = ("global", "position")

FIXED_SLOTS = 5  # non-recent slots at the default sink=3: sink 3 + long EMA 1 + short EMA 1


@register
@dataclass
class MemRoPEMemory(Memory):
    """MemRoPE: sink + long/short EMA memory tokens + recent frames, positions = slot index."""

    name = "memrope"
    budget_note = ("fixed layout sink 3 + long EMA 1 + short EMA 1 + recent 4 = 9 history slots "
                   "(12 visible with the chunk); its budget is not a knob")

    sink: int = 3
    recent: int = 4
    alpha_long: float = 0.01
    alpha_short: float = 0.1
    mode: Literal["global", "position"] = "global"

    state_attrs = ("sink_slots", "recent_slots", "ema_slots", "used_slots", "folded", "first_folded",
                   "mu_long", "mu_short")

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        """Budget-matched through ``recent``: the layout is sink 3 + long EMA 1 + short EMA 1 +
        recent, so ``recent=budget - 5`` (the default recent=4 gives 9 history slots)."""
        if budget < FIXED_SLOTS:
            raise ValueError(f"memrope needs budget >= {FIXED_SLOTS} (sink 3 + 2 EMA slots), got {budget}")
        spec = f"{cls.name}:recent={budget - FIXED_SLOTS}"
        build_memory(spec)
        return spec, (f"fixed layout sink 3 + long EMA 1 + short EMA 1 + recent {budget - FIXED_SLOTS} "
                      f"= {budget} history slots (default recent=4 gives 9)")

    def validate(self) -> None:
        check_int(self.name, "sink", self.sink, 0)
        check_int(self.name, "recent", self.recent, 0)
        for knob in ("alpha_long", "alpha_short"):
            a = getattr(self, knob)
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 < a <= 1:
                raise ValueError(f"{self.name}: {knob} must be a number in (0, 1], got {a!r}")
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {', '.join(MODES)}; got {self.mode!r}")

    @property
    def budget(self) -> int:
        """History slots once full: sink + 2 EMA + recent."""
        return self.sink + 2 + self.recent

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=self.budget)  # storage dtype: sink, EMA (cast), recent
        self.ema = SlotStore(capacity=2)  # float32 EMA state: slot 0 long, slot 1 short
        self.sink_slots: list[tuple[int, int]] = []  # (frame, physical slot)
        self.recent_slots: list[tuple[int, int]] = []  # (frame, physical slot), oldest first
        self.ema_slots: tuple[int, int] | None = None  # physical slots of (long, short)
        self.used_slots = 0  # physical slots handed out so far (always a prefix)
        self.folded = 0  # frames folded into the EMA streams
        self.first_folded = -1
        self.mu_long = self.mu_short = 0.0  # EMA-weighted mean frame index of each stream

    # -- insert -----------------------------------------------------------------------------------
    def insert(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Frames ``start .. start+F-1``; overflow of ``recent`` is folded once per call (see module doc)."""
        if self.rope is None:
            raise RuntimeError(f"{self.name} memory is not bound to a model: call bind(rope, tokens_per_frame)")
        check_kv(k, v, self.tokens_per_frame)
        if start != self.frames_seen:
            raise ValueError(f"{self.name}: frames must arrive in order; "
                             f"expected frame {self.frames_seen}, got {start}")
        self._insert_group(k, v, start)
        self.frames_seen += k.shape[1] // self.tokens_per_frame
        self._view_cache = None

    def _insert_frame(self, k, v, index: int) -> None:
        self._insert_group(k, v, index)  # a one-frame group (the base class counts frames_seen)

    def _check_like_store(self, k: torch.Tensor) -> None:
        """Refuse frames unlike the stored ones before any state changes."""
        s = self.store
        if s.k is None:
            return
        if (k.shape[0], k.shape[2], k.shape[3]) != (s.k.shape[0], s.k.shape[3], s.k.shape[4]):
            raise ValueError(f"insert: frames of shape {tuple(k.shape)} do not match stored frames "
                             f"[{s.k.shape[0]}, {s.n_tok}, {s.k.shape[3]}, {s.k.shape[4]}]")
        if k.dtype != s.k.dtype or k.device != s.k.device:
            raise ValueError(f"insert: got {k.dtype} on {k.device}, memory holds {s.k.dtype} on {s.k.device}")

    def _take_slot(self) -> int:
        self.used_slots += 1
        return self.used_slots - 1

    def _insert_group(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        self._check_like_store(k)
        t = self.tokens_per_frame
        frames = [(start + i, k[:, i * t:(i + 1) * t], v[:, i * t:(i + 1) * t]) for i in range(k.shape[1] // t)]
        to_sink = [fr for fr in frames if fr[0] < self.sink]
        new = [fr for fr in frames if fr[0] >= self.sink]
        for f, kf, vf in to_sink:
            slot = self._take_slot()
            self.store.write(slot, kf, vf)
            self.sink_slots.append((f, slot))

        over = max(0, len(self.recent_slots) + len(new) - self.recent)
        old_out = self.recent_slots[:over]  # evicted stored frames, oldest first
        new_out = new[:max(0, over - len(old_out))]  # new frames that overflow at once (chunk > recent)
        if over:
            ks = [self.store.k[:, s] for _, s in old_out] + [kf for _, kf, _ in new_out]
            vs = [self.store.v[:, s] for _, s in old_out] + [vf for _, _, vf in new_out]
            idx = [f for f, _ in old_out] + [f for f, _, _ in new_out]
            self._fold(ks, vs, idx)  # reads the evicted slots before they are reused below
        free = [s for _, s in old_out]
        self.recent_slots = self.recent_slots[len(old_out):]
        for f, kf, vf in new[len(new_out):]:
            slot = free.pop(0) if free else self._take_slot()
            self.store.write(slot, kf, vf)
            self.recent_slots.append((f, slot))

    def _fold(self, ks: list[torch.Tensor], vs: list[torch.Tensor], idx: list[int]) -> None:
        """Fold the mean of one evicted group into both EMA streams (float32)."""
        xk = torch.stack([x.float() for x in ks], 0).mean(0)  # [B, tok, H, D]
        xv = torch.stack([x.float() for x in vs], 0).mean(0)
        if self.mode == "global":
            xk, xv = xk.mean(1, keepdim=True), xv.mean(1, keepdim=True)  # [B, 1, H, D] per head
        mu = sum(idx) / len(idx)
        if self.ema.k is None:
            self.ema.write(0, xk, xv)
            self.ema.write(1, xk, xv)
            self.mu_long = self.mu_short = mu
            self.first_folded = idx[0]
            self.ema_slots = (self._take_slot(), self._take_slot())
        else:
            for slot, a in ((0, self.alpha_long), (1, self.alpha_short)):
                self.ema.k[:, slot].mul_(1 - a).add_(xk, alpha=a)
                self.ema.v[:, slot].mul_(1 - a).add_(xv, alpha=a)
            self.mu_long = self.alpha_long * mu + (1 - self.alpha_long) * self.mu_long
            self.mu_short = self.alpha_short * mu + (1 - self.alpha_short) * self.mu_short
        self.folded += len(idx)
        # Publish the EMA to its storage slots, cast and tiled over the frame's tokens.
        b, _, h, d = ks[0].shape
        t, dtype = self.tokens_per_frame, ks[0].dtype
        for slot, phys in enumerate(self.ema_slots):
            self.store.write(phys, self.ema.k[:, slot].expand(b, t, h, d).to(dtype),
                             self.ema.v[:, slot].expand(b, t, h, d).to(dtype))

    # -- view -------------------------------------------------------------------------------------
    def _layout(self) -> list[tuple[str, int, int]]:
        """(kind, frame or -1, physical slot) of every existing slot in position order."""
        out = [("sink", f, s) for f, s in self.sink_slots]
        if self.ema_slots is not None:
            out += [("ema-long", -1, self.ema_slots[0]), ("ema-short", -1, self.ema_slots[1])]
        return out + [("frame", f, s) for f, s in self.recent_slots]

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        layout = self._layout()
        m = len(layout)
        if m == 0:
            return None
        pos_of_slot = [0.0] * m  # used physical slots are 0..m-1
        for p, (_, _, s) in enumerate(layout):
            pos_of_slot[s] = float(p)
        positions = tuple(pos_of_slot)
        k, v = self.store.frames(m)
        return MemoryView(self.rotated(k, positions), v, positions,
                          tuple(float(m + i) for i in range(query.num_frames)))

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """Online indexing: at most ``budget`` slots (sink + 2 EMA + recent), then the chunk (the two EMA
        slots may stand for one folded frame, so early on the chunk can sit past its true index)."""
        lo, _ = super().position_range(num_frames, chunk)
        return lo, float(self.budget + chunk - 1)

    def frame_slots(self):
        return {f: (self.store, s) for f, s in self.recent_slots}

    def entries(self) -> list[Entry]:
        out = []
        for p, (kind, f, _) in enumerate(self._layout()):
            if kind == "ema-long":
                out.append(Entry(self.mu_long, self.folded, float(p), self.first_folded, kind))
            elif kind == "ema-short":
                out.append(Entry(self.mu_short, self.folded, float(p), self.first_folded, kind))
            else:
                out.append(Entry(float(f), 1, float(p), f, kind))
        return out
