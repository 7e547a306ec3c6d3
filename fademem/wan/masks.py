"""Attention masks for full-sequence forwards (training, tests): block-causal and the ``sink`` policy's
sink + window, dense (bool) or as a flex_attention ``BlockMask``."""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


def _frame_ok(num_frames: int, frames_per_block: int, budget: int | None, sink: int):
    """Bool [F, F]: query frame i sees key frame j (block-causal, optionally sink + window)."""
    i = torch.arange(num_frames)[:, None]
    j = torch.arange(num_frames)[None, :]
    start = (i // frames_per_block) * frames_per_block
    ok = j < start + frames_per_block
    if budget is not None:  # history: the first `sink` frames plus the newest budget - sink
        ok &= (j >= start) | (j < sink) | (j >= start - (budget - sink))
    return ok


def block_causal_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense bool [L, L] mask (True = attend): each block of frames sees itself and all earlier blocks."""
    ok = _frame_ok(num_frames, frames_per_block, None, 0)
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(device)


def sink_window_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int, budget: int,
                     sink: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense bool [L, L] mask of the ``sink`` policy: each block sees itself, the first ``sink``
    frames and the newest ``budget - sink`` earlier frames (``budget`` frames of history)."""
    if not 0 <= sink <= budget:
        raise ValueError(f"sink_window_mask: need 0 <= sink <= budget, got sink={sink}, budget={budget}")
    ok = _frame_ok(num_frames, frames_per_block, budget, sink)
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(device)


def flex_block_causal_mask(num_frames: int, frames_per_block: int, tokens_per_frame: int,
                           device: torch.device | str = "cpu") -> BlockMask:
    """The block-causal mask as a flex_attention BlockMask (no padding needed in torch >= 2.5)."""
    block = frames_per_block * tokens_per_frame
    n = num_frames * tokens_per_frame

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx // block <= q_idx // block

    return create_block_mask(mask_mod, None, None, n, n, device=device)
