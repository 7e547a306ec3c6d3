"""The official LongLive v1.0 pipeline END TO END beside fademem's, in one process: their causal DiT
(sink 3 + local 15, 15 visible frames) and their Wan VAE's ``cached_decode`` chunk by chunk (as a
streaming LongLive run decodes), frames as uint8 on the host, against fademem's pipeline at the same
visible frames with its streaming decode (diffusers' ``AutoencoderKLWan``), eager and compiled.

The official code is read from ``.ref/longlive`` exactly as ``official_harness.py`` does (see there and
benchmarks/RUN_GPU.md). Same random DiT weights for both (their model loads our state dict); each VAE
has its own random weights at the Wan2.1 configuration (the decode cost does not depend on them).
Their decode follows ``WanVAEWrapper.decode_to_pixel(use_cache=True)``: latents in the model dtype,
``scale = [mean, 1/std]`` in that dtype, ``cached_decode`` (``clear_cache()`` once per video), float,
clamp to [-1, 1]; then, like ours, uint8 [B, T, H, W, 3] on the host. Latency is host wall time per
chunk. Ours: ``fademem.bench.speed.run_policy`` with the decoder, under ``RegionalCompile`` (DiT blocks
and the VAE decoder) for the compiled runs; the first compiled run's first chunk is the compile cost
of a second process (Inductor's caches on disk from earlier runs) or a cold one.

    python3 benchmarks/official_e2e.py --chunks 12 --out out/official_e2e.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import official_harness as H  # noqa: E402

from fademem.bench import speed as sp  # noqa: E402
from fademem.bench.speed_e2e import WAN21_VAE, build_random_vae  # noqa: E402

OURS = ["sink:budget=12,sink=3", "fademem:budget=12"]  # 15 visible frames, as their sink3 + local15


def build_their_vae(vae_mod, device, dtype, seed: int = 0):
    torch.manual_seed(seed)
    kw = {k: v for k, v in WAN21_VAE.items() if k != "base_dim"}
    with torch.device(device):
        vae = vae_mod.WanVAE_(dim=WAN21_VAE["base_dim"], **kw)
    return vae.to(dtype).eval().requires_grad_(False)


def their_decoder(vae, mean: torch.Tensor, std: torch.Tensor, device, dtype):
    """decode(x0 [B, F, C, H, W]) as their wrapper with use_cache=True, then uint8 frames on the host."""
    scale = [mean.flatten().to(device=device, dtype=dtype), 1.0 / std.flatten().to(device=device, dtype=dtype)]
    vae.clear_cache()

    @torch.no_grad()
    def decode(x0):
        video = vae.cached_decode(x0.permute(0, 2, 1, 3, 4), scale).float().clamp_(-1, 1)
        frames = ((video + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()
        return frames.cpu()

    return decode


def main(argv=None) -> int:
    ap = H.model_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--vae", default="wan2.1", choices=["wan2.1", "tiny"], help="ours (tiny: tests)")
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--compile", default="auto", help="ours, compiled runs: auto (default on CUDA), default, ...")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; later runs are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    deadline = None if args.time_budget is None else t_start + args.time_budget
    latent = tuple(int(v) for v in args.latent.split("x"))
    setup = sp.SpeedSetup(config=args.config, latent=latent, device=args.device, dtype=args.dtype, seed=args.seed,
                          warmup=args.warmup)
    dev, dt = torch.device(args.device), setup.torch_dtype()
    mode = sp.resolve_compile(args.compile, dev)
    cache = sp.enable_compile_cache() if mode != "none" else None
    cfg = setup.wan_config()
    ours = sp.build_model(setup)
    text = sp.RandomText(cfg.text_len, cfg.text_dim, args.seed)
    num_frames = args.chunks * setup.frames_per_chunk
    report = {"benchmark": "official-end-to-end", "environment": sp.environment(dev), "compile": mode,
              "compile_cache": cache, "setup": {**vars(args), "latent_frames": num_frames}, "runs": [],
              "skipped": [], "timing": "host wall ms per chunk, uint8 frames on the host"}
    mod = H.import_official("longlive", Path(args.ref), extra=("wan.modules.vae",))
    report["imports"] = mod._fademem_bench_info
    theirs = H.build_official(mod, "longlive", cfg, setup, ours.state_dict(), local_attn_size=15, sink_size=3)
    try:
        report["dit_agreement_rel_l2"] = H.agreement(ours, theirs, OURS[0], cfg, setup, 15, text.states, chunks=2)
    except Exception as exc:  # noqa: BLE001
        report["dit_agreement_rel_l2"] = f"{type(exc).__name__}: {exc}"[:300]
    decoder = build_random_vae(dev, dt, args.vae, args.seed)
    vae = build_their_vae(mod._fademem_extra["wan.modules.vae"], dev, dt, args.seed)
    report["their_vae_parameters"] = sum(p.numel() for p in vae.parameters())

    def log(res):
        s = res.get("summary") or {}
        print(f"{res['label'][:52]:52s} " + (f"{s['latency_ms_median']:8.1f} ms/chunk {s['video_fps']:7.2f} fps e2e"
                                              if s else f"failed: {res.get('error') or res.get('stopped')}"),
              flush=True)
        report["runs"].append(res)

    label = "official LongLive v1.0 sink3+local15 + cached_decode (e2e)"
    r = H.run_official(theirs, label, cfg, setup, num_frames, 15, text.states, None, 12,
                       decode=their_decoder(vae, decoder.mean, decoder.std, dev, dt), deadline=deadline)
    r["system"] = label
    log(r)
    del theirs, vae
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    plan = [(OURS[0], "none")] + [(spec, mode) for spec in OURS if mode != "none"]
    compiled = None
    for spec, m in plan:
        est = None if not report["runs"][-1].get("summary") else \
            args.chunks * report["runs"][-1]["summary"]["wall_ms_median"] / 1e3
        if deadline is not None and est is not None and time.perf_counter() + est > deadline:
            report["skipped"].append(f"{spec} compile={m}: time budget")
            continue
        if m != "none" and compiled is None:
            compiled = sp.RegionalCompile(ours, m, decoder=decoder).__enter__()
        r = sp.run_policy(ours, spec, num_frames, setup, text=text, label=f"fademem {spec} compile={m} (e2e)",
                          decoder=decoder, deadline=deadline)
        r["system"], r["compile"] = "fademem (this repo)", m
        walls = [c["wall_ms"] for c in r["chunks"]]
        r["first_chunk_s"] = walls[0] / 1e3 if walls else None
        log(r)
    if compiled is not None:
        compiled.__exit__(None, None, None)
    base = report["runs"][0].get("summary") or {}
    report["ratios"] = {}
    for res in report["runs"][1:]:
        s = res.get("summary") or {}
        if s and base:
            report["ratios"][f"{res['label']} / official LongLive e2e fps (target >= 1.3 compiled)"] = \
                s["video_fps"] / base["video_fps"]
    report["elapsed_s"] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.3f}")
    print(f"DiT agreement (ours vs theirs, same weights): {report['dit_agreement_rel_l2']}")
    for res in report["runs"][1:]:
        if res.get("first_chunk_s") is not None:
            print(f"first chunk {res['label']}: {res['first_chunk_s']:.1f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
