"""FadeMem-FT at real size (issue 21): a few optimizer steps of the fine-tune at the Wan 1.3B config.

    PYTHONPATH=. python3 benchmarks/finetune_wan_step.py --config 1.3b --device cuda --history-seconds 20 \
        --steps 3 --out $OUT/ft_wan_step.json
    PYTHONPATH=. python3 benchmarks/finetune_wan_step.py --config tiny --device cpu --history-seconds 2 --rank 8

Random weights (``fademem.bench.speed_policy.build_model``: the 1.3B DiT, bf16 on CUDA), a random text
context (``RandomText``, as ``fademem bench speed``), a ``VideoPipeline`` without decoder or text encoder, a
peft LoRA (``--preset official``: rank 256 on every Linear of every block; ``attn-ffn``: rank 16) and AdamW.
One step is FadeMem-FT's step (``fademem.pipeline.finetune.memory_step_loss``) on random latents at 480x832
(latent 16x60x104):

1. history: ``--history-seconds`` of latent frames (16 fps, 4 video frames per latent frame, whole chunks of
   3: 20 s = 81 frames, 27 chunks) teacher-forced through an inference session under ``--memory`` (no grad:
   one cache-writing forward per chunk, the policy inserting, merging and evicting as at inference). This is
   the rollout truncation: no gradient flows through the history;
2. forward+backward: the target chunk noised to one of the sampler's levels, its denoising forward with grad
   reading the session's memory, the x0-error loss, backward into the LoRA;
3. optimizer: gradient clipping (1.0) and the AdamW step.

Each phase is timed (CUDA synchronised) and its peak GPU memory measured (``max_memory_allocated`` reset at
the phase's start). By default the steps run twice in one process, without and with gradient checkpointing
(``--grad-checkpoint both``; the LoRA and AdamW start afresh, the data is the same, so the first step's loss
must agree). Prints a table and writes JSON (``--out``). SIGINT (the shell's ``timeout -s INT``) stops the run
and still writes what was measured (``stopped``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("history", "fwd_bwd", "optimizer")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="1.3b", choices=("1.3b", "tiny"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto", help="bfloat16 | float32 [auto: bfloat16 on CUDA, float32 elsewhere]")
    ap.add_argument("--latent", default=None, help="C,H,W of a latent frame [16,60,104 (480x832); tiny: 16,8,8]")
    ap.add_argument("--history-seconds", type=float, default=20.0)
    ap.add_argument("--memory", default="fademem:budget=12")
    ap.add_argument("--preset", default="official", choices=("official", "attn-ffn"))
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank [the preset's]")
    ap.add_argument("--lora-dtype", default="model", choices=("model", "float32"),
                    help="LoRA weights (and AdamW state) in the model's dtype, as add_lora makes them, or float32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--grad-checkpoint", default="both", choices=("both", "off", "on"),
                    help="run the steps without, with, or without then with gradient checkpointing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.history_seconds > 0:
        ap.error("--steps and --batch must be >= 1, --history-seconds > 0")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Phase:
    """Wall seconds (synchronised) and peak allocated GPU memory of one phase."""

    def __init__(self, device: torch.device, rec: dict, name: str):
        self.device, self.rec, self.name = device, rec, name

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.rec[f"{self.name}_start_bytes"] = torch.cuda.memory_allocated(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.rec[f"{self.name}_s"] = round(time.perf_counter() - self.t0, 4)
        self.rec[f"{self.name}_peak_bytes"] = (torch.cuda.max_memory_allocated(self.device)
                                               if self.device.type == "cuda" else None)
        return False


def build(args):
    """(model with the LoRA injected, pipeline, LoRA parameters, their initial values, info)."""
    from fademem.bench.speed_policy import RandomText, SpeedSetup, build_model
    from fademem.pipeline import VideoPipeline
    from fademem.pipeline.finetune_lora import LORA_PRESETS, add_lora, lora_targets

    device = torch.device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    latent = tuple(int(v) for v in (args.latent or ("16,60,104" if args.config == "1.3b" else "16,8,8")).split(","))
    setup = SpeedSetup(config=args.config, latent=latent, device=str(device), dtype=dtype, seed=args.seed)
    model = build_model(setup)
    cfg = model.config
    rank, names = LORA_PRESETS[args.preset]
    rank = args.rank or rank
    targets = lora_targets(model, names)
    params = add_lora(model, targets, rank, float(rank))
    if args.lora_dtype == "float32":  # peft computes the LoRA branch in its weights' dtype, casts the sum back
        for p in params:
            p.data = p.data.float()
    init = [p.detach().clone() for p in params]
    pipe = VideoPipeline(model, RandomText(cfg.text_len, cfg.text_dim, args.seed), None)
    pipe.latent_shape = latent
    info = {"config": args.config, "device": str(device), "dtype": dtype, "latent": list(latent),
            "video_size": [latent[1] * 8, latent[2] * 8],
            "model_parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
            "lora": {"preset": args.preset, "rank": rank, "alpha": float(rank), "modules": len(targets),
                     "parameters": sum(p.numel() for p in params), "dtype": str(params[0].dtype).replace("torch.", "")}}
    return model, pipe, params, init, info


def run_mode(model, pipe, params, init, args, checkpointing: bool, log, out: dict, on_step=None) -> dict:
    """``args.steps`` fine-tune steps; per step the three phases' seconds and peak memory, filled into ``out``
    as they finish (an interrupted run keeps its finished steps)."""
    from fademem.bench.speed_stats import frames_for_seconds
    from fademem.pipeline.finetune import memory_step_loss, teacher_force

    device = torch.device(args.device)
    with torch.no_grad():  # the same starting LoRA in every mode
        for p, p0 in zip(params, init):
            p.copy_(p0)
    model.enable_gradient_checkpointing(checkpointing)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    c, h, w = pipe.latent_shape
    n = frames_for_seconds(args.history_seconds, pipe.frames_per_chunk)
    fpc = pipe.frames_per_chunk
    gen = torch.Generator(device=device).manual_seed(args.seed)  # the same data in every mode
    sigmas = torch.tensor(pipe.schedule.sigmas, dtype=torch.float32, device=device)
    prompts = ["fine-tune bench"] * args.batch
    out.update(grad_checkpoint=checkpointing, steps=[], error=None, history_frames=n, history_chunks=n // fpc)
    for step in range(args.steps):
        history = torch.randn((args.batch, c, n, h, w), device=device, generator=gen)
        x0 = torch.randn((args.batch, c, fpc, h, w), device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        sigma = sigmas[torch.randint(len(sigmas), (args.batch,), device=device, generator=gen)]
        rec: dict = {"step": step}
        try:
            t0 = time.perf_counter()
            with _Phase(device, rec, "history"):
                session = teacher_force(pipe, prompts, history, args.memory, n + fpc)
            with _Phase(device, rec, "fwd_bwd"):
                loss = memory_step_loss(model, pipe, history, x0, prompts, args.memory, sigma, noise=noise,
                                        session=session)
                loss.backward()
            with _Phase(device, rec, "optimizer"):
                norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            rec["step_s"] = round(time.perf_counter() - t0, 4)
            rec["loss"], rec["grad_norm"] = float(loss.detach()), float(norm)
            rec["memory_slots"] = len(session.stack.entries())
            del session, loss
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
            out["error"] = f"out of GPU memory at step {step}: {str(exc)[:160]}"
            break
        out["steps"].append(rec)
        log(_row(checkpointing, rec))
        if on_step:
            on_step()
    out["summary"] = _summary(out["steps"])
    model.enable_gradient_checkpointing(False)
    return out


def _summary(steps: list[dict]) -> dict:
    """Medians over the steps after the first (which pays one-time costs), or the one step."""
    use = steps[1:] or steps
    if not use:
        return {}
    med = lambda k: statistics.median(r[k] for r in use) if all(r.get(k) is not None for r in use) else None  # noqa
    s = {f"{p}_s": med(f"{p}_s") for p in PHASES}
    s["step_s"] = med("step_s")
    for p in PHASES:
        vals = [r.get(f"{p}_peak_bytes") for r in steps]
        s[f"{p}_peak_bytes"] = max(vals) if all(v is not None for v in vals) else None
    s["steps_used"] = len(use)
    return s


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def _row(ck: bool, r: dict) -> str:
    return (f"{'on' if ck else 'off':>4} {r['step']:>4} {r['history_s']:>9.2f} {r['fwd_bwd_s']:>9.3f} "
            f"{r['optimizer_s']:>8.3f} {_gib(r['history_peak_bytes']):>9} {_gib(r['fwd_bwd_peak_bytes']):>9} "
            f"{_gib(r['optimizer_peak_bytes']):>8} {r['loss']:>9.5f}")


HEADER = (f"{'ckpt':>4} {'step':>4} {'history_s':>9} {'fwd_bwd_s':>9} {'optim_s':>8} {'hist_GiB':>9} "
          f"{'fb_GiB':>9} {'opt_GiB':>8} {'loss':>9}")


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no GPU")
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    report: dict = {"benchmark": "finetune_wan_step", "argv": list(argv) if argv is not None else sys.argv[1:],
                    "memory": args.memory, "history_seconds": args.history_seconds, "batch": args.batch,
                    "steps": args.steps, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "modes": {}, "stopped": None}

    def write():
        report["total_s"] = round(time.perf_counter() - t_start, 2)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))

    try:
        t0 = time.perf_counter()
        model, pipe, params, init, info = build(args)
        _sync(device)
        report.update(info, build_s=round(time.perf_counter() - t0, 2))
        log(f"{args.config}: {info['model_parameters'] / 1e6:.1f}M parameters ({info['dtype']}), LoRA "
            f"{args.preset} rank {info['lora']['rank']} on {info['lora']['modules']} Linears: "
            f"{info['lora']['parameters'] / 1e6:.1f}M parameters ({info['lora']['dtype']}); latent "
            f"{info['latent']}, history {args.history_seconds:g} s, memory {args.memory}, built in "
            f"{report['build_s']:.1f} s")
        log(HEADER)
        modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.grad_checkpoint]
        for ck in modes:
            key = "on" if ck else "off"
            report["modes"][key] = {}
            run_mode(model, pipe, params, init, args, ck, log, report["modes"][key], on_step=write)
            write()
    except KeyboardInterrupt:
        report["stopped"] = "interrupted (SIGINT: time limit)"
        log(f"stopped: {report['stopped']}")
        for res in report["modes"].values():
            res.setdefault("summary", _summary(res.get("steps", [])))
    _compare(report)
    write()
    _print_summary(report, log)
    return report


def _compare(report: dict) -> None:
    off, on = (report["modes"].get(k, {}) for k in ("off", "on"))
    so, sn = off.get("summary") or {}, on.get("summary") or {}
    if not (so and sn):
        return
    cmp = {}
    if so.get("fwd_bwd_peak_bytes") and sn.get("fwd_bwd_peak_bytes"):
        cmp["fwd_bwd_peak_ratio_on_vs_off"] = round(sn["fwd_bwd_peak_bytes"] / so["fwd_bwd_peak_bytes"], 4)
    if so.get("fwd_bwd_s"):
        cmp["fwd_bwd_time_ratio_on_vs_off"] = round(sn["fwd_bwd_s"] / so["fwd_bwd_s"], 4)
    lo, ln = off["steps"][0]["loss"], on["steps"][0]["loss"]
    cmp["first_step_loss_off"], cmp["first_step_loss_on"] = lo, ln
    cmp["first_step_loss_rel_diff"] = abs(lo - ln) / max(abs(lo), 1e-12) if math.isfinite(lo + ln) else None
    report["comparison"] = cmp


def _print_summary(report: dict, log) -> None:
    for key, res in report["modes"].items():
        s = res.get("summary") or {}
        if s:
            log(f"grad checkpoint {key}: history {s['history_s']:.2f} s, forward+backward {s['fwd_bwd_s']:.3f} s, "
                f"optimizer {s['optimizer_s']:.3f} s, step {s['step_s']:.2f} s (median of {s['steps_used']}); peak "
                f"GiB history {_gib(s['history_peak_bytes'])}, forward+backward {_gib(s['fwd_bwd_peak_bytes'])}, "
                f"optimizer {_gib(s['optimizer_peak_bytes'])}"
                + (f"; error {res['error']}" if res.get("error") else ""))
    if report.get("comparison"):
        log("comparison: " + json.dumps(report["comparison"]))


if __name__ == "__main__":
    main()
