"""Speed-option variants of one policy (``fademem bench speed --variants``): SDPA backends,
regional torch.compile, CUDA-graph replay of the denoising forwards, each compared with the first
variant (speed-up, and agreement of its latents)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from fademem.bench.speed_budget import _Budget
from fademem.bench.speed_device import SDPA_BACKENDS, RegionalCompile
from fademem.bench.speed_policy import SpeedSetup, rel_l2, run_policy
from fademem.bench.speed_stats import frames_for_seconds

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")


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


def _run_variants(model, run, text, peak, budget: _Budget, skip, log) -> list[dict]:
    """``run.variants`` of ``run.variant_policy`` (``run``: a ``fademem.bench.speed.SpeedRun``)."""
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
