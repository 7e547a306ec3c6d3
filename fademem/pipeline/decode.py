"""Decoding finished chunks: in place, or overlapped on a side CUDA stream with the next chunk's DiT work
(``VideoPipeline(overlap_decode=True)``)."""

from __future__ import annotations

from collections import deque

import torch

from fademem.pipeline.chunk import Chunk


class _DecodeQueue:
    """Hands finished chunks to the decoder and gives them back, decoded, in order.

    Sequential: ``put`` decodes at once and ``ready`` returns the chunk. Overlapped (CUDA): ``put``
    queues the decode on a side stream that first waits for the main stream's work so far (the
    chunk's latents are final there), and the chunk comes out of ``ready`` only at the next
    ``put`` -- after the next chunk's DiT work has been queued on the main stream -- or at
    ``drain``; its frames are then waited for. ``record_stream`` keeps the latents' memory from
    being reused by the main stream while the side stream may still read it. The first decode is
    waited for at once: the decoder's streaming state it starts from may have been made on the main
    stream (a resumed run's ``load_stream_state``), and the decode replaces that state, so its memory
    would go back to the main stream's pool while the side stream still reads it. Later states are
    made on the side stream itself. The frames are those of the sequential decode either way (same
    decoder calls, in the same order).
    """

    def __init__(self, decoder, device: torch.device, overlap: bool):
        self.decoder = decoder
        self.overlap = overlap and decoder is not None
        self.side = torch.cuda.Stream(device) if self.overlap and device.type == "cuda" else None
        self.pending: deque = deque()  # (chunk, pending frames)
        self.out: list[Chunk] = []
        self._first = True

    def put(self, chunk: Chunk) -> None:
        if self.decoder is None:
            self.out.append(chunk)
            return
        if not self.overlap:
            chunk.frames = self.decoder.decode(chunk.latents)
            self.out.append(chunk)
            return
        done = self.drain()  # the previous chunk: its decode ran beside this chunk's DiT
        self.out.extend(done)
        self.pending.append((chunk, self._launch(chunk.latents)))

    def _launch(self, latents: torch.Tensor):
        start = getattr(self.decoder, "decode_async", None)
        decode = start if callable(start) else self.decoder.decode
        if self.side is None:
            return decode(latents)
        self.side.wait_stream(torch.cuda.current_stream(latents.device))
        latents.record_stream(self.side)
        with torch.cuda.stream(self.side):
            frames = decode(latents)
        if self._first:  # the state it started from may be the main stream's (see the class doc)
            self.side.synchronize()
            self._first = False
        return frames

    def ready(self) -> list[Chunk]:
        out, self.out = self.out, []
        return out

    def drain(self) -> list[Chunk]:
        out = self.ready()
        while self.pending:
            chunk, frames = self.pending.popleft()
            chunk.frames = frames.result() if hasattr(frames, "result") else frames
            out.append(chunk)
        return out

    def close(self) -> None:
        """Wait for decodes still in flight (a generator closed early)."""
        if self.side is not None:
            self.side.synchronize()
        self.pending.clear()
