"""``fademem bench speed``: DiT throughput, latency and memory against video length.

What is timed is exactly the sampler of ``fademem.pipeline.VideoPipeline`` (the real class, not a
copy): per chunk of ``frames_per_chunk`` (3) latent frames, four denoising forwards at the warped
timesteps plus one cache-writing forward at t=0, noise drawn on the host as the pipeline does, its
one NaN check per chunk, no decoder (DiT only). Weights are random at the chosen config (1.3B by
default, bf16); the text context is one random [1, 512, 4096] state, encoded once (the
cross-attention K/V are computed once per prompt by ``encode_text``).

Per chunk we record the GPU-timeline latency between two CUDA events around the chunk (after
``warmup`` chunks for the summary), the host wall time, allocated GPU memory, the memory's K/V
bytes (``MemoryStack.nbytes()``) and the analytic FLOP count of the chunk (``chunk_flops``).

Video frames: the causal Wan VAE turns T latent frames into 4T-3 video frames, so the first chunk
yields 9 video frames and every later one 12. Throughput is quoted for the steady state, 4 video
frames per latent frame (``fps = 4 * frames_per_chunk / chunk latency``); at 16 fps a chunk is
0.75 s of video and 60 s is 80 chunks (240 latent frames, 957 video frames).

FLOPs (``forward_flops``): linear layers 2*tokens*in*out (self-attention q, k, v, o; cross-attention
q, o; FFN up and down; patch embedding; head; the per-frame time MLPs), attention 4*Lq*Lk*head_dim
per head (QK^T and PV), cross-attention over ``text_len`` (512) text tokens. The text K/V
projections are counted once per prompt (``text_flops``), not per forward. Elementwise work (norms,
RoPE, modulation) is not counted. Achieved TFLOP/s are quoted against the bf16 peak measured in the
same run with an 8192^3 matrix product (``measure_matmul_peak``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

DEFAULT_POLICIES = ("full", "window:budget=12", "sink:budget=12,sink=3", "memrope", "fademem:budget=12")
VIDEO_FPS = 16
VIDEO_FRAMES_PER_LATENT = 4
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
POLICY_NOTES = {
    "full": "unbounded reference; capped at --full-max-frames (memory and quadratic attention)",
    "memrope": "fixed layout sink 3 + long EMA 1 + short EMA 1 + recent 4 = 9 history slots "
               "(12 visible with the chunk); its budget is not a knob",
}


# -------------------------------------------------------------------------------------------
# FLOP counting
# -------------------------------------------------------------------------------------------
def forward_flops(cfg, q_tokens: int, kv_tokens: int, frames: int, text_tokens: int | None = None) -> dict[str, int]:
    """FLOPs of one DiT forward over ``q_tokens`` query tokens (``frames`` latent frames) that
    attend to ``kv_tokens`` keys (memory + the chunk itself). Breakdown by part, plus 'total'."""
    d, f, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    t = cfg.text_len if text_tokens is None else text_tokens
    p = math.prod(cfg.patch_size)
    lq, lk = int(q_tokens), int(kv_tokens)
    out = {
        "self_qkvo": layers * 4 * 2 * lq * d * d,
        "self_attention": layers * 4 * lq * lk * d,  # sum over heads of 4*Lq*Lk*head_dim
        "cross_qo": layers * 2 * 2 * lq * d * d,
        "cross_attention": layers * 4 * lq * t * d,
        "ffn": layers * 2 * 2 * lq * d * f,
        "patch_embedding": 2 * lq * cfg.in_dim * p * d,
        "head": 2 * lq * d * p * cfg.out_dim,
        "time_mlp": frames * 2 * (cfg.freq_dim * d + d * d + d * 6 * d),
    }
    out["total"] = sum(out.values())
    return out


def text_flops(cfg, text_tokens: int | None = None) -> int:
    """FLOPs of encoding one prompt's context: text embedding MLP + every layer's cross K/V."""
    t = cfg.text_len if text_tokens is None else text_tokens
    d = cfg.dim
    return 2 * t * (cfg.text_dim * d + d * d) + cfg.num_layers * 2 * 2 * t * d * d


def chunk_flops(cfg, tokens_per_frame: int, frames_per_chunk: int, memory_frames: int, forwards: int = 5) -> int:
    """FLOPs of one chunk: ``forwards`` forwards (4 denoising + 1 cache-writing) of the chunk's
    tokens over ``memory_frames`` visible memory slots plus the chunk itself."""
    lq = tokens_per_frame * frames_per_chunk
    lk = tokens_per_frame * (memory_frames + frames_per_chunk)
    return forwards * forward_flops(cfg, lq, lk, frames_per_chunk)["total"]


# -------------------------------------------------------------------------------------------
# Device helpers
# -------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkTimer:
    """CUDA events on a GPU (device timeline), perf_counter elsewhere; both in milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        self.t0 = time.perf_counter()
        if self.cuda:
            self.e0 = torch.cuda.Event(enable_timing=True)
            self.e1 = torch.cuda.Event(enable_timing=True)
            self.e0.record()

    def stop(self) -> tuple[float, float]:
        """(device ms, host wall ms), synchronising on the end event."""
        if self.cuda:
            self.e1.record()
            self.e1.synchronize()
            wall = (time.perf_counter() - self.t0) * 1e3
            return float(self.e0.elapsed_time(self.e1)), wall
        wall = (time.perf_counter() - self.t0) * 1e3
        return wall, wall


