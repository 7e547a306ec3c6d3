"""FadeMem's metadata-only schedule: which adjacent pair merges, and where entries sit in RoPE.

Pure Python, no tensors. The tensor policy (``fademem.py``) and ``fademem schedule`` (the CLI
simulation and layout plot) both drive the same :class:`Schedule`, so the plot shows exactly the
merges the policy performs.

Units. Frames are 0-based latent-frame indices and every ``mu`` here is a frame index. The paper
numbers units t = 1, 2, ... (unit t = frame t - 1); its gaps only use distances ``t - mu``, which
the shift leaves unchanged, so the paper preset measures distances from the newest frame's index.

Two presets:

``paper`` (Algorithm 1)
    Frame f enters as (mu=f, span=1). When an append makes the memory exceed ``budget`` entries
    (anchor included), exactly one adjacent pair merges: the argmin over eligible pairs of
    ``|d_{i+1}^beta - d_i^beta|`` with ``d = now - mu`` and ``now`` = the newest frame; ties go to
    the oldest pair. Eligible pairs contain neither the anchor (entry 0, when anchoring is on)
    nor the newest entry. Merged: span = s_a + s_b, mu = span-weighted mean (fractional).

``release`` (aniki-ly/FadeMem @ 15b70ce, ``wan/modules/fademem_memory.py``)
    Frames reach the bank when the next chunk starts, so ``now`` = that chunk's first frame
    (``chunk_end`` below) for every frame of a chunk. The anchor (frame 0) competes in the argmin;
    when its pair wins it keeps frame 0's K/V and mu 0 and only accumulates span. Only the pair
    holding the newest entry is excluded. Merged mu is the span-weighted mean rounded to an integer
    with Python's ``round`` (half to even, as released); K/V weights are span**gamma normalised.

Layout (``window_layout``): the released online re-RoPE squeezes the memory into the 21-frame
window the base model was trained on: current chunk at 18-20, anchor at 0, the three newest entries
at 15-17, older entries at distinct integer gaps 4..17 from the chunk, chosen oldest first as the
gap whose warped value best matches the entry's warped (clamped) true distance from the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW = 21  # temporal positions the base model was trained on (Self-Forcing's 21-frame cache)
CHUNK = 3  # frames per chunk in the released layout
CURRENT = WINDOW - CHUNK  # 18: where the current chunk starts in the compact layout
BRIDGE = CHUNK  # newest entries placed right before the chunk (15, 16, 17)
FAR_MIN_GAP = BRIDGE + 1  # 4
MAX_GAP = CURRENT - 1  # 17
FAR_GAPS = MAX_GAP - FAR_MIN_GAP + 1  # 14 distinct gaps for older entries

PRESETS = ("paper", "release")
MERGES = ("weighted", "average", "nearest", "max")


@dataclass
class Meta:
    """Host metadata of one memory entry."""

    slot: int  # SlotStore slot holding its K/V
    mu: float  # represented temporal position (frame index)
    span: int  # frames summarised
    first: int  # first frame covered (entries cover consecutive frames)
    anchor: bool = False

    @property
    def last(self) -> int:
        return self.first + self.span - 1


@dataclass(frozen=True)
class MergeOp:
    """The tensor work one merge needs: ``dst`` <- op(slot ``a``, slot ``b``)."""

    index: int  # pair (index, index+1) in the entry list before the merge
    a: int  # slot of the older entry
    b: int  # slot of the newer entry
    dst: int  # slot that holds the merged entry afterwards (the other is freed)
    op: str  # "combine" (wa*a + wb*b), "max", or "keep" (no tensor work)
    wa: float = 0.0
    wb: float = 0.0


@dataclass(frozen=True)
class Step:
    """What one incoming frame does: write it to ``slot``, after performing ``merge`` (if any)."""

    slot: int
    merge: MergeOp | None = None


def warp(distance: float, beta: float) -> float:
    """u(d) = d**beta, with u(0) = 0 (the newest entry in the paper preset)."""
    return distance ** beta if distance > 0 else 0.0


def min_budget(preset: str, anchor: bool) -> int:
    """Smallest budget with an eligible pair once the memory overflows."""
    return 3 if (preset == "paper" and anchor) else 2


def choose_pair(mus: list[float], now: float, beta: float, skip_first: bool,
                blocked: frozenset[int] | set[int] = frozenset()) -> int:
    """Index i of the adjacent pair (i, i+1) with the smallest warped gap; ties to the oldest.

    ``mus`` is the memory after the append (newest last). The pair holding the newest entry is
    never eligible; with ``skip_first`` neither is the pair holding the first entry (the anchor).
    Pairs in ``blocked`` (adaptive: they straddle a content cut) are skipped unless every eligible
    pair is blocked; then the normal rule applies, so the budget always holds.
    """
    lo, hi = (1 if skip_first else 0), len(mus) - 2  # eligible i in [lo, hi)
    if hi <= lo:
        raise ValueError(f"no eligible pair among {len(mus)} entries (skip_first={skip_first})")
    u = [warp(max(0.0, now - m), beta) for m in mus]
    best, best_gap = lo, math.inf
    for i in range(lo, hi):
        g = abs(u[i + 1] - u[i])
        if g < best_gap and i not in blocked:  # strict: ties stay with the oldest pair
            best, best_gap = i, g
    if best_gap == math.inf and blocked:  # every eligible pair straddles a cut: the normal rule
        return choose_pair(mus, now, beta, skip_first)
    return best


@dataclass
class Schedule:
    """FadeMem's ordered memory as metadata; ``add`` says what the tensors must do."""

    budget: int
    beta: float
    anchor: bool = True
    preset: str = "paper"
    merge: str = "weighted"
    span_gamma: float = 1.0
    entries: list[Meta] = field(default_factory=list)
    frames: int = 0
    cuts: list[int] = field(default_factory=list)  # adaptive: frames that open a new scene (sorted)

    def now(self, frame: int, chunk_end: int) -> int:
        """Where distances are measured from when ``frame`` enters."""
        return frame if self.preset == "paper" else chunk_end

    def weights(self, sa: int, sb: int) -> tuple[float, float]:
        if self.merge == "average":
            return 0.5, 0.5
        ea, eb = float(sa) ** self.span_gamma, float(sb) ** self.span_gamma
        return ea / (ea + eb), eb / (ea + eb)

    def merged_mu(self, a: Meta, b: Meta) -> float:
        total = a.span + b.span
        if self.preset == "release":
            # exactly as released: raw span weights, Python round (half to even), integer centre
            return float(int(round(a.span / total * float(a.mu) + b.span / total * float(b.mu))))
        return (a.span * a.mu + b.span * b.mu) / total

    def blocked(self, work: list[Meta]) -> set[int]:
        """Pairs (i, i+1) of ``work`` that straddle a cut (entry i+1 opens a scene)."""
        if not self.cuts:
            return set()
        cuts = set(self.cuts)
        return {i for i in range(len(work) - 1) if work[i + 1].first in cuts}

    def add_cuts(self, frames: list[int]) -> bool:
        """Record cuts (frames opening a new scene; frame 0 never is one). True if any was new."""
        new = {int(f) for f in frames if f > 0} - set(self.cuts)
        self.cuts = sorted(set(self.cuts) | new)
        return bool(new)

    def add(self, frame: int, chunk_end: int | None = None,
            resolve: Callable[[int], bool] | None = None) -> Step:
        """Append ``frame`` (the next frame) and merge one pair if the budget is exceeded.

        ``chunk_end``: first frame of the next chunk (release distances); defaults to frame + 1.
        Slots stay a prefix 0..len-1: the merge is planned first, then the new frame takes the
        slot the merge frees, so no slot ever moves. Pairs straddling a cut in ``cuts`` never merge
        while another eligible pair remains. ``resolve(f)`` (adaptive): called with the first frame
        of the chosen pair's newer entry; it learns cuts not yet known (True: some were), and the
        pair is chosen again -- the same choice as with every cut known up front.
        """
        if frame != self.frames:
            raise ValueError(f"frames must arrive in order; expected {self.frames}, got {frame}")
        chunk_end = frame + 1 if chunk_end is None else chunk_end
        if chunk_end <= frame:
            raise ValueError(f"chunk_end {chunk_end} must be after frame {frame}")
        self.frames += 1
        new = Meta(slot=len(self.entries), mu=float(frame), span=1, first=frame,
                   anchor=self.anchor and frame == 0)
        work = self.entries + [new]
        if len(work) <= self.budget:
            self.entries = work
            return Step(new.slot)
        mus, now, skip = [e.mu for e in work], self.now(frame, chunk_end), self.anchor and self.preset == "paper"
        i = choose_pair(mus, now, self.beta, skip, self.blocked(work))
        if resolve is not None and resolve(work[i + 1].first):
            i = choose_pair(mus, now, self.beta, skip, self.blocked(work))
        a, b = work[i], work[i + 1]
        span = a.span + b.span
        if a.anchor and self.preset == "release":
            # released anchor short-circuit: frame 0's K/V and centre stay, span accumulates
            merged, op = Meta(a.slot, a.mu, span, a.first, True), MergeOp(i, a.slot, b.slot, a.slot, "keep")
        elif self.merge == "nearest":
            merged, op = Meta(b.slot, self.merged_mu(a, b), span, a.first), MergeOp(i, a.slot, b.slot, b.slot, "keep")
        elif self.merge == "max":
            merged, op = Meta(a.slot, self.merged_mu(a, b), span, a.first), MergeOp(i, a.slot, b.slot, a.slot, "max")
        else:
            wa, wb = self.weights(a.span, b.span)
            merged = Meta(a.slot, self.merged_mu(a, b), span, a.first)
            op = MergeOp(i, a.slot, b.slot, a.slot, "combine", wa, wb)
        new.slot = b.slot if op.dst == a.slot else a.slot
        self.entries = work[:i] + [merged] + work[i + 2:]
        return Step(new.slot, op)


