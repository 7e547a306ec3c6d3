"""``fademem train-compressor``: pretrain and fine-tune the ``compressor`` memory on the embedded model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click


@click.command("train-compressor")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Compressor file (.safetensors).")
@click.option("--rate", default="4x4x2", show_default=True, help="Compression rate t x h x w (powers of two).")
@click.option("--pretrain-seconds", default=60.0, show_default=True, type=float,
              help="Stage 1 (retrieval pretraining) time; 0 skips it (with --init).")
@click.option("--finetune-seconds", default=240.0, show_default=True, type=float,
              help="Stage 2 (generator LoRA + compressor) time; 0 skips it.")
@click.option("--pretrain-steps", default=10 ** 9, type=int, help="Stage 1 step cap.")
@click.option("--finetune-steps", default=10 ** 9, type=int, help="Stage 2 step cap.")
@click.option("--batch", default=32, show_default=True, type=int)
@click.option("--window", default=4, show_default=True, type=int, help="Raw frames the policy keeps.")
@click.option("--budget", default=40, show_default=True, type=int, help="Compressed groups the policy keeps.")
@click.option("--max-start", default=320, show_default=True, type=int,
              help="Fine-tuning targets start up to this latent frame.")
@click.option("--channels", default="32-64-128", show_default=True, help="Trunk channel ladder.")
@click.option("--freeze-encoder", is_flag=True, help="Ablation: train only the decoder on plain span averaging.")
@click.option("--init", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Start from this compressor file (its rate and decoder).")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Embedded-model weights (default: the shipped ones).")
@click.option("--workers", default=4, show_default=True, type=int, help="Data-rendering processes.")
@click.option("--pool", default=64, show_default=True, type=int, help="Worlds kept per data process.")
@click.option("--eval-clips", default=32, show_default=True, type=int, help="Held-out histories for retrieval PSNR.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cuda", show_default=True)
def train_compressor(out, rate, pretrain_seconds, finetune_seconds, pretrain_steps, finetune_steps, batch, window,
                     budget, max_start, channels, freeze_encoder, init, weights, workers, pool, eval_clips, seed,
                     device):
    """Train the learned history compressor (frame-retrieval pretraining, then generator LoRA)."""
    import torch

    from fademem import embedded
    from fademem.cli.common import check_device
    from fademem.compressor import kv as KV
    from fademem.compressor import train as CT

    device = str(check_device(device))
    try:
        cfg = CT.CompressorTrainConfig(rate=rate, channels=channels, window=window, budget=budget,
                                       max_start=max_start, batch=batch, workers=workers, seed=seed, pool=pool,
                                       pretrain_seconds=pretrain_seconds or None, pretrain_steps=pretrain_steps,
                                       finetune_seconds=finetune_seconds or None, finetune_steps=finetune_steps,
                                       freeze_encoder=freeze_encoder)
        if pretrain_seconds == 0:
            cfg.pretrain_steps = 0
        if finetune_seconds == 0:
            cfg.finetune_steps = 0
        bundle = embedded.load(weights, device=device)
        comp = retrieval = None
        if init:
            f = KV.load(init, device)
            comp, retrieval = f.compressor, f.retrieval
            cfg.rate = comp.cfg.rate
        info: dict = {"train": dataclasses.asdict(cfg), "device": (
            torch.cuda.get_device_name() if device.startswith("cuda") else device), "init": init}
        if cfg.pretrain_steps:
            comp, retrieval, info["pretrain"] = CT.pretrain(bundle.model, bundle.text, bundle.codec, cfg, device,
                                                            comp=comp, retrieval=retrieval, log=click.echo)
        if comp is None:
            raise click.UsageError("nothing to fine-tune: pretrain (--pretrain-seconds > 0) or give --init")
        if retrieval is not None:  # an --init file without its decoder cannot be scored
            info["retrieval"] = CT.retrieval_eval(bundle.model, bundle.text, bundle.codec, comp, retrieval, cfg,
                                                  device, clips=eval_clips)
            click.echo(f"retrieval (held out, from pure noise): {json.dumps(info['retrieval'])}")
        lora = lora_info = None
        if cfg.finetune_steps:
            lora, lora_info, info["finetune"] = CT.finetune(bundle.model, bundle.text, bundle.codec, comp, cfg,
                                                            device, log=click.echo)
            if retrieval is not None:  # the decoder is not fine-tuned: this shows how far the memory moved
                info["retrieval_after_finetune"] = CT.retrieval_eval(bundle.model, bundle.text, bundle.codec, comp,
                                                                     retrieval, cfg, device, clips=eval_clips)
        KV.save(out, comp, retrieval, lora=lora, lora_info=lora_info, info=info)
        Path(str(out) + ".json").write_text(json.dumps(info, indent=1))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"saved {out}")
