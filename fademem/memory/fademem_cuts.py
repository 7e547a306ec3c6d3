"""Content cuts for FadeMem's adaptive schedule (``fademem:adaptive=cut,cut_threshold=...``).

A frame opens a new scene when the cosine distance ``1 - cos(m_f, m_{f-1})`` between its mean key
``m_f`` (over its tokens and heads, float32; the largest distance over the batch, since the
schedule is shared by the batch) and the previous frame's exceeds the threshold. The schedule then
never merges the pair that straddles it while another eligible pair remains.

No host-device synchronisation in the hot path: ``observe`` queues the distances of one
``insert()`` call's frames on the device and starts their copy to pinned host memory
(``non_blocking``, with an event). They are read on the host (``flush``) only

* at the next ``observe`` (the next chunk's cache pass: the copy finished a whole chunk of
  denoising forwards ago, so the event wait returns at once), or
* when the schedule's chosen merge pair is one whose cut flag is still in flight (the pair
  holding the previous frame of the same chunk: only when the budget is so small that the newest
  frames merge) -- then it waits for this chunk's distances, once per insert call at most,
* when the state is saved or the cuts are asked for (``FadeMemMemory.cut_frames``).

On CPU the "copy" is the tensor itself and reading it costs nothing. Each layer's memory detects
its own cuts from its own keys. A zero mean key has cosine similarity 0 with anything (distance 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CutDetector:
    """Per-frame mean-key distances, queued on the device and read lazily."""

    threshold: float
    prev: torch.Tensor | None = None  # [B, D] float32 mean key of the last frame observed
    _pending: tuple[int, torch.Tensor, object] | None = None  # (first frame, distances [F], event)

    def reset(self) -> None:
        self.prev, self._pending = None, None

    def observe(self, k: torch.Tensor, start: int, tokens_per_frame: int) -> list[int]:
        """Queue the distances of frames ``start ..`` (k: [B, F*T, H, D]) to their predecessors.

        Returns the cuts of the previous call (flushed first), for the caller to record."""
        done = self.flush()
        b, n = k.shape[0], k.shape[1] // tokens_per_frame
        means = k.reshape(b, n, tokens_per_frame * k.shape[2], k.shape[3]).float().mean(dim=2)  # [B, F, D]
        ref = torch.cat([(means[:, :1] if self.prev is None else self.prev[:, None]), means[:, :-1]], dim=1)
        dist = (1.0 - torch.nn.functional.cosine_similarity(means, ref, dim=-1)).amax(dim=0)  # [F]
        self.prev = means[:, -1].clone()
        event = None
        if dist.is_cuda:
            host = torch.empty(dist.shape, dtype=dist.dtype, pin_memory=True)
            host.copy_(dist, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            dist = host
        self._pending = (start, dist, event)
        return done

    def pending(self, frame: int) -> bool:
        """Whether ``frame``'s cut flag is still in flight."""
        return self._pending is not None and self._pending[0] <= frame < self._pending[0] + self._pending[1].numel()

    def flush(self) -> list[int]:
        """Read the queued distances (waits for their copy if needed); the frames that open a scene."""
        if self._pending is None:
            return []
        start, dist, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        return [start + i for i, d in enumerate(dist.tolist()) if d > self.threshold and start + i > 0]
