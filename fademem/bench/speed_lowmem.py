"""The low-memory (24 GB) mode end to end (``fademem bench speed --low-memory``): the full pipeline
at the real configuration -- Wan2.1's UMT5-XXL text encoder (random weights at its real size, 5.7 B
parameters), the DiT, the Wan2.1 VAE streaming the decode -- with the text encoder kept on the CPU
and moved to the GPU only to encode the prompt (``fademem.pipeline.offload.OffloadedTextEncoder``,
as ``fademem generate --low-memory`` runs it).

Reported: peak GPU memory (``torch.cuda.max_memory_allocated``) over the whole run including the
encode (``peak_including_encode_bytes``) and over the generation after it (``peak_allocated_bytes``),
the GPU memory resident before the run (DiT, VAE), the encode's seconds (moves included) and
end-to-end fps (host wall time per chunk, uint8 frames on the host), against the 20 GiB target.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from fademem.bench.speed_policy import run_policy
from fademem.bench.speed_stats import frames_for_seconds

TARGET_GIB = 20.0
ENCODER_ALLOWANCE_S = 30.0  # building UMT5-XXL on the GPU, moving it to the host and back for the encode


def run_low_memory(model, run, budget, log) -> dict[str, Any]:
    """``run.low_memory_policy`` (default: the variant policy) end to end for ``run.low_memory_seconds``
    with the offloaded text encoder; ``run``: a ``fademem.bench.speed.SpeedRun``."""
    from fademem.bench.speed_e2e import build_random_vae
    from fademem.pipeline.fast import RegionalCompile
    from fademem.pipeline.offload import OffloadedTextEncoder
    from fademem.wan.text import random_umt5

    setup = run.setup
    device, dtype, fpc = torch.device(setup.device), setup.torch_dtype(), setup.frames_per_chunk
    spec = run.low_memory_policy or run.variant_policy
    frames = frames_for_seconds(run.low_memory_seconds, fpc)
    forecast = budget.forecast(frames // fpc, 0, ENCODER_ALLOWANCE_S + budget.VAE_ALLOWANCE_S, e2e=True)
    if forecast is not None and forecast > budget.left():
        return {"skipped": f"time budget: forecast {forecast:.0f} s, {budget.left():.0f} s left"}
    size = "tiny" if setup.config == "tiny" else "xxl"
    cfg = model.config
    t0 = time.perf_counter()
    encoder = random_umt5(size, cfg.text_dim, device=device, dtype=dtype, seed=setup.seed, max_length=cfg.text_len)
    enc_params = sum(p.numel() for p in encoder.model.parameters())
    enc_bytes = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    text = OffloadedTextEncoder(encoder, device)
    decoder = build_random_vae(device, dtype, run.vae, setup.seed)
    build_s = time.perf_counter() - t0
    log(f"low memory: {spec}, UMT5-{size} encoder ({enc_params / 1e9:.2f} B parameters, {enc_bytes / 2**30:.1f} GiB) "
        f"on the host, built in {build_s:.1f} s; {frames} latent frames end to end")
    first: dict[str, int] = {}

    def after_first(chunk) -> None:
        if chunk.index == 0 and device.type == "cuda":  # the encode and the first chunk are behind us
            first["peak"] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    gc.collect()
    with RegionalCompile(model, setup.compile, decoder=decoder):
        res = run_policy(model, spec, frames, setup, text=text, label=f"{spec} low-memory e2e", decoder=decoder,
                         deadline=budget.deadline, on_chunk=after_first)
    peak_gen = res.get("peak_allocated_bytes")
    peak_all = max(first.get("peak", 0), peak_gen or 0) if device.type == "cuda" else None
    s = res.get("summary") or {}
    out = {"policy": spec, "text_encoder": {"which": f"umt5-{size}", "parameters": enc_params, "bytes": enc_bytes,
                                            "home": "cpu", "encode_calls": text.encode_calls,
                                            "encode_seconds_including_moves": text.encode_seconds},
           "compile": setup.compile, "build_seconds": build_s, "seconds": run.low_memory_seconds,
           "resident_bytes_before": res.get("resident_bytes_before"),
           "peak_including_encode_bytes": peak_all, "peak_allocated_bytes": peak_gen,
           "peak_first_chunk_and_encode_bytes": first.get("peak"),
           "target_gib": TARGET_GIB, "meets_target": None if peak_all is None else peak_all / 2**30 <= TARGET_GIB,
           "e2e_fps": s.get("video_fps"), "latency_ms_median": s.get("latency_ms_median"), "run": res}
    log(f"  -> {s.get('latency_ms_median', float('nan')):.1f} ms/chunk, {s.get('video_fps', float('nan')):.2f} "
        f"video fps end to end; peak GPU memory {(peak_all or 0) / 2**30:.2f} GiB with the encode, "
        f"{(peak_gen or 0) / 2**30:.2f} GiB generating (target <= {TARGET_GIB:g} GiB)"
        + (f"; {res['error']}" if res.get("error") else ""))
    del text, encoder, decoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out
