"""``deepforcing``: Deep Sink + Participative Compression (Yi et al. 2025, training-free).

Rules (paper Sec. 4 / Algorithm 1; the authors' repository ships no code yet, defaults from the
paper's implementation details: sink S = 10, budget N = 16, recent R = 4, Self Forcing's 21-frame
cache = 18 history frames + the 3-frame chunk):

* **Deep sink**: the first ``sink`` frames are kept for ever. Their keys are stored without
  temporal phase and re-encoded so that the last sink frame sits immediately before the oldest
  retained tail token (``positions="frame"``), i.e. the paper's temporal RoPE adjustment
  Delta_sink = s_tail - s_sink, with the sink ending one frame before the tail (so a cache that
  never compressed keeps every frame at its true index).
* **Participative compression**: history is stored as *tokens*. When the held history exceeds
  ``cache`` frames of tokens, every token that is neither a sink token nor in the ``recent``
  newest frames is scored by the summed attention logits of the most recent queries,
  ``phi_j = sum_{q, heads} q . k_j / (sqrt(d) * H)``, and the top ``(budget - sink - recent)``
  frames' worth of tokens are kept (``torch.topk`` + ``gather`` on the device; every count is
  static, so there is no host sync). The cache then holds exactly ``budget`` frames of tokens.
* **Which queries**: compression runs inside ``view()`` on the first call after an insert that
  overflowed the cache, with that call's ``ChunkQuery.q``: the current chunk's queries at its
  first denoising forward (the paper's "t = T" condition), temporally rotated at the chunk's
  query positions, scored against candidate keys rotated at their current view positions (the
  same phases the chunk's attention uses). Because the score is linear in q, the queries are
  summed first (exact). Without queries (a view asked without ``q``) the newest candidate
  tokens are kept.
* ``mode="sink-only"``: 14 sink frames (``sink=None`` resolves to 10 / 14 by mode) and a FIFO tail
  of the newest ``cache - sink`` frames, no scoring.

Positions (``positions``):
  * ``frame`` (default): every tail token at its own frame index, the chunk at its true frames,
    the sink re-aligned before the oldest retained tail token. That oldest token is chosen by
    top-k, so after the first compression the sink positions (and the compressed tokens'
    positions) are device data, per batch element; the view rotates them per token on the
    device and reports ``nan`` for those slots in ``MemoryView.positions``.
  * ``unified``: the paper's Temporal RoPE Unification (Alg. 1 l. 15-17): the selected tokens are
    kept in temporal order and placed as a contiguous block of ``budget - sink - recent`` frame
    positions right before the recent frames, the sink right before that block. Host-known.
  * ``absolute``: no re-alignment (sink at 0..S-1), tokens at their own frames (reference runs).

Storage: a ``SlotStore`` of ``sink`` frames, and a tail ``SlotStore`` of ``cache - sink + F``
frame slots (F = frames of the first insert, the staging room for one chunk) read as a flat token
buffer: slots ``[0, n_comp)`` hold the compressed tokens (token-level, with a per-token frame index
in ``tail_pos``), the following slots hold whole frames (``whole``, oldest first). An insert that
would overflow the staging room compresses first (by recency, no queries at insert time).
Prompt switches recompute the whole tail frames; the sink and the compressed tokens keep their K/V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.registry import register
from fademem.memory.window import check_int

MODES = ("compress", "sink-only")
POSITIONS = ("frame", "unified", "absolute")


def rotate_tokens(rope, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Temporal phase per token (pos [B, L]) or per token and head (pos [B, L, H]), on the device."""
    b, n, h, d = x.shape
    if pos.dim() == 2:
        out = rope.rotate_temporal(x.reshape(1, b * n, h, d), pos.reshape(-1))
    else:
        out = rope.rotate_temporal(x.reshape(1, b * n * h, 1, d), pos.reshape(-1))
    return out.reshape(b, n, h, d)


