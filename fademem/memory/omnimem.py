"""``omnimem``: explicit sparse KV retrieval over the whole history (OmniMem), training-free.

OmniMem keeps the full-resolution history and lets every head of the current chunk retrieve its
own top-k spatial blocks from it, besides a fully attended local window. The released method
adds trained gates and a compression branch; this policy is the training-free retrieval rule
inside one softmax:

* **Blocks**: each latent frame's ``grid`` of tokens (``"30x52"`` at 480x832) is cut into
  ``block_h x block_w`` blocks (default 15 x 2 = 30 tokens, 52 blocks per frame; a 2 x 15 block
  does not divide the 52-token rows). ``grid="auto"`` takes the grid from the frame's token count
  at bind: 30x52 for 1560 tokens (Wan at 480x832), else a square grid when the count is a perfect
  square (the embedded model's 8x8), else an error asking for ``grid=HxW``. On an inferred square
  grid a default block side that does not divide it shrinks to its largest divisor below the default
  (8x8: 8 x 2 blocks); a block side given in the spec is never changed. Frames are stored
  block-major (each block contiguous).
  A block's key is the mean of its keys (spatial phase, no temporal phase), re-encoded at its
  frame's position when scored, which equals the mean of the temporally rotated keys.
* **Queries**: the current chunk's queries, rotated at the chunk's positions, are pooled in
  groups of ``query_group`` consecutive tokens (mean; the last group may be shorter).
* **Query-Shared Selection**: one selection per head shared by all query groups, by the score
  summed over groups, ``sum_g qbar_g . kbar_b / sqrt(d)``; being linear in q, it is computed as
  one dot product with the summed pooled query (exact). (OmniMem's project page shares one
  selection inside each *group* of neighbouring queries; sharing across all groups keeps a dense
  per-head view exact, which is what this contract can express.)
* **Adaptive Window Exclusion**: the local window is the current chunk plus the previous
  ``window_chunks - 1`` chunks (chunk size = the asking chunk's ``num_frames``); its history frames
  are attended at full resolution and, with ``exclude_window`` (default), their blocks are not
  candidates. Inside a single softmax a selected window block would only duplicate keys, so
  "adaptive" reduces to: select ``min(topk, distant blocks)``. With ``exclude_window=False`` the
  window blocks compete for the budget and a chosen one is masked out (the local bias the paper
  removes).
* **Per-head access**: the view's k/v are ``[B, W*T + k*block, H, D]`` where each head's selected
  part holds *that head's* blocks (a per-head gather), each key rotated at its own frame index,
  so dense SDPA over the view is exactly per-head sparse attention. ``MemoryView.positions`` lists
  the window frames, then ``nan`` for each selected block (their frames differ per head).

Positions are absolute (every key at its frame index, the chunk at its true frames).

**Where the history lives.** By default the full-resolution history is a device ``SlotStore``
(grows with the video). ``offload=True`` keeps it in host memory (:class:`HostFrames`: pinned
chunks of ``host_chunk`` frames, 0 = about 256 MiB each, allocated as the video grows and never
moved); new frames leave the device on a side copy stream, and the recent window is served from a
small device ring of the last window frames (sized at the first view from the chunk length; a
window the ring does not hold is read back from the host). ``gather`` says how the selected blocks
are fetched: ``triton`` reads them straight from the pinned chunks with a small kernel (UVA,
driven by the device index tensor: no host sync in ``view``/``insert``) into a reused device
buffer of at most ``topk`` blocks per head; ``torch`` indexes the host chunks (the indices go to
the host: one sync per view); ``auto`` (default) takes Triton on CUDA when it is installed. Both
give bitwise the same view as the device store.

**Which block keys are scored** (``candidates``, two-level retrieval), and how the selected
blocks are gathered: :mod:`fademem.memory.omnimem_select`.

``device_nbytes()`` reports the device bytes by part (history, block keys, index, window,
gather buffer); ``host_nbytes()`` / ``host_usage()`` the host store (allocated and used bytes).
Prompt switches recompute any held frame without offload (``frame_slots``) and the frames of the
window ring with it; block keys and segment bounds follow (bounds only widen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fademem.memory.base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from fademem.memory.deepforcing import rotate_tokens
from fademem.memory.host_store import HostFrames
from fademem.memory.omnimem_select import BlockSelection
from fademem.memory.registry import register
from fademem.memory.segment_index import SegmentBounds
from fademem.memory.window import check_int
from fademem.rope import WanRoPE, _to_device


def parse_grid(policy: str, grid: str) -> tuple[int, int] | None:
    if grid == "auto":
        return None
    try:
        h, w = (int(x) for x in str(grid).lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{policy}: grid must be 'auto' or 'HxW' with positive H, W; got {grid!r}") from None
    return h, w


@register
@dataclass
class OmniMemMemory(BlockSelection, Memory):
    """OmniMem: per-head top-k spatial-block retrieval over the full history + local window."""

    name: ClassVar[str] = "omnimem"
    needs_queries: ClassVar[bool] = True

    topk: int = 16
    block_h: int = 15
    block_w: int = 2
    grid: str = "auto"
    query_group: int = 15
    window_chunks: int = 3
    exclude_window: bool = True
    offload: bool = False
    host_chunk: int = 0  # offload: frames per pinned host allocation (0: ~256 MiB per allocation)
    gather: Literal["auto", "triton", "torch"] = "auto"  # offload: how selected blocks leave the host
    # frames whose block keys are rescored per head; 0 = score all (None: 16 with offload)
    candidates: int | None = None
    index_segments: int = 1024  # two-level: segments in the device index (even)

    state_attrs: ClassVar[tuple[str, ...]] = ("blocks", "ring_frames")

    def validate(self) -> None:
        n = self.name
        for knob, lo in (("topk", 0), ("block_h", 1), ("block_w", 1), ("query_group", 1), ("window_chunks", 1)):
            check_int(n, knob, getattr(self, knob), lo)
        for knob in ("exclude_window", "offload"):
            if not isinstance(getattr(self, knob), bool):
                raise ValueError(f"{n}: {knob} must be a bool, got {getattr(self, knob)!r}")
        check_int(n, "host_chunk", self.host_chunk, 0)
        if self.candidates is not None:
            check_int(n, "candidates", self.candidates, 0)
        check_int(n, "index_segments", self.index_segments, 2)
        if self.index_segments % 2:
            raise ValueError(f"{n}: index_segments must be even (segments merge in pairs), got {self.index_segments}")
        if self.gather not in ("auto", "triton", "torch"):
            raise ValueError(f"{n}: gather must be auto, triton or torch, got {self.gather!r}")
        if self.gather != "auto" and not self.offload:
            raise ValueError(f"{n}: gather={self.gather} only applies with offload=true (the host-resident history)")
        auto = parse_grid(n, self.grid) is None  # checked against Wan's 30x52 here, the real grid at bind
        self._check_grid(parse_grid(n, self.grid) or (30, 52), " (grid=auto checked as Wan's 30x52; on other "
                         "frame sizes give grid=HxW)" if auto else "")
        self._block = (self.block_h, self.block_w)  # the block in use (bind may shrink defaults on auto grids)

    def _check_grid(self, g: tuple[int, int], hint: str = "", block: tuple[int, int] | None = None) -> None:
        bh, bw = block or (self.block_h, self.block_w)
        if g[0] % bh:
            raise ValueError(f"{self.name}: block_h {bh} does not divide the grid height {g[0]}{hint}")
        if g[1] % bw:
            raise ValueError(f"{self.name}: block_w {bw} does not divide the grid width {g[1]}{hint}")

    def _auto_grid(self, tokens_per_frame: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """grid='auto': (grid, block) for frames of ``tokens_per_frame`` tokens (see the module doc)."""
        if tokens_per_frame == 1560:
            return (30, 52), (self.block_h, self.block_w)
        s = round(tokens_per_frame ** 0.5)
        if s * s != tokens_per_frame:
            raise ValueError(f"{self.name}: grid='auto' cannot infer the token grid of {tokens_per_frame}-token frames "
                             "(not 1560 = 30x52, not a square): give grid=HxW with H*W = "
                             f"{tokens_per_frame}, and block_h / block_w dividing H / W")
        defaults = type(self).__dataclass_fields__

        def side(knob: str) -> int:
            v = getattr(self, knob)
            if s % v == 0 or v != defaults[knob].default:
                return v  # a side given in the spec is kept (and checked below)
            return max(d for d in range(1, v + 1) if s % d == 0)

        return (s, s), (side("block_h"), side("block_w"))

    def bind(self, rope: WanRoPE, tokens_per_frame: int) -> Memory:
        g = parse_grid(self.name, self.grid)
        block = (self.block_h, self.block_w)
        if g is None:
            g, block = self._auto_grid(tokens_per_frame)
        if g[0] * g[1] != tokens_per_frame:
            raise ValueError(f"{self.name}: grid {g[0]}x{g[1]} does not match {tokens_per_frame} tokens per frame")
        self._check_grid(g, " (grid=auto inferred it from the token count; give grid=HxW)"
                         if parse_grid(self.name, self.grid) is None else "", block)
        super().bind(rope, tokens_per_frame)
        self._block = block
        gh, gw, (bh, bw) = g[0], g[1], block
        self._perm = torch.arange(gh * gw).view(gh // bh, bh, gw // bw, bw).permute(0, 2, 1, 3).reshape(-1)
        self._inv = torch.argsort(self._perm)
        self._scratch.clear()  # device copies of the old permutation
        return self

    @property
    def n_candidates(self) -> int:
        """Frames rescored per head in two-level retrieval (0: every block is scored)."""
        return (16 if self.offload else 0) if self.candidates is None else self.candidates

    @property
    def block_tokens(self) -> int:
        return self._block[0] * self._block[1]

    @property
    def blocks_per_frame(self) -> int:
        return self.tokens_per_frame // self.block_tokens

    def reset(self) -> None:
        super().reset()
        # block-major frames: a growing device SlotStore, or pinned host chunks with offload
        self.store = HostFrames(self.host_chunk) if self.offload else SlotStore(capacity=None)
        two_level = self.n_candidates > 0
        # rotated float32 mean keys: on the host in two-level offload, else [B, cap * blocks_per_frame, H, D]
        self.block_store = HostFrames(parts=1) if self.offload and two_level else None
        self.blocks: torch.Tensor | None = None
        self.index = SegmentBounds(self.index_segments) if two_level else None
        self.ring = SlotStore(capacity=None)  # offload: the last window frames on the device
        self.ring_frames: list[int] = []  # ring slot -> frame (-1 empty); sized at the first view
        self._win: tuple | None = None
        self._scratch: dict[str, torch.Tensor] = {}  # reused device tensors (gather buffer, permutation); not state

    # -- writing ----------------------------------------------------------------------------------
    def _block_major(self, k: torch.Tensor) -> torch.Tensor:
        key = f"perm:{k.device}"
        if key not in self._scratch:  # a pageable host->device copy per insert would sync
            self._scratch[key] = _to_device(self._perm, k.device)
        return k.index_select(1, self._scratch[key])

    def _write(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        kb, vb = self._block_major(k), self._block_major(v)
        self.store.write(index, kb, vb)
        b, _, h, d = k.shape
        nb = self.blocks_per_frame
        mean = kb.float().view(b, nb, self.block_tokens, h, d).mean(dim=2)
        mean = self.rope.rotate_temporal(mean, (float(index),))  # absolute positions: rotate once
        if self.index is not None:
            self.index.add(index, mean)
        if self.block_store is not None:
            self.block_store.write(index, mean)
        else:
            need = (index + 1) * nb
            if self.blocks is None or self.blocks.shape[1] < need:
                old = 0 if self.blocks is None else self.blocks.shape[1]
                grown = mean.new_zeros((b, max(need, 2 * old), h, d))
                if self.blocks is not None:
                    grown[:, :old].copy_(self.blocks)
                self.blocks = grown
            self.blocks[:, index * nb:need].copy_(mean)
        if self.ring_frames:
            slot = index % len(self.ring_frames)
            self.ring.write(slot, kb, vb)
            self.ring_frames[slot] = index
        self._win = None

    def _insert_frame(self, k: torch.Tensor, v: torch.Tensor, index: int) -> None:
        self._write(index, k, v)

    # -- reading ----------------------------------------------------------------------------------
    def window_frames(self, num_frames: int) -> range:
        n = self.frames_seen
        return range(max(0, n - (self.window_chunks - 1) * num_frames), n)

    def _window(self, device: torch.device, win: range):
        key = (self.frames_seen, win.start, str(device))
        if self._win is None or self._win[0] != key:
            if not self.offload:
                b, _, t, h, d = self.store.k.shape
                k = self.store.k[:, win.start:win.stop].reshape(b, len(win) * t, h, d)
                v = self.store.v[:, win.start:win.stop].reshape(b, len(win) * t, h, d)
            elif self._ring_holds(win):
                k, v = self._ring_window(win)
            else:
                k, v = self.store.read(win.start, win.stop, device)  # async H2D from pinned chunks
            self._win = (key, self.rotated(k, tuple(float(f) for f in win)), v)
        return self._win[1], self._win[2]

    def _ring_holds(self, win: range) -> bool:
        r = len(self.ring_frames)
        return r == len(win) and all(self.ring_frames[f % r] == f for f in win)

    def _ring_window(self, win: range) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's frames from the ring, in frame order (views when the ring is not wrapped)."""
        b, r, t, h, d = self.ring.k.shape
        a = win.start % r
        if a == 0:
            return self.ring.k.reshape(b, r * t, h, d), self.ring.v.reshape(b, r * t, h, d)
        k = torch.cat([self.ring.k[:, a:], self.ring.k[:, :a]], dim=1)
        v = torch.cat([self.ring.v[:, a:], self.ring.v[:, :a]], dim=1)
        return k.view(b, r * t, h, d), v.view(b, r * t, h, d)

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        win = self.window_frames(query.num_frames)
        ring = (self.window_chunks - 1) * query.num_frames  # the window behind a chunk of this length
        if self.offload and not self.ring_frames and ring > 0:
            self.ring = SlotStore(capacity=ring)
            self.ring_frames = [-1] * ring
        n = self.frames_seen
        if n == 0:
            return None
        device = self.index.lo.device if self.index is not None else self.blocks.device
        parts_k, parts_v = [], []
        positions = [float(f) for f in win]
        if len(win):
            wk, wv = self._window(device, win)
            parts_k.append(wk)
            parts_v.append(wv)
        mask = None
        cand_frames = win.start if self.exclude_window else n
        if query.q is not None and min(self.topk, cand_frames * self.blocks_per_frame) > 0:
            idx, cand = self.select(query)  # [B, H, k]
            sk, sv = self._gather(idx, cand)
            frame = torch.div(idx, self.blocks_per_frame, rounding_mode="floor")  # [B, H, k]
            b, h, k = idx.shape
            tb = self.block_tokens
            pos = frame.permute(0, 2, 1)[:, :, None, :].expand(b, k, tb, h).reshape(b, k * tb, h)
            parts_k.append(rotate_tokens(self.rope, sk, pos.to(torch.float32)))
            parts_v.append(sv)
            positions += [float("nan")] * k
            if not self.exclude_window and len(win):
                dup = (pos >= win.start).permute(0, 2, 1)  # [B, H, k*tb] selected inside the window
                keep = torch.cat([torch.ones(b, h, len(win) * self.tokens_per_frame, dtype=torch.bool, device=device),
                                  ~dup, torch.ones(b, h, query.num_frames * self.tokens_per_frame,
                                                   dtype=torch.bool, device=device)], dim=2)
                mask = keep[:, :, None, :]
        if not parts_k:
            return None
        k = parts_k[0] if len(parts_k) == 1 else torch.cat([p.to(parts_k[0].dtype) for p in parts_k], dim=1)
        v = parts_v[0] if len(parts_v) == 1 else torch.cat([p.to(parts_v[0].dtype) for p in parts_v], dim=1)
        return MemoryView(k, v, tuple(positions), self.chunk_positions(query), mask)

    # -- bookkeeping ------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        n = self.frames_seen
        if n == 0:
            return []
        win = self.window_frames(3)
        out = []
        if win.start:
            far = win.start
            out.append(Entry(mu=(far - 1) / 2, span=far, position=float("nan"), first=0, kind="retrieved"))
        out += [Entry(mu=float(f), span=1, position=float(f), first=f) for f in win]
        return out

    def frame_slots(self) -> dict[int, tuple[SlotStore, int]]:
        if self.offload:  # the frames the device ring holds
            return {f: (self.ring, slot) for slot, f in enumerate(self.ring_frames) if f >= 0}
        return {f: (self.store, f) for f in range(self.frames_seen)}

    def _replace_frame(self, frame, store, slot, k, v) -> None:
        self._write(frame, k, v)  # also refreshes the frame's block keys, bounds and ring slot

    def device_nbytes(self) -> dict[str, int]:
        """Device bytes by part: the history (0 with offload), the block keys (grow with the video,
        1/block_tokens of the history's keys, float32; 0 when two-level retrieval keeps them on the
        host), the segment index (fixed), the window (ring + cached rotated keys) and the gather
        buffer (both bounded)."""
        def size(t):
            return 0 if t is None else t.numel() * t.element_size()

        def shares(t, store):
            return store.v is not None and t.untyped_storage().data_ptr() == store.v.untyped_storage().data_ptr()
        window = self.ring.nbytes()
        if self._win is not None:
            wv = self._win[2]
            own = not (shares(wv, self.ring) or (not self.offload and shares(wv, self.store)))
            window += size(self._win[1]) + (size(wv) if own else 0)  # values may be views of stored frames
        return {"history": 0 if self.offload else self.store.nbytes(), "block_keys": size(self.blocks),
                "index": 0 if self.index is None else self.index.nbytes(),
                "window": window, "gather_buffer": size(self._scratch.get("gather"))}

    def nbytes(self) -> int:
        return sum(self.device_nbytes().values())

    def host_nbytes(self) -> int:
        """Host bytes allocated for the offloaded history and block keys (0 without offload)."""
        return self.host_usage()["capacity_bytes"]

    def host_usage(self) -> dict[str, Any]:
        """The host stores: allocated (capacity) and used bytes (history plus block keys), the
        history's chunks and frames per chunk, whether pinned, and the block keys' share."""
        if not self.offload:
            return {"capacity_bytes": 0, "used_bytes": 0, "chunks": 0, "chunk_frames": 0, "pinned": False,
                    "block_key_bytes": 0}
        s, bs = self.store, self.block_store
        keys, keys_used = (0, 0) if bs is None else (bs.nbytes(), bs.used_nbytes())
        return {"capacity_bytes": s.nbytes() + keys, "used_bytes": s.used_nbytes() + keys_used,
                "chunks": len(s.chunks), "chunk_frames": s.chunk_frames, "pinned": s.pin, "block_key_bytes": keys}

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        for name, st in (("host_store", self.store if self.offload else None), ("host_blocks", self.block_store)):
            if st is not None:
                kv = st.tensors()
                out[name] = None if kv is None else list(kv)
        if self.index is not None:
            out["index"] = self.index.state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name, st in (("host_store", self.store if self.offload else None), ("host_blocks", self.block_store),
                         ("index", self.index)):
            if st is None:
                continue
            if name not in state:
                raise ValueError(f"state has no '{name}' entry")
            if name == "index":
                st.load(state[name])
            elif state[name] is not None:
                st.load(*state[name])
        self._win = None
