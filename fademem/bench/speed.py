"""``fademem bench speed``: DiT throughput, latency and memory against video length.

What is timed is exactly the sampler of ``fademem.pipeline.VideoPipeline`` (the real class, not a
copy): per chunk of ``frames_per_chunk`` (3) latent frames, four denoising forwards at the warped
timesteps plus one cache-writing forward at t=0, noise drawn on the host as the pipeline does, its
one NaN check per chunk. Weights are random at the chosen config (1.3B by default, bf16); the text
context is one random [1, 512, 4096] state, encoded once (the cross-attention K/V are computed
once per prompt by ``encode_text``).

Per chunk we record the GPU-timeline latency between two CUDA events around the chunk (after
``warmup`` chunks for the summary), the host wall time, allocated GPU memory, the memory's K/V
bytes (``MemoryStack.nbytes()``), host bytes where a policy keeps history on the host
(``host_nbytes()``, e.g. omnimem with offload) and the analytic FLOP count (``bench.flops``).

Video frames: the causal Wan VAE turns T latent frames into 4T-3 video frames, so the first chunk
yields 9 video frames and every later one 12. Throughput is quoted for the steady state, 4 video
frames per latent frame (``fps = 4 * frames_per_chunk / chunk latency``); at 16 fps a chunk is
0.75 s of video and 60 s is 80 chunks (240 latent frames, 957 video frames).

Parts of a run (``run_speed``), in this order, each skipped (and listed) when the time budget
would not cover it:

* long runs (``long_policies``, e.g. 10 minutes) in the *timed mode*: every chunk goes through
  the model and writes the memory, but only the chunks of ``timed_chunks`` (the first
  ``timed_first``, then windows of ``timed_window`` chunks every ``timed_every_s`` seconds of
  video and at the end) run the four denoising forwards and are timed; the others run only the
  cache-writing forward at t=0 on their initial noise (``VideoPipeline.generate(cache_only=)``).
  Memory shapes, positions and bookkeeping are then exactly a real run's (the K/V values are
  not), so latency, allocated memory and K/V bytes against video length show whether a policy
  stays flat at a fifth of the cost;
* the policy sweep (``policies`` at ``seconds``, every chunk timed unless ``timed_every_s``);
* end to end (``bench.speed_e2e``): the same pipeline with a random-weight Wan2.1 VAE streaming
  the decode, with and without decoding on a side stream overlapped with the next chunk;
* variants of one policy: SDPA backends, regional torch.compile, CUDA-graph replay of the
  denoising forwards, each compared with the first variant's latents (agreement).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fademem.bench.flops import chunk_flops, forward_flops, text_flops
from fademem.bench.speed_device import SDPA_BACKENDS, ChunkTimer, RegionalCompile, _count_syncs, _sync, environment, measure_matmul_peak, sdpa_context
from fademem.bench.speed_report import compare_policies, format_table, plot, write_json
from fademem.bench.speed_stats import VIDEO_FPS, VIDEO_FRAMES_PER_LATENT, _flatness, _windows, chunk_seconds, frames_for_seconds, summarise, timed_chunks

__all__ = [
    "DEFAULT_POLICIES", "VIDEO_FPS", "VIDEO_FRAMES_PER_LATENT", "SDPA_BACKENDS", "COMPILE_MODES", "POLICY_NOTES",
    "forward_flops", "text_flops", "chunk_flops", "ChunkTimer", "measure_matmul_peak", "sdpa_context",
    "RegionalCompile", "environment", "RandomText", "SpeedSetup", "build_model", "frames_for_seconds",
    "timed_chunks", "summarise", "run_policy", "SpeedRun", "run_speed", "compare_policies", "write_json", "plot",
    "format_table", "parse_list",
]

DEFAULT_POLICIES = ("full", "window:budget=12", "sink:budget=12,sink=3", "memrope", "fademem:budget=12")
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
POLICY_NOTES = {
    "full": "unbounded reference; capped at --full-max-frames (memory and quadratic attention)",
    "memrope": "fixed layout sink 3 + long EMA 1 + short EMA 1 + recent 4 = 9 history slots "
               "(12 visible with the chunk); its budget is not a knob",
}
TIMED_MODE_NOTE = ("timed mode: only the chunks listed in 'timed_chunks' ran the four denoising forwards and were "
                   "timed; every other chunk ran only the cache-writing forward (t=0) on its initial noise, so the "
                   "memory received every chunk at the right frames and positions (shapes and bookkeeping of a real "
                   "run; K/V values differ). Untimed chunks appear in 'chunks' with timed=false and no latency.")


class RandomText:
    """Text 'encoder' returning one fixed random state [B, text_len, text_dim] (CPU, float32)."""

    def __init__(self, text_len: int, text_dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.states = torch.randn(1, text_len, text_dim, generator=g)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.states.expand(len(prompts), -1, -1).contiguous()


@dataclass
class SpeedSetup:
    config: str = "1.3b"  # "1.3b", "14b" or "tiny"
    latent: tuple[int, int, int] = (16, 60, 104)
    frames_per_chunk: int = 3
    device: str = "cuda"
    dtype: str = "bfloat16"
    seed: int = 0
    warmup: int = 3
    sdpa: str = "auto"
    compile: str = "none"
    cuda_graph: bool = False  # replay the denoising forwards from a CUDA graph (fademem.pipeline.cuda_graph)

    def wan_config(self):
        from fademem.wan.model import WanConfig

        makers = {"1.3b": WanConfig.wan_1_3b, "14b": WanConfig.wan_14b, "tiny": WanConfig.tiny}
        if self.config not in makers:
            raise ValueError(f"unknown config {self.config!r}; choose from {', '.join(makers)}")
        return makers[self.config]()

    def torch_dtype(self) -> torch.dtype:
        table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if self.dtype not in table:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(table)}")
        return table[self.dtype]

    def tokens_per_frame(self, cfg) -> int:
        _, ph, pw = cfg.patch_size
        return (self.latent[1] // ph) * (self.latent[2] // pw)


def build_model(setup: SpeedSetup):
    """Random weights at the setup's config, built directly on the device, eval, no grad."""
    from fademem.wan.model import CausalWanModel

    cfg = setup.wan_config()
    torch.manual_seed(setup.seed)
    with torch.device(setup.device):
        model = CausalWanModel(cfg)
    return model.to(setup.torch_dtype()).eval().requires_grad_(False)


