"""End-to-end speed: the DiT plus streaming VAE decode (``fademem bench speed --e2e-policies``).

The VAE is diffusers' ``AutoencoderKLWan`` at the Wan2.1 configuration (diffusers' class
defaults are that configuration: base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks,
temporal downsampling [False, True, True], the published latent mean/std), with random weights in
the benchmark dtype on the device -- the decode cost does not depend on the weights. Under a
compile mode (the default on CUDA) the DiT and the VAE decoder are compiled
(``fademem.pipeline.fast.RegionalCompile``). The pipeline
decodes chunk by chunk through ``fademem.wan.vae.WanVAEDecoder`` (its causal feature cache carried
between chunks), as a real generation does, and the decoded uint8 frames reach the host before a
chunk counts as done.

Per policy the report puts DiT-only fps (from the sweep or the long runs) next to end-to-end fps,
with the decode run in place and overlapped with the next chunk on a side stream
(``VideoPipeline(overlap_decode=True)``). The decode's cost is the same for every policy (same
latent shape), so the overlap comparison is made on the first policy only. The overlapped run's
frames and latents are compared with the sequential run's (they must be identical).

Compiled on CUDA, the end-to-end rows run as ``fademem generate`` does there
(``fademem.pipeline.fast.fast_decode``): the decoder's conv3d weights in channels_last_3d for every
row, and with ``overlap='both'`` the policies after the first decode overlapped (the first still
runs both ways). Eager, or off CUDA, the decoder stays contiguous and those policies decode in place.
With the overlap the last chunk's yield is only its decode's drain: it is left out of the steady
statistics (``summary.drain_ms``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from fademem.bench.speed_policy import rel_l2, run_policy
from fademem.bench.speed_stats import frames_for_seconds
from fademem.pipeline.fast import decoder_channels_last, fast_decode

WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0)


def build_random_vae(device: str | torch.device, dtype: torch.dtype, which: str = "wan2.1", seed: int = 0):
    """A ``WanVAEDecoder`` over a random-weight ``AutoencoderKLWan`` (``which``: 'wan2.1' or 'tiny')."""
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from diffusers import AutoencoderKLWan

    from fademem.wan.vae import WanVAEDecoder

    kw = {"wan2.1": WAN21_VAE, "tiny": TINY_VAE}.get(which)
    if kw is None:
        raise ValueError(f"unknown VAE {which!r}: 'wan2.1' or 'tiny'")
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKLWan(**kw)
    return WanVAEDecoder(vae.to(dtype=dtype))


def time_decode(decoder, latent: tuple[int, int, int], fpc: int, device: torch.device, dtype: torch.dtype,
                chunks: int = 4) -> float:
    """Median wall ms of ``decoder.decode`` for one chunk of ``fpc`` latent frames (after the first
    chunk of a video, which yields fewer frames), uint8 frames on the host included."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, *latent[:1], fpc, *latent[1:], generator=g).to(device, dtype)
    decoder.reset()
    decoder.decode(z)  # first chunk (9 frames) and warm-up
    times = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        decoder.decode(z)
        times.append((time.perf_counter() - t0) * 1e3)
    decoder.reset()
    return statistics.median(times)


