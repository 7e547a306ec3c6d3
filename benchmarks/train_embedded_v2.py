"""Train the embedded model v2 in stages, each time-limited so it fits a GPU lease, each resuming
from the files the previous lease committed (issue 14).

    python benchmarks/train_embedded_v2.py --stage ae --minutes 4 --dir training/embedded_v2 --out $OUT
    python benchmarks/train_embedded_v2.py --stage critic --minutes 3 ...
    python benchmarks/train_embedded_v2.py --stage teacher --minutes 9 ...   # continues teacher.safetensors if present
    python benchmarks/train_embedded_v2.py --stage distill --minutes 9 ...   # continues student.safetensors if present

Stages write ``<dir>/<name>.safetensors`` (fp16) and ``<out>/<stage>.json`` with the figures
(reconstruction PSNR, critic accuracy, losses), and print a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", required=True, choices=["ae", "critic", "teacher", "distill"])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--dir", default="training/embedded_v2")
    ap.add_argument("--out", default="out")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=0)
    args = ap.parse_args()
    d, out = Path(args.dir), Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    limit = args.minutes * 60
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.stage == "ae":
        from fademem.embedded.autoencoder import AutoencoderConfig
        from fademem.embedded.autoencoder_train import train_autoencoder

        path = d / "autoencoder.safetensors"
        info = train_autoencoder(AutoencoderConfig(), path, device=args.device, steps=10**7, batch=args.batch or 128,
                                 time_limit=limit, workers=args.workers, init=path if path.exists() else None,
                                 eval_clips=64)
    elif args.stage == "critic":
        from fademem.embedded.critic import CriticConfig
        from fademem.embedded.critic_train import train_critic

        path = d / "critic.safetensors"
        info = train_critic(CriticConfig(), path, device=args.device, steps=10**7, batch=args.batch or 64,
                            time_limit=limit, workers=args.workers, init=path if path.exists() else None,
                            eval_clips=2048)
    elif args.stage == "teacher":
        from fademem.embedded.train import TrainConfig, train

        path = d / "teacher.safetensors"
        init = str(path) if path.exists() else None
        cfg = TrainConfig(codec=None if init else str(d / "autoencoder.safetensors"), init=init, sample_steps=32,
                          batch=args.batch or 64, workers=args.workers, steps=10**7, time_limit=limit,
                          dim=256, layers=8, heads=4, ffn=1024, lr=4e-4 if init is None else 2e-4,
                          warmup=300 if init is None else 50, checkpoint_every=120)
        info = train(cfg, path, device=args.device)
    else:
        from fademem.embedded.distill import DistillConfig, distill

        path = d / "student.safetensors"
        teacher = d / "teacher.safetensors"
        cfg = DistillConfig(teacher=str(path if path.exists() else teacher), teacher_steps=16,
                            batch=args.batch or 32, workers=args.workers, steps=10**7, time_limit=limit,
                            checkpoint_every=120)
        info = distill(cfg, path, device=args.device)
    info = {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, list, dict, bool, type(None)))}
    info["wall_s"] = round(time.time() - t0, 1)
    (out / f"{args.stage}.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"== {args.stage}: {json.dumps(info, default=str)[:3000]}")


if __name__ == "__main__":
    main()