def _host_bytes(stack) -> int | None:
    vals = [m.host_nbytes() for m in stack if callable(getattr(m, "host_nbytes", None))]
    return sum(vals) if vals else None


def run_policy(model, spec: str, num_frames: int, setup: SpeedSetup, *, text: RandomText | None = None,
               max_frames: int | None = None, peak_tflops: float | None = None, label: str | None = None,
               progress: bool = False, timed: Collection[int] | None = None, decoder=None,
               overlap_decode: bool = False, deadline: float | None = None,
               on_chunk: Callable[[Any], None] | None = None) -> dict:
    """Generate ``num_frames`` latent frames with memory ``spec`` through VideoPipeline, timing
    every chunk (or only the chunk indices in ``timed``: the timed mode, see the module doc).

    ``max_frames`` caps the run; ``deadline`` (a ``time.perf_counter()`` value) stops it early; the
    result says where and why it stopped. ``decoder`` (e.g. ``WanVAEDecoder``) makes it end to end:
    latency is then the host wall time per yielded chunk, decoded frames on the host
    (``overlap_decode`` decodes on a side stream beside the next chunk). ``setup.cuda_graph``
    replays the denoising forwards from a CUDA graph. ``on_chunk(chunk)`` sees every chunk.
    """
    from fademem.memory import MemoryStack
    from fademem.pipeline import VideoPipeline

    cfg = model.config
    device = torch.device(setup.device)
    fpc = setup.frames_per_chunk
    tpf = setup.tokens_per_frame(cfg)
    text = text or RandomText(cfg.text_len, cfg.text_dim, setup.seed)
    stack = MemoryStack(spec, cfg.num_layers)
    frames = num_frames
    stop_reason = None
    if max_frames is not None and max_frames < num_frames:
        frames = max(fpc, fpc * (max_frames // fpc))
        stop_reason = f"capped at {frames} latent frames (--full-max-frames)"
    n_chunks = frames // fpc
    timed_set = None if timed is None else frozenset(int(i) for i in timed)
    if timed_set is not None and decoder is not None:
        raise ValueError("the timed mode is DiT only: cache-only chunks have no real frames to decode")
    pipe = VideoPipeline(model, text, decoder, frames_per_chunk=fpc, overlap_decode=overlap_decode,
                         cuda_graph=setup.cuda_graph)
    if pipe.graphed is not None:
        pipe.graphed.check = True  # max relative difference of the first replay against the eager forward
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    timer = ChunkTimer(device)
    chunks: list[dict] = []
    error = None
    host_syncs = None
    cache_segments: list[tuple[int, float]] = []  # (untimed chunks, wall seconds) per segment
    seg_start, seg_count = None, 0
    cache_only = None if timed_set is None else (lambda i: i not in timed_set)
    with sdpa_context(setup.sdpa):
        gen = pipe.generate("speed bench", frames, memory=stack, seed=setup.seed, latent_shape=setup.latent,
                            progress=False, cache_only=cache_only)
        for index in range(n_chunks):
            if deadline is not None and time.perf_counter() > deadline:
                stop_reason = (f"time budget: stopped before chunk {index} "
                               f"({chunk_seconds(index, fpc):.1f} s of video)")
                break
            is_timed = timed_set is None or index in timed_set
            held = len(stack.entries())  # memory slots the coming chunk attends to
            if is_timed and seg_count:  # close an untimed segment: the cache-only chunks' wall time
                _sync(device)
                cache_segments.append((seg_count, time.perf_counter() - seg_start))
                seg_count = 0
            if not is_timed and seg_count == 0:
                _sync(device)
                seg_start = time.perf_counter()
            # The last warm-up chunk runs under the CUDA sync debugger (not in the statistics): the
            # sampler's only host sync per chunk is its NaN check, so anything above 1 is a sync
            # in the hot path.
            audit = (device.type == "cuda" and is_timed and decoder is None
                     and index == max(0, min(setup.warmup, n_chunks) - 1))
            if is_timed:
                timer.start()
            try:
                if audit:
                    chunk, syncs = _count_syncs(lambda: next(gen))
                else:
                    chunk = next(gen)
            except StopIteration:
                break
            except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
                stop_reason = f"out of GPU memory at chunk {index} (latent frame {index * fpc}): {str(exc)[:120]}"
                break
            except Exception as exc:  # noqa: BLE001 - report, do not lose the other policies
                error = f"{type(exc).__name__}: {exc}"[:400]
                break
            rec: dict[str, Any] = {"index": index, "start": chunk.start, "timed": is_timed, "memory_frames": held,
                                   "kv_bytes": stack.nbytes()}
            if is_timed:
                ms, wall = timer.stop()
                # end to end: the host has the frames when the chunk is yielded; with overlap the
                # decode runs on a side stream the device events do not cover
                rec.update(latency_ms=wall if decoder is not None else ms, wall_ms=wall, device_ms=ms,
                           flops=chunk_flops(cfg, tpf, fpc, held))
            else:
                seg_count += 1
            if device.type == "cuda":
                rec["allocated_bytes"] = torch.cuda.memory_allocated(device)
            hb = _host_bytes(stack)
            if hb is not None:
                rec["host_bytes"] = hb
            if audit:
                rec["host_syncs"] = syncs
                host_syncs = syncs
            chunks.append(rec)
            if on_chunk is not None:
                on_chunk(chunk)
            if progress and (index % 10 == 0 or index == n_chunks - 1):
                lat = f"{rec['latency_ms']:.1f} ms" if is_timed else "cache pass only"
                print(f"  [{label or spec}] chunk {index}: {lat}, memory {held} frames, "
                      f"kv {stack.nbytes() / 2**30:.2f} GiB", flush=True)
        gen.close()
    if seg_count:
        _sync(device)
        cache_segments.append((seg_count, time.perf_counter() - seg_start))
    ran = (chunks[-1]["start"] + fpc) if chunks else 0
    res: dict[str, Any] = {
        "label": label or spec.split(":")[0],
        "spec": stack.spec,
        "requested_frames": num_frames,
        "frames_run": ran,
        "stopped": stop_reason if (stop_reason and ran < num_frames) else None,
        "error": error,
        "note": POLICY_NOTES.get(spec.split(":")[0].strip().lower()),
        "visible_frames_steady": (chunks[-1]["memory_frames"] + fpc) if chunks else None,
        "kv_bytes_final": stack.nbytes(),
        "kv_bytes_max": max((c["kv_bytes"] for c in chunks), default=0),
        "host_bytes_final": _host_bytes(stack),
        "host_syncs_per_chunk": host_syncs,  # CUDA sync debugger, one steady chunk (1 = the NaN check)
        "resident_bytes_before": resident,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "summary": summarise(chunks, setup.warmup, fpc, peak_tflops),
        "chunks": chunks,
    }
    if decoder is not None:
        res["end_to_end"] = {"overlap_decode": overlap_decode,
                             "timing": "host wall time per yielded chunk, decoded uint8 frames on the host"}
    if pipe.graphed is not None:
        res["cuda_graph"] = pipe.graphed.summary()
    if timed_set is not None:
        done = [c for c in chunks if c["timed"]]
        res["timed_mode"] = {
            "note": TIMED_MODE_NOTE,
            "timed_chunks": [c["index"] for c in done],
            "timed_chunks_count": len(done),
            "cache_only_chunks_count": len(chunks) - len(done),
            "cache_pass_ms_mean": (1e3 * sum(s for _, s in cache_segments) / sum(n for n, _ in cache_segments)
                                   if cache_segments else None),
        }
        res["windows"] = _windows(chunks, setup.warmup, fpc)
        res["flatness"] = _flatness(res["windows"])
        first_minute = [c for c in chunks if chunk_seconds(c["index"], fpc) < 60.0]
        res["summary_first_minute"] = summarise(first_minute, setup.warmup, fpc, peak_tflops)
    del pipe, stack
    gc.collect()
    return res


def _variant_setup(setup: SpeedSetup, name: str) -> SpeedSetup:
    """'eager', 'sdpa=<backend>', 'compile=<mode>', 'graph' (CUDA-graph replay), joined by '+'."""
    changes: dict[str, Any] = {"sdpa": setup.sdpa, "compile": "none", "cuda_graph": False}
    for part in filter(None, name.split("+")):
        if part == "eager":
            continue
        if part == "graph":
            changes["cuda_graph"] = True
            continue
        key, eq, val = part.partition("=")
        if not eq or key not in ("sdpa", "compile"):
            raise ValueError(f"variant {name!r}: parts are 'eager', 'graph', 'sdpa=<backend>' or 'compile=<mode>'")
        if key == "sdpa" and val not in SDPA_BACKENDS:
            raise ValueError(f"variant {name!r}: SDPA backend must be one of {', '.join(SDPA_BACKENDS)}")
        if key == "compile" and val not in COMPILE_MODES:
            raise ValueError(f"variant {name!r}: compile mode must be one of {', '.join(COMPILE_MODES)}")
        changes[key] = val
    return SpeedSetup(**{**asdict(setup), **changes})


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@dataclass
class SpeedRun:
    setup: SpeedSetup = field(default_factory=SpeedSetup)
    policies: Sequence[str] = DEFAULT_POLICIES
    seconds: float = 60.0
    full_max_frames: int | None = 120
    timed_every_s: float | None = None  # timed mode for the sweep too (None: every chunk timed)
    timed_window: int = 4
    timed_first: int = 40
    long_policies: Sequence[str] = ()  # runs in the timed mode
    long_seconds: float = 600.0
    e2e_policies: Sequence[str] = ()
    e2e_seconds: float = 7.5
    overlap: str = "both"  # end-to-end decode: "off", "on" or "both" (both on the first e2e policy)
    vae: str = "wan2.1"  # "wan2.1" (real config, random weights) or "tiny" (tests)
    variants: Sequence[str] = ()
    variant_policy: str = "fademem:budget=12"
    variant_seconds: float = 15.0
    time_budget_s: float | None = None
    measure_peak: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.overlap not in ("off", "on", "both"):
            raise ValueError(f"overlap must be 'off', 'on' or 'both', got {self.overlap!r}")
        if self.timed_window <= 0 or self.timed_first < 0:
            raise ValueError(f"timed window must be > 0 and timed first >= 0, got {self.timed_window}, "
                             f"{self.timed_first}")
        if self.timed_every_s is not None and not self.timed_every_s > 0:
            raise ValueError(f"timed_every_s must be positive, got {self.timed_every_s}")
        for name in ("seconds", "long_seconds", "e2e_seconds", "variant_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for v in self.variants:
            _variant_setup(self.setup, v)


class _Budget:
    """The time budget: a deadline for every run, and a forecast that skips a part that would not
    fit. Forecasts use the chunk costs measured so far (none yet: the part runs, and its deadline
    stops it if needed)."""

    COMPILE_ALLOWANCE_S = 75.0  # torch.compile of the blocks + warm-up, measured ~40-70 s at 1.3B
    VAE_ALLOWANCE_S = 10.0  # building the VAE and its warm-up decode

    def __init__(self, t_start: float, seconds: float | None):
        self.t_start, self.seconds = t_start, seconds
        self.full_ms: float | None = None  # wall ms of a timed DiT chunk
        self.cache_ms: float | None = None  # wall ms of a cache-only chunk
        self.e2e_extra_ms: float | None = None  # decode ms per chunk on top of the DiT

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.t_start + self.seconds

    def left(self) -> float:
        return math.inf if self.seconds is None else self.t_start + self.seconds - time.perf_counter()

    def forecast(self, timed: int, untimed: int = 0, extra_s: float = 0.0, e2e: bool = False) -> float | None:
        if self.full_ms is None:
            return None
        per = self.full_ms + (self.e2e_extra_ms or 0.0 if e2e else 0.0)
        return (timed * per + untimed * (self.cache_ms or self.full_ms / 5)) / 1e3 + extra_s

    def fits(self, *args, **kw) -> bool:
        f = self.forecast(*args, **kw)
        return f is None or f <= self.left()

    def learn(self, res: dict) -> None:
        s = res.get("summary") or {}
        if s and self.full_ms is None and not res.get("end_to_end"):
            self.full_ms = s["wall_ms_median"]
        tm = res.get("timed_mode") or {}
        if tm.get("cache_pass_ms_mean") and self.cache_ms is None:
            self.cache_ms = tm["cache_pass_ms_mean"]


def _log_result(log, res: dict) -> None:
    s = res["summary"]
    if s:
        extra = ""
        if res.get("flatness"):
            extra = f", 10-min flatness x{res['flatness']['latency_ratio_last_vs_first']:.3f}"
        log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.1f} video fps, "
            f"{(res['peak_allocated_bytes'] or 0) / 2**30:.2f} GiB peak{extra}"
            + (f", stopped: {res['stopped']}" if res.get("stopped") else "")
            + (f", error {res['error']}" if res["error"] else ""))
    else:
        log(f"  -> no timed chunk: {res['error'] or res.get('stopped')}")


def run_speed(run: SpeedRun, log=print) -> dict:
    """The whole benchmark; returns the JSON-able report."""
    run.validate()
    setup = run.setup
    device = torch.device(setup.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    t_start = time.perf_counter()
    budget = _Budget(t_start, run.time_budget_s)
    cfg = setup.wan_config()
    tpf = setup.tokens_per_frame(cfg)
    peak = measure_matmul_peak(device) if run.measure_peak else None
    if peak:
        log(f"bf16 matmul peak (8192^3, median of 20): {peak:.1f} TFLOP/s")
    model = build_model(setup)
    text = RandomText(cfg.text_len, cfg.text_dim, setup.seed)
    fpc = setup.frames_per_chunk
    num_frames = frames_for_seconds(run.seconds, fpc)
    report: dict[str, Any] = {
        "benchmark": "speed",
        "environment": environment(device),
        "setup": {**asdict(setup), "model_parameters": model.num_parameters(), "tokens_per_frame": tpf,
                  "seconds": run.seconds, "latent_frames": num_frames, "chunks": num_frames // fpc,
                  "full_max_frames": run.full_max_frames, "time_budget_s": run.time_budget_s,
                  "video_frames_note": "steady-state fps uses 4 video frames per latent frame (12 per "
                                       "3-frame chunk); the first chunk decodes to 9 video frames"},
        "peak_bf16_tflops": peak,
        "flops": {"per_forward_no_memory": forward_flops(cfg, tpf * fpc, tpf * fpc, fpc),
                  "per_prompt_text_context": text_flops(cfg),
                  "per_chunk_note": "5 forwards (4 denoising + 1 cache-writing); attention grows with the "
                                    "memory slots visible to the chunk"},
        "policies": [],
        "long_runs": None,
        "end_to_end": None,
        "variants": [],
        "skipped": [],
    }

    def skip(kind: str, name: str, why: str) -> None:
        report["skipped"].append({kind: name, "reason": why})
        log(f"skipped {kind} {name}: {why}")

    def plan(seconds: float, every: float | None) -> tuple[int, list[int] | None]:
        frames = frames_for_seconds(seconds, fpc)
        if every is None:
            return frames, None
        return frames, timed_chunks(frames // fpc, fpc, every, run.timed_window, max(run.timed_first, setup.warmup + 1))

    with RegionalCompile(model, setup.compile):
        # 1. long runs in the timed mode, 2. the sweep
        jobs = [(spec, run.long_seconds, run.timed_every_s or 60.0, True) for spec in run.long_policies]
        jobs += [(spec, run.seconds, run.timed_every_s, False) for spec in run.policies]
        if run.long_policies:
            report["long_runs"] = {"seconds": run.long_seconds, "timed_every_s": run.timed_every_s or 60.0,
                                   "timed_window": run.timed_window, "timed_first": run.timed_first,
                                   "note": TIMED_MODE_NOTE, "policies": []}
        for spec, seconds, every, long in jobs:
            frames, timed = plan(seconds, every)
            cap = run.full_max_frames if spec.split(":")[0].strip().lower() == "full" else None
            if cap:
                frames = min(frames, max(fpc, fpc * (cap // fpc)))
                timed = None if timed is None else [i for i in timed if i < frames // fpc]
            n = frames // fpc
            n_timed = n if timed is None else len(timed)
            if not budget.fits(n_timed, n - n_timed):
                skip("policy", f"{spec} ({seconds:g} s)", f"time budget: forecast {budget.forecast(n_timed, n - n_timed):.0f} s, "
                     f"{budget.left():.0f} s left")
                continue
            log(f"policy {spec}: {frames} latent frames"
                + (f", timed mode ({n_timed} of {n} chunks timed)" if timed is not None else ""))
            res = run_policy(model, spec, frames_for_seconds(seconds, fpc), setup, text=text, max_frames=cap,
                             peak_tflops=peak, progress=run.progress, timed=timed, deadline=budget.deadline)
            res["seconds"] = seconds
            budget.learn(res)
            _log_result(log, res)
            (report["long_runs"]["policies"] if long else report["policies"]).append(res)

    if run.e2e_policies:
        from fademem.bench.speed_e2e import run_end_to_end

        report["end_to_end"] = run_end_to_end(model, run, text, peak, budget, report, log)

    if run.variants:
        report["variants"] = _run_variants(model, run, text, peak, budget, skip, log)

    report["comparisons"] = compare_policies(report["policies"] + (report["long_runs"] or {}).get("policies", []))
    report["elapsed_s"] = time.perf_counter() - t_start
    return report


def _run_variants(model, run: SpeedRun, text, peak, budget: _Budget, skip, log) -> list[dict]:
    setup = run.setup
    fpc = setup.frames_per_chunk
    vframes = frames_for_seconds(run.variant_seconds, fpc)
    out: list[dict] = []
    base = None
    ref: dict[int, torch.Tensor] = {}
    last = vframes // fpc - 1
    for name in run.variants:
        vs = _variant_setup(setup, name)
        vs.warmup = max(vs.warmup, 6)  # memory fills and compiled shapes settle within ~5 chunks
        extra = budget.COMPILE_ALLOWANCE_S if vs.compile != "none" else 0.0
        if not budget.fits(vframes // fpc, 0, extra):
            skip("variant", name, f"time budget: forecast {budget.forecast(vframes // fpc, 0, extra):.0f} s, "
                 f"{budget.left():.0f} s left")
            continue
        log(f"variant {name}: {run.variant_policy}, {vframes} latent frames")
        kept: dict[int, torch.Tensor] = {}

        def keep(chunk, kept=kept):
            if chunk.index in (0, last):
                kept[chunk.index] = chunk.latents.detach().float().cpu()

        t0 = time.perf_counter()
        try:
            with RegionalCompile(model, vs.compile):
                res = run_policy(model, run.variant_policy, vframes, vs, text=text, peak_tflops=peak, label=name,
                                 progress=False, deadline=budget.deadline, on_chunk=keep)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
            res = {"label": name, "spec": run.variant_policy, "summary": {}, "chunks": [], "frames_run": 0,
                   "error": f"{type(exc).__name__}: {exc}"[:400], "stopped": None, "kv_bytes_final": 0,
                   "peak_allocated_bytes": None}
        res["variant"] = name
        res["sdpa"], res["compile"], res["cuda_graph_enabled"] = vs.sdpa, vs.compile, vs.cuda_graph
        res["setup_seconds_including_compile"] = time.perf_counter() - t0
        s = res["summary"]
        if s and base is None and name == run.variants[0]:
            base = s["latency_ms_median"]
            ref = kept
        elif ref and kept:
            res["agreement_vs_first_variant"] = {
                f"chunk_{i}_rel_l2": rel_l2(kept[i], ref[i]) for i in sorted(kept) if i in ref}
        if s and base:
            res["speedup_vs_first_variant"] = base / s["latency_ms_median"]
        out.append(res)
        if s:
            log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.1f} video fps"
                + (f" (x{res.get('speedup_vs_first_variant', 1):.3f})" if base else "")
                + (f", graph {res['cuda_graph']}" if res.get("cuda_graph") else ""))
        else:
            log(f"  -> failed: {res['error']}")
    return out


def parse_list(value: str | Iterable[str]) -> list[str]:
    """'full,window:budget=12,sink:budget=12,sink=3' -> specs; a comma followed by key=value belongs
    to the previous spec's knobs."""
    if not isinstance(value, str):
        return list(value)
    out: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if out and "=" in part and ":" not in part.split("=")[0] and ":" in out[-1]:
            out[-1] += "," + part
        else:
            out.append(part)
    return out
