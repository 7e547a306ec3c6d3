"""Train the embedded model v2 in stages, each time-limited so it fits a GPU lease, each resuming
from the files the previous lease committed (issue 14).

    python benchmarks/train_embedded_v2.py --stage ae --minutes 4 --dir training/embedded_v2 --out $OUT
    python benchmarks/train_embedded_v2.py --stage critic --minutes 3 ...
    python benchmarks/train_embedded_v2.py --stage teacher --minutes 9 ...   # continues teacher.safetensors if present
    python benchmarks/train_embedded_v2.py --stage distill --minutes 9 ...   # from teacher.safetensors, or with
                                                                             # --resume-student student.safetensors

Each stage runs through ``fademem train --stage ...``'s own functions (``fademem.cli.train.options`` /
``run_stage``), with this script's lease settings (steps unbounded, a time limit, resume from the file).

Stages write ``<dir>/<name>.safetensors`` (fp16) and ``<out>/<stage>.json`` with the figures
(reconstruction PSNR, critic accuracy, losses), and print a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def stage_options(stage: str, d: Path, limit: float, args) -> tuple[Path, dict]:
    """(weights path, resolved ``fademem train`` options) of one lease of a stage."""
    from fademem.cli.train import options

    shared = {"device": args.device, "workers": args.workers, "steps": 10**7, "time_limit": limit}
    if stage == "ae":
        path = d / "autoencoder.safetensors"
        o = options("autoencoder", batch=args.batch or 128, init=str(path) if path.exists() else None, eval_clips=64,
                    **shared)
    elif stage == "critic":
        path = d / "critic.safetensors"
        o = options("critic", batch=args.batch or 64, init=str(path) if path.exists() else None, eval_clips=2048,
                    **shared)
    elif stage == "teacher":
        path = d / "teacher.safetensors"
        init = str(path) if path.exists() else None
        arch = {} if init else {"dim": 256, "layers": 8, "heads": 4, "ffn": 1024,
                                "codec": str(d / "autoencoder.safetensors")}
        # four noise levels of each target chunk per forward (the context computed once), the flow (v) loss,
        # objects weighted up (they are a few % of the pixels), 10% without text (for guided distillation)
        o = options("dit", init=init, sample_steps=32, batch=args.batch or 96, lr=4e-4 if init is None else 3e-4,
                    checkpoint_every=120, loss="v", target_copies=4, object_weight=args.object_weight, text_dropout=0.1,
                    revisit_p=args.revisit_p,
                    compile=args.compile, first_chunk_p=args.first_chunk_p,
                    extra={"warmup": 300 if init is None else 50}, **arch, **shared)
    else:
        # the student starts from the teacher, or (--resume-student) continues student.safetensors if present
        path = d / "student.safetensors"
        init = str(path) if args.resume_student and path.exists() else None
        o = options("distill", teacher=str(d / "teacher.safetensors"), teacher_steps=16, batch=args.batch or 32,
                    init=init,
                    checkpoint_every=120, guidance=args.guidance, context_guidance=args.context_guidance,
                    revisit_p=args.revisit_p,
                    compile=args.compile, first_chunk_p=args.first_chunk_p, **shared)
    return path, o


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", required=True, choices=["ae", "critic", "teacher", "distill"])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--dir", default="training/embedded_v2")
    ap.add_argument("--out", default="out")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="teacher, distill: torch.compile the DiT(s)")
    ap.add_argument("--resume-student", action="store_true",
                    help="distill: continue student.safetensors (distilled from the same teacher) if present")
    ap.add_argument("--object-weight", type=float, default=4.0,
                    help="teacher: extra loss weight on object pixels (weighting biases the prediction towards "
                         "objects: lower it at the end of a run)")
    ap.add_argument("--first-chunk-p", type=float, default=0.12,
                    help="teacher, distill: share of the non-revisit batches that are a video's text-only first chunk")
    ap.add_argument("--guidance", type=float, default=1.0, help="distill: the teacher's classifier-free guidance")
    ap.add_argument("--context-guidance", type=float, default=None,
                    help="distill: the teacher's guidance after context frames (default: --guidance)")
    ap.add_argument("--revisit-p", type=float, default=0.0,
                    help="teacher, distill: share of revisit batches (recall of a returning view from old frames)")
    args = ap.parse_args()
    d, out = Path(args.dir), Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    limit = args.minutes * 60
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import click

    from fademem.cli.train import run_stage

    try:
        path, o = stage_options(args.stage, d, limit, args)
        info = run_stage(o["stage"], path, o, log=print)
    except click.ClickException as exc:
        raise SystemExit(f"error: {exc.format_message()}") from None
    info = {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, list, dict, bool, type(None)))}
    info["wall_s"] = round(time.time() - t0, 1)
    (out / f"{args.stage}.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"== {args.stage}: {json.dumps(info, default=str)[:3000]}")


if __name__ == "__main__":
    main()
