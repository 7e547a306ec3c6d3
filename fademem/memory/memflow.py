"""``memflow``: MemFlow's Narrative Adaptive Memory on top of LongLive's sink + window.

* LongLive's frame sink (``sink=3``) and local window (9 visible frames including the 3-frame
  chunk, so ``window=6`` history frames), as in ``sink``.
* A bank of up to ``bank`` prototype frames: the first latent frame of every ``every``-th chunk
  (chunks counted by ``insert`` calls, chunk 0 first; a chunk whose first frame is a sink frame
  records nothing). A new prototype is staged at insert; when the bank then holds ``bank + 1``
  frames, the next ``view()`` keeps the newest prototype plus the ``bank - 1`` older ones scoring
  highest against the *current* prompt (``ChunkQuery.context_k``, this layer's cross-attention
  keys): ``score = mean_{text j, head h, frame token t} k_text[j,h] . k_frame[t,h] / sqrt(d)``,
  computed exactly as a dot product of the two means (the score is bilinear). Frame keys are the
  stored ones (spatial phase, no temporal phase). Without a context the newest are kept.
* Selection is per batch element (``torch.topk`` + ``gather``, static counts, no host sync); the
  bank stays in temporal order. A prototype still inside the sink/window is not shown twice.

Positions (``positions``):
  * ``absolute`` (LongLive v1.0): every key at its true frame index, the chunk at its true frames.
    Kept prototypes differ per batch element, so after a scored selection their positions are
    device data (rotated per token) and ``MemoryView.positions`` shows ``nan`` for them.
  * ``compact``: sink at ``0..S-1``, the bank right after (temporal order), the recent frames
    after it and the chunk last, like LongLive's compact/infinity layout.

Prompt switches recompute the recent window only (the sink and the bank keep their K/V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.deepforcing import rotate_tokens
from fademem.memory.registry import register
from fademem.memory.window import check_int, check_positions


@register
@dataclass
class MemFlowMemory(Memory):
    """MemFlow: LongLive sink + window + a prompt-scored bank of chunk prototype frames."""

    name: ClassVar[str] = "memflow"
    needs_context: ClassVar[bool] = True

    sink: int = 3
    window: int = 6
    bank: int = 3
    every: int = 3
    positions: Literal["absolute", "compact"] = "absolute"

    state_attrs: ClassVar[tuple[str, ...]] = ("bank_pos", "bank_frames", "recorded", "chunks")

    def validate(self) -> None:
        check_int(self.name, "sink", self.sink, 0)
        check_int(self.name, "window", self.window, 1)
        check_int(self.name, "bank", self.bank, 1)
        check_int(self.name, "every", self.every, 1)
        check_positions(self.name, self.positions)

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=self.sink + self.window)
        self.bank_store = SlotStore(capacity=self.bank + 1)
        self.bank_pos: torch.Tensor | None = None  # [B, bank + 1] frame index of each bank slot
        self.bank_frames: list[int | None] = []  # host view of each used bank slot (None: per batch)
        self.recorded: list[int] = []  # every prototype frame ever recorded
        self.chunks = 0

    # -- host-side layout (as ``sink``) -----------------------------------------------------------
    def sink_frames(self) -> range:
        return range(min(self.frames_seen, self.sink))

    def recent_frames(self) -> range:
        n = self.frames_seen
        return range(max(self.sink, n - self.window), n)

    def _slot(self, frame: int) -> int:
        return frame if frame < self.sink else self.sink + (frame - self.sink) % self.window

    # -- writing ----------------------------------------------------------------------------------
    def insert(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        super().insert(k, v, start)
        chunk = self.chunks
        self.chunks += 1
        if chunk % self.every == 0 and start >= self.sink:
            t = self.tokens_per_frame
            self._add_prototype(k[:, :t], v[:, :t], start)

    def _insert_frame(self, k, v, index: int) -> None:
        self.store.write(self._slot(index), k, v)

    def _add_prototype(self, k: torch.Tensor, v: torch.Tensor, frame: int) -> None:
        if len(self.bank_frames) > self.bank:
            self._select(None)  # two prototypes without a view in between: keep the newest
        slot = len(self.bank_frames)
        self.bank_store.write(slot, k, v)
        if self.bank_pos is None:
            self.bank_pos = torch.zeros(k.shape[0], self.bank + 1, dtype=torch.float32, device=k.device)
        self.bank_pos[:, slot] = float(frame)
        self.bank_frames.append(frame)
        self.recorded.append(frame)
        self._view_cache = None

    def scores(self, context_k: torch.Tensor) -> torch.Tensor:
        """[B, bank] score of the older bank frames against the prompt's cross-attention keys."""
        kf = self.bank_store.k[:, :self.bank].float().mean(dim=2)  # [B, bank, H, D]
        kt = context_k.float().mean(dim=1)  # [B, H, D]
        h, d = kt.shape[1], kt.shape[2]
        return torch.einsum("bnhd,bhd->bn", kf, kt.expand(kf.shape[0], -1, -1)) / (h * math.sqrt(d))

    def _select(self, context_k: torch.Tensor | None) -> None:
        """Bank holds bank + 1 frames: keep the newest plus the top bank - 1 older ones."""
        keep = self.bank - 1
        new = self.bank  # slot of the newest prototype
        bk, bv = self.bank_store.k, self.bank_store.v
        nk, nv, np_ = bk[:, new].clone(), bv[:, new].clone(), self.bank_pos[:, new].clone()
        if keep:
            if context_k is None:  # newest older ones: host-known
                idx = torch.arange(self.bank - keep, self.bank, device=bk.device).expand(bk.shape[0], -1)
                frames = self.bank_frames[self.bank - keep:self.bank]
            else:
                idx = torch.topk(self.scores(context_k), keep, dim=1).indices.sort(dim=1).values
                frames = [None] * keep
            gi = idx[:, :, None, None, None].expand(-1, -1, *bk.shape[2:])
            gk, gv, gp = bk.gather(1, gi), bv.gather(1, gi), self.bank_pos.gather(1, idx)
            bk[:, :keep].copy_(gk)
            bv[:, :keep].copy_(gv)
            self.bank_pos[:, :keep].copy_(gp)
        else:
            frames = []
        bk[:, keep].copy_(nk)
        bv[:, keep].copy_(nv)
        self.bank_pos[:, keep] = np_
        self.bank_frames = frames + [self.bank_frames[new]]

    # -- reading ----------------------------------------------------------------------------------
    def _visible_bank(self) -> tuple[int, bool]:
        """(bank slots shown, whether a device mask must hide prototypes still in the window)."""
        start = self.recent_frames().start
        n = len(self.bank_frames)
        # The bank is in temporal order: prototypes still inside the window form its known suffix.
        while n and self.bank_frames[n - 1] is not None and self.bank_frames[n - 1] >= start:
            n -= 1
        known = {f for f in self.bank_frames if f is not None}
        unknown = any(f is None for f in self.bank_frames[:n])
        return n, unknown and any(f >= start for f in self.recorded if f not in known)

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        if len(self.bank_frames) > self.bank:
            self._select(query.context_k)
        sinks, recent = list(self.sink_frames()), list(self.recent_frames())
        m = len(sinks) + len(recent)
        if m == 0:
            return None
        nb, need_mask = self._visible_bank()
        frame_of_slot = [0] * m
        for f in sinks + recent:
            frame_of_slot[self._slot(f)] = f
        if self.positions == "absolute":
            pos = {f: float(f) for f in frame_of_slot}
            bank_host = [float("nan") if f is None else float(f) for f in self.bank_frames[:nb]]
            qpos = self.chunk_positions(query)
        else:
            pos = {f: float(i) for i, f in enumerate(sinks)}
            pos.update({f: float(len(sinks) + nb + i) for i, f in enumerate(recent)})
            bank_host = [float(len(sinks) + i) for i in range(nb)]
            qpos = tuple(float(m + nb + i) for i in range(query.num_frames))
        slot_pos = tuple(pos[f] for f in frame_of_slot)
        k, v = self.store.frames(m)
        k = self.rotated(k, slot_pos)
        mask = None
        if nb:
            bk, bv = self.bank_store.frames(nb)
            if all(math.isfinite(p) for p in bank_host):
                bk = self.rotated(bk, tuple(bank_host))
            else:
                t = self.tokens_per_frame
                bk = rotate_tokens(self.rope, bk, self.bank_pos[:, :nb].repeat_interleave(t, dim=1))
            if need_mask:
                t = self.tokens_per_frame
                hide = (self.bank_pos[:, :nb] >= float(self.recent_frames().start)).repeat_interleave(t, dim=1)
                ones = torch.ones(hide.shape[0], m * t, dtype=torch.bool, device=hide.device)
                tail = torch.ones(hide.shape[0], query.num_frames * t, dtype=torch.bool, device=hide.device)
                mask = torch.cat([ones, ~hide, tail], dim=1)[:, None, None, :]
            k = torch.cat([k, bk.to(k.dtype)], dim=1)
            v = torch.cat([v, bv], dim=1)
        return MemoryView(k, v, slot_pos + tuple(bank_host), qpos, mask)

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """absolute: true frame indices; compact: sink, bank and window slots, then the chunk (a bank
        slot hidden by the mask still takes its position, so early on the chunk may sit past its frame)."""
        lo, hi = super().position_range(num_frames, chunk)
        compact = float(self.sink + self.bank + self.window + chunk - 1)
        return (lo, hi) if self.positions == "absolute" else (lo, compact)

    def entries(self) -> list[Entry]:
        nb, _ = self._visible_bank()
        sinks, recent = list(self.sink_frames()), list(self.recent_frames())
        absolute = self.positions == "absolute"
        out = [Entry(mu=float(f), span=1, position=float(f) if absolute else float(i), first=f, kind="sink")
               for i, f in enumerate(sinks)]
        for i, f in enumerate(self.bank_frames[:nb]):
            mu = float("nan") if f is None else float(f)
            out.append(Entry(mu=mu, span=1, position=mu if absolute else float(len(sinks) + i),
                             first=-1 if f is None else f, kind="prototype"))
        out += [Entry(mu=float(f), span=1, position=float(f) if absolute else float(len(sinks) + nb + i), first=f)
                for i, f in enumerate(recent)]
        return out

    def frame_slots(self) -> dict[int, tuple[SlotStore, int]]:
        return {f: (self.store, self._slot(f)) for f in self.recent_frames()}

    def held_slots(self) -> dict[int, tuple[SlotStore, int]]:
        return {f: (self.store, self._slot(f)) for f in [*self.sink_frames(), *self.recent_frames()]}

    def nbytes(self) -> int:
        extra = 0 if self.bank_pos is None else self.bank_pos.numel() * self.bank_pos.element_size()
        return super().nbytes() + extra
