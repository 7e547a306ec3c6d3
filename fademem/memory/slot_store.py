"""Frame storage shared by the policies: K/V validation and a preallocated store of frame slots."""

from __future__ import annotations

import torch


def check_kv(k: torch.Tensor, v: torch.Tensor, tokens_per_frame: int, what: str = "insert") -> int:
    """Validate a K/V pair; return the number of frames it holds."""
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{what}: {name} must be a [batch, tokens, heads, head_dim] tensor, "
                             f"got {getattr(t, 'shape', type(t))}")
    if k.shape != v.shape:
        raise ValueError(f"{what}: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.dtype != v.dtype:
        raise ValueError(f"{what}: k and v dtypes differ: {k.dtype} vs {v.dtype}")
    if k.device != v.device:
        raise ValueError(f"{what}: k and v are on different devices: {k.device} vs {v.device}")
    if k.shape[1] == 0 or k.shape[1] % tokens_per_frame:
        raise ValueError(f"{what}: {k.shape[1]} tokens are not whole frames of {tokens_per_frame} tokens")
    return k.shape[1] // tokens_per_frame


class SlotStore:
    """Preallocated K/V storage of ``capacity`` frame slots, allocated lazily on first write.

    Slot order is physical, not temporal: attention is permutation invariant over keys once each
    key carries its own temporal phase, so policies recycle freed slots instead of shifting data.
    """

    def __init__(self, capacity: int | None):
        self.capacity = capacity  # None: grows by doubling (the unbounded reference)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n_tok = 0

    @property
    def allocated(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    def _alloc(self, like: torch.Tensor, slots: int) -> None:
        b, _, h, d = like.shape
        k = like.new_zeros((b, slots, self.n_tok, h, d))
        v = like.new_zeros((b, slots, self.n_tok, h, d))
        if self.k is not None:
            n = self.k.shape[1]
            k[:, :n].copy_(self.k)
            v[:, :n].copy_(self.v)
        self.k, self.v = k, v

    def write(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, n_tok, H, D] for one frame."""
        if self.k is None:
            self.n_tok = k.shape[1]
            self._alloc(k, self.capacity or 8)
        elif (k.shape[0], k.shape[2], k.shape[3]) != (self.k.shape[0], self.k.shape[3], self.k.shape[4]) \
                or k.shape[1] != self.n_tok:
            raise ValueError(f"insert: frame of shape {tuple(k.shape)} does not match stored frames "
                             f"[{self.k.shape[0]}, {self.n_tok}, {self.k.shape[3]}, {self.k.shape[4]}]")
        elif k.dtype != self.k.dtype or k.device != self.k.device:
            raise ValueError(f"insert: got {k.dtype} on {k.device}, memory holds {self.k.dtype} on {self.k.device}")
        if slot >= self.allocated:
            if self.capacity is not None:
                raise IndexError(f"slot {slot} outside capacity {self.capacity}")
            self._alloc(k, max(2 * self.allocated, slot + 1))
        self.k[:, slot].copy_(k)
        self.v[:, slot].copy_(v)

    def frames(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n slots as [B, n*n_tok, H, D] views (no copy)."""
        b, _, t, h, d = self.k.shape
        return self.k[:, :n].reshape(b, n * t, h, d), self.v[:, :n].reshape(b, n * t, h, d)

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()

    def clear(self) -> None:
        self.k = self.v = None
        self.n_tok = 0


def check_frames(num_frames: int, chunk: int) -> None:
    """ValueError unless ``num_frames`` and ``chunk`` are positive integers (``Memory.position_range``)."""
    for name, val in (("num_frames", num_frames), ("chunk", chunk)):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ValueError(f"{name} must be a positive integer, got {val!r}")
