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
  the decode, with and without decoding on a side stream overlapped with the next chunk (compiled
  on CUDA with the channels-last decoder, as ``fademem generate`` runs there);
* variants of one policy: SDPA backends, regional torch.compile, the FP8 mode, CUDA-graph replay of
  the denoising forwards, DiT only or end to end, each compared with the first variant's latents
  (agreement), with its cold-start cost and a per-forward check against eager (``speed_variants``);
* the low-memory (24 GB) mode end to end with the real-size UMT5-XXL encoder offloaded
  (``speed_lowmem``): peak GPU memory and fps.

Compilation: ``setup.compile`` 'auto' (the CLI's default) is regional torch.compile of the DiT
(and of the VAE decoder end to end) on CUDA, eager elsewhere; Inductor's caches are kept on disk
(``fademem.pipeline.fast.enable_compile_cache``) so a second run starts fast. ``setup.precision``
'fp8' converts the DiT's block linears to torchao float8 for every part (refused up front where
it cannot run).

This module is the driver (``SpeedRun``, ``run_speed``, ``parse_list``) and re-exports the names of
the modules it is built from, which depend on each other one way only: ``speed_policy`` (the
per-policy runner ``run_policy``, ``SpeedSetup``, ``build_model``) on ``speed_stats``,
``speed_device`` and ``flops``; ``speed_e2e`` (end to end) and ``speed_variants`` (variants) on
``speed_policy``; ``speed_budget`` (the time budget) and ``speed_report`` (JSON, plot, tables) on
nothing of the package.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fademem.bench.flops import chunk_flops, forward_flops, text_flops
from fademem.bench.speed_budget import _Budget
from fademem.bench.speed_device import (
    SDPA_BACKENDS,
    ChunkTimer,
    RegionalCompile,
    environment,
    measure_matmul_peak,
    sdpa_context,
)
from fademem.bench.speed_e2e import run_end_to_end
from fademem.bench.speed_policy import (  # noqa: F401
    TIMED_MODE_NOTE,
    UNBOUNDED_NOTE,
    RandomText,
    SpeedSetup,
    _host_bytes,
    build_model,
    is_unbounded,
    policy_note,
    rel_l2,
    run_policy,
)
from fademem.bench.speed_report import compare_policies, format_table, plot, write_json
from fademem.bench.speed_stats import VIDEO_FPS, VIDEO_FRAMES_PER_LATENT, frames_for_seconds, summarise, timed_chunks
from fademem.bench.speed_variants import (  # noqa: F401 (_variant_setup re-exported)
    FORWARD_TOLERANCE,
    _forward_inputs,
    _one_forward,
    _run_variants,
    _variant_parts,
    _variant_setup,
)
from fademem.pipeline.fast import (
    COMPILE_MODES,
    PRECISIONS,
    apply_fp8,
    check_compile_mode,
    check_fp8,
    enable_compile_cache,
    resolve_compile,
)

__all__ = [
    "DEFAULT_POLICIES", "VIDEO_FPS", "VIDEO_FRAMES_PER_LATENT", "SDPA_BACKENDS", "COMPILE_MODES", "UNBOUNDED_NOTE",
    "policy_note",
    "forward_flops", "text_flops", "chunk_flops", "ChunkTimer", "measure_matmul_peak", "sdpa_context",
    "RegionalCompile", "FORWARD_TOLERANCE",
    "environment", "RandomText", "SpeedSetup", "build_model", "frames_for_seconds",
    "timed_chunks", "summarise", "run_policy", "SpeedRun", "run_speed", "compare_policies", "write_json", "plot",
    "format_table", "parse_list",
]


