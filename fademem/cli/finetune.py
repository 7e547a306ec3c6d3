"""``fademem finetune``: FadeMem-FT, a light LoRA fine-tune of the embedded model with the memory in the loop
(``fademem.pipeline.finetune``). Every option is checked before any work (a bad value is a usage error,
exit 2); the LoRA directory it writes is what ``fademem generate --lora DIR`` merges."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fademem.cli.common import check_device

PRESETS = ("attn-ffn", "official")  # fademem.pipeline.finetune_lora.LORA_PRESETS (not imported: no torch at import)


def _check(o: dict) -> None:
    """Usage errors for the options that need more than click's types: the memory specs, the files, the
    output directory, LoRA targets."""
    from fademem.cli.common import resolve_memory_option
    from fademem.cli.train import _need_file

    resolve_memory_option(o["memory"], None)
    resolve_memory_option(o["teacher_memory"], None, param_hint="--teacher-memory")
    if o["weights"] is not None:
        _need_file(o["weights"], "bundle", "--weights")
    if o["teacher"] is not None:
        _need_file(o["teacher"], "bundle", "--teacher")
        from fademem.cli.train import _bundle_schedule

        sched = _bundle_schedule(o["teacher"]) or {"kind": "flow-matching"}
        if sched["kind"] != "flow-matching":
            raise click.BadParameter(f"{o['teacher']} is a {sched['kind']} model: the teacher must be a "
                                     "flow-matching bundle (fademem train --stage dit --sample-steps N)",
                                     param_hint="--teacher")
    if o["history"] == "self":
        if o["teacher"] is None:
            raise click.BadParameter("self needs a teacher (--teacher): a self-generated history has no true next "
                                     "chunk to regress onto, only the teacher's answer", param_hint="--history")
        from fademem.pipeline.finetune import FinetuneConfig

        try:
            FinetuneConfig(seconds=o["seconds"], opening_seconds=o["opening_seconds"], history="self",
                           teacher=o["teacher"], teacher_memory=o["teacher_memory"], memory=o["memory"]).validate()
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--opening-seconds") from None
    out = Path(o["out"])
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} exists and is not a directory (the LoRA is saved as a peft adapter "
                                 "directory)", param_hint="--out")


_pos = click.IntRange(min=1)
_frac = click.FloatRange(0, 1)


@click.command("finetune")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="LoRA directory (peft layout: adapter_model.safetensors + adapter_config.json).")
@click.option("--memory", default="fademem:budget=12", show_default=True,
              help="The memory policy in the loop (a spec, as generate's --memory).")
@click.option("--preset", default="attn-ffn", show_default=True, type=click.Choice(PRESETS),
              help="LoRA preset: attn-ffn (rank 16 on self-attention q/k/v/o and the FFN), official (FadeMem-FT's "
                   "release: rank 256 on every Linear of every block).")
@click.option("--rank", default=None, type=int, help="LoRA rank [the preset's].")
@click.option("--alpha", default=None, type=float, help="LoRA alpha [= rank].")
@click.option("--targets", default=None,
              help="Comma-separated Linear names inside a block (e.g. self_attn.q,self_attn.v,ffn.0) instead of the "
                   "preset's.")
@click.option("--steps", default=500, show_default=True, type=_pos)
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(min=0), help="Linear warm-up steps.")
@click.option("--batch", default=4, show_default=True, type=_pos)
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="History before each target chunk (revisit episodes: up to this long; they need >= 7 s).")
@click.option("--run-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Length of the videos the LoRA is for: the memory runs as the policy chooses for that length (e.g. "
                   "FadeMem's compact positions past the model's trained window) [the episode's own].")
@click.option("--revisit-p", default=0.5, show_default=True, type=_frac,
              help="Share of revisit episodes (the camera returns to a view only old frames hold).")
@click.option("--degrade-p", default=0.5, show_default=True, type=_frac,
              help="Share of examples whose history is blurred like the model's own frames.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="Flow-matching teacher bundle: the distillation objective (the teacher reads the full history); "
                   "without it, flow matching on the target chunk.")
@click.option("--teacher-memory", default="full", show_default=True, help="The teacher's memory.")
@click.option("--teacher-steps", default=None, type=_pos,
              help="Teacher ODE steps [the student's recorded distillation setting, else the teacher's schedule].")
@click.option("--guidance", default=None, type=click.FloatRange(min=0),
              help="Teacher classifier-free guidance [the student's recorded distillation guidance, else 1].")
@click.option("--history", "history", default="true", show_default=True, type=click.Choice(("true", "self")),
              help="The history each example's target chunk follows: true world frames (teacher-forced), or self: the "
                   "model's own rollout after a true opening, generated through the inference session (Self-Forcing; "
                   "needs --teacher).")
@click.option("--opening-seconds", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="--history self: the true opening before the rollout (whole 3-frame chunks, at least one).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="The generator bundle [the shipped embedded model].")
@click.option("--resume", default=None, type=click.Path(file_okay=False),
              help="Continue from a LoRA directory of an earlier run (its rank, alpha and targets; steps go on).")
@click.option("--time-limit", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Stop (and save) after this many seconds.")
@click.option("--log-every", default=10, show_default=True, type=_pos)
@click.option("--grad-checkpoint", is_flag=True,
              help="Gradient checkpointing: recompute each transformer block in the backward pass instead of keeping "
                   "its activations (less memory, ~1/3 more compute for the target chunk's forward).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default=None, help="Default: cuda if available, else cpu.")
def finetune_cmd(**o):
    """FadeMem-FT: train a LoRA so the generator reads the memory policy's consolidated entries.

    Each example teacher-forces a history of world frames through an inference session (the policy merges
    and evicts as it does when generating), then trains the next chunk's denoising forward reading that memory.
    """
    if o["rank"] is not None and o["rank"] <= 0:
        raise click.BadParameter(f"must be a positive integer, got {o['rank']}", param_hint="--rank")
    if o["alpha"] is not None and not o["alpha"] > 0:
        raise click.BadParameter(f"must be positive, got {o['alpha']}", param_hint="--alpha")
    targets = tuple(t.strip() for t in o["targets"].split(",") if t.strip()) if o["targets"] is not None else None
    if targets is not None and not targets:
        raise click.BadParameter("no target names given", param_hint="--targets")
    _check(o)
    dev = check_device(o["device"])
    from fademem.pipeline.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(memory=o["memory"], preset=o["preset"], rank=o["rank"], alpha=o["alpha"], targets=targets,
                         steps=o["steps"], lr=o["lr"], warmup=o["warmup"], batch=o["batch"], seconds=o["seconds"],
                         run_seconds=o["run_seconds"], revisit_p=o["revisit_p"], degrade_p=o["degrade_p"],
                         seed=o["seed"], device=str(dev),
                         weights=o["weights"], teacher=o["teacher"], teacher_memory=o["teacher_memory"],
                         teacher_steps=o["teacher_steps"], guidance=o["guidance"], time_limit=o["time_limit"],
                         resume=o["resume"], log_every=o["log_every"], grad_checkpoint=o["grad_checkpoint"],
                         history=o["history"], opening_seconds=o["opening_seconds"])
    if targets is not None:  # a wrong name is a usage error, found on the model before any training
        from fademem.embedded import load
        from fademem.pipeline.finetune_lora import lora_targets

        try:
            lora_targets(load(o["weights"]).model, targets)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--targets") from None
    try:
        cfg.validate()
        info = finetune(cfg, o["out"], log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    losses = [h["loss"] for h in info["history"]]
    k = max(1, min(10, len(losses) // 4))
    click.echo(json.dumps({"out": o["out"], "objective": info["objective"], "steps": info["steps_done"],
                           "seconds": info["seconds"], "loss_first": sum(losses[:k]) / k,
                           "loss_last": sum(losses[-k:]) / k}))
