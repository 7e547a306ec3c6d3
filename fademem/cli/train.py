"""``fademem train``: every training stage of the embedded model on the procedural world, one command.

    fademem train --out w.safetensors                                    # the DiT, v1 recipe (pixels)
    fademem train --stage autoencoder --out ae.safetensors --time-limit 240
    fademem train --stage critic --out critic.safetensors --time-limit 180
    fademem train --stage dit --codec ae.safetensors --sample-steps 32 --layers 8 --out teacher.safetensors
    fademem train --stage distill --teacher teacher.safetensors --teacher-steps 16 --out student.safetensors

Options are checked against the stage before anything is loaded: an option the stage does not read,
a missing or wrong-kind file, or a bad value is a click error naming it. Defaults that differ between
stages (``--steps``, ``--batch``, ``--lr``, ``--workers``, ``--eval-clips``) are the stage's
training-function defaults (``STAGE_DEFAULTS``); ``--stage dit`` keeps the v1 command's exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fademem.cli.common import check_device

STAGES = ("dit", "autoencoder", "critic", "distill")
SHARED = ("out", "stage", "steps", "batch", "lr", "workers", "time_limit", "seed", "init", "device")
# the options each stage reads besides the shared ones
STAGE_OPTIONS = {
    "dit": ("dim", "layers", "heads", "ffn", "max_history", "max_context", "codec", "sample_steps",
            "checkpoint_every", "loss", "target_copies", "object_weight", "text_dropout", "revisit_p", "compile",
            "first_chunk_p"),
    "autoencoder": ("eval_clips", "stats_frames"),
    "critic": ("eval_clips",),
    "distill": ("teacher", "teacher_steps", "max_history", "max_context", "checkpoint_every", "guidance",
                "context_guidance", "revisit_p", "compile", "first_chunk_p"),
}
STAGE_DEFAULTS = {
    "dit": {"steps": 20000, "batch": 32, "lr": 4e-4, "workers": 4},
    "autoencoder": {"steps": 20000, "batch": 128, "lr": 1e-3, "workers": 8, "eval_clips": 32},
    "critic": {"steps": 20000, "batch": 64, "lr": 2e-3, "workers": 8, "eval_clips": 1024},
    "distill": {"steps": 5000, "batch": 32, "lr": 5e-5, "workers": 4},
}
# what --init continues from, per stage (distill: a 4-step student; without --init it starts from --teacher)
INIT_KIND = {"dit": "bundle", "autoencoder": "autoencoder", "critic": "critic"}
ARCH = ("dim", "layers", "heads", "ffn")  # the DiT architecture: from --init's file when continuing


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def file_kind(path: str | Path) -> str:
    """What a safetensors file holds, from its metadata alone: 'bundle', 'autoencoder', 'critic' or
    'unknown'. Raises ValueError for a file safetensors cannot read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise ValueError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if "embedded" in meta and "dit" in meta:
        return "bundle"
    for kind in ("autoencoder", "critic"):
        if kind in meta:
            return kind
    return "unknown"


def _bundle_schedule(path: str | Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["schedule"]) if "schedule" in meta else None