DEFAULT_POLICIES = ("full", "window:budget=12", "sink:budget=12,sink=3", "memrope", "fademem:budget=12")


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
    low_memory: bool = False  # the 24 GB mode end to end (speed_lowmem)
    low_memory_policy: str | None = None  # default: variant_policy
    low_memory_seconds: float = 6.0
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
        for name in ("seconds", "long_seconds", "e2e_seconds", "variant_seconds", "low_memory_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_compile_mode(self.setup.compile)
        if self.setup.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'dtype' or 'fp8', got {self.setup.precision!r}")
        for v in self.variants:
            _variant_parts(self.setup, v)
        if self.setup.precision == "fp8":
            check_fp8(self.setup.device)  # Fp8Unavailable (a RuntimeError) naming what is missing, before any work


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
    setup.compile = resolve_compile(setup.compile, device)
    compiling = setup.compile != "none" or any(_variant_parts(setup, v)[0].compile != "none" for v in run.variants)
    cache = enable_compile_cache() if compiling else None
    cfg = setup.wan_config()
    tpf = setup.tokens_per_frame(cfg)
    peak = measure_matmul_peak(device) if run.measure_peak else None
    if peak:
        log(f"bf16 matmul peak (8192^3, median of 20): {peak:.1f} TFLOP/s")
    model = build_model(setup)
    fp8_s = fp8_check = None
    if setup.precision == "fp8":
        text0 = RandomText(cfg.text_len, cfg.text_dim, setup.seed)
        inputs = _forward_inputs(model, setup, text0)
        before = _one_forward(model, inputs)
        t0 = time.perf_counter()
        log(f"fp8: {apply_fp8(model)} block linears converted to torchao float8")
        fp8_s = time.perf_counter() - t0
        diff = rel_l2(_one_forward(model, inputs), before)
        fp8_check = {"rel_l2_vs_dtype": diff, "tolerance": FORWARD_TOLERANCE["fp8"],
                     "ok": diff <= FORWARD_TOLERANCE["fp8"], "what": "one forward (t=1000, no memory), eager"}
        log(f"fp8: one forward {diff:.2e} relative to {setup.dtype} (tolerance {FORWARD_TOLERANCE['fp8']:g})")
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
        "compile": {"mode": setup.compile, "cache": cache, "what": "regional torch.compile of the DiT blocks and "
                    "head (and of the VAE decoder end to end); 'none' = eager"},
        "precision": {"mode": setup.precision, "conversion_seconds": fp8_s, "forward_check": fp8_check},
        "flops": {"per_forward_no_memory": forward_flops(cfg, tpf * fpc, tpf * fpc, fpc),
                  "per_prompt_text_context": text_flops(cfg),
                  "per_chunk_note": "5 forwards (4 denoising + 1 cache-writing); attention grows with the "
                                    "memory slots visible to the chunk"},
        "policies": [],
        "long_runs": None,
        "end_to_end": None,
        "variants": [],
        "low_memory": None,
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

    try:  # SIGINT (a wall-clock limit around the bench) stops the parts; what finished is reported
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
                cap = run.full_max_frames if is_unbounded(spec) else None
                if cap:
                    frames = min(frames, max(fpc, fpc * (cap // fpc)))
                    timed = None if timed is None else [i for i in timed if i < frames // fpc]
                n = frames // fpc
                n_timed = n if timed is None else len(timed)
                if not budget.fits(n_timed, n - n_timed):
                    skip("policy", f"{spec} ({seconds:g} s)",
                         f"time budget: forecast {budget.forecast(n_timed, n - n_timed):.0f} s, "
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
            report["end_to_end"] = run_end_to_end(model, run, text, peak, budget, report, log)

        if run.variants:
            _run_variants(model, run, text, peak, budget, skip, log, report["variants"])

        if run.low_memory:
            from fademem.bench.speed_lowmem import run_low_memory

            report["low_memory"] = run_low_memory(model, run, budget, log)
            if report["low_memory"].get("skipped"):
                skip("part", "low memory", report["low_memory"]["skipped"])
    except KeyboardInterrupt:
        report["interrupted"] = f"SIGINT after {time.perf_counter() - t_start:.0f} s: later parts did not run"
        log(f"interrupted: {report['interrupted']}")

    report["comparisons"] = compare_policies(report["policies"] + (report["long_runs"] or {}).get("policies", []))
    report["elapsed_s"] = time.perf_counter() - t_start
    return report


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
