"""The generator's K/V of a history, and the memory the ``compressor`` policy would hold, for training.

:func:`history_kv` runs a clean history through the generator once (the cache pass of generation)
and taps every layer's keys and values; :func:`compressed_views` builds from them exactly what the
policy holds when a chunk asks (compressed groups at their centres, the raw window at its frames);
:class:`GivenViews` hands such fixed, differentiable views to the model in place of a
``MemoryStack``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from fademem.embedded.train import CHUNK
from fademem.memory.base import MemoryView
from fademem.memory.compressor import group_centre, layout
from fademem.memory.compressor_net import KVCompressor
from fademem.rope import apply_rotary
from fademem.wan.model import sink_window_mask


# -- the generator's K/V, and the memory the policy would hold -----------------------------------------------
@contextmanager
def kv_taps(model):
    """Collect every layer's self-attention k (no RoPE phase) and v during a forward."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [blk.self_attn.register_forward_hook(lambda _m, _i, o: out.append((o[1], o[2])))
             for blk in model.blocks]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def history_kv(model, latents: torch.Tensor, context, start: int,
               window: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k with spatial phase only, v) [B, F*n, H, D] of clean ``latents`` [B, C, F, h, w]
    starting at frame ``start``: one forward at t = 0 in which each chunk of 3 frames sees itself
    and the ``window`` frames before it (the cache pass of generation, with a plain window)."""
    b, _, f, hh, ww = latents.shape
    ph, pw = model.config.patch_size[1:]
    h, w = hh // ph, ww // pw
    mask = sink_window_mask(f, CHUNK, h * w, budget=window, sink=0, device=latents.device)
    with kv_taps(model) as taps:
        model(latents, torch.zeros(b, device=latents.device), context, start_frame=start, attn_mask=mask)
    spatial = model.rope.freqs(None, h, w, latents.device)
    return [(apply_rotary(k, spatial), v) for k, v in taps]


def compressed_views(comp: KVCompressor, kv: list[tuple[torch.Tensor, torch.Tensor]], lo: int, s: int,
                     window: int, budget: int, rope, tokens_per_frame: int):
    """Per layer (k rotated, v, positions) of what the ``compressor`` policy holds when the chunk at
    ``s`` asks: compressed groups (keys at their centres) then raw frames (keys at their indices).
    ``kv`` covers frames [lo, s) of the history."""
    t = comp.cfg.factors[0]
    n = tokens_per_frame
    groups, raw = layout(s, window, t, budget)
    out = []
    for layer, (k, v) in enumerate(kv):
        ks, vs, pos = [], [], []
        if groups:
            a, b = (groups.start * t - lo) * n, (groups.stop * t - lo) * n
            if a < 0:
                raise ValueError(f"history K/V start at frame {lo}, the memory needs frame {groups.start * t}")
            ck, cv = comp.compress(layer, k[:, a:b], v[:, a:b])
            gpos = tuple(group_centre(g, t) for g in groups)
            m = comp.cfg.tokens_per_group
            ks.append(apply_rotary(ck, rope.temporal_freqs(gpos, ck.device).expand(-1, m, -1)))
            vs.append(cv)
            pos += gpos
        if raw:
            a, b = (raw.start - lo) * n, (raw.stop - lo) * n
            rpos = tuple(float(f) for f in raw)
            ks.append(apply_rotary(k[:, a:b], rope.temporal_freqs(rpos, k.device).expand(-1, n, -1)))
            vs.append(v[:, a:b])
            pos += rpos
        out.append((torch.cat(ks, 1), torch.cat(vs, 1), tuple(pos)) if pos else None)
    return out


class GivenViews:
    """A stand-in MemoryStack whose layers hand the model fixed (differentiable) views."""

    def __init__(self, views, start: int, num_frames: int = CHUNK):
        self.layers = [_GivenView(v, start, num_frames) for v in views]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def bind(self, rope, tokens_per_frame):
        for m in self.layers:
            m.rope, m.tokens_per_frame = rope, tokens_per_frame
        return self


class _GivenView:
    needs_queries = False
    needs_context = False

    def __init__(self, view, start: int, num_frames: int):
        self.rope, self.tokens_per_frame = None, 0
        self._view = None
        if view is not None:  # no attention buffers: the model concatenates (autograd-safe)
            k, v, pos = view
            self._view = MemoryView(k, v, pos, tuple(float(start + i) for i in range(num_frames)))

    def view(self, query):
        return self._view

    def insert(self, *a):
        raise RuntimeError("fixed training views take no inserts")
