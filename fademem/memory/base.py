"""The one interface between the model and every bounded-memory policy.

Contract (in the spirit of transformers' ``Cache.update``): each transformer layer owns one
:class:`Memory`. The model

* asks ``memory.view(query)`` what the current chunk attends to: keys already rotated to the
  temporal positions the policy assigns, values, those positions, and the positions the current
  chunk's own frames must take (policies with compact / online RoPE indexing move them);
* on the cache-writing pass hands over the finished frames with ``memory.insert(k, v, start)``:
  keys carry the spatial RoPE phase but *no temporal phase*, values as they are.

The model never learns a policy's rule. Tensors are ``[batch, tokens, heads, head_dim]`` with
``tokens = frames * tokens_per_frame`` in frame-major order. Policy metadata (spans, positions)
lives on the host and depends only on frame indices, never on tensor values, so building a view
needs no host-device synchronisation; the tensor work happens in preallocated device buffers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fademem.memory.slot_store import SlotStore, check_frames, check_kv
from fademem.rope import WanRoPE, apply_rotary


@dataclass(frozen=True)
class Entry:
    """What one memory slot represents: for plots, tests and ``fademem schedule``."""

    mu: float  # represented temporal position (latent-frame index, may be fractional)
    span: int  # number of latent frames summarised
    position: float  # temporal position its key is rotated to in the current view
    first: int = -1  # first latent frame covered (-1 where a policy does not track coverage)
    kind: str = "frame"  # "frame", "merged", "anchor", "sink", "ema-long", ...


@dataclass
class ChunkQuery:
    """What the current chunk tells its memory when it asks for a view."""

    start: int  # absolute index of the chunk's first latent frame
    num_frames: int
    q: torch.Tensor | None = None  # [B, F*N, H, D] queries without temporal phase (needs_queries policies)
    context_k: torch.Tensor | None = None  # this layer's cross-attention keys (prompt-aware policies)


@dataclass
class MemoryView:
    """What the current chunk attends to, besides itself.

    ``k``/``v`` are the memory's keys and values. Views handed to the model by ``Memory.view``
    also own attention buffers ``k_all``/``v_all`` [B, S + T, H, D] whose first S tokens *are*
    ``k``/``v`` (``k = k_all[:, :S]``) and whose last T tokens are room for the current chunk: the
    model writes the chunk's rotated keys and values into ``chunk_k``/``chunk_v`` on every forward
    and attends over the whole buffer, so the memory is copied once per chunk, not per forward.
    """

    k: torch.Tensor  # [B, S, H, D], temporal phase applied at ``positions``
    v: torch.Tensor  # [B, S, H, D]
    positions: tuple[float, ...]  # temporal position of each visible slot (slot order, not time order)
    query_positions: tuple[float, ...]  # temporal position of each current-chunk frame
    attn_mask: torch.Tensor | None = None  # optional bool/additive mask over [memory, chunk] keys
    k_all: torch.Tensor | None = field(default=None, repr=False)  # [B, S + T, H, D]; k_all[:, :S] is k
    v_all: torch.Tensor | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.k.shape[1]

    @property
    def chunk_tokens(self) -> int:
        """Room for current-chunk tokens in the attention buffers (0 without buffers)."""
        return 0 if self.k_all is None else self.k_all.shape[1] - self.k.shape[1]

    @property
    def chunk_k(self) -> torch.Tensor:
        return self.k_all[:, self.tokens:]

    @property
    def chunk_v(self) -> torch.Tensor:
        return self.v_all[:, self.tokens:]

    def with_buffers(self, chunk_tokens: int, dtype: torch.dtype | None = None) -> MemoryView:
        """This view with attention buffers of ``chunk_tokens`` spare tokens (dtype: the keys' by
        default). A prefix view of a buffer that already has the room (``Memory.rotated`` makes
        its keys that way) is adopted without a copy; anything else is copied in once."""
        dtype = dtype or self.k.dtype
        k_all, v_all = _buffer_of(self.k, chunk_tokens, dtype), _buffer_of(self.v, chunk_tokens, dtype)
        return dataclasses.replace(self, k=k_all[:, :self.tokens], v=v_all[:, :self.tokens],
                                   k_all=k_all, v_all=v_all)


def _buffer_of(t: torch.Tensor, extra: int, dtype: torch.dtype) -> torch.Tensor:
    """A [B, S + extra, H, D] tensor whose first S tokens hold ``t`` [B, S, H, D]."""
    base = t._base
    if (base is not None and base.dtype == dtype == t.dtype and base.dim() == 4
            and base.shape[0] == t.shape[0] and base.shape[2:] == t.shape[2:]
            and base.shape[1] == t.shape[1] + extra and t.data_ptr() == base.data_ptr()
            and t.stride() == base.stride()):
        return base
    b, s, h, d = t.shape
    buf = torch.empty((b, s + extra, h, d), dtype=dtype, device=t.device)
    buf[:, :s].copy_(t)
    return buf


@dataclass(frozen=True)
class GeneratorAdapter:
    """What a policy needs changed in the generator it runs with, declared as data so that callers
    (``generate``, the benchmarks) merge it without knowing the policy: a LoRA trained to read this
    memory, as ``{module name: {"A": [r, in], "B": [out, r]}}`` with its ``alpha`` (merged as
    ``W + alpha / r * B @ A``), or, with ``lora`` None, the LoRA file or adapter directory at ``source``
    (read by the generators' LoRA loader). ``source`` names where it came from (for error messages);
    ``base_digest`` / ``retrain``: the base ``lora`` was trained on and how to retrain it (the loader checks)."""

    lora: dict[str, dict[str, torch.Tensor]] | None
    alpha: float | None
    source: str
    base_digest: str | None = None
    retrain: str | None = None

    PEFT_FILES: ClassVar[tuple[str, str]] = ("adapter_config.json", "adapter_model.safetensors")

    @classmethod
    def check_peft_dir(cls, path: str, what: str) -> None:
        """ValueError naming ``what`` unless ``path`` holds a peft LoRA adapter directory's two files (as
        ``fademem finetune`` and peft's ``save_pretrained`` write them); nothing is read."""
        import os

        if not all(os.path.isfile(os.path.join(path, f)) for f in cls.PEFT_FILES):
            raise ValueError(f"{what}: not a LoRA adapter directory (needs {' and '.join(cls.PEFT_FILES)}, e.g. "
                             "the output of `fademem finetune`)")

    @classmethod
    def from_peft_dir(cls, path: str) -> GeneratorAdapter:
        """The peft LoRA adapter directory at ``path``, to be read when merged (``check_peft_dir``)."""
        cls.check_peft_dir(path, f"lora={path}")
        return cls(None, None, path)


@dataclass
class Memory:
    """Base class of every policy: a small dataclass whose fields are its knobs.

    Subclasses set ``name`` (the registry key) and implement ``_insert_frame``, ``_view`` and
    ``entries``; the base class does validation, RoPE re-encoding and per-chunk view caching.
    """

    name: ClassVar[str] = ""
    needs_queries: ClassVar[bool] = False  # view() wants ChunkQuery.q (Deep Forcing, OmniMem)
    needs_context: ClassVar[bool] = False  # view() wants ChunkQuery.context_k (MemFlow)
    bounded: ClassVar[bool] = True  # False: grows with the video (the reference; benchmarks cap its length)
    budget_note: ClassVar[str | None] = None  # for reports: how this policy's history size is set

    rope: WanRoPE | None = field(default=None, repr=False, compare=False)
    tokens_per_frame: int = field(default=0, repr=False, compare=False)

    # -- set-up ---------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()
        self.layer = 0  # the transformer layer this memory serves (MemoryStack sets it)
        self._view_cache: tuple | None = None
        self.frames_seen = 0  # latent frames inserted so far
        self.reset()

    def validate(self) -> None:
        """Raise ValueError for knob values that make no sense. Subclasses extend."""

    def bind(self, rope: WanRoPE, tokens_per_frame: int) -> Memory:
        """Attach the model's RoPE and frame size (called by the model before first use)."""
        if tokens_per_frame <= 0:
            raise ValueError(f"tokens_per_frame must be positive, got {tokens_per_frame}")
        if self.tokens_per_frame and self.tokens_per_frame != tokens_per_frame and self.frames_seen:
            raise ValueError(f"memory holds frames of {self.tokens_per_frame} tokens, asked to bind "
                             f"{tokens_per_frame}: reset() it first")
        self.rope, self.tokens_per_frame = rope, tokens_per_frame
        return self

    def reset(self) -> None:
        """Forget everything (a new video)."""
        self.frames_seen = 0
        self._view_cache = None
        self._positions_used: list[float] | None = None  # [lowest, highest] position a view gave so far

    def knobs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rope", "tokens_per_frame")}

    def generator_adapter(self) -> GeneratorAdapter | None:
        """A change this policy needs in the generator (e.g. a LoRA trained to read it); None: none."""
        return None

    def spec(self) -> str:
        """A spec string that rebuilds this policy with ``build_memory``."""
        defaults = type(self)()  # type: ignore[call-arg]
        diff = {k: v for k, v in self.knobs().items() if getattr(defaults, k) != v}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in diff.items()) if diff else "")

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        """(spec, note): this policy set to show ``budget`` history frames (the current chunk not
        counted), for comparisons at equal budgets (``fademem bench memory``); the note says how the
        match was made, or that there is none (None: plainly matched). ValueError when the policy
        cannot run at that budget. Policies with their own rule override this; the default sets a
        ``budget`` knob (plus ``cache=budget`` where there is one, and ``sink=min(3, budget - 1)``
        if it needs that to validate) and runs a policy without one at its defaults."""
        name = cls.name
        knobs = {f.name for f in dataclasses.fields(cls)}
        if "budget" not in knobs:
            cls()  # validates the defaults
            return name, "no budget knob: run with its defaults (not budget-matched)"
        base = {"budget": budget, **({"cache": budget} if "cache" in knobs else {})}  # deepforcing
        tries = [base] + ([{**base, "sink": min(3, budget - 1)}] if "sink" in knobs else [])
        last = None
        for kw in tries:
            try:
                cls(**kw)
                return f"{name}:" + ",".join(f"{k}={v}" for k, v in kw.items()), \
                    "budget knob set; check the measured visible history"
            except ValueError as exc:
                last = exc
        cls()
        return name, f"budget={budget} not accepted ({last}); run with its defaults (not budget-matched)"

    # -- the two calls the model makes ----------------------------------------------------------
    def insert(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Hand over finished frames ``start .. start+F-1``: k without temporal phase, v as is."""
        if self.rope is None:
            raise RuntimeError(f"{self.name} memory is not bound to a model: call bind(rope, tokens_per_frame)")
        n = check_kv(k, v, self.tokens_per_frame)
        if start != self.frames_seen:
            raise ValueError(f"{self.name}: frames must arrive in order; "
                             f"expected frame {self.frames_seen}, got {start}")
        t = self.tokens_per_frame
        for f in range(n):
            self._insert_frame(k[:, f * t:(f + 1) * t], v[:, f * t:(f + 1) * t], start + f)
            self.frames_seen += 1
        self._view_cache = None

    def view(self, query: ChunkQuery) -> MemoryView | None:
        """What the chunk starting at ``query.start`` attends to; None when memory is empty.

        Cached until the next insert, so the denoising steps of one chunk share one re-encoding.
        """
        if self.rope is None:
            raise RuntimeError(f"{self.name} memory is not bound to a model: call bind(rope, tokens_per_frame)")
        if query.start < self.frames_seen:
            raise ValueError(f"{self.name}: chunk starts at frame {query.start} but memory already holds "
                             f"{self.frames_seen} frames")
        key = (query.start, query.num_frames)
        if self._view_cache is not None and self._view_cache[0] == key and not self.needs_queries \
                and not self.needs_context:
            return self._view_cache[1]
        # Keys re-encoded by `rotated()` land in a buffer with room for the chunk behind them.
        self._chunk_room = query.num_frames * self.tokens_per_frame
        try:
            out = self._view(query)
        finally:
            self._chunk_room = 0
        if out is not None:
            out = out.with_buffers(query.num_frames * self.tokens_per_frame)
        # without a view the model puts the chunk at its true frames
        self._note_positions(self.chunk_positions(query) if out is None else out.positions + out.query_positions)
        self._view_cache = (key, out)
        return out

    # -- temporal positions ---------------------------------------------------------------------
    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """(lowest, highest) temporal RoPE position any memory key or chunk query of a view takes in a
        video of ``num_frames`` latent frames made in chunks of ``chunk`` (the policy's statement,
        tested). Default: true frame indices, ``(0, num_frames - 1)``; compact / online indexing
        policies state a range that does not grow with the video (``positions_bounded``)."""
        check_frames(num_frames, chunk)
        return 0.0, float(num_frames - 1)

    def positions_bounded(self, chunk: int = 3) -> bool:
        """Whether ``position_range`` is the same however long the video."""
        return self.position_range(1 << 20, chunk) == self.position_range(1 << 30, chunk)

    def positions_used(self) -> tuple[float, float] | None:
        """(lowest, highest) temporal position the views so far gave a key or query (None before the
        first). Device-data positions (``nan`` in ``MemoryView.positions``: Deep Forcing's realigned
        sink, OmniMem / MemFlow selections) are not counted; they always lie below the chunk's."""
        return None if self._positions_used is None else (self._positions_used[0], self._positions_used[1])

    def _note_positions(self, positions) -> None:
        known = [p for p in positions if p == p]  # nan: device data
        if known:
            used, lo, hi = self._positions_used, min(known), max(known)
            self._positions_used = [lo, hi] if used is None else [min(used[0], lo), max(used[1], hi)]

    def for_run(self, num_frames: int, trained_frames: int, chunk: int = 3) -> str:
        """The spec to run for a video of ``num_frames`` latent frames on a model trained on positions
        ``0 .. trained_frames - 1``: its own (default), or the variant the policy prefers for runs that
        outgrow that window (FadeMem: compact positions when unset). The session asks, naming no policy."""
        check_frames(num_frames, chunk)
        return self.spec()

    # -- what subclasses implement ----------------------------------------------------------------
    def _insert_frame(self, k: torch.Tensor, v: torch.Tensor, index: int) -> None:
        raise NotImplementedError

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        raise NotImplementedError

    def entries(self) -> list[Entry]:
        """What the memory holds, oldest first (positions as for a chunk starting now)."""
        raise NotImplementedError

    # -- prompt switches (LongLive KV-recache) ---------------------------------------------------
    def frame_slots(self) -> dict[int, tuple[SlotStore, int]]:
        """Frames held individually (unmerged) that a prompt switch may recompute: frame -> (store, slot).

        The default holds none, so a switch recomputes nothing; policies that keep recent frames
        at full resolution override this.
        """
        return {}

    def held_slots(self) -> dict[int, tuple[SlotStore, int]]:
        """Every frame held individually (recomputable or not), for the recache pass to attend to.

        Defaults to ``frame_slots()``; policies whose held frames are not all recomputable
        (e.g. sink frames) override it.
        """
        return self.frame_slots()

    def recache_frames(self, limit: int) -> list[int]:
        """The frames a prompt switch should re-encode under the new prompt: the newest ``limit``
        individually held frames, oldest first. The policy decides (e.g. sink frames keep old K/V)."""
        held = sorted(self.frame_slots())
        return held[-limit:] if limit > 0 else []

    def replace(self, k: torch.Tensor, v: torch.Tensor, frames: list[int]) -> None:
        """Overwrite the stored K/V of ``frames`` (k without temporal phase), after a recache pass."""
        n = check_kv(k, v, self.tokens_per_frame, "replace")
        if n != len(frames):
            raise ValueError(f"replace: got {n} frames of K/V for {len(frames)} frame indices")
        slots = self.frame_slots()
        t = self.tokens_per_frame
        for i, f in enumerate(frames):
            if f not in slots:
                raise ValueError(f"{self.name}: frame {f} is not held individually; held: {sorted(slots)}")
            self._replace_frame(f, *slots[f], k[:, i * t:(i + 1) * t], v[:, i * t:(i + 1) * t])
        self._view_cache = None

    def _replace_frame(self, frame: int, store: SlotStore, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one recomputed frame; policies that keep derived state (block keys) extend this."""
        store.write(slot, k, v)

    # -- helpers --------------------------------------------------------------------------------
    def chunk_positions(self, query: ChunkQuery) -> tuple[float, ...]:
        return tuple(float(query.start + i) for i in range(query.num_frames))

    def rotated(self, k: torch.Tensor, positions: tuple[float, ...]) -> torch.Tensor:
        """Re-encode stored keys (one position per frame slot) in float32, back to storage dtype.

        Inside ``view()`` the result is the prefix of an attention buffer with room for the
        current chunk (``MemoryView.with_buffers`` adopts it without a copy)."""
        if not positions or k.dim() != 4 or k.shape[1] % len(positions):
            return self.rope.rotate_temporal(k, positions)  # raises the usual ValueError
        b, s, h, d = k.shape
        room = getattr(self, "_chunk_room", 0)
        buf = torch.empty((b, s + room, h, d), dtype=k.dtype, device=k.device)
        out = buf[:, :s]
        apply_rotary(k, self.rope.temporal_freqs(positions, k.device).expand(-1, s // len(positions), -1),
                     out=out)
        return out

    def nbytes(self) -> int:
        """Device bytes held by stored K/V."""
        return sum(s.nbytes() for s in self.__dict__.values() if isinstance(s, SlotStore))

    # Host metadata attributes that, with every SlotStore attribute, make up the policy's state.
    state_attrs: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors plus small metadata; enough to resume a generation exactly."""
        out: dict[str, Any] = {"spec": self.spec(), "frames_seen": self.frames_seen,
                               "tokens_per_frame": self.tokens_per_frame}
        for name, val in vars(self).items():
            if isinstance(val, SlotStore):
                # Clones: a saved state must not alias buffers the live memory keeps writing to.
                out[name] = {"k": None if val.k is None else val.k.clone(),
                             "v": None if val.v is None else val.v.clone(), "n_tok": val.n_tok}
            elif isinstance(val, torch.Tensor):
                out[name] = val.clone()
        for name in self.state_attrs:
            out[name] = copy.deepcopy(getattr(self, name))
        out["positions_used"] = None if self._positions_used is None else list(self._positions_used)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("spec") != self.spec():
            raise ValueError(f"state was saved from memory '{state.get('spec')}', this is '{self.spec()}'")
        self.reset()
        self.frames_seen = int(state["frames_seen"])
        self.tokens_per_frame = int(state["tokens_per_frame"]) or self.tokens_per_frame
        for name, val in list(vars(self).items()):
            if isinstance(val, SlotStore):
                if name not in state:
                    raise ValueError(f"state has no '{name}' buffer")
                k, v = state[name]["k"], state[name]["v"]
                val.k = None if k is None else k.clone()
                val.v = None if v is None else v.clone()
                val.n_tok = state[name]["n_tok"]
            elif isinstance(val, torch.Tensor) and name in state:
                setattr(self, name, state[name].clone())
        for name in self.state_attrs:
            if name not in state:
                raise ValueError(f"state has no '{name}' entry")
            setattr(self, name, copy.deepcopy(state[name]))
        used = state.get("positions_used")  # absent in states saved before it was recorded
        self._positions_used = None if used is None else [float(used[0]), float(used[1])]
        self._view_cache = None
