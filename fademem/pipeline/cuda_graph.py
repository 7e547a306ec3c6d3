"""CUDA-graph replay of the denoising forwards once a bounded memory has stopped growing.

A chunk's four denoising forwards only read the memory, and for a policy whose view is built
once per chunk (not query-aware) every shape in them is fixed once the memory is full: the same
kernels run on tensors of the same sizes, chunk after chunk. Only the addresses change: each
chunk's view owns freshly built attention buffers (``MemoryView.k_all``/``v_all``) and the RoPE
table of the chunk's query positions may be a new tensor. :class:`GraphedDenoiser` therefore
owns static buffers -- the latents, the timesteps, one ``[memory | chunk]`` K/V buffer per layer
and the query RoPE table -- and per chunk

1. builds every layer's view as the model would (``Memory.view`` is cached until the next
   insert, so the model's own cache-writing forward later gets the same object), copies the
   view's memory K/V into the layer's static buffer once and points the cached view at that
   buffer (the view's own buffer is released, so memory use does not double);
2. replays the captured graph for each denoising forward after copying ``x`` and ``t`` in.

The graph is captured (after two warm-up runs on a side stream) the second time in a row a
chunk has the same shape signature (memory tokens per layer, latent shape, dtype, text context),
i.e. once the memory is full; chunks before that, query-aware policies, views with an attention
mask and anything else unusual run the model eagerly. A new text context (prompt switch) or a
different memory size is a new signature. Capture failures are kept in ``failure`` and the
denoiser stays eager from then on.

The captured function (:meth:`GraphedDenoiser.static_forward`) is the model's own embedding,
blocks and head with an attention step that mirrors ``CausalWanModel._attend_memory`` for a
view with room for the chunk. Off CUDA nothing is captured and it runs as it is, which is how
the tests check it against the plain forward on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fademem.memory.base import ChunkQuery
from fademem.rope import apply_rotary
from fademem.wan.model import attention


class GraphedDenoiser:
    """Drop-in for ``model(x, t, ctx, memory=stack, start_frame=s, write_memory=False)``.

    ``capture``: None = on CUDA only; False = run the static-buffer path without a graph (tests);
    True = insist (raises off CUDA). ``check``: on the first replay, also run the model eagerly on
    the same inputs and keep the largest relative difference in ``max_rel_diff``.
    """

    def __init__(self, model, *, capture: bool | None = None, warmup: int = 2, check: bool = False):
        self.model = model
        self.capture = capture
        self.warmup = warmup
        self.check = check
        self.graph = None
        self.failure: str | None = None
        self.max_rel_diff: float | None = None
        self.stats = {"eager": 0, "static": 0, "replayed": 0, "captures": 0}
        self.reset()

    def reset(self) -> None:
        """Forget buffers and graph (a new video: the pipeline calls this in every generate())."""
        self.graph = None
        self._sig = None  # signature of the static buffers
        self._prev_sig = None  # last chunk's signature (capture when it repeats)
        self._stack, self._start = None, None  # the chunk the static buffers hold
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._mem_tokens: list[int] = []
        self._ctx = None
        self._out = None
        self._want_capture = False
        self._device_type = None

    # -- per chunk --------------------------------------------------------------------------------
    def _views(self, stack, start: int, f: int, hw: tuple[int, int]):
        """Every layer's view for the chunk, or None when the static path does not apply."""
        if any(m.needs_queries or m.needs_context for m in stack):
            return None
        self.model._bind(stack, hw[0] * hw[1])
        views = [m.view(ChunkQuery(start=start, num_frames=f)) for m in stack]
        chunk_tokens = f * hw[0] * hw[1]
        dtype = self.model.dtype
        if any(v is None or v.attn_mask is not None or v.k_all is None or v.chunk_tokens != chunk_tokens
               or v.k_all.dtype != dtype for v in views):
            return None
        if len({v.query_positions for v in views}) != 1:
            return None
        return views

    def _prepare(self, x, t, ctx, stack, start: int) -> bool:
        """Fill the static buffers for this chunk; False = run eagerly."""
        model = self.model
        self._device_type = x.device.type
        b, f, h, w = model._check_latents(x)
        views = self._views(stack, start, f, (h, w))
        if views is None:
            self._prev_sig = None
            return False
        sig = (tuple(v.tokens for v in views), tuple(x.shape), x.dtype, id(ctx), tuple(views[0].k_all.shape[2:]),
               views[0].k_all.device)
        if sig != self._sig:
            self._allocate(views, x, t, ctx, sig)
        for i, view in enumerate(views):
            s = view.tokens
            if view.k_all.data_ptr() != self._k[i].data_ptr():
                self._k[i][:, :s].copy_(view.k)
                self._v[i][:, :s].copy_(view.v)
                # the cached view now lives in the static buffer (the model's cache-writing
                # forward reads the same object); its own buffer is released
                view.k, view.v = self._k[i][:, :s], self._v[i][:, :s]
                view.k_all, view.v_all = self._k[i], self._v[i]
        freqs = model.rope.freqs(views[0].query_positions, h, w, x.device)
        self._freqs.copy_(freqs)
        repeated = sig == self._prev_sig
        self._prev_sig = sig
        self._stack, self._start = stack, start
        self._want_capture = (repeated and self.graph is None and self.failure is None
                              and self._capturing(x.device))
        return True

    def _capturing(self, device: torch.device) -> bool:
        if self.capture is None:
            return device.type == "cuda"
        if self.capture and device.type != "cuda":
            raise RuntimeError("CUDA-graph capture needs a CUDA device")
        return bool(self.capture)

    def _allocate(self, views, x, t, ctx, sig) -> None:
        self.graph = None  # a new signature: the old graph reads buffers that are going away
        self._sig = sig
        self._k = [torch.empty_like(v.k_all) for v in views]
        self._v = [torch.empty_like(v.v_all) for v in views]
        self._mem_tokens = [v.tokens for v in views]
        f, hw = x.shape[2], views[0].chunk_tokens // x.shape[2]
        self._freqs = torch.empty((f, hw, self.model.config.head_dim // 2), dtype=torch.complex64, device=x.device)
        self._x = torch.empty_like(x)
        self._t = torch.empty(t.shape, dtype=t.dtype, device=x.device)
        self._ctx = ctx  # held: its K/V addresses are baked into a captured graph

    # -- the captured function --------------------------------------------------------------------
    def static_forward(self) -> torch.Tensor:
        """The model's forward over the static buffers (what the graph records)."""
        model = self.model
        tokens, e, e0, ctx, grid = model._embed(self._x, self._t, self._ctx)
        out_shape = (self._x.shape[0], model.config.out_dim, *self._x.shape[2:])
        return model._run(tokens, e, e0, ctx, grid, self._attend, out_shape)

    def _attend(self, i: int, q, k, v):
        # CausalWanModel._attend_memory for a view with room for the chunk, on static buffers
        s = self._mem_tokens[i]
        k_all, v_all = self._k[i], self._v[i]
        qr = apply_rotary(q, self._freqs)
        apply_rotary(k, self._freqs, out=k_all[:, s:])
        v_all[:, s:].copy_(v)
        return attention(qr, k_all, v_all, None)

    def _capture(self) -> None:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.static_forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out = self.static_forward()
            self.graph = graph
            self.stats["captures"] += 1
        except Exception as exc:  # noqa: BLE001 - report and stay eager
            self.graph = None
            self.failure = f"{type(exc).__name__}: {exc}"[:400]
            try:
                torch.cuda.synchronize()
            except Exception as exc2:  # noqa: BLE001 - a broken context shows up in the next run's error
                self.failure += f"; then {type(exc2).__name__}: {exc2}"[:200]

    # -- the call ---------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, t, context, memory=None, start_frame: int = 0,
                 write_memory: bool = False, **kw) -> torch.Tensor:
        model = self.model
        if memory is None or write_memory or kw or not isinstance(t, torch.Tensor) or t.dim() != 2:
            return model(x, t, context, memory=memory, start_frame=start_frame, write_memory=write_memory, **kw)
        prepared = memory is self._stack and start_frame == self._start
        if not prepared and not self._prepare(x, t, context, memory, start_frame):
            self._stack = self._start = None
            self.stats["eager"] += 1
            return model(x, t, context, memory=memory, start_frame=start_frame)
        if context is not self._ctx or tuple(x.shape) != tuple(self._x.shape):
            self.stats["eager"] += 1
            return model(x, t, context, memory=memory, start_frame=start_frame)
        self._x.copy_(x)
        self._t.copy_(t)
        if self._want_capture:
            self._want_capture = False
            self._capture()
        if self.graph is None:
            self.stats["static"] += 1
            return self.static_forward()
        self.graph.replay()
        self.stats["replayed"] += 1
        out = self._out.clone()  # the graph's output buffer is overwritten by the next replay
        if self.check and self.max_rel_diff is None:
            ref = model(x, t, context, memory=memory, start_frame=start_frame).float()
            self.max_rel_diff = float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        return out

    def summary(self) -> dict:
        why = None
        if self.graph is None and self.failure is None:
            why = ("capture off (no CUDA): static-buffer path without a graph" if self._device_type != "cuda"
                   else "the memory view never kept one shape for two chunks (or the policy is query-aware)")
        return {**self.stats, "failure": self.failure, "why_not": why, "max_rel_diff_vs_eager": self.max_rel_diff,
                "memory_tokens_per_layer": sorted(set(self._mem_tokens)) if self._mem_tokens else None}


def eligible(stack: Sequence) -> bool:
    """Whether a memory stack's policy can take the static path at all (not query-aware)."""
    return not any(m.needs_queries or m.needs_context for m in stack)
