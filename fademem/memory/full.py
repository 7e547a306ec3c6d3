"""``full``: the unbounded reference cache (every finished frame, at its true position)."""

from __future__ import annotations

from dataclasses import dataclass

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.registry import register


@register
@dataclass
class FullMemory(Memory):
    """Unbounded cache of every frame at its absolute position (the reference)."""

    name = "full"
    bounded = False

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        return cls.name, "unbounded reference (every past frame)"

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=None)

    def _insert_frame(self, k, v, index: int) -> None:
        self.store.write(index, k, v)  # slot == frame index

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        n = self.frames_seen
        if n == 0:
            return None
        k, v = self.store.frames(n)
        positions = tuple(float(i) for i in range(n))
        return MemoryView(self.rotated(k, positions), v, positions, self.chunk_positions(query))

    def frame_slots(self):
        return {i: (self.store, i) for i in range(self.frames_seen)}

    def entries(self) -> list[Entry]:
        return [Entry(mu=float(i), span=1, position=float(i), first=i) for i in range(self.frames_seen)]
