"""Speed-option variants of one policy (``fademem bench speed --variants``): SDPA backends,
regional torch.compile (DiT blocks, and the VAE decoder end to end), the FP8 mode, CUDA-graph
replay of the denoising forwards, DiT only or end to end; each compared with the first variant
(speed-up, agreement of its latents), with its cold-start cost and a per-forward numerical check.
An FP8 variant where FP8 cannot run (no suitable GPU, no torchao) is skipped with the reason.

A variant is parts joined by '+': 'eager', 'compile' (= 'compile=default') or 'compile=<mode>',
'fp8' (torchao float8 block linears, ``fademem.pipeline.fast``), 'graph' (CUDA-graph replay),
'sdpa=<backend>', 'e2e' (streaming VAE decode of a random-weight Wan2.1 VAE, frames on the host;
the decoder is compiled too under 'compile'), 'overlap' (end to end, each chunk decoded on a side CUDA
stream beside the next chunk's DiT), 'vae=cl' (end to end, the decoder's weights channels_last_3d).
Examples: 'eager+e2e', 'compile+e2e', 'fp8+compile', 'fp8+compile+overlap', 'compile+vae=cl'.

Per variant the report has ``cold_start``: ``first_chunk_s`` (asking for the first chunk until it
is there, frames on the host end to end: compile included), ``warmup_s`` (the warm-up chunks),
``compile_overhead_s`` (warm-up minus as many steady chunks), ``prep_s`` (the FP8 conversion) and
``caches`` ('cold' for the first compile of a model in the process, else 'warm': Inductor's FX-graph
cache on disk, ``fademem.pipeline.fast.enable_compile_cache``); and ``forward_check``: the relative
L2 difference of one forward (the chunk's first denoising step, no memory) against the eager
forward of the unconverted model on the same inputs, with the tolerance it must meet
(``FORWARD_TOLERANCE``: bf16 rounding for compile, FP8 rounding for fp8).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import Any

import torch

from fademem.bench.speed_budget import _Budget
from fademem.bench.speed_device import SDPA_BACKENDS, RegionalCompile
from fademem.bench.speed_policy import SpeedSetup, rel_l2, run_policy
from fademem.bench.speed_stats import frames_for_seconds
from fademem.pipeline.fast import (
    COMPILE_MODES,
    Fp8Unavailable,
    apply_fp8,
    check_compile_mode,
    check_fp8,
    decoder_channels_last,
)

# relative L2 of one forward against eager in the model dtype: bf16 re-rounding of fused kernels, and
# FP8 (e4m3, per-row scales) on every block linear (an emulation at 1.3B gives 1.8e-2)
FORWARD_TOLERANCE = {"dtype": 2e-2, "fp8": 5e-2}
# 'vae=cl': the VAE decoder's weights in channels_last_3d, so cuDNN may pick its NDHWC conv3d kernels
# (fademem.pipeline.fast.decoder_channels_last, what fademem generate does on CUDA when compiling)
VAE_LAYOUTS = {"cl": "channels_last_3d"}


def _variant_parts(setup: SpeedSetup, name: str) -> tuple[SpeedSetup, dict]:
    changes: dict[str, Any] = {"sdpa": setup.sdpa, "compile": "none", "cuda_graph": False,
                               "precision": setup.precision}
    flags = {"e2e": False, "overlap": False, "vae_layout": "contiguous"}
    for part in filter(None, name.split("+")):
        if part == "eager":
            continue
        if part == "overlap":  # end to end, the decode on a side stream beside the next chunk's DiT
            flags.update(e2e=True, overlap=True)
            continue
        if part.startswith("vae="):
            if part[4:] not in VAE_LAYOUTS:
                raise ValueError(f"variant {name!r}: vae=<layout> takes {', '.join(VAE_LAYOUTS)}")
            flags.update(e2e=True, vae_layout=VAE_LAYOUTS[part[4:]])
            continue
        if part == "graph":
            changes["cuda_graph"] = True
            continue
        if part in ("fp8", "e2e"):
            changes.update(precision="fp8") if part == "fp8" else flags.update(e2e=True)
            continue
        key, eq, val = part.partition("=")
        if part == "compile":
            key, eq, val = "compile", "=", "default"
        if not eq or key not in ("sdpa", "compile"):
            raise ValueError(f"variant {name!r}: parts are 'eager', 'graph', 'fp8', 'e2e', 'overlap', 'vae=cl', "
                             "'sdpa=<backend>', 'compile' or 'compile=<mode>'")
        if key == "sdpa" and val not in SDPA_BACKENDS:
            raise ValueError(f"variant {name!r}: SDPA backend must be one of {', '.join(SDPA_BACKENDS)}")
        if key == "compile":
            try:
                check_compile_mode(val)
            except ValueError as exc:
                raise ValueError(f"variant {name!r}: {exc}") from None
            if val == "auto":
                raise ValueError(f"variant {name!r}: a variant names its compile mode "
                                 f"({', '.join(m for m in COMPILE_MODES if m != 'auto')})")
        changes[key] = val
    return SpeedSetup(**{**asdict(setup), **changes}), flags


def _variant_setup(setup: SpeedSetup, name: str) -> SpeedSetup:
    """'eager', 'sdpa=<backend>', 'compile[=<mode>]', 'graph', 'fp8', 'e2e', joined by '+'."""
    return _variant_parts(setup, name)[0]


def _forward_inputs(model, setup: SpeedSetup, text):
    g = torch.Generator().manual_seed(setup.seed + 7)
    c, h, w = setup.latent
    dev = torch.device(setup.device)
    x = torch.randn(1, c, setup.frames_per_chunk, h, w, generator=g).to(dev, setup.torch_dtype())
    t = torch.full((1, setup.frames_per_chunk), 1000.0, device=dev)
    return x, t, text.states.to(dev)


@torch.no_grad()
def _one_forward(model, inputs) -> torch.Tensor:
    x, t, states = inputs
    return model(x, t, model.encode_text(states)).float().cpu()


class _Decoders:
    """The random-weight Wan VAE decoder per weight layout, built on first use (one set of weights)."""

    def __init__(self, setup: SpeedSetup, which: str):
        self.setup, self.which, self.by = setup, which, {}

    def get(self, layout: str):
        if layout not in self.by:
            from fademem.bench.speed_e2e import build_random_vae

            if "contiguous" not in self.by:
                s = self.setup
                self.by["contiguous"] = build_random_vae(s.device, s.torch_dtype(), self.which, s.seed)
            if layout != "contiguous":  # channels_last_3d: the conv3d kernels, as fademem generate does
                dec = copy.deepcopy(self.by["contiguous"])
                decoder_channels_last(dec)
                self.by[layout] = dec
        return self.by[layout]


class _Models:
    """The model in each precision, made on first use (FP8: a converted copy, timed)."""

    def __init__(self, model, precision: str):
        self.by = {precision: model}
        self.prep_s: dict[str, float] = {}

    def get(self, precision: str):
        if precision not in self.by:
            if "dtype" not in self.by:
                raise ValueError("the bench model is already converted (--precision fp8): variants run in fp8")
            t0 = time.perf_counter()
            self.by[precision] = copy.deepcopy(self.by["dtype"])
            apply_fp8(self.by[precision])
            self.prep_s[precision] = time.perf_counter() - t0
        return self.by[precision]


def _where() -> str:
    """The innermost frames of the exception being handled: where an interrupted variant was stuck."""
    import sys
    import traceback

    frames = traceback.extract_tb(sys.exc_info()[2])[-4:]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))


def _cold_start(res: dict, warmup: int) -> dict:
    walls = [c["wall_ms"] for c in res["chunks"] if "wall_ms" in c]
    if not walls:
        return {}
    steady = (res.get("summary") or {}).get("wall_ms_median")
    n = min(max(warmup, 1), len(walls))
    out = {"first_chunk_s": walls[0] / 1e3, "warmup_chunks": n, "warmup_s": sum(walls[:n]) / 1e3}
    if steady:
        out["compile_overhead_s"] = out["warmup_s"] - n * steady / 1e3
    return out


def _run_variants(model, run, text, peak, budget: _Budget, skip, log, out: list[dict]) -> list[dict]:
    """``run.variants`` of ``run.variant_policy`` (``run``: a ``fademem.bench.speed.SpeedRun``), appended
    to ``out`` as each ends, so an interrupted bench (SIGINT: a wall-clock limit) keeps the finished ones;
    the interrupted variant is recorded with where it stopped, and the KeyboardInterrupt goes on."""
    setup = run.setup
    fpc = setup.frames_per_chunk
    vframes = frames_for_seconds(run.variant_seconds, fpc)
    base: dict[bool, float] = {}
    ref: dict[int, torch.Tensor] = {}
    ref_frames: dict[int, torch.Tensor] | None = None
    last = vframes // fpc - 1
    models = _Models(model, setup.precision)
    per_chunk_ms: dict[bool, float] = {}  # wall ms of a chunk, DiT only / end to end, as measured
    inputs = _forward_inputs(model, setup, text)
    ref_forward = _one_forward(model, inputs)  # eager, unconverted: what every fast path is checked against
    compiled_before: set[tuple[str, str]] = set()  # (compile mode, precision or 'decoder') compiled so far
    decoders = _Decoders(setup, run.vae)
    fp8_missing: str | None = None  # why the FP8 variants cannot run here ('' once checked and fine)
    for name in run.variants:
        vs, flags = _variant_parts(setup, name)
        vs.warmup = max(vs.warmup, 6)  # memory fills and compiled shapes settle within ~5 chunks
        extra = budget.COMPILE_ALLOWANCE_S if vs.compile != "none" else 0.0
        ms = per_chunk_ms.get(flags["e2e"]) or (budget.full_ms if not flags["e2e"] else None)
        forecast = None if ms is None else vframes // fpc * ms / 1e3 + extra
        if forecast is not None and forecast > budget.left():
            skip("variant", name, f"time budget: forecast {forecast:.0f} s, {budget.left():.0f} s left")
            continue
        if vs.precision == "fp8" and fp8_missing is None:
            try:
                check_fp8(setup.device)
                fp8_missing = ""
            except Fp8Unavailable as exc:
                fp8_missing = str(exc)
        if vs.precision == "fp8" and fp8_missing:
            skip("variant", name, fp8_missing)  # the other variants still run
            continue
        log(f"variant {name}: {run.variant_policy}, {vframes} latent frames")
        kept: dict[int, torch.Tensor] = {}
        kept_frames: dict[int, torch.Tensor] = {}

        def keep(chunk, kept=kept, kept_frames=kept_frames):
            if chunk.index in (0, last):
                kept[chunk.index] = chunk.latents.detach().float().cpu()
                if chunk.frames is not None:
                    kept_frames[chunk.index] = torch.as_tensor(chunk.frames).to("cpu", torch.int16)

        t0 = time.perf_counter()
        dec_key = (vs.compile, "decoder", flags["vae_layout"])
        keys = {(vs.compile, vs.precision)} | ({dec_key} if flags["e2e"] else set())
        caches = None if vs.compile == "none" else ("warm" if keys <= compiled_before else "cold")
        check = None
        try:
            dec = decoders.get(flags["vae_layout"]) if flags["e2e"] else None
            m = models.get(vs.precision)
            with RegionalCompile(m, vs.compile, decoder=dec):
                res = run_policy(m, run.variant_policy, vframes, vs, text=text, peak_tflops=peak, label=name,
                                 progress=False, deadline=budget.deadline, on_chunk=keep, decoder=dec,
                                 overlap_decode=flags["overlap"])
                diff = rel_l2(_one_forward(m, inputs), ref_forward)
            tol = FORWARD_TOLERANCE[vs.precision]
            check = {"rel_l2_vs_eager": diff, "tolerance": tol, "ok": bool(diff <= tol),
                     "what": "one denoising forward (t=1000, no memory) against the eager forward of the "
                             f"{setup.dtype} model, same inputs"}
        except KeyboardInterrupt:
            out.append({"label": name, "variant": name, "spec": run.variant_policy, "summary": {}, "chunks": [],
                        "error": "interrupted (SIGINT) after "
                                 f"{time.perf_counter() - t0:.0f} s; it stopped in: {_where()}"})
            log(f"  -> interrupted after {time.perf_counter() - t0:.0f} s in {_where()}")
            raise
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
            res = {"label": name, "spec": run.variant_policy, "summary": {}, "chunks": [], "frames_run": 0,
                   "error": f"{type(exc).__name__}: {exc}"[:400], "stopped": None, "kv_bytes_final": 0,
                   "peak_allocated_bytes": None}
        compiled_before |= keys
        res["variant"] = name
        res["sdpa"], res["compile"], res["cuda_graph_enabled"] = vs.sdpa, vs.compile, vs.cuda_graph
        res["precision"], res["end_to_end_decode"] = vs.precision, flags["e2e"]
        res["overlap_decode"], res["vae_layout"] = flags["overlap"], flags["vae_layout"] if flags["e2e"] else None
        res["setup_seconds_including_compile"] = time.perf_counter() - t0
        res["cold_start"] = {**_cold_start(res, vs.warmup), "caches": caches,
                             "prep_s": models.prep_s.get(vs.precision) if vs.precision != "dtype" else None}
        res["forward_check"] = check
        s = res["summary"]
        if s and not ref and name == run.variants[0]:
            ref = kept
        elif ref and kept:
            res["agreement_vs_first_variant"] = {
                f"chunk_{i}_rel_l2": rel_l2(kept[i], ref[i]) for i in sorted(kept) if i in ref}
        if s and kept_frames and ref_frames is None:
            ref_frames = kept_frames
        elif s and kept_frames:  # the decoded uint8 frames against the first end-to-end variant's
            res["frames_vs_first_e2e_variant"] = {f"chunk_{i}_max_abs_diff": int((kept_frames[i] - ref_frames[i])
                                                                                 .abs().max())
                                                  for i in sorted(kept_frames) if i in ref_frames}
        if s and flags["e2e"] not in base:
            base[flags["e2e"]] = s["latency_ms_median"]
        if s:
            res["speedup_vs_first_variant"] = base[flags["e2e"]] / s["latency_ms_median"]
        if s:
            per_chunk_ms.setdefault(flags["e2e"], s["wall_ms_median"])
            if not flags["e2e"]:
                budget.learn(res)
        out.append(res)
        if s:
            cs = res["cold_start"]
            log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.1f} video fps"
                f" (x{res['speedup_vs_first_variant']:.3f}), first chunk {cs.get('first_chunk_s', 0):.1f} s"
                + (f" ({caches} caches)" if caches else "")
                + (f", forward diff {check['rel_l2_vs_eager']:.1e} ({'ok' if check['ok'] else 'OVER'} "
                   f"{check['tolerance']:g})" if check else "")
                + (f", graph {res['cuda_graph']}" if res.get("cuda_graph") else ""))
        else:
            log(f"  -> failed: {res['error']}")
    del models, decoders
    return out
