"""Official LongLive v1.0 and FadeMem (aniki-ly/FadeMem) models side by side with fademem's, timed
the same way, same config, same random weights, in one process.

The official model code is NOT part of this repository. It is read from a git-ignored folder
``.ref/`` at the repository root, made on a machine with the mirrors (see benchmarks/RUN_GPU.md)::

    mkdir -p .ref/longlive .ref/fademem
    git -C /work/.mirror/NVlabs+LongLive/repo archive v1.0 wan utils/memory.py utils/debug_option.py |
        tar -x -C .ref/longlive
    git -C /work/.mirror/aniki-ly+FadeMem/repo archive HEAD wan utils/memory.py utils/debug_option.py |
        tar -x -C .ref/fademem

How their code is loaded (nothing in .ref is edited):
* Their ``wan/__init__.py`` and ``wan/modules/__init__.py`` import the T5 encoder, tokenizers
  (ftfy), the VAE and text2video/image2video, none of which the DiT needs; we register ``wan``,
  ``wan.modules`` and ``utils`` as bare packages (``__path__`` only) so only the DiT's own modules
  run: ``wan.modules.{attention, model, causal_model | causal_model_fademem, fademem_memory}``,
  ``utils.memory`` and ``utils.debug_option``. Both repositories call their package ``wan`` (and
  ``utils``), so each is imported in turn and its ``sys.modules`` entries removed afterwards.
* ``wan.modules.model`` and both causal models import ``diffusers`` (ModelMixin, ConfigMixin) and
  ``einops`` at module level: diffusers must be installed (carry its pure-Python wheel to the GPU
  machine); einops is already there. ``flash_attn`` is optional for them.
* Without flash-attn, their self-attention (``attention()``) falls back to torch SDPA, but the
  text cross-attention (``WanT2VCrossAttention`` in wan/modules/model.py) calls
  ``flash_attention()`` directly, which asserts that flash-attn is installed. We rebind the name
  ``flash_attention`` in ``wan.modules.model``'s globals to their own ``attention()`` (its SDPA
  fallback, same arguments) when flash-attn is missing.
* ``utils/memory.py`` calls ``torch.cuda.current_device()`` at import; on a machine without CUDA
  (the CPU check) ``current_device`` is made to answer 0 during that import only.
* FadeMem as released reads an undefined global ``_log`` in ``fademem_memory._insert_entry`` (a
  NameError at the first merge, latent frame 15): we set ``_log = False`` in that module's
  globals after import.

The chunk loop follows ``pipeline/causal_inference.py`` of both repositories: per-layer kv_cache
dicts ``{k, v, global_end_index, local_end_index}`` of ``local_attn_size * frame_seq_length``
tokens (FadeMem's model adds its ``fademem_*`` bank entries itself), crossattn_cache dicts
``{k, v, is_init}``, ``current_start = start_frame * frame_seq_length``, timesteps ``[B, F]``
from the warped list, x0 from the flow in float64 (their wrapper), re-noising with device noise,
then one forward of the clean chunk at t=0 (context_noise 0) that updates the caches. As their
pipeline does after construction, ``num_frame_per_block = 3``, ``local_attn_size`` and every
module's ``max_attention_size`` (``local_attn_size * frame_seq_length``) are set on the model.

Timed like ``fademem bench speed``: CUDA events around each chunk, statistics after ``--warmup``
chunks, 4 video frames per latent frame for fps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fademem.bench import speed as sp  # noqa: E402
from fademem.memory import MemoryStack  # noqa: E402
from fademem.wan.sampling import FlowSchedule  # noqa: E402

MODULES = {"longlive": "wan.modules.causal_model", "fademem": "wan.modules.causal_model_fademem"}


# -------------------------------------------------------------------------------------------
# Importing the official code
# -------------------------------------------------------------------------------------------
def _bare_package(name: str, path: Path) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    mod.__package__ = name
    sys.modules[name] = mod
    return mod


@contextlib.contextmanager
def _cuda_device_zero_without_cuda():
    """utils/memory.py evaluates torch.cuda.current_device() at import; let it answer 0 on a
    machine without CUDA (CPU check only; untouched where CUDA exists)."""
    if torch.cuda.is_available():
        yield
        return
    orig = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        torch.cuda.current_device = orig


def import_official(kind: str, ref: Path, extra: tuple[str, ...] = ()) -> types.ModuleType:
    """Import one repository's causal model module from ``ref/<kind>``; returns the module. ``extra``:
    more of their modules imported in the same scope (e.g. ``wan.modules.vae``), kept on the returned
    module as ``_fademem_extra[name]``."""
    root = ref / kind
    if not (root / "wan" / "modules").is_dir():
        raise FileNotFoundError(f"{root}/wan/modules not found: build .ref first (benchmarks/RUN_GPU.md)")
    if not (root / "utils" / "memory.py").is_file():
        raise FileNotFoundError(f"{root}/utils/memory.py not found: the git archive must include "
                                "utils/memory.py utils/debug_option.py (benchmarks/RUN_GPU.md)")
    names = ("wan", "utils")
    clash = lambda k: any(k == n or k.startswith(n + ".") for n in names)  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if clash(k)}
    try:
        _bare_package("wan", root / "wan")
        _bare_package("wan.modules", root / "wan" / "modules")
        _bare_package("utils", root / "utils")
        with _cuda_device_zero_without_cuda():
            mod = importlib.import_module(MODULES[kind])
            mod._fademem_extra = {name: importlib.import_module(name) for name in extra}
        attn = sys.modules["wan.modules.attention"]
        model_mod = sys.modules["wan.modules.model"]
        mod._fademem_bench_info = {"flash_attn_2": attn.FLASH_ATTN_2_AVAILABLE,
                                   "flash_attn_3": attn.FLASH_ATTN_3_AVAILABLE,
                                   "cross_attention_routed_to_sdpa": False, "log_global_injected": False}
        if not (attn.FLASH_ATTN_2_AVAILABLE or attn.FLASH_ATTN_3_AVAILABLE):
            def flash_attention_via_sdpa(q, k, v, q_lens=None, k_lens=None, dropout_p=0., softmax_scale=None,
                                         q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                                         dtype=torch.bfloat16, version=None):
                return attn.attention(q, k, v, q_lens=q_lens, k_lens=k_lens, dropout_p=dropout_p,
                                      softmax_scale=softmax_scale, q_scale=q_scale, causal=causal,
                                      window_size=window_size, deterministic=deterministic, dtype=dtype)

            model_mod.flash_attention = flash_attention_via_sdpa
            mod._fademem_bench_info["cross_attention_routed_to_sdpa"] = True
        if kind == "fademem":
            fm = sys.modules["wan.modules.fademem_memory"]
            if "_log" not in vars(fm):
                fm._log = False  # the one-line crash fix of the release (undefined global)
                mod._fademem_bench_info["log_global_injected"] = True
        return mod
    finally:
        for k in [k for k in sys.modules if clash(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


# -------------------------------------------------------------------------------------------
# Building and driving the official models
# -------------------------------------------------------------------------------------------
def build_official(mod, kind: str, cfg, setup: sp.SpeedSetup, state_dict, *, local_attn_size: int,
                   sink_size: int, fademem_kw: dict | None = None):
    kwargs = dict(model_type="t2v", patch_size=tuple(cfg.patch_size), text_len=cfg.text_len, in_dim=cfg.in_dim,
                  dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim,
                  out_dim=cfg.out_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                  local_attn_size=local_attn_size, sink_size=sink_size, qk_norm=cfg.qk_norm,
                  cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps)
    if kind == "fademem":
        kwargs.update(fademem_kw or {})
    with torch.device(setup.device):
        model = mod.CausalWanModel(**kwargs)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{kind}: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.to(setup.torch_dtype()).eval().requires_grad_(False)
    # What their CausalInferencePipeline does after building the generator:
    tpf = setup.tokens_per_frame(cfg)
    model.num_frame_per_block = setup.frames_per_chunk
    model.local_attn_size = local_attn_size
    size = 32760 if local_attn_size == -1 else local_attn_size * tpf
    for m in model.modules():
        if hasattr(m, "max_attention_size"):
            m.max_attention_size = size
    return model


def official_caches(cfg, setup: sp.SpeedSetup, local_attn_size: int, num_frames: int, batch: int = 1):
    dev, dt = torch.device(setup.device), setup.torch_dtype()
    tpf = setup.tokens_per_frame(cfg)
    size = (local_attn_size if local_attn_size != -1 else num_frames) * tpf
    h, d = cfg.num_heads, cfg.head_dim
    kv = [{"k": torch.zeros(batch, size, h, d, dtype=dt, device=dev),
           "v": torch.zeros(batch, size, h, d, dtype=dt, device=dev),
           "global_end_index": torch.tensor([0], dtype=torch.long, device=dev),
           "local_end_index": torch.tensor([0], dtype=torch.long, device=dev)} for _ in range(cfg.num_layers)]
    cross = [{"k": torch.zeros(batch, cfg.text_len, h, d, dtype=dt, device=dev),
              "v": torch.zeros(batch, cfg.text_len, h, d, dtype=dt, device=dev),
              "is_init": False} for _ in range(cfg.num_layers)]
    return kv, cross


def official_forward(model, x_bfchw, t_bf, prompt_embeds, kv, cross, start_frame, tpf):
    """WanDiffusionWrapper.forward with a kv_cache: permute to [B, C, F, H, W], call, x0 in float64."""
    flow = model(x_bfchw.permute(0, 2, 1, 3, 4), t=t_bf, context=prompt_embeds, seq_len=32760,
                 kv_cache=kv, crossattn_cache=cross, current_start=start_frame * tpf,
                 cache_start=None).permute(0, 2, 1, 3, 4)
    sigma = (t_bf.double() / 1000.0)[..., None, None, None]
    x0 = (x_bfchw.double() - sigma * flow.double()).to(flow.dtype)
    return flow, x0


def run_official(model, label: str, cfg, setup: sp.SpeedSetup, num_frames: int, local_attn_size: int,
                 text_states: torch.Tensor, peak_tflops: float | None, memory_frames: int, decode=None,
                 deadline: float | None = None) -> dict:
    """Their CausalInferencePipeline.inference chunk loop, timed per chunk. ``decode(x0 [B, F, C, H, W])``
    (end to end: their VAE's ``cached_decode``, frames to the host) runs after each chunk's cache pass;
    latency is then the host wall time. ``deadline`` (perf_counter) stops the run early."""
    dev, dt = torch.device(setup.device), setup.torch_dtype()
    fpc, tpf = setup.frames_per_chunk, setup.tokens_per_frame(cfg)
    c, h, w = setup.latent
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    resident = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
    kv, cross = official_caches(cfg, setup, local_attn_size, num_frames)
    g = torch.Generator(device=dev).manual_seed(setup.seed)
    noise = torch.randn(1, num_frames, c, h, w, generator=g, device=dev, dtype=dt)
    prompt_embeds = text_states.to(dev, dt)
    steps = torch.tensor(FlowSchedule().timesteps, dtype=torch.float32)  # == their warped list
    timer = sp.ChunkTimer(dev)
    chunks, error = [], None
    with torch.no_grad(), sp.sdpa_context(setup.sdpa):
        for index, start in enumerate(range(0, num_frames, fpc)):
            if deadline is not None and time.perf_counter() > deadline:
                error = f"time budget: stopped before chunk {index}"
                break
            held = min(start, memory_frames)  # history frames visible to this chunk
            timer.start()
            try:
                noisy = noise[:, start:start + fpc]
                for i, t in enumerate(steps):
                    timestep = torch.ones([1, fpc], device=dev, dtype=torch.int64) * t
                    _, x0 = official_forward(model, noisy, timestep, prompt_embeds, kv, cross, start, tpf)
                    if i + 1 < len(steps):
                        s = float(steps[i + 1]) / 1000.0
                        noisy = ((1 - s) * x0.flatten(0, 1)
                                 + s * torch.randn_like(x0.flatten(0, 1))).unflatten(0, x0.shape[:2])
                official_forward(model, x0, torch.zeros_like(timestep), prompt_embeds, kv, cross, start, tpf)
                if decode is not None:
                    decode(x0)
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"[:400]
                break
            ms, wall = timer.stop()
            rec = {"index": index, "start": start, "latency_ms": wall if decode is not None else ms, "wall_ms": wall,
                   "device_ms": ms, "memory_frames": held,
                   "flops": sp.chunk_flops(cfg, tpf, fpc, held), "kv_bytes": _cache_bytes(kv)}
            if dev.type == "cuda":
                rec["allocated_bytes"] = torch.cuda.memory_allocated(dev)
            chunks.append(rec)
    res = {"label": label, "spec": label, "frames_run": (chunks[-1]["start"] + fpc) if chunks else 0,
           "error": error, "visible_frames_steady": memory_frames + fpc, "kv_bytes_final": _cache_bytes(kv),
           "resident_bytes_before": resident,
           "peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
           "summary": sp.summarise(chunks, setup.warmup, fpc, peak_tflops), "chunks": chunks}
    del kv, cross, noise
    gc.collect()
    return res


def _cache_bytes(kv) -> int:
    return sum(t.numel() * t.element_size() for layer in kv for t in layer.values()
               if isinstance(t, torch.Tensor) and t.dim() > 1)


# -------------------------------------------------------------------------------------------
# Numerical agreement (same weights, same inputs)
# -------------------------------------------------------------------------------------------
def agreement(ours, theirs, spec: str, cfg, setup: sp.SpeedSetup, local_attn_size: int, text_states,
              chunks: int = 2) -> list[float]:
    """Relative L2 difference of the flow prediction for ``chunks`` chunks: first denoising
    forward of each chunk, then the cache-writing forward of the same input at t=0."""
    dev, dt = torch.device(setup.device), setup.torch_dtype()
    fpc, tpf = setup.frames_per_chunk, setup.tokens_per_frame(cfg)
    c, h, w = setup.latent
    g = torch.Generator(device="cpu").manual_seed(setup.seed + 1)
    stack = MemoryStack(spec, cfg.num_layers)
    kv, cross = official_caches(cfg, setup, local_attn_size, fpc * chunks)
    ctx = ours.encode_text(text_states.to(dev))
    out = []
    with torch.no_grad():
        for k in range(chunks):
            start = k * fpc
            x = torch.randn(1, c, fpc, h, w, generator=g).to(dev, dt)
            t = torch.full((1, fpc), 1000.0, device=dev)
            v_ours = ours(x, t, ctx, memory=stack, start_frame=start)
            v_theirs, _ = official_forward(theirs, x.permute(0, 2, 1, 3, 4), t, text_states.to(dev, dt), kv, cross,
                                           start, tpf)
            v_theirs = v_theirs.permute(0, 2, 1, 3, 4)
            out.append(float((v_ours.float() - v_theirs.float()).norm() / v_theirs.float().norm().clamp_min(1e-12)))
            t0 = torch.zeros((1, fpc), device=dev)
            ours(x, t0, ctx, memory=stack, start_frame=start, write_memory=True)
            official_forward(theirs, x.permute(0, 2, 1, 3, 4), t0, text_states.to(dev, dt), kv, cross, start, tpf)
    return out


# -------------------------------------------------------------------------------------------
# Main
# -------------------------------------------------------------------------------------------
PAIRS = [
    # (official label, kind, local_attn_size, sink, visible history frames, our spec)
    ("official LongLive v1.0 sink3+local12", "longlive", 12, 3, 9, "sink:budget=9,sink=3"),
    ("official LongLive v1.0 sink3+local15", "longlive", 15, 3, 12, "sink:budget=12,sink=3"),
    ("official FadeMem release 12 slots", "fademem", 3, 0, 12, "fademem:budget=12,preset=release"),
]
EXTRA_OURS = ["fademem:budget=12"]


def model_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every official side-by-side script shares: where the official code is, the config, the
    latent shape, device and dtype."""
    ap.add_argument("--ref", default=str(ROOT / ".ref"))
    ap.add_argument("--config", default="1.3b", choices=["1.3b", "14b", "tiny"])
    ap.add_argument("--latent", default="16x60x104")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    return ap


def main(argv=None) -> int:
    ap = model_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--chunks", type=int, default=24, help="chunks per run (3 latent frames each)")
    ap.add_argument("--warmup", type=int, default=6, help="chunks left out of the statistics")
    ap.add_argument("--sdpa", default="auto", choices=list(sp.SDPA_BACKENDS))
    ap.add_argument("--systems", default="longlive,fademem")
    ap.add_argument("--no-check", action="store_true", help="skip the numerical agreement check")
    ap.add_argument("--check-chunks", type=int, default=8, help="chunks compared in the agreement check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON report")
    ap.add_argument("--table", metavar="JSON", help="only print the table of an earlier report")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as fh:
            print(format_table(json.load(fh)))
        return 0
    if not args.out:
        ap.error("--out is required")

    latent = tuple(int(v) for v in args.latent.split("x"))
    setup = sp.SpeedSetup(config=args.config, latent=latent, device=args.device, dtype=args.dtype, seed=args.seed,
                          warmup=args.warmup, sdpa=args.sdpa)
    dev = torch.device(args.device)
    t_start = time.perf_counter()
    cfg = setup.wan_config()
    peak = sp.measure_matmul_peak(dev)
    ours = sp.build_model(setup)
    text = sp.RandomText(cfg.text_len, cfg.text_dim, args.seed)
    state = ours.state_dict()
    num_frames = args.chunks * setup.frames_per_chunk
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    ref = Path(args.ref)
    report = {"benchmark": "official-side-by-side", "environment": sp.environment(dev), "peak_bf16_tflops": peak,
              "setup": {**vars(args), "latent_frames": num_frames}, "imports": {}, "agreement": {}, "runs": []}
    mods = {}
    for kind in systems:
        mods[kind] = import_official(kind, ref)
        report["imports"][kind] = mods[kind]._fademem_bench_info
        print(f"imported official {kind}: {mods[kind]._fademem_bench_info}", flush=True)

    fm_kw = dict(fademem_enabled=True, fademem_summary_slots=12, fademem_warp_type="power",
                 fademem_warp_beta=0.3, fademem_span_gamma=0.5)
    results = {}
    for label, kind, local, sink, hist, spec in PAIRS:
        if kind not in mods:
            continue
        theirs = build_official(mods[kind], kind, cfg, setup, state, local_attn_size=local, sink_size=sink,
                                fademem_kw=fm_kw)
        if not args.no_check:
            try:
                report["agreement"][f"{label} vs {spec}"] = agreement(ours, theirs, spec, cfg, setup, local,
                                                                      text.states, chunks=args.check_chunks)
            except Exception as exc:  # noqa: BLE001
                report["agreement"][f"{label} vs {spec}"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"agreement {label} vs {spec}: {report['agreement'][f'{label} vs {spec}']}", flush=True)
        # interleave: ours, theirs, ours again (drift check)
        for who in ("ours", "theirs"):
            if who == "ours" and spec in results:
                continue
            if who == "ours":
                r = sp.run_policy(ours, spec, num_frames, setup, text=text, peak_tflops=peak, label=spec)
                r["system"] = "fademem (this repo)"
                results[spec] = r
            else:
                r = run_official(theirs, label, cfg, setup, num_frames, local, text.states, peak, hist)
                r["system"] = label
                results[label] = r
            report["runs"].append(r)
            s = r["summary"]
            print(f"{r['label']:45s} " + (f"{s['latency_ms_median']:8.1f} ms/chunk {s['video_fps']:7.2f} fps"
                                           if s else f"failed: {r['error']}"), flush=True)
        del theirs
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for spec in EXTRA_OURS:
        r = sp.run_policy(ours, spec, num_frames, setup, text=text, peak_tflops=peak, label=spec)
        r["system"] = "fademem (this repo)"
        results[spec] = r
        report["runs"].append(r)

    report["targets"] = targets(results)
    report["elapsed_s"] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(format_table(report))
    print(f"wrote {args.out}")
    return 0


def _fps(results, key):
    r = results.get(key)
    return r["summary"]["video_fps"] if r and r.get("summary") else None


def targets(results: dict) -> dict:
    out = {}
    fm_off = _fps(results, PAIRS[2][0])
    for spec in ("fademem:budget=12,preset=release", "fademem:budget=12"):
        f = _fps(results, spec)
        if f and fm_off:
            out[f"{spec} / official FadeMem fps (target >= 1.3)"] = f / fm_off
    for label, _, _, _, _, spec in PAIRS[:2]:
        a, b = _fps(results, spec), _fps(results, label)
        if a and b:
            out[f"{spec} / {label} fps (target >= 1.0)"] = a / b
    ll15 = _fps(results, PAIRS[1][0])
    f = _fps(results, "fademem:budget=12")
    if f and ll15:
        out["fademem:budget=12 / official LongLive sink3+local15 fps, 15 visible (target >= 1.0)"] = f / ll15
    s = results.get("sink:budget=12,sink=3")
    for spec in ("fademem:budget=12", "fademem:budget=12,preset=release"):
        r = results.get(spec)
        if r and s and r.get("summary") and s.get("summary"):
            out[f"{spec} overhead over sink:budget=12,sink=3 (target <= 3%)"] = \
                r["summary"]["latency_ms_median"] / s["summary"]["latency_ms_median"] - 1
    return out


def format_table(report: dict) -> str:
    rows = [f"{'system':45s} {'ms/chunk':>9s} {'p90':>7s} {'vid fps':>8s} {'TFLOP/s':>8s} "
            f"{'work GiB':>9s} {'visible':>7s}"]
    for r in report["runs"]:
        s = r.get("summary") or {}
        if not s:
            rows.append(f"{r['label'][:45]:45s} failed: {r.get('error')}")
            continue
        work = None
        if r.get("peak_allocated_bytes") is not None and r.get("resident_bytes_before") is not None:
            work = (r["peak_allocated_bytes"] - r["resident_bytes_before"]) / 2**30
        rows.append(f"{r['label'][:45]:45s} {s['latency_ms_median']:9.1f} {s['latency_ms_p90']:7.1f} "
                    f"{s['video_fps']:8.2f} {(s['achieved_tflops'] or 0):8.1f} "
                    f"{(work if work is not None else float('nan')):9.2f} {r.get('visible_frames_steady') or 0:7d}")
    for k, v in report.get("targets", {}).items():
        rows.append(f"{k}: {100 * v:+.2f}%" if "overhead" in k else f"{k}: {v:.3f}")
    for k, v in report.get("agreement", {}).items():
        rows.append(f"rel. diff {k}: " + (", ".join(f"{x:.2e}" for x in v) if isinstance(v, list) else str(v)))
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
