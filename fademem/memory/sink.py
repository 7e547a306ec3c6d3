"""``sink``: LongLive's frame sink, the first ``sink`` frames plus the most recent ones.

LongLive runs with ``local_attn_size=12`` and ``sink_size=3``: the chunk attends to the 3 sink
frames plus the 9 most recent frames *including its own 3*, i.e. 3 sink + 6 history frames.
Budgets here count history only, so the default is ``budget=9`` (sink included), ``sink=3``.

Storage: one ``SlotStore`` of ``budget`` slots. Frame ``f < sink`` sits in slot ``f`` for ever;
later frames go round a ring of the remaining ``budget - sink`` slots (slot reuse, no shifting).

Positions:
  * ``absolute`` (LongLive v1.0, ``wan/modules/causal_model.py``): keys are rotated when they are
    written, at their true frame index, and the cache roll moves the rotated keys without
    re-rotating them. The sink therefore keeps positions ``0 .. sink-1`` (its true indices), the
    recent frames and the chunk sit at their true indices, and the query-to-sink distance grows
    without bound as the video goes on.
  * ``compact``: sink at ``0 .. S-1``, the recent frames right after (temporal order), the chunk
    after those. This is what LongLive's optional "infinity" model does (its block-relativistic
    RoPE in ``causal_model_infinity.py`` caches unrotated keys and rotates the cache at its slot
    index in the 12-frame window, the queries at the last 3): every position stays in the window.

Prompt switches: LongLive's KV-recache protects the sink slots while it recomputes (they keep the
K/V of the first prompt with ``global_sink: true``, its inference setting), so ``frame_slots``
lists only the recent frames and a recache never touches the sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.registry import build_memory, register
from fademem.memory.window import check_int, check_positions


@register
@dataclass
class SinkMemory(Memory):
    """Frame sink plus sliding window: first `sink` frames and the most recent ones (LongLive)."""

    name = "sink"

    budget: int = 9
    sink: int = 3
    positions: Literal["absolute", "compact"] = "absolute"

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        spec = f"{cls.name}:budget={budget},sink={min(3, budget - 1)}"
        build_memory(spec)
        return spec, None

    def validate(self) -> None:
        check_int(self.name, "budget", self.budget, 1)
        check_int(self.name, "sink", self.sink, 0)
        if self.sink >= self.budget:
            raise ValueError(f"{self.name}: sink ({self.sink}) must be smaller than budget ({self.budget}), "
                             f"which counts the sink frames and leaves room for recent ones")
        check_positions(self.name, self.positions)

    @property
    def recent(self) -> int:
        """Slots for the recent (non-sink) frames."""
        return self.budget - self.sink

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=self.budget)

    # -- host-side layout -----------------------------------------------------------------------
    def sink_frames(self) -> range:
        return range(min(self.frames_seen, self.sink))

    def recent_frames(self) -> range:
        n = self.frames_seen
        return range(max(self.sink, n - self.recent), n)

    def _slot(self, frame: int) -> int:
        if frame < self.sink:
            return frame
        return self.sink + (frame - self.sink) % self.recent

    def _position(self, frame: int) -> float:
        if self.positions == "absolute" or frame < self.sink:
            return float(frame)
        return float(self.sink + frame - self.recent_frames().start)

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """absolute: true frame indices; compact: ``budget`` slots (sink included), then the chunk."""
        lo, hi = super().position_range(num_frames, chunk)
        return (lo, hi) if self.positions == "absolute" else (lo, min(hi, float(self.budget + chunk - 1)))

    def _held(self) -> list[int]:
        return [*self.sink_frames(), *self.recent_frames()]

    # -- Memory ---------------------------------------------------------------------------------
    def _insert_frame(self, k, v, index: int) -> None:
        self.store.write(self._slot(index), k, v)

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        held = self._held()
        m = len(held)
        if m == 0:
            return None
        frame_of_slot = [0] * m  # slots 0..m-1 are in use: sink first, then the ring fills in order
        for f in held:
            frame_of_slot[self._slot(f)] = f
        positions = tuple(self._position(f) for f in frame_of_slot)
        if self.positions == "absolute":
            qpos = self.chunk_positions(query)
        else:
            qpos = tuple(float(m + i) for i in range(query.num_frames))
        k, v = self.store.frames(m)
        return MemoryView(self.rotated(k, positions), v, positions, qpos)

    def frame_slots(self):
        # Sink frames are never recomputed on a prompt switch (LongLive keeps their old K/V).
        return {f: (self.store, self._slot(f)) for f in self.recent_frames()}

    def held_slots(self):
        # The recache pass still attends to the sink (LongLive's global sink), it just keeps its K/V.
        return {f: (self.store, self._slot(f)) for f in self._held()}

    def entries(self) -> list[Entry]:
        return [Entry(mu=float(f), span=1, position=self._position(f), first=f,
                      kind="sink" if f < self.sink else "frame") for f in self._held()]
