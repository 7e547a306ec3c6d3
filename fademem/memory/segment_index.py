"""A bounded device index over a growing history of block keys (two-level retrieval).

Scoring every block key of an hour of video on every forward means keeping all of them on the
device. :class:`SegmentBounds` keeps, per head and channel, the minimum and maximum of the
(temporally rotated) block keys of each *segment* of ``span`` consecutive frames, at most
``capacity`` segments: when the history outgrows them, neighbouring segments merge pairwise and
``span`` doubles, so the device bytes are fixed (``2 * capacity`` keys per head).

For a query q the segment's bound ``sum_d max(q_d * lo_d, q_d * hi_d)`` is an upper bound on
``q . k`` for every block key k in it (Quest's page bound, Tang et al. 2024): a retrieval that
rescores the blocks of the highest-bounded segments never drops a segment that could beat the
best block found by more than the bound allows, and with enough segments fetched it is exact.
"""

from __future__ import annotations

import torch


class SegmentBounds:
    """Channel-wise min/max of block keys over segments of ``span`` frames, ``capacity`` segments."""

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2 or capacity % 2:
            raise ValueError(f"segment index capacity must be an even integer >= 2, got {capacity!r}")
        self.capacity = capacity
        self.clear()

    def clear(self) -> None:
        self.span = 1  # frames per segment
        self.frames = 0  # frames seen (highest index + 1)
        self.lo: torch.Tensor | None = None  # [B, capacity, H, D] float32
        self.hi: torch.Tensor | None = None

    def add(self, index: int, keys: torch.Tensor) -> None:
        """Fold frame ``index``'s block keys ``[B, blocks, H, D]`` (rotated) into its segment.

        Frames arrive in order; a frame written again (a prompt switch) widens its segment's
        bounds, which stay valid (they may only get looser)."""
        if index < 0 or index > self.frames:
            raise ValueError(f"segment index: frame {index} arrives out of order (seen {self.frames})")
        keys = keys.float()
        fmin, fmax = keys.amin(dim=1), keys.amax(dim=1)  # [B, H, D]
        if self.lo is None:
            b, _, h, d = keys.shape
            self.lo = keys.new_empty((b, self.capacity, h, d))
            self.hi = keys.new_empty((b, self.capacity, h, d))
        while index // self.span >= self.capacity:
            self._merge()
        s = index // self.span
        if index == self.frames and index % self.span == 0:  # first frame of a new segment
            self.lo[:, s].copy_(fmin)
            self.hi[:, s].copy_(fmax)
        else:
            torch.minimum(self.lo[:, s], fmin, out=self.lo[:, s])
            torch.maximum(self.hi[:, s], fmax, out=self.hi[:, s])
        self.frames = max(self.frames, index + 1)

    def _merge(self) -> None:
        half = self.capacity // 2
        self.lo[:, :half] = torch.minimum(self.lo[:, 0::2], self.lo[:, 1::2])
        self.hi[:, :half] = torch.maximum(self.hi[:, 0::2], self.hi[:, 1::2])
        self.span *= 2

    def segments(self, frames: int) -> int:
        """Segments that hold any of the first ``frames`` frames."""
        return -(-frames // self.span)

    def bounds(self, q: torch.Tensor, segments: int) -> torch.Tensor:
        """Upper bounds of ``q . k`` over each of the first ``segments`` segments: [B, H, S] for
        q [B, H, D]."""
        lo, hi = self.lo[:, :segments], self.hi[:, :segments]  # [B, S, H, D]
        qe = q[:, None]
        return torch.maximum(qe * lo, qe * hi).sum(-1).permute(0, 2, 1)

    def nbytes(self) -> int:
        return 0 if self.lo is None else 2 * self.lo.numel() * self.lo.element_size()

    def state(self) -> dict:
        return {"span": self.span, "frames": self.frames,
                "lo": None if self.lo is None else self.lo.clone(), "hi": None if self.hi is None else self.hi.clone()}

    def load(self, state: dict) -> None:
        self.span, self.frames = int(state["span"]), int(state["frames"])
        self.lo = None if state["lo"] is None else state["lo"].clone()
        self.hi = None if state["hi"] is None else state["hi"].clone()
