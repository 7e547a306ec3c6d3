"""``window``: Self Forcing's sliding window, the last ``budget`` latent frames.

Self Forcing keeps a 21-frame KV cache; with the 3-frame current chunk that leaves 18 frames of
history, hence ``budget=18``. Frame ``f`` lives in slot ``f % budget`` (a ring: the slot of the
evicted frame is reused, nothing is shifted), so the slot order is not the temporal order; each
slot's temporal position is derived on the host from ``frames_seen`` alone.

Positions:
  * ``absolute`` (Self Forcing): each key at its true frame index, the chunk at its true indices.
    Far into a video the positions exceed anything the base model saw in training, but relative
    distances inside the window stay the trained ones.
  * ``compact``: the held history squeezed to ``0 .. n-1`` (temporal order) and the chunk right
    after at ``n .. n+F-1``, so every position stays inside the window the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.registry import build_memory, register

POSITION_MODES = ("absolute", "compact")


def check_int(policy: str, knob: str, value, minimum: int) -> None:
    """ValueError naming ``knob`` unless ``value`` is an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{policy}: {knob} must be {what}, got {value!r}")


def check_positions(policy: str, value) -> None:
    if value not in POSITION_MODES:
        raise ValueError(f"{policy}: positions must be one of {', '.join(POSITION_MODES)}; got {value!r}")


@register
@dataclass
class WindowMemory(Memory):
    """Sliding window of the last `budget` frames (Self Forcing)."""

    name = "window"

    budget: int = 18
    positions: Literal["absolute", "compact"] = "absolute"

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        spec = f"{cls.name}:budget={budget}"
        build_memory(spec)
        return spec, None

    def validate(self) -> None:
        check_int(self.name, "budget", self.budget, 1)
        check_positions(self.name, self.positions)

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=self.budget)

    # -- host-side layout -----------------------------------------------------------------------
    def held(self) -> range:
        """Frames currently held, oldest first."""
        n = self.frames_seen
        return range(max(0, n - self.budget), n)

    def _slot(self, frame: int) -> int:
        return frame % self.budget

    def _position(self, frame: int) -> float:
        if self.positions == "absolute":
            return float(frame)
        return float(frame - self.held().start)

    # -- Memory ---------------------------------------------------------------------------------
    def _insert_frame(self, k, v, index: int) -> None:
        self.store.write(self._slot(index), k, v)

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        held = self.held()
        m = len(held)
        if m == 0:
            return None
        # Slots 0..m-1 are in use (the ring fills in order); map each back to its frame.
        frame_of_slot = [0] * m
        for f in held:
            frame_of_slot[self._slot(f)] = f
        positions = tuple(self._position(f) for f in frame_of_slot)
        k, v = self.store.frames(m)
        return MemoryView(self.rotated(k, positions), v, positions, self._query_positions(query, m))

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """absolute: true frame indices; compact: at most ``budget`` held frames, then the chunk."""
        lo, hi = super().position_range(num_frames, chunk)
        return (lo, hi) if self.positions == "absolute" else (lo, min(hi, float(self.budget + chunk - 1)))

    def _query_positions(self, query: ChunkQuery, m: int) -> tuple[float, ...]:
        if self.positions == "absolute":
            return self.chunk_positions(query)
        return tuple(float(m + i) for i in range(query.num_frames))

    def frame_slots(self):
        return {f: (self.store, self._slot(f)) for f in self.held()}

    def entries(self) -> list[Entry]:
        return [Entry(mu=float(f), span=1, position=self._position(f), first=f) for f in self.held()]