# -- positions -------------------------------------------------------------------------------
def window_layout(mus: list[float], anchor: bool, start: int, beta: float) -> list[int]:
    """Released compact re-RoPE positions for entries (temporal order) seen by a chunk at ``start``.

    Anchor (entry 0 when ``anchor``) at 0; the newest ``BRIDGE`` entries at 15..17; older entries,
    oldest first, each at the gap g in [4 + (older entries still to place), previous gap - 1]
    minimising |g**beta - clamp(start - mu, 4, 17)**beta| (ties to the smaller gap), position 18 - g.
    """
    first = 1 if (anchor and mus) else 0
    normals = list(range(first, len(mus)))
    bridge = normals[-BRIDGE:] if normals else []
    far = normals[:len(normals) - len(bridge)]
    if len(far) > FAR_GAPS:
        raise ValueError(f"compact layout has {len(far)} older entries but only {FAR_GAPS} distinct gaps "
                         f"({FAR_MIN_GAP}..{MAX_GAP})")
    pos = [0] * len(mus)
    for off, i in enumerate(bridge):
        pos[i] = CURRENT - (len(bridge) - off)
    prev = MAX_GAP + 1
    for n, i in enumerate(far):
        lo, hi = FAR_MIN_GAP + (len(far) - n - 1), prev - 1
        target = warp(min(max(max(1.0, start - mus[i]), FAR_MIN_GAP), MAX_GAP), beta)
        gap = min(range(lo, hi + 1), key=lambda g: abs(warp(g, beta) - target))
        pos[i] = CURRENT - gap
        prev = gap
    return pos


def use_window(count: int, budget: int, start: int) -> bool:
    """Released switch: absolute positions until the chunk starts at >= 18 and the bank is full."""
    return start >= CURRENT and count >= budget


def max_compact_budget(anchor: bool) -> int:
    return FAR_GAPS + BRIDGE + (1 if anchor else 0)