def run_end_to_end(model, run, text, peak, budget, report: dict, log) -> dict[str, Any]:
    """DiT + streaming decode for ``run.e2e_policies``; see the module doc."""
    setup = run.setup
    device = torch.device(setup.device)
    dtype = setup.torch_dtype()
    fpc = setup.frames_per_chunk
    try:
        from fademem._compat import hf_ready

        hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
        import diffusers  # noqa: F401
    except ImportError:
        return {"skipped": "diffusers is not importable: end-to-end fps with streaming VAE decode not measured"}
    frames = frames_for_seconds(run.e2e_seconds, fpc)
    n = frames // fpc
    if not budget.fits(n, 0, budget.VAE_ALLOWANCE_S, e2e=True):
        return {"skipped": f"time budget ({budget.left():.0f} s left)"}
    decoder = build_random_vae(device, dtype, run.vae, setup.seed)
    fast = fast_decode(setup.compile, device)  # as fademem generate: channels-last decoder, overlapped decode
    if fast:
        decoder_channels_last(decoder)
    vae_cfg = dict(decoder.vae.config)
    out: dict[str, Any] = {
        "vae": {"which": run.vae, "dtype": str(dtype).replace("torch.", ""),
                "parameters": sum(p.numel() for p in decoder.vae.parameters()),
                "decoder_parameters": sum(p.numel() for p in decoder.vae.decoder.parameters()),
                "config": {k: vae_cfg[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks",
                                                   "temperal_downsample") if k in vae_cfg}},
        "seconds": run.e2e_seconds,
        "vae_layout": "channels_last_3d" if fast else "contiguous",
        "note": "VAE decode cost is the same for every policy (same latent shape): overlap on/off is measured on "
                "the first policy; the others run " + ("with the decode overlapped, as fademem generate compiled on "
                                                       "CUDA" if fast and run.overlap == "both" else
                                                       "with the first decode mode"),
        "runs": [], "side_by_side": [],
    }
    from fademem.pipeline.fast import RegionalCompile

    compiled = RegionalCompile(model, setup.compile, decoder=decoder)  # the DiT and the decoder ('none': eager)
    compiled.__enter__()
    try:
        out["compile"] = setup.compile
        t0 = time.perf_counter()
        out["decode_ms_per_chunk"] = time_decode(decoder, setup.latent, fpc, device, dtype)
        out["decode_warmup_s"] = time.perf_counter() - t0  # includes compiling the decoder
        budget.e2e_extra_ms = out["decode_ms_per_chunk"]
        log(f"VAE decode alone: {out['decode_ms_per_chunk']:.1f} ms per {fpc}-frame chunk")
        modes = {"off": [False], "on": [True], "both": [False, True]}[run.overlap]
        rest = [True] if fast and run.overlap == "both" else modes[:1]  # the policies after the first
        kept: dict[bool, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        check = {1, n - 1}
        for k, spec in enumerate(run.e2e_policies):
            for overlap in modes if k == 0 else rest:
                name = f"{spec} e2e overlap={'on' if overlap else 'off'}"
                if not budget.fits(n, 0, 0.0, e2e=True):
                    report["skipped"].append({"end_to_end": name, "reason": "time budget"})
                    log(f"skipped end to end {name}: time budget")
                    continue
                log(f"end to end {name}: {frames} latent frames")
                got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

                def keep(chunk, got=got):
                    if chunk.index in check:
                        got[chunk.index] = (chunk.latents.detach().cpu(), chunk.frames)

                res = run_policy(model, spec, frames, setup, text=text, peak_tflops=peak, label=name, decoder=decoder,
                                 overlap_decode=overlap, deadline=budget.deadline, on_chunk=keep)
                if k == 0:
                    kept[overlap] = got
                res["overlap_decode"] = overlap
                s = res["summary"]
                log(f"  -> {s['latency_ms_median']:.1f} ms/chunk, {s['video_fps']:.2f} video fps" if s
                    else f"  -> failed: {res['error'] or res['stopped']}")
                out["runs"].append(res)
    finally:
        compiled.__exit__(None, None, None)
    if len(kept) == 2 and kept[False] and kept[True]:
        same = sorted(set(kept[False]) & set(kept[True]))
        out["overlap_agreement"] = {
            "chunks": same,
            "latents_equal": all(torch.equal(kept[False][i][0], kept[True][i][0]) for i in same),
            "latents_rel_l2": max((rel_l2(kept[True][i][0], kept[False][i][0]) for i in same), default=None),
            "frames_max_abs_diff": max((int((kept[True][i][1].int() - kept[False][i][1].int()).abs().max())
                                        for i in same), default=None),
        }
    dit = {r["spec"]: r for r in report["policies"] + ((report.get("long_runs") or {}).get("policies") or [])
           if r.get("summary")}
    for spec in run.e2e_policies:
        runs = [r for r in out["runs"] if r["label"].startswith(spec + " ") and r.get("summary")]
        row: dict[str, Any] = {"spec": runs[0]["spec"] if runs else spec}
        src = dit.get(row["spec"])
        row["dit_fps"] = src["summary"]["video_fps"] if src else None
        for r in runs:
            row["e2e_overlap_fps" if r["overlap_decode"] else "e2e_fps"] = r["summary"]["video_fps"]
        out["side_by_side"].append(row)
    del decoder
    return out