def _need_file(path, kind: str, flag: str) -> None:
    names = {"bundle": "an embedded-model bundle (fademem train --stage dit)",
             "autoencoder": "an autoencoder file (fademem train --stage autoencoder)",
             "critic": "a world-critic file (fademem train --stage critic)"}
    if not Path(path).is_file():
        raise click.BadParameter(f"file not found: {path}", param_hint=flag)
    try:
        got = file_kind(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if got != kind:
        what = names[got].split(" (")[0] if got in names else "not a fademem weights file"
        raise click.BadParameter(f"{path} is {what}, expected {names[kind]}", param_hint=flag)


def validate(stage: str, given: set[str], opts: dict) -> dict:
    """Check ``opts`` (the command's keyword arguments; ``given``: the names set on the command line)
    against ``stage`` and fill the stage defaults. Returns the resolved options; raises click errors."""
    allowed = set(SHARED) | set(STAGE_OPTIONS[stage])
    wrong = sorted(n for n in given if n not in allowed)
    if wrong:
        users = {n: [s for s in STAGES if n in STAGE_OPTIONS[s]] for n in wrong}
        raise click.UsageError("; ".join(f"{_flag(n)} does not apply to --stage {stage} (it is for --stage "
                                         f"{' / '.join(users[n])})" for n in wrong))
    out = dict(opts)
    for name, value in STAGE_DEFAULTS[stage].items():
        if out.get(name) is None:
            out[name] = value
    if stage == "distill":
        if not opts.get("teacher"):
            raise click.UsageError("--stage distill needs --teacher FILE (a flow-matching bundle from --stage dit)")
        _need_file(opts["teacher"], "bundle", "--teacher")
        sched = _bundle_schedule(opts["teacher"]) or {"kind": "flow-matching", "steps": [0] * 4}
        if sched["kind"] != "flow-matching":
            raise click.BadParameter(f"{opts['teacher']} is a {sched['kind']} model: distill a flow-matching teacher "
                                     "(--stage dit --sample-steps N, N > 4)", param_hint="--teacher")
        if opts.get("init"):  # a student to continue (else the student starts from the teacher's weights)
            _need_file(opts["init"], "bundle", "--init")
            kind = (_bundle_schedule(opts["init"]) or {"kind": "flow-matching"})["kind"]
            if kind != "distilled-4step":
                raise click.BadParameter(f"{opts['init']} is a {kind} model: --init for --stage distill continues "
                                         "a 4-step student (a --stage distill output)", param_hint="--init")
    elif opts.get("init"):
        _need_file(opts["init"], INIT_KIND[stage], "--init")
    if stage == "dit":
        if opts.get("codec"):
            _need_file(opts["codec"], "autoencoder", "--codec")
        if opts.get("init"):
            arch = sorted(n for n in given if n in ARCH)
            if arch:
                raise click.UsageError(f"{', '.join(_flag(n) for n in arch)} cannot be given with --init: the "
                                       f"architecture is {opts['init']}'s")
        elif out["dim"] % out["heads"]:
            raise click.BadParameter(f"--dim {out['dim']} is not a multiple of --heads {out['heads']}",
                                     param_hint="--dim")
    check_device(out["device"])  # a usage error for a device this process cannot use
    return out


def run_stage(stage: str, out: str | Path, o: dict, log=click.echo) -> dict:
    """Train one stage with resolved options ``o`` (``validate``'s output); the library writes ``out``
    and ``out``.json. Returns the training function's info dict."""
    device = o["device"]
    if stage == "dit":
        from fademem.embedded.train import TrainConfig, train

        cfg = TrainConfig(steps=o["steps"], batch=o["batch"], lr=o["lr"], workers=o["workers"],
                          time_limit=o["time_limit"], dim=o["dim"], layers=o["layers"], heads=o["heads"],
                          ffn=o["ffn"], max_history=o["max_history"], max_context=o["max_context"], seed=o["seed"],
                          init=o["init"], codec=o["codec"], sample_steps=o["sample_steps"],
                          checkpoint_every=o["checkpoint_every"], loss=o["loss"], target_copies=o["target_copies"],
                          object_weight=o["object_weight"], text_dropout=o["text_dropout"], revisit_p=o["revisit_p"],
                          compile=o["compile"], first_chunk_p=o["first_chunk_p"], **o.get("extra", {}))
        return train(cfg, out, device=device, log=log)
    if stage == "distill":
        from fademem.embedded.distill import DistillConfig, distill

        cfg = DistillConfig(teacher=o["teacher"], teacher_steps=o["teacher_steps"], steps=o["steps"],
                            batch=o["batch"], lr=o["lr"], workers=o["workers"], time_limit=o["time_limit"],
                            seed=o["seed"], max_history=o["max_history"], max_context=o["max_context"],
                            checkpoint_every=o["checkpoint_every"], guidance=o["guidance"],
                            context_guidance=o["context_guidance"], revisit_p=o["revisit_p"], compile=o["compile"],
                            first_chunk_p=o["first_chunk_p"], init=o["init"], **o.get("extra", {}))
        return distill(cfg, out, device=device, log=log)
    common = {"device": device, "steps": o["steps"], "batch": o["batch"], "lr": o["lr"],
              "time_limit": o["time_limit"], "seed": o["seed"], "workers": o["workers"], "log": log,
              "init": o["init"], "eval_clips": o["eval_clips"], **o.get("extra", {})}
    if stage == "autoencoder":
        from fademem.embedded.autoencoder import AutoencoderConfig
        from fademem.embedded.autoencoder_train import train_autoencoder

        if o.get("stats_frames") is not None:
            common["stats_frames"] = o["stats_frames"]
        return train_autoencoder(None if o["init"] else AutoencoderConfig(), out, **common)
    from fademem.embedded.critic import CriticConfig
    from fademem.embedded.critic_train import train_critic

    return train_critic(None if o["init"] else CriticConfig(), out, **common)


def options(stage: str, **kw) -> dict:
    """Resolved options for ``run_stage`` from keyword arguments (the rest: the command's defaults), checked as
    the command checks them; ``extra={...}`` passes further config fields (e.g. ``warmup``) through."""
    base = {p.name: p.default for p in train_cmd.params}
    base.update(stage=stage, **kw)
    return validate(stage, set(kw) - {"extra", "out"}, base)


def summary(stage: str, info: dict) -> str:
    """One line of figures from a stage's info dict."""
    parts = [f"{info.get('steps_done')} steps", f"{info.get('seconds')} s"]
    if stage == "autoencoder" and info.get("eval"):
        parts.append(f"held-out PSNR {info['eval']['psnr']:.2f} dB, SSIM {info['eval']['ssim']:.4f}")
    if stage == "critic" and info.get("accuracy"):
        parts.append("held-out accuracy " + ", ".join(f"{k} {v['acc']:.3f}" for k, v in info["accuracy"].items()))
    if info.get("history"):
        parts.append(f"last loss {info['history'][-1]['loss']:.4f}")
    return ", ".join(parts)


_pos = click.IntRange(min=1)
_nonneg = click.IntRange(min=0)


@click.command("train")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Weights file (.safetensors).")
@click.option("--stage", default="dit", show_default=True, type=click.Choice(STAGES),
              help="dit: the generator (flow matching, memory-shaped contexts); autoencoder: the v2 frame codec; "
                   "critic: the world critic; distill: a 4-step student of a flow-matching --teacher.")
@click.option("--steps", default=None, type=_pos, help="Optimizer steps [dit 20000, autoencoder 20000, critic 20000, "
                                                       "distill 5000].")
@click.option("--batch", default=None, type=_pos, help="[dit 32, autoencoder 128, critic 64, distill 32].")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate [dit 4e-4, autoencoder 1e-3, critic 2e-3, distill 5e-5].")
@click.option("--workers", default=None, type=_nonneg,
              help="Data-rendering processes [dit 4, autoencoder 8, critic 8, distill 4].")
@click.option("--time-limit", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Stop (and save) after this many seconds.")
@click.option("--dim", default=256, show_default=True, type=_pos, help="dit: DiT width.")
@click.option("--layers", default=6, show_default=True, type=_pos, help="dit: DiT blocks.")
@click.option("--heads", default=4, show_default=True, type=_pos, help="dit: attention heads.")
@click.option("--ffn", default=1024, show_default=True, type=_pos, help="dit: feed-forward width.")
@click.option("--max-history", default=600, show_default=True, type=click.IntRange(min=3),
              help="dit, distill: longest history (latent frames) a training target sits after.")
@click.option("--max-context", default=24, show_default=True, type=click.IntRange(min=4),
              help="dit, distill: most context frames per target.")
@click.option("--codec", default=None, type=click.Path(dir_okay=False),
              help="dit: train in this autoencoder's latent space (default: folded pixels, v1; with --init: "
                   "the init file's codec).")
@click.option("--sample-steps", default=4, show_default=True, type=_pos,
              help="dit: sampling steps trained for (4: the default schedule; more, e.g. 32: a teacher to distill).")
@click.option("--checkpoint-every", default=None, type=click.FloatRange(min=0, min_open=True),
              help="dit, distill: also save the EMA weights every N seconds.")
@click.option("--loss", default="x0", show_default=True, type=click.Choice(["x0", "v"]),
              help="dit: error of the x0 prediction (few-step models) or of the flow v (teachers, as Wan trains).")
@click.option("--target-copies", default=1, show_default=True, type=_pos,
              help="dit: noise levels of each target chunk trained per forward (the context computed once).")
@click.option("--object-weight", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="dit: extra loss weight on the latent pixels the world's objects cover.")
@click.option("--text-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="dit: share of examples trained without their prompt (the unconditional branch of guidance).")
@click.option("--revisit-p", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="dit, distill: share of revisit batches (a view the camera returns to, recalled from old "
                   "frames; the history in between sometimes another world's), which teach the model to read its "
                   "long memory.")
@click.option("--first-chunk-p", default=0.12, show_default=True, type=click.FloatRange(0, 1),
              help="dit, distill: share of the non-revisit batches whose target is a video's first chunk, drawn "
                   "from the prompt alone (the hardest target, and the first a user sees).")
@click.option("--guidance", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="distill: classifier-free guidance of the teacher (one trained with --text-dropout).")
@click.option("--context-guidance", default=None, type=click.FloatRange(min=0),
              help="distill: the teacher's guidance for targets after context frames (default: --guidance). The "
                   "prompt decides a text-only first chunk; after it the frames do, and a strongly guided teacher "
                   "bends what it continues.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="distill: the flow-matching teacher bundle.")
@click.option("--compile", is_flag=True, default=False,
              help="dit, distill: torch.compile the DiT forwards (dynamic shapes). On an H200 it halves a teacher "
                   "step after ~77 s of compiling; on a CPU compiling takes minutes.")
@click.option("--teacher-steps", default=None, type=_pos,
              help="distill: teacher ODE steps (default: its recorded schedule).")
@click.option("--eval-clips", default=None, type=_nonneg,
              help="autoencoder, critic: held-out clips scored after training [autoencoder 32, critic 1024].")
@click.option("--stats-frames", default=None, type=_pos,
              help="autoencoder: frames for the latent normalisation statistics [4096].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--init", default=None, type=click.Path(dir_okay=False),
              help="Continue from this file of the same stage (dit: a bundle, same architecture; distill: a "
                   "4-step student of --teacher; autoencoder / critic: their files). A continued run draws new "
                   "data, not its first run's again.")
@click.option("--device", default="cuda", show_default=True)
def train_cmd(out, stage, **opts):
    """Train the embedded model on the procedural world: the DiT (memory-shaped context sampling), its
    v2 autoencoder, the world critic, or a 4-step distilled student."""
    ctx = click.get_current_context()
    given = {n for n in opts if ctx.get_parameter_source(n) not in (click.core.ParameterSource.DEFAULT, None)}
    o = validate(stage, given, {"out": out, "stage": stage, **opts})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        info = run_stage(stage, out, o)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"saved {out} after {info['steps_done']} steps ({info['seconds']} s)")
    if stage != "dit":
        click.echo(f"{stage}: {summary(stage, info)}")
