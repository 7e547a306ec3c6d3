"""What the memory holds, for the live page: ``Memory.entries()`` over time, as ``fademem schedule
--plot`` draws it (x: latent frames generated, y: latent frames covered, one block per entry for as
long as it keeps the same frames), and the same layout for other policies fed the same frames.

Those other policies (``COMPARE``) keep metadata that depends only on frame indices, so a copy
bound to a one-token frame of zeros holds exactly the entries it would hold in the real model;
query-aware policies (whose choice depends on the K/V) are shown only when they run for real.
Everything here reaches policies through the registry, never a policy's module.
"""

from __future__ import annotations

import math

import torch

from fademem.memory import REGISTRY, build_memory
from fademem.rope import WanRoPE

COMPARE = ("window", "sink", "memrope", "fademem")  # policies whose layout needs no tensors
DEFAULT_BUDGET = 12  # visible history frames of the comparison when the live policy has no budget knob


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


class Layout:
    """Entry lifetimes of one memory. ``update(frames_seen, entries)`` after each chunk; blocks are
    ``[s0, s1, first, span, mu, kind]`` (held while s0 < frames generated <= s1)."""

    def __init__(self):
        self.alive: dict[tuple, list] = {}  # (first, span, kind) -> [s0, first, span, mu, position, kind]
        self.closed: list[list] = []
        self.loose: list[list] = []  # entries that cover no frame range (learned tokens): [mu, span, position, kind]
        self.step = 0

    def update(self, frames_seen: int, entries) -> list[list]:
        """Take the entries held after ``frames_seen`` frames; returns the blocks that ended."""
        now, loose = {}, []
        for e in entries:
            if e.first >= 0:
                now[(e.first, e.span, e.kind)] = [_num(e.mu), _num(e.position)]
            else:
                loose.append([_num(e.mu), int(e.span), _num(e.position), e.kind])
        ended = []
        for key in [k for k in self.alive if k not in now]:
            s0, first, span, mu, _, kind = self.alive.pop(key)
            ended.append([s0, self.step, first, span, mu, kind])
        for key, (mu, pos) in now.items():
            block = self.alive.setdefault(key, [self.step, key[0], key[1], mu, pos, key[2]])
            block[3], block[4] = mu, pos  # positions move as the present moves
        self.closed += ended
        self.loose, self.step = loose, int(frames_seen)
        return ended

    def message(self, ended: list[list] | None = None) -> dict:
        """For the page: blocks that ended (all of them when ``ended`` is None: a page joining late),
        the blocks held now (``[s0, first, span, mu, position, kind]``) and the loose entries."""
        return {"step": self.step, "closed": list(self.closed) if ended is None else ended,  # copies: sent later
                "alive": [list(b) for b in sorted(self.alive.values(), key=lambda b: (b[1], b[2]))],
                "loose": self.loose}


class Shadows:
    """The ``COMPARE`` policies at the live policy's visible budget, fed the live run's frame indices."""

    def __init__(self, live_spec: str, fpc: int = 3):
        live = build_memory(live_spec)
        budget = live.knobs().get("budget")
        budget = budget if isinstance(budget, int) and budget > 0 else DEFAULT_BUDGET
        rope = WanRoPE(6)
        self.fpc = fpc
        self.memories, self.layouts, self.notes = [], [], []
        for name in COMPARE:
            if name == live.name:
                continue
            try:
                spec, note = REGISTRY[name].at_budget(budget)
            except ValueError:
                continue
            self.memories.append(build_memory(spec).bind(rope, 1))
            self.layouts.append(Layout())
            self.notes.append(note)

    def insert(self, start: int, n: int) -> list[list[list]]:
        """The same frames the live memory received; returns each layout's ended blocks."""
        zeros = torch.zeros(1, n, 1, 6)
        out = []
        for mem, lay in zip(self.memories, self.layouts):
            mem.insert(zeros, zeros, start)
            out.append(lay.update(mem.frames_seen, mem.entries()))
        return out

    def message(self, ended: list[list[list]] | None = None) -> list[dict]:
        return [{"spec": m.spec(), "note": note, **lay.message(None if ended is None else e)}
                for m, lay, note, e in zip(self.memories, self.layouts, self.notes,
                                           ended if ended is not None else [None] * len(self.layouts))]
