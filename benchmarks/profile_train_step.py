"""Where a training step of the embedded model's DiT spends its time (issue 14: the teacher trained at
~9 steps/s on an H200 whatever the batch, so the step is not bound by its arithmetic).

    PYTHONPATH=. python benchmarks/profile_train_step.py --weights training/embedded_v2/teacher.safetensors \
        --device cuda --out $OUT

Renders a few batches once (no data loader in the timing), then times the optimiser step
(``fademem.embedded.train.batch_loss`` + ``optimise``) at several batch sizes and target copies, and
profiles one setting with ``torch.profiler`` (top operators by device time). Prints the figures and writes
``<out>/profile_train_step.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from fademem.embedded.bundle import load
    from fademem.embedded.train import TrainConfig, batch_loss, optimise, training_schedule
    from fademem.embedded.train_data import WorldBatches
    from fademem.wan.sampling import FlowSchedule

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--settings", default="48x4,96x4,192x4,64x1,96x4c",
                    help="batch x target copies, comma separated; a trailing c: the DiT under torch.compile, "
                         "r: half revisit batches")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    bundle = load(args.weights, device=dev)
    model, text, codec = bundle.model.train().requires_grad_(True), bundle.text.train(), bundle.codec
    params = list(model.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-5)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    results = []
    compiled = None
    for setting in args.settings.split(","):
        flags = setting.lstrip("0123456789x")
        use_compile = "c" in flags
        b, k = (int(x) for x in setting.rstrip("cr").split("x"))
        if use_compile and compiled is None:
            compiled = torch.compile(model, dynamic=True)
        fwd = compiled if use_compile else model
        cfg = TrainConfig(batch=b, workers=0, target_copies=k, loss="v", object_weight=4.0, text_dropout=0.1,
                          sample_steps=32, pool=32,
                          revisit_p=0.5 if "r" in flags else 0.0)
        sched = training_schedule(cfg)
        sigmas = torch.tensor(FlowSchedule(sched.steps, sched.shift).sigmas, device=dev)
        it = iter(WorldBatches(cfg, bundle.cfg))
        batches = [next(it) for _ in range(4)]
        gen = torch.Generator(device=dev).manual_seed(0)

        def step(i):
            loss = batch_loss(fwd, text, codec, batches[i % len(batches)], cfg, sigmas, gen, amp, dev)
            optimise(opt, loss, params, ema, 1e-5, 0.999, i)

        t_warm = time.perf_counter()
        for i in range(3):
            step(i)
        sync()
        warm_s = time.perf_counter() - t_warm
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(i)
        sync()
        ms = (time.perf_counter() - t0) / args.steps * 1000
        frames = sum(x["video"].shape[0] * (x["n_ctx"] + 3 * k) for x in batches) / len(batches)
        row = {"batch": b, "copies": k, "compile": use_compile, "revisit": "r" in flags,
               "warmup_s": round(warm_s, 1),
               "ms_per_step": round(ms, 1), "frames_per_step": frames,
               "targets_per_s": round(b * k / ms * 1000)}
        results.append(row)
        print(json.dumps(row))
    b, k = (int(x) for x in args.settings.split(",")[0].rstrip("cr").split("x"))
    cfg = dataclasses.replace(cfg, batch=b, target_copies=k, revisit_p=0.0)
    fwd = model
    it = iter(WorldBatches(cfg, bundle.cfg))
    batches = [next(it) for _ in range(4)]
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                    if dev.startswith("cuda") else [])
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(4):
            step(i)
        sync()
    key = "self_cuda_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_train_step.json").write_text(json.dumps({"settings": results, "profile": table,
                                                              "device": str(dev)}, indent=1))


if __name__ == "__main__":
    main()
