"""Retrieval quality against compression rate (the memory-compression paper's ablation axis).

For each rate, the K/V compressor of the embedded model is pretrained for the same time on frame
retrieval (noise-as-mask), then every frame of held-out world histories is retrieved from pure
noise and scored (PSNR / SSIM of decoded pixels). With ``--baseline`` each rate also gets the
ablation "decoder only, on plain span averaging" (the compressor frozen at its initialisation),
which isolates what the learned encoder adds over averaging at the same token count.

    python benchmarks/compressor_rates.py --rates 2x2x1,2x2x2,4x4x2 --seconds 40 --baseline \
        --device cuda --out-dir rates

Writes ``<out-dir>/rates.json`` and one pretrained compressor file per rate
(``<out-dir>/<rate>.safetensors``, usable as ``fademem train-compressor --init``); prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="2x2x1,2x2x2,4x4x2")
    ap.add_argument("--seconds", type=float, default=40.0, help="pretraining time per rate (and per baseline)")
    ap.add_argument("--steps", type=int, default=10 ** 9, help="step cap per run (smoke tests)")
    ap.add_argument("--baseline", action="store_true", help="also train the decoder on plain span averaging")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--eval-clips", type=int, default=32)
    ap.add_argument("--channels", default="32-64-128")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out-dir", default="compressor_rates")
    ap.add_argument("--pool", type=int, default=64, help="worlds per data worker")
    args = ap.parse_args(argv)

    import torch

    from fademem import embedded
    from fademem.compressor import kv as KV
    from fademem.compressor import train as CT

    os.makedirs(args.out_dir, exist_ok=True)
    bundle = embedded.load(device=args.device)
    rows = []
    for rate in [r.strip() for r in args.rates.split(",") if r.strip()]:
        for frozen in ([False, True] if args.baseline else [False]):
            cfg = CT.CompressorTrainConfig(rate=rate, channels=args.channels, batch=args.batch, workers=args.workers,
                                           pretrain_seconds=args.seconds, pretrain_steps=args.steps,
                                           freeze_encoder=frozen, pool=args.pool)
            t0 = time.time()
            comp, retrieval, hist = CT.pretrain(bundle.model, bundle.text, bundle.codec, cfg, args.device,
                                                log=lambda m: None)
            row = CT.retrieval_eval(bundle.model, bundle.text, bundle.codec, comp, retrieval, cfg, args.device,
                                    clips=args.eval_clips)
            row.update(encoder="span average (frozen)" if frozen else "learned", steps=hist[-1]["step"] + 1
                       if hist else 0, train_seconds=round(time.time() - t0, 1),
                       final_loss=hist[-1]["loss"] if hist else None)
            rows.append(row)
            print(f"{rate:7s} {row['encoder']:22s} x{row['compression']:<5g} PSNR {row['psnr']:6.2f} dB  "
                  f"SSIM {row['ssim']:.3f}  ({row['steps']} steps, {row['train_seconds']} s)", flush=True)
            if not frozen:
                KV.save(os.path.join(args.out_dir, f"{rate}.safetensors"), comp, retrieval,
                        info={"pretrain": hist, "retrieval": row})
            del comp, retrieval
    report = {"benchmark": "compressor retrieval vs rate", "device": (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device),
        "history_frames": CT.CompressorTrainConfig().history, "seconds_per_run": args.seconds, "rows": rows}
    with open(os.path.join(args.out_dir, "rates.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    lines = [f"retrieval from compressed K/V ({report['history_frames']}-frame histories, {report['device']})",
             f"{'rate':8s}{'encoder':24s}{'tokens/group':>13s}{'compression':>12s}{'PSNR dB':>9s}{'SSIM':>7s}"]
    for r in report["rows"]:
        lines.append(f"{r['rate']:8s}{r['encoder']:24s}{r['tokens_per_group']:>13d}{r['compression']:>11g}x"
                     f"{r['psnr']:>9.2f}{r['ssim']:>7.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
