"""One memory per transformer layer, built from one spec (the model's ``memory`` argument)."""

from __future__ import annotations

from typing import Any

from fademem.memory.base import Entry, Memory
from fademem.memory.registry import build_memory
from fademem.rope import WanRoPE


class MemoryStack:
    """A container of per-layer memories, like transformers' ``Cache`` holds its layers."""

    def __init__(self, spec: str | Memory, num_layers: int):
        if num_layers <= 0:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        self.layers: list[Memory] = [build_memory(spec) for _ in range(num_layers)]
        for i, m in enumerate(self.layers):  # per-layer policies (e.g. learned compressors) need it
            m.layer = i
        self.spec = self.layers[0].spec()

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Memory:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def policy(self) -> Memory:
        return self.layers[0]

    @property
    def frames_seen(self) -> int:
        return self.layers[0].frames_seen

    def bind(self, rope: WanRoPE, tokens_per_frame: int) -> MemoryStack:
        for m in self.layers:
            m.bind(rope, tokens_per_frame)
        return self

    def reset(self) -> None:
        for m in self.layers:
            m.reset()

    def entries(self) -> list[Entry]:
        return self.layers[0].entries()

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in self.layers)

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """The policy's stated range of temporal positions for a video of ``num_frames`` latent frames."""
        return self.policy.position_range(num_frames, chunk)

    def positions_used(self) -> tuple[float, float] | None:
        """(lowest, highest) temporal position any layer's views gave so far; None before the first view."""
        used = [u for u in (m.positions_used() for m in self.layers) if u is not None]
        return (min(u[0] for u in used), max(u[1] for u in used)) if used else None

    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "layers": [m.state_dict() for m in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("spec") != self.spec or len(state.get("layers", ())) != len(self.layers):
            raise ValueError(f"state is for '{state.get('spec')}' x{len(state.get('layers', ()))} layers, "
                             f"this stack is '{self.spec}' x{len(self.layers)}")
        for m, s in zip(self.layers, state["layers"]):
            m.load_state_dict(s)
