"""Host-resident frame history with a sync-free per-head block gather (OmniMem's scattered access).

:class:`HostFrames` keeps frames ``[B, T, H, D]`` in host memory, in chunks of ``chunk_frames``
frames allocated as the history grows (old chunks are never copied or moved). With CUDA present
the chunks are pinned: new frames arrive with non-blocking device-to-host copies, and a small
Triton kernel reads the selected blocks straight from the pinned chunks through unified virtual
addressing, driven by a *device* index tensor, so selection never has to reach the host.

Ordering: ``write`` copies device frames to the host on a side stream and records an event per
frame; a read or gather makes the current stream wait (on the device, not the host) for the events
of the frames it may touch, so it sees every frame written before it while newer copies overlap
compute. Host code that reads or writes the pinned chunks itself (state dicts, the torch
fallback) first waits for every copy.

Without CUDA or Triton, ``gather`` indexes the host chunks with torch (the indices must then be on
the host: one device-to-host sync on CUDA). Both paths copy the same elements, so they agree
exactly with a gather from a device-resident store.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

#: Bytes one pinned chunk aims at when ``chunk_frames`` is automatic. torch's pinned allocator rounds
#: each allocation up to a power of two, so a chunk just under one wastes at most one frame.
AUTO_CHUNK_BYTES = 256 * 2**20
#: ... and holds at most this many frames (small frames must not pin 256 MiB up front).
AUTO_CHUNK_FRAMES = 64


@functools.cache
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
    def gather_blocks(table, idx, out, B, H, K, NB, CF, P, T, TB,
                      D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program copies one selected block of one head, for one part (axis 1: k = 0, v = 1).
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
        # chunk layout [CF, P (k, v), B, T, H, D]; out layout [P, B, K * TB, H, D]
        src = ((((fr * P + kv) * B + b) * T + blk * TB + t) * H + h) * D + d
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
    """Frames of ``parts`` tensors ``[B, T, H, D]`` each (k and v by default; 1 for keys alone) in
    host chunks ``[chunk_frames, parts, B, T, H, D]``: one frame's parts are contiguous, so writes
    and window reads are single direct copies.

    ``chunk_frames=0`` sizes chunks to :data:`AUTO_CHUNK_BYTES` (at most :data:`AUTO_CHUNK_FRAMES`
    frames). ``pin`` defaults to whether CUDA is available (pinned chunks are what the device can
    read directly).

    Writes from a CUDA device run on a side copy stream (so they overlap the next layers' compute)
    and record an event per frame; a read or gather waits, on the device, only for the frames it
    may touch (``limit``), so frames written just now do not stall a gather of older ones.
    """

    def __init__(self, chunk_frames: int = 0, pin: bool | None = None, parts: int = 2):
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 0:
            raise ValueError(f"chunk_frames must be an integer >= 0 (0 = automatic), got {chunk_frames!r}")
        if parts not in (1, 2):
            raise ValueError(f"parts must be 1 (keys) or 2 (keys and values), got {parts!r}")
        self.requested_chunk = chunk_frames
        self.parts = parts
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
        self._pending: list[tuple[int, torch.cuda.Event]] = []  # (frame, copy done) in copy-stream order
        self._spare = None  # Future of the next pinned chunk (allocated off the critical path)

    # -- writing ------------------------------------------------------------------------------------
    def write(self, index: int, *parts: torch.Tensor) -> None:
        """Store frame ``index`` (``parts`` tensors [B, T, H, D] on any device; no host sync)."""
        if len(parts) != self.parts:
            raise ValueError(f"write: this store holds {self.parts} tensor(s) per frame, got {len(parts)}")
        first = parts[0]
        if self.shape is None:
            self.shape, self.dtype = tuple(first.shape), first.dtype
            frame_bytes = self.frame_nbytes()
            self.chunk_frames = self.requested_chunk or max(1, min(AUTO_CHUNK_FRAMES, AUTO_CHUNK_BYTES // frame_bytes))
        elif any(tuple(t.shape) != self.shape for t in parts):
            raise ValueError(f"insert: frame of shape {tuple(first.shape)} "
                             f"does not match stored frames {list(self.shape)}")
        elif any(t.dtype != self.dtype for t in parts):
            raise ValueError(f"insert: got {first.dtype}, the host store holds {self.dtype}")
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        c, fr = divmod(index, self.chunk_frames)
        while len(self.chunks) <= c:
            self.chunks.append(self._next_chunk())
        if first.is_cuda and self.pin:
            main, side = torch.cuda.current_stream(first.device), _copy_stream(first.device)
            side.wait_stream(main)  # the frame is computed on the main stream
            with torch.cuda.stream(side):
                for i, t in enumerate(parts):
                    self.chunks[c][fr, i].copy_(t, non_blocking=True)
            for t in parts:
                t.record_stream(side)  # the allocator must not hand the source out before the copy ran
            done = torch.cuda.Event()
            done.record(side)
            self._pending.append((index, done))
        else:
            for i, t in enumerate(parts):
                self.chunks[c][fr, i].copy_(t)
        self.frames = max(self.frames, index + 1)

    def _alloc_chunk(self) -> torch.Tensor:
        if self.pin:
            _fast_pinning()
        return torch.empty((self.chunk_frames, self.parts, *self.shape), dtype=self.dtype, pin_memory=self.pin)

    def _next_chunk(self) -> torch.Tensor:
        """A new chunk; with pinned chunks a worker thread prepares the next one while the video goes on
        (registered pinning barely slows the GPU, see :func:`_fast_pinning`)."""
        if self._spare is not None:
            chunk, self._spare = self._spare.result(), None
        else:
            chunk = self._alloc_chunk()
        if self.pin:
            self._spare = _pin_worker().submit(self._alloc_chunk)
        return chunk

    def _ready(self, limit: int, device: torch.device) -> None:
        """Make the current stream of ``device`` wait for the pending copies of frames < ``limit``."""
        last = -1
        for i, (f, _) in enumerate(self._pending):
            if f < limit:
                last = i
        if last >= 0:  # copy-stream order: that event also covers every earlier copy
            torch.cuda.current_stream(device).wait_event(self._pending[last][1])
            del self._pending[:last + 1]

    def _host_ready(self) -> None:
        """Host code is about to touch the pinned chunks: every copy must have landed."""
        if self._pending:
            for _, ev in self._pending:
                ev.synchronize()
            self._pending.clear()
        if self.pin and torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # pending kernels may still read recycled chunks

    # -- reading ------------------------------------------------------------------------------------
    def read(self, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Frames ``start .. stop-1`` as one [B, (stop-start)*T, H, D] tensor per part on ``device``
        (async H2D)."""
        if not 0 <= start <= stop <= self.frames:
            raise ValueError(f"frames {start}..{stop - 1} are outside the {self.frames} stored frames")
        device = torch.device(device)
        if device.type == "cuda":
            self._ready(stop, device)
        b, t, h, d = self.shape
        n = stop - start
        out = torch.empty((n, self.parts, b, t, h, d), dtype=self.dtype, device=device)
        f = start
        while f < stop:
            c, fr = divmod(f, self.chunk_frames)
            m = min(stop - f, self.chunk_frames - fr)
            out[f - start:f - start + m].copy_(self.chunks[c][fr:fr + m], non_blocking=True)
            f += m
        return tuple(out[:, i].transpose(0, 1).reshape(b, n * t, h, d) for i in range(self.parts))

    def gather(self, idx: torch.Tensor, block_tokens: int, out: torch.Tensor, method: str = "auto",
               limit: int | None = None) -> None:
        """Each head's own blocks into ``out`` [parts, B, K*block_tokens, H, D] (contiguous).

        ``idx`` [B, H, K]: block indices over the history (block n = frame n // blocks_per_frame,
        tokens (n % blocks_per_frame) * block_tokens ...; frames stored block-major). ``limit``:
        the indices only reach frames below it (default: all stored frames), so newer frames may
        still be in flight. ``method``: "triton" (the UVA kernel, no sync), "torch" (host indexing)
        or "auto" (Triton when the indices are on a CUDA device, the chunks are pinned and Triton
        is installed).
        """
        b, t, h, d = self.shape
        if t % block_tokens:
            raise ValueError(f"block_tokens {block_tokens} does not divide the {t} tokens of a frame")
        if idx.dim() != 3 or idx.shape[:2] != (b, h):
            raise ValueError(f"gather: idx must be [B={b}, H={h}, K], got {tuple(idx.shape)}")
        k = idx.shape[2]
        want = (self.parts, b, k * block_tokens, h, d)
        if tuple(out.shape) != want or not out.is_contiguous() or out.dtype != self.dtype:
            raise ValueError(f"gather: out must be a contiguous {self.dtype} tensor of shape {list(want)}, "
                             f"got {out.dtype} {tuple(out.shape)}")
        if method not in ("auto", "triton", "torch"):
            raise ValueError(f"gather method must be auto, triton or torch, got {method!r}")
        if idx.is_cuda:
            self._ready(self.frames if limit is None else limit, idx.device)
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
        self._host_ready()
        k, p = idx.shape[2], self.parts
        res = torch.empty((p, b, k, tb, h, d), dtype=self.dtype)
        chunk = idx // (nb * self.chunk_frames)
        local = idx - chunk * (nb * self.chunk_frames)  # block index inside its chunk
        for c in chunk.unique().tolist():
            bi, hi, ji = (chunk == c).nonzero(as_tuple=True)
            fr, blk = local[bi, hi, ji].div(nb, rounding_mode="floor"), local[bi, hi, ji] % nb
            src = self.chunks[c].view(self.chunk_frames, p, b, nb, tb, h, d)
            # both sides index [M, parts, tb, d] (separated advanced indices lead)
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
        gather_blocks[(b * h * k, self.parts)](table, idx, out, b, h, k, t // tb, self.chunk_frames, self.parts,
                                               t, tb, D=d, BLOCK_T=_pow2(tb), BLOCK_D=_pow2(d))

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
        return self.parts * b * t * h * d * torch.empty((), dtype=self.dtype).element_size()

    def nbytes(self) -> int:
        """Host bytes allocated (capacity: whole chunks)."""
        return len(self.chunks) * self.chunk_frames * self.frame_nbytes()

    def used_nbytes(self) -> int:
        return self.frames * self.frame_nbytes()

    def tensors(self) -> tuple[torch.Tensor, ...] | None:
        """The stored frames as host [B, frames, T, H, D] copies, one per part (waits for pending writes)."""
        if not self.frames:
            return None
        self._host_ready()
        kv = torch.cat(self.chunks, dim=0)[:self.frames]  # [F, parts, B, T, H, D]
        return tuple(kv[:, i].transpose(0, 1).contiguous() for i in range(self.parts))

    def load(self, *parts: torch.Tensor) -> None:
        """Replace the contents with frames [B, n, T, H, D] per part (fresh chunks)."""
        self._host_ready()  # recycled pinned blocks may still be read by kernels
        self.clear()
        for f in range(parts[0].shape[1]):
            self.write(f, *(p[:, f] for p in parts))


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


@functools.cache
def _fast_pinning() -> str | None:
    """Switch torch's pinned allocator to ``cudaHostRegister`` with parallel page registration.

    On our H100 host (``benchmarks/pinned_alloc.py``) the default ``cudaHostAlloc`` pinned 1.5 GB/s
    and, on a worker thread, slowed concurrent GPU work 26x (it holds the driver); registering
    pinned 6.4 GB/s and slowed it 1.04x. The history grows by about 1.1 GiB per second of video, so
    this is the difference between multi-second stalls and none. A ``PYTORCH_CUDA_ALLOC_CONF`` that
    sets any ``pinned_`` option is left as the user chose. Returns the settings applied, if any."""
    if "pinned_" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return None
    threads = 1 << (min(8, os.cpu_count() or 1).bit_length() - 1)  # torch wants a power of two
    settings = f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{threads}"
    try:
        torch.cuda.memory._set_allocator_settings(settings)
    except (AttributeError, RuntimeError) as exc:  # a torch without these options: default pinning
        warnings.warn(f"could not enable registered pinning ({exc}); host chunks use cudaHostAlloc",
                      RuntimeWarning, stacklevel=3)
        return None
    return settings


@functools.cache
def _pin_worker() -> ThreadPoolExecutor:
    """One thread that allocates pinned chunks ahead of need (torch releases the GIL while pinning)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="fademem-pin")


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for device-to-host frame copies (shared by every layer's store)."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
