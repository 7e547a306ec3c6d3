"""Host-resident frame history with a sync-free per-head block gather (OmniMem's scattered access).

:class:`HostFrames` keeps frames ``[B, T, H, D]`` in host memory, in chunks of ``chunk_frames``
frames allocated as the history grows (old chunks are never copied or moved). With CUDA present
the chunks are pinned: new frames arrive with non-blocking device-to-host copies, and a small
Triton kernel reads the selected blocks straight from the pinned chunks through unified virtual
addressing, driven by a *device* index tensor, so selection never has to reach the host.

Ordering: the D2H copies of ``write`` and the gather kernel are enqueued on the same (current)
stream, so a gather sees every frame written before it. Host code that reads or writes the pinned
chunks itself (state dicts, the torch fallback) first waits for the stream.

Without CUDA or Triton, ``gather`` indexes the host chunks with torch (the indices must then be on
the host: one device-to-host sync on CUDA). Both paths copy the same elements, so they agree
exactly with a gather from a device-resident store.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

#: Bytes one pinned chunk aims at when ``chunk_frames`` is automatic. torch's pinned allocator rounds
#: each allocation up to a power of two, so a chunk just under one wastes at most one frame.
AUTO_CHUNK_BYTES = 256 * 2**20
#: ... and holds at most this many frames (small frames must not pin 256 MiB up front).
AUTO_CHUNK_FRAMES = 64


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    """The two Triton kernels, or None when Triton is not installed (defined lazily so that
    ``TRITON_INTERPRET`` set before first use is honoured and importing this module stays cheap)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def record_address(chunk, table, slot):
        # The launcher resolves `chunk` to the address the device uses for it (for pinned host memory
        # the mapped UVA address); storing it lets the gather reach any number of chunks.
        tl.store(table + slot, chunk.to(tl.int64))

    @triton.jit
    def gather_blocks(table, idx, out, B, H, K, NB, CF, T, TB,
                      D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program copies one selected block of one head, for k (axis 1 = 0) or v (= 1).
        pid = tl.program_id(0)  # (b * H + h) * K + j, the layout of idx [B, H, K]
        kv = tl.program_id(1)
        j = pid % K
        h = (pid // K) % H
        b = pid // (K * H)
        n = tl.load(idx + pid).to(tl.int64)  # block index over the whole history
        f = n // NB
        blk = n - f * NB
        c = f // CF
        fr = f - c * CF
        base = tl.load(table + c).to(tl.pointer_type(out.dtype.element_ty))
        t = tl.arange(0, BLOCK_T)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        m = (t < TB) & (d < D)
        # chunk layout [CF, 2 (k, v), B, T, H, D]; out layout [2, B, K * TB, H, D]
        src = ((((fr * 2 + kv) * B + b) * T + blk * TB + t) * H + h) * D + d
        dst = (((kv * B + b).to(tl.int64) * (K * TB) + j * TB + t) * H + h) * D + d
        tl.store(out + dst, tl.load(base + src, mask=m), mask=m)

    return record_address, gather_blocks


#: Why the Triton gather failed in this process (method="auto" then stays on the torch gather).
triton_failure: str | None = None


def triton_available() -> bool:
    return _triton_kernels() is not None and triton_failure is None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class HostFrames:
    """Frames ``[B, T, H, D]`` (k and v) in host chunks ``[chunk_frames, 2, B, T, H, D]``: each
    frame's k and v are contiguous, so writes and window reads are single direct copies.

    ``chunk_frames=0`` sizes chunks to :data:`AUTO_CHUNK_BYTES` (at most :data:`AUTO_CHUNK_FRAMES`
    frames). ``pin`` defaults to whether CUDA is available (pinned chunks are what the device can
    read directly).
    """

    def __init__(self, chunk_frames: int = 0, pin: bool | None = None):
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 0:
            raise ValueError(f"chunk_frames must be an integer >= 0 (0 = automatic), got {chunk_frames!r}")
        self.requested_chunk = chunk_frames
        self.pin = torch.cuda.is_available() if pin is None else pin
        self.clear()

    def clear(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.chunk_frames = 0  # fixed at the first write
        self.frames = 0  # frames written (highest index + 1)
        self.shape: tuple[int, int, int, int] | None = None  # (B, T, H, D) of one frame
        self.dtype: torch.dtype | None = None
        self._table: torch.Tensor | None = None  # int64 device addresses of the chunks
        self._recorded = 0

    # -- writing ------------------------------------------------------------------------------------
    def write(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store frame ``index`` (k, v: [B, T, H, D] on any device; device sources copy without a sync)."""
        if self.shape is None:
            self.shape, self.dtype = tuple(k.shape), k.dtype
            b, t, h, d = self.shape
            frame_bytes = 2 * b * t * h * d * k.element_size()
            self.chunk_frames = self.requested_chunk or max(1, min(AUTO_CHUNK_FRAMES, AUTO_CHUNK_BYTES // frame_bytes))
        elif tuple(k.shape) != self.shape or tuple(v.shape) != self.shape:
            raise ValueError(f"insert: frame of shape {tuple(k.shape)} does not match stored frames {list(self.shape)}")
        elif k.dtype != self.dtype or v.dtype != self.dtype:
            raise ValueError(f"insert: got {k.dtype}, the host store holds {self.dtype}")
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        c, fr = divmod(index, self.chunk_frames)
        while len(self.chunks) <= c:
            self.chunks.append(torch.empty((self.chunk_frames, 2, *self.shape), dtype=self.dtype,
                                           pin_memory=self.pin))
        # Stream-ordered D2H into pinned memory; the source may be freed afterwards because the
        # caching allocator only reuses it for work enqueued after this copy.
        self.chunks[c][fr, 0].copy_(k, non_blocking=True)
        self.chunks[c][fr, 1].copy_(v, non_blocking=True)
        self.frames = max(self.frames, index + 1)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``start .. stop-1`` as [B, (stop-start)*T, H, D] k and v on ``device`` (async H2D)."""
        if not 0 <= start <= stop <= self.frames:
            raise ValueError(f"frames {start}..{stop - 1} are outside the {self.frames} stored frames")
        b, t, h, d = self.shape
        n = stop - start
        out = torch.empty((n, 2, b, t, h, d), dtype=self.dtype, device=device)
        f = start
        while f < stop:
            c, fr = divmod(f, self.chunk_frames)
            m = min(stop - f, self.chunk_frames - fr)
            out[f - start:f - start + m].copy_(self.chunks[c][fr:fr + m], non_blocking=True)
            f += m
        k, v = (out[:, i].transpose(0, 1).reshape(b, n * t, h, d) for i in (0, 1))  # a view when b == 1
        return k, v

    def gather(self, idx: torch.Tensor, block_tokens: int, out: torch.Tensor, method: str = "auto") -> None:
        """Each head's own blocks into ``out`` [2, B, K*block_tokens, H, D] (k, v; contiguous).

        ``idx`` [B, H, K]: block indices over the history (block n = frame n // blocks_per_frame,
        tokens (n % blocks_per_frame) * block_tokens ...; frames stored block-major). ``method``:
        "triton" (the UVA kernel, no sync), "torch" (host indexing) or "auto" (Triton when the
        indices are on a CUDA device, the chunks are pinned and Triton is installed).
        """
        b, t, h, d = self.shape
        if t % block_tokens:
            raise ValueError(f"block_tokens {block_tokens} does not divide the {t} tokens of a frame")
        if idx.dim() != 3 or idx.shape[:2] != (b, h):
            raise ValueError(f"gather: idx must be [B={b}, H={h}, K], got {tuple(idx.shape)}")
        k = idx.shape[2]
        want = (2, b, k * block_tokens, h, d)
        if tuple(out.shape) != want or not out.is_contiguous() or out.dtype != self.dtype:
            raise ValueError(f"gather: out must be a contiguous {self.dtype} tensor of shape {list(want)}, "
                             f"got {out.dtype} {tuple(out.shape)}")
        if method not in ("auto", "triton", "torch"):
            raise ValueError(f"gather method must be auto, triton or torch, got {method!r}")
        if method == "auto" and idx.is_cuda and self.pin and triton_available():
            try:
                return self._gather_triton(idx, block_tokens, out)
            except Exception as exc:  # noqa: BLE001 - e.g. a Triton/driver combination that cannot compile it
                global triton_failure
                triton_failure = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"the Triton host gather failed ({triton_failure}); using the torch gather "
                              "(one host sync per view) from now on", RuntimeWarning, stacklevel=2)
        if method == "triton":
            self._gather_triton(idx, block_tokens, out)
        else:
            self._gather_torch(idx, block_tokens, out)

    def _gather_torch(self, idx: torch.Tensor, tb: int, out: torch.Tensor) -> None:
        b, t, h, d = self.shape
        nb = t // tb
        idx = idx.cpu()  # host indexing needs host indices (a sync when they live on CUDA)
        if self.pin and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # pending D2H writes must land first
        k = idx.shape[2]
        res = torch.empty((2, b, k, tb, h, d), dtype=self.dtype)
        chunk = idx // (nb * self.chunk_frames)
        local = idx - chunk * (nb * self.chunk_frames)  # block index inside its chunk
        for c in chunk.unique().tolist():
            bi, hi, ji = (chunk == c).nonzero(as_tuple=True)
            fr, blk = local[bi, hi, ji].div(nb, rounding_mode="floor"), local[bi, hi, ji] % nb
            src = self.chunks[c].view(self.chunk_frames, 2, b, nb, tb, h, d)
            # both sides index [M, 2, tb, d] (separated advanced indices lead)
            res[:, bi, ji, :, hi, :] = src[fr, :, bi, blk, :, hi, :]
        out.copy_(res.view(out.shape), non_blocking=False)

    def _gather_triton(self, idx: torch.Tensor, tb: int, out: torch.Tensor) -> None:
        kernels = _triton_kernels()
        if kernels is None:
            raise RuntimeError("gather=triton needs the triton package")
        if not (idx.is_cuda and out.is_cuda) and not triton_interpreted():
            raise RuntimeError("gather=triton needs the indices and the output on a CUDA device "
                               "(or TRITON_INTERPRET=1)")
        record_address, gather_blocks = kernels
        table = self._address_table(idx.device, record_address)
        b, t, h, d = self.shape
        k = idx.shape[2]
        idx = idx.contiguous()
        gather_blocks[(b * h * k, 2)](table, idx, out, b, h, k, t // tb, self.chunk_frames, t, tb,
                                      D=d, BLOCK_T=_pow2(tb), BLOCK_D=_pow2(d))

    def _address_table(self, device: torch.device, record_address) -> torch.Tensor:
        """Device addresses of every chunk, recorded by a tiny kernel per new chunk (no host sync)."""
        if self._table is None or self._table.device != device or self._table.numel() < len(self.chunks):
            grown = torch.zeros(max(8, 2 * len(self.chunks)), dtype=torch.int64, device=device)
            if self._table is not None and self._table.device == device:
                grown[:self._recorded].copy_(self._table[:self._recorded])
            else:
                self._recorded = 0
            self._table = grown
        for c in range(self._recorded, len(self.chunks)):
            record_address[(1,)](self.chunks[c], self._table, c)
        self._recorded = len(self.chunks)
        return self._table

    # -- bookkeeping --------------------------------------------------------------------------------
    def frame_nbytes(self) -> int:
        if self.shape is None:
            return 0
        b, t, h, d = self.shape
        return 2 * b * t * h * d * torch.empty((), dtype=self.dtype).element_size()

    def nbytes(self) -> int:
        """Host bytes allocated (capacity: whole chunks)."""
        return len(self.chunks) * self.chunk_frames * self.frame_nbytes()

    def used_nbytes(self) -> int:
        return self.frames * self.frame_nbytes()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored frames as host [B, frames, T, H, D] k and v copies (waits for pending writes)."""
        if not self.frames:
            return None
        if self.pin and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()
        kv = torch.cat(self.chunks, dim=0)[:self.frames]  # [F, 2, B, T, H, D]
        return kv[:, 0].transpose(0, 1).contiguous(), kv[:, 1].transpose(0, 1).contiguous()

    def load(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Replace the contents with frames [B, n, T, H, D] (fresh chunks)."""
        if self.pin and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # recycled pinned blocks may still be read by kernels
        self.clear()
        for f in range(k.shape[1]):
            self.write(f, k[:, f], v[:, f])


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
