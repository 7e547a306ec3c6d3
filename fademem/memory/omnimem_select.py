"""OmniMem's retrieval: which blocks each head of the current chunk selects, and fetching them.

A mixin of :class:`~fademem.memory.omnimem.OmniMemMemory` (the policy, its knobs, storage and
views live there): the pooled query, the per-head top-k selection (flat or two-level) and the
per-head gather of the selected blocks' keys and values.

**Which block keys are scored.** Block keys are float32 means, rotated once at their frame's
position when written. ``candidates=0`` scores every candidate block on every forward (the policy's
Query-Shared Selection rule, exactly; the block keys stay on the device and grow with the video,
1/block_tokens of the history's keys). ``candidates=n > 0`` retrieves in two levels so the device
holds a fixed index instead: a :class:`~fademem.memory.segment_index.SegmentBounds` of at most
``index_segments`` segments of consecutive frames (channel-wise min/max of their block keys;
segments double in span when full) ranks segments by the upper bound of the pooled query's score
(Quest's bound), the block keys of the best segments covering ``n`` frames are fetched per head
(from the host with offload, through the same UVA gather) and rescored exactly, and the top
``topk`` of those are selected. When the candidate frames fit in ``n`` frames this is the exact
rule. ``candidates`` defaults to 16 with offload (block keys on the host: the device bytes no
longer grow with the video, until the span passes ``n``, after ``index_segments * n`` frames, 68
minutes at the defaults) and 0 without.
"""

from __future__ import annotations

import math

import torch

from fademem.memory.base import ChunkQuery


class BlockSelection:
    """OmniMem's per-head block selection and gather (needs the policy's stores, index and knobs)."""

    def _pooled_query(self, query: ChunkQuery) -> torch.Tensor:
        """Sum over query groups of the group-mean rotated query: [B, H, D] float32."""
        q = self.rope.rotate_temporal(query.q, self.chunk_positions(query), out_dtype=torch.float32)
        b, n, h, d = q.shape
        g = self.query_group
        groups = -(-n // g)
        q = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, groups * g - n)).view(b, groups, g, h, d).sum(2)
        counts = (n - torch.arange(groups, device=q.device) * g).clamp(max=g).to(torch.float32)
        return (q / counts[None, :, None, None]).sum(1)

    def select(self, query: ChunkQuery) -> tuple[torch.Tensor, int]:
        """Per-head selected block indices [B, H, k] (sorted) and the candidate frame count."""
        win = self.window_frames(query.num_frames)
        cand_frames = win.start if self.exclude_window else self.frames_seen
        nb = self.blocks_per_frame
        nc = cand_frames * nb
        qs = self._pooled_query(query)
        scale = 1.0 / math.sqrt(qs.shape[-1])
        if self.scores_every_block(cand_frames):
            if self.block_store is not None:
                kb = self.block_store.read(0, cand_frames, qs.device)[0]
            else:
                kb = self.blocks[:, :nc]
            scores = torch.einsum("bnhd,bhd->bhn", kb, qs) * scale
            k = min(self.topk, nc)
            return torch.topk(scores, k, dim=2).indices.sort(dim=2).values, cand_frames
        # two levels: the segments with the highest bounds, then their blocks rescored exactly
        span, segs = self.index.span, self.index.segments(cand_frames)
        pick = -(-self._fetch_frames() // span)
        k = min(self.topk, nc, pick * span * nb)
        if cand_frames % span:  # the last segment is partial: one more keeps `pick` whole ones fetched
            pick = min(pick + 1, segs)
        seg = torch.topk(self.index.bounds(qs, segs), pick, dim=2).indices  # [B, H, pick]
        frames = (seg[..., None] * span + torch.arange(span, device=seg.device)).flatten(2)  # [B, H, pick*span]
        valid = frames < cand_frames  # only the last candidate segment can reach past them
        frames = frames.clamp(max=cand_frames - 1)
        keys = self._candidate_keys(frames, cand_frames)  # [B, pick*span*nb, H, D]
        scores = torch.einsum("bnhd,bhd->bhn", keys, qs) * scale
        scores = scores.masked_fill(~valid.repeat_interleave(nb, dim=2), float("-inf"))
        j = torch.topk(scores, k, dim=2).indices
        idx = frames.gather(2, torch.div(j, nb, rounding_mode="floor")) * nb + j % nb
        return idx.sort(dim=2).values, cand_frames

    def scores_every_block(self, cand_frames: int) -> bool:
        """Whether selection over ``cand_frames`` candidate frames scores every block: always with
        flat scoring, and in two levels while their segments fit in the fetched frames."""
        return self.index is None or self.index.segments(cand_frames) * self.index.span <= self._fetch_frames()

    def _fetch_frames(self) -> int:
        """Frames whose block keys a two-level selection fetches per head: whole segments covering
        ``candidates`` frames."""
        span = self.index.span
        return -(-self.n_candidates // span) * span

    def _candidate_keys(self, frames: torch.Tensor, cand_frames: int) -> torch.Tensor:
        """Each head's block keys of ``frames`` [B, H, M]: [B, M * blocks_per_frame, H, D]."""
        b, h, m = frames.shape
        nb = self.blocks_per_frame
        if self.block_store is not None:
            d = self.block_store.shape[-1]
            # a frame's block keys gathered as `pieces` runs of rows: many small copies keep more UVA
            # reads in flight than one long copy per frame and head
            pieces = nb // max(r for r in range(1, min(nb, 4) + 1) if nb % r == 0)
            runs = (frames[..., None] * pieces + torch.arange(pieces, device=frames.device)).flatten(2)
            out = torch.empty((1, b, m * nb, h, d), dtype=torch.float32, device=frames.device)
            self.block_store.gather(runs, nb // pieces, out, self.gather, limit=cand_frames)
            return out[0]
        d = self.blocks.shape[-1]
        src = self.blocks.view(b, -1, nb, h, d)
        gi = frames.permute(0, 2, 1)[:, :, None, :, None].expand(b, m, nb, h, d)
        return torch.gather(src, 1, gi).view(b, m * nb, h, d)

    def _gather(self, idx: torch.Tensor, cand_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's own blocks: [B, k*block, H, D] for k and v, in a reused buffer that holds
        ``topk`` blocks per head at most (so the view never copies a union of the heads' blocks)."""
        b, h, k = idx.shape
        tb = self.block_tokens
        d = self.store.shape[-1] if self.offload else self.store.k.shape[-1]
        dtype = self.store.dtype if self.offload else self.store.k.dtype
        need = 2 * b * k * tb * h * d
        buf = self._scratch.get("gather")
        if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != idx.device:
            # grows with the candidate count until it holds topk blocks, then stays fixed
            cap = min(self.topk, max(k, 2 * (buf.numel() // (2 * b * tb * h * d) if buf is not None else 0)))
            buf = torch.empty(2 * b * cap * tb * h * d, dtype=dtype, device=idx.device)
            self._scratch["gather"] = buf
        out = buf[:need].view(2, b, k * tb, h, d)
        if self.offload:
            self.store.gather(idx, tb, out, self.gather, limit=cand_frames)
        else:
            kb = self.store.k.view(b, -1, tb, h, d)
            vb = self.store.v.view(b, -1, tb, h, d)
            gi = idx.permute(0, 2, 1)[:, :, None, :, None].expand(b, k, tb, h, d)
            torch.gather(kb, 1, gi, out=out[0].view(b, k, tb, h, d))
            torch.gather(vb, 1, gi, out=out[1].view(b, k, tb, h, d))
        return out[0], out[1]