@register
@dataclass
class DeepForcingMemory(Memory):
    """Deep Forcing: deep sink (RoPE re-aligned) + participative token compression (Yi et al.)."""

    name: ClassVar[str] = "deepforcing"
    needs_queries: ClassVar[bool] = True

    mode: Literal["compress", "sink-only"] = "compress"
    cache: int = 18
    budget: int = 16
    sink: int | None = None
    recent: int = 4
    positions: Literal["frame", "unified", "absolute"] = "frame"

    state_attrs: ClassVar[tuple[str, ...]] = ("whole", "n_comp", "tail_pos", "tail_cap")

    # -- knobs ------------------------------------------------------------------------------------
    @property
    def sink_frames(self) -> int:
        if self.sink is not None:
            return self.sink
        return 10 if self.mode == "compress" else 14

    @property
    def keep_recent(self) -> int:
        """Whole frames protected at compression (the FIFO tail in sink-only mode)."""
        return self.recent if self.mode == "compress" else self.cache - self.sink_frames

    @property
    def keep_tokens_frames(self) -> int:
        """Frames' worth of top-scored tokens kept at compression (C / tokens_per_frame)."""
        return self.budget - self.sink_frames - self.recent if self.mode == "compress" else 0

    def validate(self) -> None:
        n = self.name
        if self.mode not in MODES:
            raise ValueError(f"{n}: mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"{n}: positions must be one of {', '.join(POSITIONS)}; got {self.positions!r}")
        check_int(n, "cache", self.cache, 1)
        check_int(n, "budget", self.budget, 1)
        check_int(n, "recent", self.recent, 0)
        if self.sink is not None:
            check_int(n, "sink", self.sink, 0)
        s = self.sink_frames
        if s >= self.cache:
            raise ValueError(f"{n}: sink ({s}) must be smaller than cache ({self.cache})")
        if self.mode == "compress":
            if self.budget > self.cache:
                raise ValueError(f"{n}: budget ({self.budget}) must not exceed cache ({self.cache})")
            if s + self.recent > self.budget:
                raise ValueError(f"{n}: sink + recent ({s} + {self.recent}) must not exceed budget ({self.budget})")

    def reset(self) -> None:
        super().reset()
        self.sink_store = SlotStore(capacity=max(self.sink_frames, 1))
        self.tail = SlotStore(capacity=None)
        self.tail_cap = 0  # tail slots, fixed at the first insert
        self.tail_pos: torch.Tensor | None = None  # [B, tail_cap * T] frame index of every tail token
        self.whole: list[int] = []  # whole frames in slots n_comp.., oldest first
        self.n_comp = 0  # slots holding compressed (token-level) history

    # -- host-side layout -------------------------------------------------------------------------
    @property
    def n_sink(self) -> int:
        return min(self.frames_seen, self.sink_frames)

    @property
    def n_tail(self) -> int:
        return self.n_comp + len(self.whole)

    def held_tokens(self) -> int:
        return (self.n_sink + self.n_tail) * self.tokens_per_frame

    def overflowing(self) -> bool:
        return self.n_tail > self.cache - self.sink_frames

    def _host_positions(self) -> list[float]:
        """Temporal position of each held slot (sink, then tail); nan where it is device data."""
        nan, S, nc = float("nan"), self.sink_frames, self.n_comp
        whole = [float(f) for f in self.whole]
        if self.positions == "absolute":
            return [float(j) for j in range(self.n_sink)] + [nan] * nc + whole
        first = float(self.whole[0]) if self.whole else float(self.frames_seen if nc else S)
        if self.positions == "unified":
            comp = [first - nc + i for i in range(nc)]
            return [first - nc - S + j for j in range(self.n_sink)] + comp + whole
        if nc:  # frame mode after a compression: the oldest retained token decides
            return [nan] * (self.n_sink + nc) + whole
        return [first - S + j for j in range(self.n_sink)] + whole

    def _token_positions(self) -> torch.Tensor:
        """Device positions [B, held tokens] (frame / absolute modes)."""
        t, S = self.tokens_per_frame, self.sink_frames
        tail = self.tail_pos[:, :self.n_tail * t]
        j = torch.arange(self.n_sink, device=tail.device, dtype=torch.float32).repeat_interleave(t)
        if self.positions == "absolute":
            sink = j.expand(tail.shape[0], -1)
        else:
            sink = tail.amin(dim=1, keepdim=True) - S + j
        return torch.cat([sink, tail], dim=1)

    # -- writing ----------------------------------------------------------------------------------
    def insert(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        if self.tail_cap == 0 and isinstance(k, torch.Tensor) and k.dim() == 4 and self.tokens_per_frame:
            self.tail_cap = self.cache - self.sink_frames + max(1, k.shape[1] // self.tokens_per_frame)
            self.tail.capacity = self.tail_cap
        super().insert(k, v, start)

    def _insert_frame(self, k: torch.Tensor, v: torch.Tensor, index: int) -> None:
        if index < self.sink_frames:
            self.sink_store.write(index, k, v)
            return
        if self.n_tail >= self.tail_cap:
            self._compress(None)
        slot = self.n_tail
        self.tail.write(slot, k, v)
        t = self.tokens_per_frame
        if self.tail_pos is None:
            self.tail_pos = torch.zeros(k.shape[0], self.tail_cap * t, dtype=torch.float32, device=k.device)
        self.tail_pos[:, slot * t:(slot + 1) * t] = float(index)
        self.whole.append(index)

    def _flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, t, h, d = self.tail.k.shape
        return self.tail.k.view(b, n * t, h, d), self.tail.v.view(b, n * t, h, d)

    def _compress(self, query: ChunkQuery | None) -> None:
        """Keep sink (untouched), the top C candidate tokens and the newest R whole frames."""
        t = self.tokens_per_frame
        r = min(self.keep_recent, len(self.whole))
        c = self.keep_tokens_frames
        n_cand = (self.n_tail - r) * t
        kf, vf = self._flat()
        pos = self.tail_pos
        recent = slice(n_cand, n_cand + r * t)
        rk, rv, rp = kf[:, recent].clone(), vf[:, recent].clone(), pos[:, recent].clone()
        if c > 0 and n_cand > 0:
            keep = min(c * t, n_cand)
            scores = self._scores(query, n_cand)
            idx = torch.topk(scores, keep, dim=1).indices.sort(dim=1).values
            gi = idx[:, :, None, None].expand(-1, -1, kf.shape[2], kf.shape[3])
            ck, cv, cp = kf[:, :n_cand].gather(1, gi), vf[:, :n_cand].gather(1, gi), pos[:, :n_cand].gather(1, idx)
            kf[:, :keep].copy_(ck)
            vf[:, :keep].copy_(cv)
            pos[:, :keep].copy_(cp)
            self.n_comp = keep // t
        else:
            self.n_comp = 0
        o = self.n_comp * t
        kf[:, o:o + r * t].copy_(rk)
        vf[:, o:o + r * t].copy_(rv)
        pos[:, o:o + r * t].copy_(rp)
        self.whole = self.whole[len(self.whole) - r:] if r else []
        self._view_cache = None

    def _scores(self, query: ChunkQuery | None, n_cand: int) -> torch.Tensor:
        """phi [B, n_cand]: summed q.k / (sqrt(d) H) of the chunk's queries (newest-first without q)."""
        pos = self.tail_pos[:, :n_cand]
        if query is None or query.q is None:
            return pos + torch.arange(n_cand, device=pos.device, dtype=torch.float32) / (n_cand + 1)
        kf, _ = self._flat()
        kc = kf[:, :n_cand]
        t = self.tokens_per_frame
        host = self._host_positions()[self.n_sink:self.n_sink + n_cand // t]
        if all(math.isfinite(p) for p in host):
            kc = self.rope.rotate_temporal(kc, tuple(host), out_dtype=torch.float32)
        else:
            kc = rotate_tokens(self.rope, kc.float(), pos)
        q = self.rope.rotate_temporal(query.q, self.chunk_positions(query), out_dtype=torch.float32)
        h, d = q.shape[2], q.shape[3]
        qsum = q.sum(dim=1)  # [B, H, D]: the score is linear in q
        return torch.einsum("bjhd,bhd->bj", kc, qsum) / (math.sqrt(d) * h)

    # -- reading ----------------------------------------------------------------------------------
    def _view(self, query: ChunkQuery) -> MemoryView | None:
        if self.overflowing():
            self._compress(query if self.mode == "compress" else None)
        ns, nt = self.n_sink, self.n_tail
        if ns + nt == 0:
            return None
        ks, vs = [], []
        if ns:
            k, v = self.sink_store.frames(ns)
            ks.append(k)
            vs.append(v)
        if nt:
            k, v = self.tail.frames(nt)
            ks.append(k)
            vs.append(v)
        k = ks[0] if len(ks) == 1 else torch.cat(ks, dim=1)
        v = vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)
        host = self._host_positions()
        if all(math.isfinite(p) for p in host):
            kr = self.rotated(k, tuple(host))
        else:
            kr = rotate_tokens(self.rope, k, self._token_positions())
        return MemoryView(kr, v, tuple(host), self.chunk_positions(query))

    def token_positions(self) -> torch.Tensor | None:
        """Device positions [B, held tokens] of the keys a view returns now (tests, analysis)."""
        if self.n_sink + self.n_tail == 0:
            return None
        host = self._host_positions()
        if all(math.isfinite(p) for p in host):
            dev = self.tail_pos.device if self.tail_pos is not None else self.sink_store.k.device
            b = self.sink_store.k.shape[0] if self.sink_store.k is not None else self.tail.k.shape[0]
            p = torch.tensor(host, dtype=torch.float32, device=dev).repeat_interleave(self.tokens_per_frame)
            return p.expand(b, -1)
        return self._token_positions()

    def entries(self) -> list[Entry]:
        host = self._host_positions()
        out = [Entry(mu=float(j), span=1, position=host[j], first=j, kind="sink") for j in range(self.n_sink)]
        o = self.n_sink
        out += [Entry(mu=float("nan"), span=1, position=host[o + i], kind="tokens") for i in range(self.n_comp)]
        o += self.n_comp
        out += [Entry(mu=float(f), span=1, position=host[o + i], first=f) for i, f in enumerate(self.whole)]
        return out

    def frame_slots(self) -> dict[int, tuple[SlotStore, int]]:
        # Whole tail frames are recomputed on a prompt switch; sink and compressed tokens keep K/V.
        return {f: (self.tail, self.n_comp + i) for i, f in enumerate(self.whole)}

    def held_slots(self) -> dict[int, tuple[SlotStore, int]]:
        held = {j: (self.sink_store, j) for j in range(self.n_sink)}
        held.update(self.frame_slots())
        return held

    def nbytes(self) -> int:
        extra = 0 if self.tail_pos is None else self.tail_pos.numel() * self.tail_pos.element_size()
        return super().nbytes() + extra

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tail.capacity = self.tail_cap or None
