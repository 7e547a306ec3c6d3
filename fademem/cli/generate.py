"""``fademem generate``: long videos from a real causal Wan generator or the embedded model."""

from __future__ import annotations

import click


@click.command("generate")
@click.option("--prompt", default=None, help="Text prompt (one video).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="File with one prompt per line (blank lines and '#' comments skipped): one video each, "
                   "written to OUT with an index suffix (video_0.mp4, video_1.mp4, ...).")
@click.option("--seconds", type=float, default=60.0, show_default=True,
              help="Video length. 16 fps: frames = 16*seconds, latent frames = ceil((frames+3)/4) rounded "
                   "up to whole chunks of 3 (60 s -> 243 latent frames -> 969 video frames).")
@click.option("--memory", "memory_spec", default="fademem", show_default=True,
              help="Memory policy spec, e.g. 'fademem:budget=12,beta=0.3', 'sink', 'full'.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Causal Wan generator (Self-Forcing, CausVid, LongLive, Wan or diffusers layout).")
@click.option("--lora", type=click.Path(), multiple=True, help="LoRA file merged into the generator (repeatable).")
@click.option("--wan-dir", type=click.Path(), default=None,
              help="Wan2.1 Diffusers directory with text_encoder/, tokenizer/ and vae/.")
@click.option("--out", type=click.Path(dir_okay=False), default="video.mp4", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed for every video of a batch.")
@click.option("--switch", "switch_specs", multiple=True, metavar="FRAME:PROMPT",
              help="Prompt switch at a latent frame (or 'SECONDSs:PROMPT'); moved up to the next chunk "
                   "boundary (multiple of 3). Repeatable, increasing.")
@click.option("--device", default=None, help="Default: cuda if available, else cpu.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
              help="Default: bfloat16 on GPU, float32 on CPU.")
@click.option("--height", type=int, default=480, show_default=True)
@click.option("--width", type=int, default=832, show_default=True)
@click.option("--context-noise", type=float, default=0.0, show_default=True,
              help="Timestep of the cache-writing pass (the clean chunk is re-noised to it).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Embedded-model weights (default: the ones shipped in the package).")
@click.option("--opening", type=float, default=0.0, show_default=True,
              help="Embedded model only: teacher-force the first SECONDS with the procedural world's true "
                   "frames (rendered from the prompt and --seed), then generate.")
def generate(prompt, prompts_file, seconds, memory_spec, checkpoint, lora, wan_dir, out, seed, switch_specs,
             device, dtype, height, width, context_noise, weights, opening):
    """Generate long videos chunk by chunk under a fixed KV-memory budget."""
    import os

    import torch

    from fademem.pipeline import latent_frames_for_seconds, load_wan_pipeline, parse_switch

    if (prompt is None) == (prompts_file is None):
        raise click.UsageError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompts_file is not None:
        if not os.path.isfile(prompts_file):
            raise click.BadParameter(f"file not found: {prompts_file}", param_hint="--prompts")
        with open(prompts_file, encoding="utf-8") as fh:
            prompts = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise click.BadParameter(f"no prompts in {prompts_file}", param_hint="--prompts")
    else:
        if not prompt.strip():
            raise click.BadParameter("empty prompt", param_hint="--prompt")
        prompts = [prompt]
    if seconds <= 0:
        raise click.BadParameter(f"must be positive, got {seconds}", param_hint="--seconds")
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise click.BadParameter(f"height and width must be positive multiples of 16, got {height}x{width}",
                                 param_hint="--height/--width")
    try:
        switches = [parse_switch(s) for s in switch_specs]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--switch") from None
    from fademem.memory import parse_spec

    try:
        parse_spec(memory_spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--memory") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float32" if str(device) == "cpu" else "bfloat16")
    torch_dtype = getattr(torch, dtype)
    if opening and (checkpoint is not None or wan_dir is not None):
        raise click.UsageError("--opening is for the embedded model (no --checkpoint / --wan-dir)")
    if opening < 0:
        raise click.BadParameter(f"must be >= 0, got {opening}", param_hint="--opening")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise click.BadParameter(f"directory {out_dir} does not exist", param_hint="--out")
    if checkpoint is None and wan_dir is None:
        _generate_embedded(prompts, seconds, memory_spec, out, seed, switches, device, torch_dtype,
                           context_noise, weights, opening)
        return
    if weights is not None:
        raise click.UsageError("--weights is for the embedded model; a real generator takes --checkpoint")
    if checkpoint is None or wan_dir is None:
        raise click.UsageError("--checkpoint and --wan-dir go together (the generator, and the Wan2.1 "
                               "text encoder + VAE it runs with)")
    try:
        pipe = load_wan_pipeline(checkpoint, wan_dir, lora=list(lora), device=device, dtype=torch_dtype,
                                 context_noise=context_noise)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    num_frames = latent_frames_for_seconds(seconds, fps=pipe.fps)
    latent_shape = (pipe.decoder.z_dim, height // 8, width // 8)
    stem, ext = os.path.splitext(out)
    paths = [out] if len(prompts) == 1 else [f"{stem}_{i}{ext or '.mp4'}" for i in range(len(prompts))]
    click.echo(f"{num_frames} latent frames ({4 * num_frames - 3} video frames at {pipe.fps:g} fps), "
               f"memory {memory_spec}, {device} {dtype}", err=True)
    for i, (p, path) in enumerate(zip(prompts, paths)):
        if len(prompts) > 1:
            click.echo(f"[{i + 1}/{len(prompts)}] {p}", err=True)
        try:
            pipe.generate_video(p, num_frames, out=path, memory=memory_spec, seed=seed, switches=switches,
                                latent_shape=latent_shape, progress=True)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        click.echo(path)


def _out_paths(out: str, n: int) -> list[str]:
    import os

    stem, ext = os.path.splitext(out)
    return [out] if n == 1 else [f"{stem}_{i}{ext or '.mp4'}" for i in range(n)]


def _generate_embedded(prompts, seconds, memory_spec, out, seed, switches, device, dtype, context_noise,
                       weights, opening):
    """`fademem generate` with no checkpoint: the small model shipped in the package (CPU is fine)."""
    from fademem import embedded
    from fademem.pipeline import latent_frames_for_seconds

    try:
        bundle = embedded.load(weights, device=device, dtype=dtype)
        for p in prompts:
            bundle.text.tokenize([p])  # prompts outside the world's grammar fail before any work
        import dataclasses

        from fademem.pipeline import embedded_pipeline, generator_for_memory

        model = generator_for_memory(bundle.model, memory_spec)  # what the policy declares, e.g. a LoRA
        if model is not bundle.model:
            click.echo(f"memory {memory_spec}: the generator LoRA it declares (Memory.generator_adapter) is merged "
                       "into the embedded model", err=True)
        pipe = embedded_pipeline(dataclasses.replace(bundle, model=model), context_noise=context_noise)
        num_frames = latent_frames_for_seconds(seconds, fps=bundle.cfg.fps, temporal_stride=1)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"embedded model: {num_frames} frames of {bundle.cfg.frame_size}x{bundle.cfg.frame_size} at "
               f"{bundle.cfg.fps} fps, memory {memory_spec}, {device}", err=True)
    for i, (p, path) in enumerate(zip(prompts, _out_paths(out, len(prompts)))):
        if len(prompts) > 1:
            click.echo(f"[{i + 1}/{len(prompts)}] {p}", err=True)
        try:
            prefix = embedded.opening(bundle, [p], seed, min(opening, num_frames / bundle.cfg.fps)) \
                if opening else None
            pipe.generate_video(p, num_frames, out=path, memory=memory_spec, seed=seed, switches=switches,
                                latent_shape=embedded.latent_shape(bundle.cfg), progress=True, prefix=prefix)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        click.echo(path)