def measure_matmul_peak(device: torch.device, n: int = 8192, iters: int = 20, dtype=torch.bfloat16) -> float | None:
    """Median bf16 matrix-product rate in TFLOP/s on random data (None off CUDA)."""
    if device.type != "cuda":
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        torch.mm(a, b)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def sdpa_context(backend: str):
    """Restrict torch SDPA to one backend ('auto' = torch's own choice)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if backend not in table:
        raise ValueError(f"unknown SDPA backend {backend!r}; choose from {', '.join(SDPA_BACKENDS)}")
    return sdpa_kernel([table[backend]])


class RegionalCompile:
    """torch.compile every transformer block and the head, leaving the model's code untouched.

    A block's dense parts (modulation, norms, q/k/v projections, output projection, gated
    residuals, cross-attention, FFN) take tensors only; the memory attention (RoPE table, the
    policy's view, SDPA, memory writes) is a ``torch.compiler.disable``-d call inside the block,
    so each block compiles into two graphs (before and after attention) that are shared by all 30
    blocks and every forward: the shapes of the dense parts do not depend on the memory size,
    and nothing per forward is guarded on.
    """

    def __init__(self, model, mode: str = "default"):
        self.model, self.mode = model, mode
        self.modules: list[torch.nn.Module] = []

    def __enter__(self):
        if self.mode == "none":
            return self
        kw = {} if self.mode == "default" else {"mode": self.mode}
        for sub in (*self.model.blocks, self.model.head):
            sub.compile(dynamic=False, **kw)
            self.modules.append(sub)
        return self

    def __exit__(self, *exc):
        for sub in self.modules:
            sub._compiled_call_impl = None  # undo nn.Module.compile()
        self.modules.clear()
        if self.mode != "none":
            torch._dynamo.reset()
        return False


# -------------------------------------------------------------------------------------------
# The runner
# -------------------------------------------------------------------------------------------
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

    def wan_config(self):
        from fademem.model import WanConfig

        makers = {"1.3b": WanConfig.wan_1_3b, "14b": WanConfig.wan_14b, "tiny": WanConfig.tiny}
        if self.config not in makers:
            raise ValueError(f"unknown config {self.config!r}; choose from {', '.join(makers)}")
        return makers[self.config]()

    def torch_dtype(self) -> torch.dtype:
        return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[self.dtype]

    def tokens_per_frame(self, cfg) -> int:
        _, ph, pw = cfg.patch_size
        return (self.latent[1] // ph) * (self.latent[2] // pw)


def build_model(setup: SpeedSetup):
    """Random weights at the setup's config, built directly on the device, eval, no grad."""
    from fademem.model import CausalWanModel

    cfg = setup.wan_config()
    torch.manual_seed(setup.seed)
    with torch.device(setup.device):
        model = CausalWanModel(cfg)
    return model.to(setup.torch_dtype()).eval().requires_grad_(False)


def frames_for_seconds(seconds: float, frames_per_chunk: int = 3) -> int:
    """Latent frames for ``seconds`` of 16 fps video at 4 video frames per latent frame, whole chunks
    (60 s -> 240 latent frames = 80 chunks)."""
    latent = math.ceil(seconds * VIDEO_FPS / VIDEO_FRAMES_PER_LATENT - 1e-9)
    return frames_per_chunk * max(1, math.ceil(latent / frames_per_chunk))


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarise(chunks: list[dict], warmup: int, frames_per_chunk: int, peak_tflops: float | None) -> dict:
    """Steady-state statistics over the chunks after ``warmup``."""
    steady = chunks[warmup:] if len(chunks) > warmup else chunks[1:] or chunks
    if not steady:
        return {}
    lat = [c["latency_ms"] for c in steady]
    med = statistics.median(lat)
    secs = sum(lat) / 1e3
    flops = sum(c["flops"] for c in steady)
    out = {
        "steady_chunks": len(steady),
        "latency_ms_median": med,
        "latency_ms_mean": statistics.fmean(lat),
        "latency_ms_p10": _quantile(lat, 0.1),
        "latency_ms_p90": _quantile(lat, 0.9),
        "wall_ms_median": statistics.median(c["wall_ms"] for c in steady),
        "video_fps": VIDEO_FRAMES_PER_LATENT * frames_per_chunk * 1e3 / med,
        "latent_fps": frames_per_chunk * 1e3 / med,
        "flops_per_chunk_median": statistics.median(c["flops"] for c in steady),
        "achieved_tflops": flops / secs / 1e12 if secs > 0 else None,
    }
    out["fraction_of_peak"] = (out["achieved_tflops"] / peak_tflops
                               if peak_tflops and out["achieved_tflops"] else None)
    # flatness: last quarter against the first steady quarter (bounded policies: ~1.0)
    q = max(1, len(steady) // 4)
    out["latency_ratio_last_vs_first_quarter"] = statistics.median(lat[-q:]) / statistics.median(lat[:q])
    return out


def run_policy(model, spec: str, num_frames: int, setup: SpeedSetup, *, text: RandomText | None = None,
               max_frames: int | None = None, peak_tflops: float | None = None, label: str | None = None,
               progress: bool = False) -> dict:
    """Generate ``num_frames`` latent frames with memory ``spec`` through VideoPipeline, timing
    every chunk. ``max_frames`` caps the run (the result says where and why it stopped)."""
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
    pipe = VideoPipeline(model, text, None, frames_per_chunk=fpc)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    timer = ChunkTimer(device)
    chunks: list[dict] = []
    error = None
    host_syncs = None
    with sdpa_context(setup.sdpa):
        gen = pipe.generate("speed bench", frames, memory=stack, seed=setup.seed, latent_shape=setup.latent,
                            progress=False)
        for index in range(frames // fpc):
            held = len(stack.entries())  # memory slots the coming chunk attends to
            # The last warm-up chunk runs under the CUDA sync debugger (not in the statistics): the
            # sampler's only host sync per chunk is its NaN check, so anything above 1 is a sync
            # in the hot path.
            audit = device.type == "cuda" and index == max(0, min(setup.warmup, frames // fpc) - 1)
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
            ms, wall = timer.stop()
            rec = {"index": index, "start": chunk.start, "latency_ms": ms, "wall_ms": wall,
                   "memory_frames": held, "flops": chunk_flops(cfg, tpf, fpc, held),
                   "kv_bytes": stack.nbytes()}
            if device.type == "cuda":
                rec["allocated_bytes"] = torch.cuda.memory_allocated(device)
            if audit:
                rec["host_syncs"] = syncs
                host_syncs = syncs
            chunks.append(rec)
            if progress and (index % 10 == 0 or index == frames // fpc - 1):
                print(f"  [{label or spec}] chunk {index}: {ms:.1f} ms, memory {held} frames, "
                      f"kv {stack.nbytes() / 2**30:.2f} GiB", flush=True)
        gen.close()
    res: dict[str, Any] = {
        "label": label or spec.split(":")[0],
        "spec": stack.spec,
        "requested_frames": num_frames,
        "frames_run": (chunks[-1]["start"] + fpc) if chunks else 0,
        "stopped": stop_reason if (stop_reason and (not chunks or chunks[-1]["start"] + fpc < num_frames)) else None,
        "error": error,
        "note": POLICY_NOTES.get(spec.split(":")[0].strip().lower()),
        "visible_frames_steady": (chunks[-1]["memory_frames"] + fpc) if chunks else None,
        "kv_bytes_final": stack.nbytes(),
        "kv_bytes_max": max((c["kv_bytes"] for c in chunks), default=0),
        "host_syncs_per_chunk": host_syncs,  # CUDA sync debugger, one steady chunk (1 = the NaN check)
        "resident_bytes_before": resident,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "summary": summarise(chunks, setup.warmup, fpc, peak_tflops),
        "chunks": chunks,
    }
    del pipe, stack
    gc.collect()
    return res


def _count_syncs(fn):
    """(fn(), number of synchronising CUDA calls it made) under ``set_sync_debug_mode("warn")``;
    the timed chunk includes the debugger's small host overhead."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def _variant_setup(setup: SpeedSetup, name: str) -> SpeedSetup:
    """'eager', 'sdpa=<backend>', 'compile=<mode>', or both joined by '+'."""
    changes: dict[str, str] = {"sdpa": setup.sdpa, "compile": "none"}
    for part in filter(None, name.split("+")):
        if part == "eager":
            continue
        key, eq, val = part.partition("=")
        if not eq or key not in ("sdpa", "compile"):
            raise ValueError(f"variant {name!r}: parts are 'eager', 'sdpa=<backend>' or 'compile=<mode>'")
        if key == "sdpa" and val not in SDPA_BACKENDS:
            raise ValueError(f"variant {name!r}: SDPA backend must be one of {', '.join(SDPA_BACKENDS)}")
        if key == "compile" and val not in COMPILE_MODES:
            raise ValueError(f"variant {name!r}: compile mode must be one of {', '.join(COMPILE_MODES)}")
        changes[key] = val
    return SpeedSetup(**{**asdict(setup), **changes})


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cuda": torch.version.cuda, "hostname_cpus": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_bytes=p.total_memory, sm_count=p.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
    try:
        import diffusers  # noqa: F401

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    return env


@dataclass
class SpeedRun:
    setup: SpeedSetup = field(default_factory=SpeedSetup)
    policies: Sequence[str] = DEFAULT_POLICIES
    seconds: float = 60.0
    full_max_frames: int | None = 120
    variants: Sequence[str] = ()
    variant_policy: str = "fademem:budget=12"
    variant_seconds: float = 15.0
    time_budget_s: float | None = None
    measure_peak: bool = True
    progress: bool = True


def run_speed(run: SpeedRun, log=print) -> dict:
    """The whole benchmark; returns the JSON-able report."""
    setup = run.setup
    device = torch.device(setup.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    t_start = time.perf_counter()
    cfg = setup.wan_config()
    tpf = setup.tokens_per_frame(cfg)
    peak = measure_matmul_peak(device) if run.measure_peak else None
    if peak:
        log(f"bf16 matmul peak (8192^3, median of 20): {peak:.1f} TFLOP/s")
    model = build_model(setup)
    text = RandomText(cfg.text_len, cfg.text_dim, setup.seed)
    num_frames = frames_for_seconds(run.seconds, setup.frames_per_chunk)
    fpc = setup.frames_per_chunk
    report: dict[str, Any] = {
        "benchmark": "speed",
        "environment": environment(device),
        "setup": {**asdict(setup), "model_parameters": model.num_parameters(), "tokens_per_frame": tpf,
                  "seconds": run.seconds, "latent_frames": num_frames, "chunks": num_frames // fpc,
                  "full_max_frames": run.full_max_frames,
                  "video_frames_note": "steady-state fps uses 4 video frames per latent frame (12 per "
                                       "3-frame chunk); the first chunk decodes to 9 video frames"},
        "peak_bf16_tflops": peak,
        "flops": {"per_forward_no_memory": forward_flops(cfg, tpf * fpc, tpf * fpc, fpc),
                  "per_prompt_text_context": text_flops(cfg),
                  "per_chunk_note": "5 forwards (4 denoising + 1 cache-writing); attention grows with the "
                                    "memory slots visible to the chunk"},
        "policies": [],
        "variants": [],
        "skipped": [],
        "diffusers_end_to_end": None,
    }

    def over_budget() -> bool:
        return run.time_budget_s is not None and time.perf_counter() - t_start > run.time_budget_s

    with RegionalCompile(model, setup.compile):
        for spec in run.policies:
            if over_budget():
                report["skipped"].append({"policy": spec, "reason": "time budget"})
                continue
            cap = run.full_max_frames if spec.split(":")[0].strip().lower() == "full" else None
            log(f"policy {spec}: {num_frames if cap is None else min(num_frames, cap)} latent frames")
            res = run_policy(model, spec, num_frames, setup, text=text, max_frames=cap, peak_tflops=peak,
                             progress=run.progress)
            report["policies"].append(res)
            s = res["summary"]
            if s:
                log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.1f} video fps, "
                    f"{(res['peak_allocated_bytes'] or 0) / 2**30:.2f} GiB peak"
                    + (f", error {res['error']}" if res["error"] else ""))
            elif res["error"]:
                log(f"  -> error {res['error']}")

    if run.variants:
        vframes = frames_for_seconds(run.variant_seconds, fpc)
        base = None
        for name in run.variants:
            if over_budget():
                report["skipped"].append({"variant": name, "reason": "time budget"})
                continue
            vs = _variant_setup(setup, name)
            vs.warmup = max(vs.warmup, 6)  # memory fills and compiled shapes settle within ~5 chunks
            log(f"variant {name}: {run.variant_policy}, {vframes} latent frames")
            t0 = time.perf_counter()
            with RegionalCompile(model, vs.compile):
                res = run_policy(model, run.variant_policy, vframes, vs, text=text, peak_tflops=peak,
                                 label=name, progress=False)
            res["variant"] = name
            res["sdpa"], res["compile"] = vs.sdpa, vs.compile
            res["setup_seconds_including_compile"] = time.perf_counter() - t0
            s = res["summary"]
            if s and base is None and name == run.variants[0]:
                base = s["latency_ms_median"]
            if s and base:
                res["speedup_vs_first_variant"] = base / s["latency_ms_median"]
            report["variants"].append(res)
            if s:
                log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.1f} video fps"
                    + (f" (x{res.get('speedup_vs_first_variant', 1):.3f})" if base else ""))
            else:
                log(f"  -> failed: {res['error']}")

    report["diffusers_end_to_end"] = _end_to_end_note()
    report["comparisons"] = compare_policies(report["policies"])
    report["elapsed_s"] = time.perf_counter() - t_start
    return report


def _end_to_end_note() -> dict:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return {"skipped": "diffusers is not importable here: end-to-end fps with streaming VAE decode "
                           "not measured (DiT only)"}
    return {"skipped": "random-weight benchmark: the VAE needs real Wan2.1 weights (--wan-dir), not "
                       "loaded by this benchmark; DiT only"}


def compare_policies(results: list[dict]) -> dict:
    """FadeMem's overhead over sink at the same visible frames, and each policy's fps."""
    by_label = {r["label"]: r for r in results if r.get("summary")}
    out: dict[str, Any] = {"video_fps": {k: v["summary"]["video_fps"] for k, v in by_label.items()}}
    fm, sk = by_label.get("fademem"), by_label.get("sink")
    if fm and sk:
        out["fademem_overhead_over_sink"] = fm["summary"]["latency_ms_median"] / sk["summary"]["latency_ms_median"] - 1
        out["fademem_vs_sink_visible_frames"] = [fm["visible_frames_steady"], sk["visible_frames_steady"]]
        out["target_overhead_le_3pct"] = out["fademem_overhead_over_sink"] <= 0.03
    return out


# -------------------------------------------------------------------------------------------
# Output
# -------------------------------------------------------------------------------------------
def write_json(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)


def plot(report: dict, path: str) -> str:
    """Latency and memory per chunk against video length, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpc = report["setup"]["frames_per_chunk"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for res in report["policies"]:
        ch = res["chunks"]
        if not ch:
            continue
        x = [(c["start"] + fpc) * VIDEO_FRAMES_PER_LATENT / VIDEO_FPS for c in ch]
        line, = ax1.plot(x, [c["latency_ms"] for c in ch], label=res["spec"], lw=1.2)
        if "allocated_bytes" in ch[0]:
            ax2.plot(x, [c["allocated_bytes"] / 2**30 for c in ch], color=line.get_color(), lw=1.2,
                     label=f"{res['label']} allocated")
        ax2.plot(x, [c["kv_bytes"] / 2**30 for c in ch], color=line.get_color(), lw=1.0, ls="--",
                 label=f"{res['label']} KV memory")
        if res.get("stopped"):
            ax1.annotate("stop", (x[-1], ch[-1]["latency_ms"]), fontsize=8)
    env = report["environment"]
    ax1.set_ylabel("chunk latency (ms)")
    ax1.set_title(f"DiT chunk latency ({fpc} latent frames, 5 forwards) on {env.get('gpu', env['device'])}")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("GiB")
    ax2.set_xlabel("video length (s, 16 fps)")
    ax2.set_title("GPU memory allocated (solid) and KV memory (dashed)")
    ax2.legend(fontsize=7, ncol=2)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(report: dict) -> str:
    peak = report.get("peak_bf16_tflops")
    rows = [f"{'run':34s} {'ms/chunk':>9s} {'vid fps':>8s} {'TFLOP/s':>8s} {'%peak':>6s} {'peak GiB':>9s} "
            f"{'KV GiB':>7s} {'frames':>7s}"]
    for res in list(report["policies"]) + list(report.get("variants", [])):
        s = res.get("summary") or {}
        name = f"variant {res['variant']}" if res.get("variant") else res["spec"]
        if not s:
            rows.append(f"{name[:34]:34s} failed: {res.get('error') or res.get('stopped')}")
            continue
        frac = s.get("fraction_of_peak")
        rows.append(f"{name[:34]:34s} {s['latency_ms_median']:9.1f} {s['video_fps']:8.2f} "
                    f"{(s['achieved_tflops'] or 0):8.1f} {(100 * frac if frac else float('nan')):6.1f} "
                    f"{((res['peak_allocated_bytes'] or 0) / 2**30):9.2f} {res['kv_bytes_final'] / 2**30:7.2f} "
                    f"{res['frames_run']:7d}" + (" *" if res.get("stopped") else ""))
    cmp_ = report.get("comparisons", {})
    if "fademem_overhead_over_sink" in cmp_:
        rows.append(f"fademem overhead over sink (same visible frames {cmp_['fademem_vs_sink_visible_frames']}): "
                    f"{100 * cmp_['fademem_overhead_over_sink']:+.2f}% (target <= 3%)")
    if peak:
        rows.append(f"measured bf16 peak {peak:.0f} TFLOP/s; * = stopped early (see JSON 'stopped')")
    return "\n".join(rows)


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
