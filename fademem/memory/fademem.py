"""``fademem``: distance-aware consolidation of history into a fixed number of entries.

FadeMem (paper Sec. 3.3, Algorithm 1) keeps one ordered memory of at most ``budget`` entries (the
anchor included). Every finished latent frame enters as its own entry; when that overflows the
budget, the adjacent pair closest in warped time ``(now - mu)**beta`` merges into one entry whose
span is the sum and whose centre ``mu`` is the span-weighted mean. Near history stays frame by
frame, far history fades into ever longer spans. Keys are stored without their temporal phase and
re-encoded at each entry's position when attended. The rules of both presets (``paper``,
``release``) and the compact layout live in ``fademem_schedule.py``, shared with ``fademem
schedule``; this file only executes the schedule's decisions on tensors.

Knobs: ``budget`` (entries, anchor included = history frames visible), ``beta`` in (0, 1],
``anchor``, ``merge`` (``weighted`` span**span_gamma weights, ``average``, ``nearest`` = keep the
entry nearer the present, ``max`` element-wise; mu/span update identically for all four),
``preset``, ``positions`` (``absolute``: entries at mu, chunk at its true frames; ``compact``:
the released 21-frame window once the chunk starts at frame >= 18, absolute before; None = the
preset's: absolute for paper, compact for release; see *Long runs* below), ``span_gamma`` (None = the preset's: 1 for
paper, i.e. Algorithm 1's span weights, 0.5 for release), ``adaptive`` (``off``; ``cut``: consolidation
that reacts to content -- a frame whose mean key is farther than ``cut_threshold`` in cosine
distance from the previous frame's opens a new scene, and the pair straddling that cut never merges
while another eligible pair remains; see ``fademem_cuts.py``), ``lora`` (FadeMem-FT: a LoRA directory from
``fademem finetune``, declared through ``generator_adapter`` so callers merge it into the generator;
``lora=shipped`` is the one packaged for the embedded model, ``fademem/assets/fademem_ft_lora``, resolved
to that directory when the policy is built so the spec, and every report, names the directory that ran).

Long runs (``for_run``): with ``positions`` unset, a generation session runs the paper preset in
``compact`` mode when the video is longer than the base model's trained window (the session's
``trained_frames``: 21 latent frames for Wan2.1 / Self-Forcing checkpoints, 603 for the shipped
embedded model), and ``absolute`` otherwise. Absolute positions put the chunk at its true frame
index, 14,400 for an hour of Wan video: far outside anything the model was trained on, where
RoPE extrapolates. Compact keeps every key and query in ``0 .. 17 + chunk`` (0..20) for any
length (``position_range``), with the same merges: only where entries sit changes. Up to frame
18 both modes are the same, so runs that fit the window are unchanged. A budget too large for the
compact layout (> 18 with the anchor) keeps absolute positions; ``positions=absolute`` or
``positions=compact`` in the spec is always kept as given.

Release timing: the released model hands frames to the bank when the *next* chunk starts and
measures their distances from that chunk's first frame. Here frames arrive through ``insert()``
after the cache-writing pass, so ``insert(k, v, start)`` of F frames measures release distances
from ``start + F`` (= ``frames_seen`` afterwards, the next chunk's first frame). The paper preset
measures from the newest frame itself, one frame at a time.

Storage: one ``SlotStore`` of ``budget`` slots. Because merge decisions depend only on metadata,
the merge is planned before the new frame is written: the merged K/V go into one slot of the pair
in place and the new frame goes into the slot that frees, so the live slots are always the prefix
``0..len-1`` and a view reads them without a gather (the ``budget + 1``-th staging slot the new
frame would otherwise need is never touched, so it is not allocated). Per frame the tensor work is
at most one in-place slot-sized ``lerp_`` (float32 math for bf16) or ``maximum`` per buffer plus the
frame write; no host-device sync.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from fademem.memory import fademem_schedule as fs
from fademem.memory.base import ChunkQuery, Entry, GeneratorAdapter, Memory, MemoryView, SlotStore
from fademem.memory.fademem_cuts import CutDetector
from fademem.memory.registry import build_memory, register
from fademem.memory.slot_store import check_kv

SHIPPED_LORA = "shipped"  # lora=shipped: the FadeMem-FT LoRA packaged for the embedded model


def shipped_lora_dir() -> Path:
    """The packaged FadeMem-FT LoRA directory (``lora=shipped``; peft layout, float16 weights)."""
    from importlib import resources

    return Path(str(resources.files("fademem") / "assets" / "fademem_ft_lora"))


@register
@dataclass
class FadeMemMemory(Memory):
    """FadeMem: merge the adjacent pair closest in warped time into one span entry (Alg. 1)."""

    name: ClassVar[str] = "fademem"

    budget: int = 12
    beta: float = 0.3
    anchor: bool = True
    merge: Literal["weighted", "average", "nearest", "max"] = "weighted"
    preset: Literal["paper", "release"] = "paper"
    positions: Literal["absolute", "compact"] | None = None
    span_gamma: float | None = None
    adaptive: Literal["off", "cut"] = "off"
    cut_threshold: float = 0.3
    # FadeMem-FT: a LoRA directory (`fademem finetune`) merged into the generator, or `shipped`: the one in the
    # package for the embedded model (trained with fademem:budget=12 and the default knobs, the setting it is
    # measured at; any other knobs are allowed). Resolved to its directory when built (the spec names it).
    lora: str | None = None

    state_attrs: ClassVar[tuple[str, ...]] = ("schedule",)

    def __post_init__(self) -> None:
        if self.lora == SHIPPED_LORA:
            self.lora = str(shipped_lora_dir())
        super().__post_init__()

    # -- knobs ------------------------------------------------------------------------------------
    @property
    def position_mode(self) -> str:
        if self.positions is not None:
            return self.positions
        return "compact" if self.preset == "release" else "absolute"

    @property
    def gamma(self) -> float:
        if self.span_gamma is not None:
            return float(self.span_gamma)
        return 0.5 if self.preset == "release" else 1.0

    @classmethod
    def at_budget(cls, budget: int) -> tuple[str, str | None]:
        spec = f"{cls.name}:budget={budget}"
        build_memory(spec)
        return spec, None

    def validate(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"fademem: {msg}")

        if self.preset not in fs.PRESETS:
            raise bad(f"preset must be one of {', '.join(fs.PRESETS)}; got {self.preset!r}")
        if self.merge not in fs.MERGES:
            raise bad(f"merge must be one of {', '.join(fs.MERGES)}; got {self.merge!r}")
        if self.positions not in (None, "absolute", "compact"):
            raise bad(f"positions must be absolute, compact or None; got {self.positions!r}")
        if not isinstance(self.anchor, bool):
            raise bad(f"anchor must be a bool, got {self.anchor!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int):
            raise bad(f"budget must be an int, got {self.budget!r}")
        need = fs.min_budget(self.preset, self.anchor)
        if self.budget < need:
            why = "the anchor and the newest entry are protected" if need == 3 else "the newest entry is protected"
            raise bad(f"budget {self.budget} is too small: {why}, so preset {self.preset} with "
                      f"anchor={self.anchor} needs budget >= {need} to ever merge")
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool) or not 0.0 < self.beta <= 1.0:
            raise bad(f"beta must be in (0, 1], got {self.beta!r}")
        if self.span_gamma is not None and (isinstance(self.span_gamma, bool)
                                            or not isinstance(self.span_gamma, (int, float))
                                            or not 0.0 <= self.span_gamma < float("inf")):
            raise bad(f"span_gamma must be a finite number >= 0 (or None), got {self.span_gamma!r}")
        if self.lora is not None:
            if str(self.lora) == str(shipped_lora_dir()) and not os.path.isdir(str(self.lora)):
                raise bad(f"lora=shipped: the packaged FadeMem-FT LoRA is missing ({self.lora}): the package was "
                          "installed without its assets; reinstall it or pass lora=DIR")
            if not os.path.isdir(str(self.lora)):
                raise bad(f"lora must be a LoRA directory (`fademem finetune --out DIR`) or '{SHIPPED_LORA}' (the "
                          f"packaged FadeMem-FT LoRA); {self.lora!r} is none")
            GeneratorAdapter.from_peft_dir(str(self.lora))  # its two files, nothing read
        if self.adaptive not in ("off", "cut"):
            raise bad(f"adaptive must be off or cut; got {self.adaptive!r}")
        if (isinstance(self.cut_threshold, bool) or not isinstance(self.cut_threshold, (int, float))
                or not 0.0 <= self.cut_threshold <= 2.0):
            raise bad(f"cut_threshold must be a cosine distance in [0, 2], got {self.cut_threshold!r}")
        if self.position_mode == "compact" and self.budget > fs.max_compact_budget(self.anchor):
            raise bad(f"budget {self.budget} does not fit the compact {fs.WINDOW}-frame layout: it has "
                      f"{fs.FAR_GAPS} distinct gaps for older entries, so budget <= "
                      f"{fs.max_compact_budget(self.anchor)} with anchor={self.anchor}")

    def generator_adapter(self) -> GeneratorAdapter | None:
        """FadeMem-FT: the LoRA trained to read this memory (``lora=DIR``); None for training-free FadeMem."""
        return None if self.lora is None else GeneratorAdapter.from_peft_dir(str(self.lora))

    def new_schedule(self) -> fs.Schedule:
        """The metadata schedule this policy runs (also used by ``fademem schedule``)."""
        return fs.Schedule(budget=self.budget, beta=float(self.beta), anchor=self.anchor,
                           preset=self.preset, merge=self.merge, span_gamma=self.gamma)

    def reset(self) -> None:
        super().reset()
        self.store = SlotStore(capacity=self.budget)
        self.schedule = self.new_schedule()
        self._chunk_end = 0
        self._cuts = CutDetector(float(self.cut_threshold)) if self.adaptive == "cut" else None

    # -- writing ----------------------------------------------------------------------------------
    def insert(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        # The release measures every frame of this call from the next chunk's first frame.
        ok = isinstance(k, torch.Tensor) and k.dim() == 4 and self.tokens_per_frame > 0
        n = k.shape[1] // self.tokens_per_frame if ok else 0
        self._chunk_end = start + max(n, 1)
        if self._cuts is not None and self.rope is not None:
            check_kv(k, v, self.tokens_per_frame)
            if start == self.frames_seen:  # else super() raises
                self.schedule.add_cuts(self._cuts.observe(k, start, self.tokens_per_frame))
        super().insert(k, v, start)

    def _resolve_cut(self, frame: int) -> bool:
        """The schedule chose a pair whose cut flag is in flight: read it now (True: a cut was new)."""
        return self._cuts is not None and self._cuts.pending(frame) and self.schedule.add_cuts(self._cuts.flush())

    def cut_frames(self) -> list[int]:
        """Frames that open a new scene (adaptive=cut; empty otherwise): a boundary lies before each.
        An entry opens a scene when its ``first`` is one of them (for plots)."""
        if self._cuts is not None:
            self.schedule.add_cuts(self._cuts.flush())
        return list(self.schedule.cuts)

    def state_dict(self) -> dict:
        out = super().state_dict() if self._cuts is None else None
        if out is None:  # adaptive: in-flight cuts go into the schedule first, the last mean key with it
            self.schedule.add_cuts(self._cuts.flush())
            out = super().state_dict()
            if self._cuts.prev is not None:
                out["cut_prev"] = self._cuts.prev.clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self._cuts is not None and isinstance(state.get("cut_prev"), torch.Tensor):
            self._cuts.prev = state["cut_prev"].clone()

    def _insert_frame(self, k: torch.Tensor, v: torch.Tensor, index: int) -> None:
        if self.store.k is not None and (k.dtype != self.store.k.dtype or k.device != self.store.k.device):
            raise ValueError(f"insert: got {k.dtype} on {k.device}, memory holds "
                             f"{self.store.k.dtype} on {self.store.k.device}")
        if self.store.k is not None and tuple(k.shape) != (self.store.k.shape[0], self.store.n_tok,
                                                            *self.store.k.shape[3:]):
            raise ValueError(f"insert: frame of shape {tuple(k.shape)} does not match stored frames")
        step = self.schedule.add(index, max(self._chunk_end, index + 1),
                                 None if self._cuts is None else self._resolve_cut)
        if step.merge is not None:
            self._merge(step.merge)
        self.store.write(step.slot, k, v)

    def _merge(self, m: fs.MergeOp) -> None:
        """Tensor side of one merge, in place in slot ``m.a`` (= ``m.dst``): one slot-sized op per
        buffer on the device, no sync."""
        if m.op == "keep":
            return  # nearest / released anchor: the kept slot already holds the result
        for buf in (self.store.k, self.store.v):
            a, b = buf[:, m.a], buf[:, m.b]
            if m.op == "max":
                torch.maximum(a, b, out=a)
            else:  # wa*a + wb*b with wa + wb = 1; lerp computes half types in float32 (opmath)
                a.lerp_(b, m.wb)

    # -- reading ----------------------------------------------------------------------------------
    def _positions(self, start: int) -> tuple[list[float], float]:
        """(position of each entry in temporal order, position of the chunk's first frame)."""
        ents = self.schedule.entries
        mus = [e.mu for e in ents]
        if self.position_mode == "compact" and fs.use_window(len(ents), self.budget, start):
            anchored = self.anchor and bool(ents) and ents[0].anchor
            return [float(p) for p in fs.window_layout(mus, anchored, start, float(self.beta))], float(fs.CURRENT)
        return mus, float(start)

    def position_range(self, num_frames: int, chunk: int = 3) -> tuple[float, float]:
        """absolute: entry centres and the chunk at true frame indices; compact: absolute while the
        chunk starts before frame 18, then the 21-frame layout, so never above ``17 + chunk``."""
        lo, hi = super().position_range(num_frames, chunk)
        return (lo, hi) if self.position_mode == "absolute" else (lo, min(hi, float(fs.CURRENT + chunk - 1)))

    def for_run(self, num_frames: int, trained_frames: int, chunk: int = 3) -> str:
        """Compact positions for a run longer than ``trained_frames`` when ``positions`` is unset and
        the budget fits the compact layout (module doc, *Long runs*); else this spec."""
        spec = super().for_run(num_frames, trained_frames, chunk)
        if (self.positions is None and self.position_mode == "absolute" and num_frames > trained_frames
                and self.budget <= fs.max_compact_budget(self.anchor)):
            return build_memory(self, positions="compact").spec()
        return spec

    def _view(self, query: ChunkQuery) -> MemoryView | None:
        ents = self.schedule.entries
        if not ents:
            return None
        pos, chunk0 = self._positions(query.start)
        by_slot = [0.0] * len(ents)
        for e, p in zip(ents, pos):
            by_slot[e.slot] = p
        k, v = self.store.frames(len(ents))
        by_slot_t = tuple(by_slot)
        return MemoryView(self.rotated(k, by_slot_t), v, by_slot_t,
                          tuple(chunk0 + i for i in range(query.num_frames)))

    def entries(self) -> list[Entry]:
        ents = self.schedule.entries
        pos, _ = self._positions(self.frames_seen)
        return [Entry(mu=e.mu, span=e.span, position=p, first=e.first,
                      kind="anchor" if e.anchor else ("frame" if e.span == 1 else "merged"))
                for e, p in zip(ents, pos)]

    def frame_slots(self) -> dict[int, tuple[SlotStore, int]]:
        """Unmerged, non-anchor entries (a prompt switch recomputes these; the anchor keeps frame
        0's K/V, and merged entries have no single frame to recompute)."""
        return {e.first: (self.store, e.slot) for e in self.schedule.entries if e.span == 1 and not e.anchor}

    def held_slots(self) -> dict[int, tuple[SlotStore, int]]:
        """``frame_slots()`` plus the anchor: it holds frame 0's own K/V in both presets (the
        released anchor too, whatever span it has absorbed), so a recache pass attends to it."""
        held = self.frame_slots()
        ents = self.schedule.entries
        if ents and ents[0].anchor:
            held[0] = (self.store, ents[0].slot)
        return held


# -- beta from a measured spectrum ------------------------------------------------------------------------
def beta_from_spectrum(report: dict) -> float:
    """The FadeMem ``beta`` a ``fademem spectrum`` report suggests (``spectrum.json`` as a dict).

    Reads the pooled result (``report["pooled"]``) of a full report, or ``report`` itself when it is
    one result (a clip's or a pool's: it has ``verdict`` and ``beta``). Its ``beta`` entry is
    ``spectrum_fit.suggest_beta``'s dict. ValueError naming why when there is no usable beta: no
    pooled result, verdict "none" (no power law supported), no fit, or a beta saturated at the floor
    (1 - 2b clipped: any steeper decay gives the same value, so it is not a measurement). A "weak"
    verdict is accepted. The policy never reads files; pass the result as ``beta=``.
    """
    if not isinstance(report, dict):
        raise ValueError(f"spectrum report must be a dict, got {type(report).__name__}")
    res = report.get("pooled") if ("pooled" in report or "videos" in report) else report
    if not isinstance(res, dict):
        raise ValueError("spectrum report has no pooled result (no video analysed?): no beta")
    verdict, reason = res.get("verdict"), res.get("reason", "")
    if verdict is None:
        raise ValueError("spectrum result has no 'verdict': not a fademem spectrum report")
    if verdict == "none":
        raise ValueError(f"spectrum verdict is 'none' ({reason or 'no power law supported'}): no beta to match")
    sb = res.get("beta")
    if not isinstance(sb, dict) or "beta" not in sb:
        raise ValueError("spectrum result has no suggested beta ('beta': {'beta': ...})")
    if sb.get("saturated"):
        raise ValueError(f"suggested beta {sb['beta']} is saturated at the floor ({sb.get('note') or 'clipped'}): "
                         "not a measurement")
    beta = sb["beta"]
    if beta is None:
        raise ValueError(f"spectrum result suggests no beta ({sb.get('note') or 'no fit'})")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta <= 1.0:
        raise ValueError(f"suggested beta must be in (0, 1], got {beta!r}")
    return float(beta)


# -- the schedule without tensors (``fademem schedule``, the embedded model's training contexts) ----------
@dataclass
class ScheduleRun:
    memory: FadeMemMemory  # metadata only: its SlotStore is never allocated
    history: list[list[fs.Meta]]  # the entries after each frame (when recorded)

    def entries(self) -> list[Entry]:
        return self.memory.entries()

    def as_json(self) -> list[dict]:
        return [{"mu": float(e.mu), "span": int(e.span)} for e in self.memory.schedule.entries]


def simulate(budget: int = 12, beta: float = 0.3, steps: int = 240, *, anchor: bool = True,
             preset: str = "paper", merge: str = "weighted", span_gamma: float | None = None,
             positions: str | None = None, chunk: int = 3, record: bool = False) -> ScheduleRun:
    """Insert ``steps`` frames (in chunks of ``chunk``) into a metadata-only FadeMem memory: the very
    :class:`~fademem.memory.fademem_schedule.Schedule` the policy runs (built by the policy itself,
    so knob validation and preset defaults are shared), frame by frame. With ``preset=release``
    frames arrive in chunks and are measured from the next chunk's first frame, as ``insert()`` does."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    mem = FadeMemMemory(budget=budget, beta=beta, anchor=anchor, merge=merge, preset=preset,
                        positions=positions, span_gamma=span_gamma)
    sched = mem.schedule
    history: list[list[fs.Meta]] = []
    for start in range(0, steps, chunk):
        end = min(start + chunk, steps)
        for f in range(start, end):
            sched.add(f, end)
            mem.frames_seen = f + 1
            if record:
                history.append([fs.Meta(**vars(e)) for e in sched.entries])
    return ScheduleRun(mem, history)
