"""``fademem generate``: long videos from a real causal Wan generator or the embedded model.

Every option is checked before the model runs (device, output file, lengths, switches, memory spec,
prompts): a bad value is a usage error (exit 2) and never costs a generation; a failure while
generating exits 1.
"""

from __future__ import annotations

import math
import os

import click

from fademem.cli.generate_input import DEFAULT_VIDEO_SECONDS, StartFrom, image_frames  # noqa: F401 (re-exported)

WAN_TEMPORAL_STRIDE = 4  # the Wan VAE: T latent frames <-> 4T - 3 video frames
EMBEDDED_TEMPORAL_STRIDE = 1  # the embedded codec: one video frame per latent frame


@click.command("generate")
@click.option("--prompt", default=None, help="Text prompt (one video).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="File with one prompt per line (blank lines and '#' comments skipped): one video each, "
                   "written to OUT with an index suffix (video_0.mp4, video_1.mp4, ...).")
@click.option("--seconds", type=float, default=60.0, show_default=True,
              help="Video length (at most 24 h), rounded up to whole chunks of 3 latent frames. Embedded "
                   "model: 8 fps, one video frame per latent frame (60 s -> 480 frames). Wan (--checkpoint): "
                   "16 fps, latent frames = ceil((16*seconds+3)/4) (60 s -> 243 latent -> 969 video frames).")
@click.option("--memory", "memory_spec", default="fademem", show_default=True,
              help="Memory policy spec, e.g. 'fademem:budget=12,beta=0.3', 'sink', 'full', 'omnimem'. FadeMem runs "
                   "with compact positions (0..20 for any length) when the video is longer than the model's trained "
                   "window (21 latent frames for Wan, 603 for the embedded model), unless positions= is given; the "
                   "run prints the positions its memory keeps to and, at the end, the largest it used. A knob "
                   "written 'auto' (e.g. 'fademem:beta=auto') is measured: see --beta-from.")
@click.option("--beta-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A fademem spectrum report (spectrum.json): its suggested beta replaces beta=auto in --memory "
                   "(as in `fademem bench memory`); the run prints the beta and where it came from. A report "
                   "without a usable beta (verdict 'none', no fit, saturated at the floor) is refused up front.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Causal Wan generator (Self-Forcing, CausVid, LongLive, Wan or diffusers layout); with "
                   "--wan-dir. Without both, the embedded model shipped in the package runs.")
@click.option("--lora", type=click.Path(), multiple=True,
              help="LoRA merged into the generator at load (repeatable): a file or peft adapter directory for a Wan "
                   "--checkpoint, or for the embedded model (e.g. `fademem finetune`'s output directory).")
@click.option("--wan-dir", type=click.Path(), default=None,
              help="Wan only: Wan2.1 Diffusers directory with text_encoder/, tokenizer/ and vae/.")
@click.option("--out", type=click.Path(dir_okay=False), default="video.mp4", show_default=True,
              help="Output video (.mp4, .mkv, .mov, .m4v); checked for writability before generating.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed for every video of a batch.")
@click.option("--switch", "switch_specs", multiple=True, metavar="FRAME:PROMPT",
              help="Prompt switch at a latent frame, or 'SECONDSs:PROMPT' at that time in the video (the "
                   "model's own fps and frames per latent frame); moved up to the next chunk boundary "
                   "(multiple of 3). Repeatable, increasing.")
@click.option("--device", default=None, help="Default: cuda if available, else cpu.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
              help="Default: bfloat16 on GPU, float32 on CPU.")
@click.option("--height", type=int, default=None,
              help="Wan only: frame height (multiple of 16) [default: 480]. The embedded model works at "
                   "its own size (64x64) and refuses another.")
@click.option("--width", type=int, default=None, help="Wan only: frame width (multiple of 16) [default: 832].")
@click.option("--context-noise", type=float, default=0.0, show_default=True,
              help="Timestep of the cache-writing pass (the clean chunk is re-noised to it).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Embedded model only: weights file (default: the ones shipped in the package).")
@click.option("--opening", type=float, default=0.0, show_default=True,
              help="Embedded model only: teacher-force the first SECONDS (shorter than --seconds) with the "
                   "procedural world's true frames (rendered from the prompt and --seed), then generate.")
@click.option("--image", type=click.Path(dir_okay=False), default=None,
              help="Start from this image (any format Pillow reads, any size): center-cropped to the frame's aspect "
                   "ratio, resized to the frame (bicubic; 64x64 for the embedded model, --height x --width for Wan), "
                   "encoded by the model's own encoder (its codec, or the Wan VAE) and held for the first chunk (3 "
                   "latent frames, teacher-forced); the video goes on from it.")
@click.option("--video", type=click.Path(dir_okay=False), default=None,
              help="Continue this clip (any format FFmpeg reads, any size): its last --video-seconds, resampled to the "
                   "model's fps (nearest frame in time) and fitted to the frame as for --image, are encoded by the "
                   "model's own encoder and teacher-forced through the cache pass as the first chunks, so they become "
                   "the memory's history. The output starts with them; --seconds counts them.")
@click.option("--video-seconds", type=float, default=DEFAULT_VIDEO_SECONDS,
              help=f"With --video: seconds taken from the end of the clip, rounded down to whole chunks (at least one: "
                   f"3 frames for the embedded model, 9 for Wan) [default: {DEFAULT_VIDEO_SECONDS:g}, at most half of "
                   "--seconds].")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True,
              help="x264 quality of the mp4 (0: lossless, bigger files).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="Save everything needed to continue to this file (safetensors), at the end, every "
                   "--state-every chunks and on Ctrl-C / SIGTERM (after the current chunk); the video file is "
                   "complete and playable at every save. One video (--prompt) only.")
@click.option("--state-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --state: also save every N chunks (0: only on a stop and at the end).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False), default=None,
              help="Continue the generation saved in this state file, bit for bit as if never stopped, appending "
                   "to its video. Optional: --seconds (the new total length), --prompt (a new prompt from the "
                   "resume point on), --switch (replaces the saved switches after it). Other options come "
                   "from the state.")
@click.option("--compile", "compile_mode", default="auto", show_default=True,
              help="Wan only: regional torch.compile of the DiT blocks and the VAE decoder: auto (default on CUDA, "
                   "none elsewhere), none (eager), default, max-autotune-no-cudagraphs. The first chunk compiles "
                   "(about a minute); the kernels are cached under ~/.cache/fademem (or $TORCHINDUCTOR_CACHE_DIR) so "
                   "the next run starts fast. Compiled on CUDA, the VAE decoder also runs channels-last and decodes "
                   "each chunk on a side stream beside the next chunk's DiT (same frames); none decodes in place.")
@click.option("--precision", default="dtype", show_default=True, type=click.Choice(["dtype", "fp8"]),
              help="Wan only: fp8 runs the DiT's block linears in torchao float8 (dynamic per-row scales); needs a "
                   "CUDA GPU of compute capability >= 8.9 and torchao (refused up front otherwise).")
@click.option("--low-memory", is_flag=True,
              help="Wan only, for 24 GB cards: the UMT5-XXL text encoder (11 GB in bf16) stays in host memory and "
                   "visits the GPU only to encode the prompts at the start.")
@click.option("--stop-after-chunks", type=click.IntRange(min=1), default=None, hidden=True,
              help="Stop (and save the state) after this many chunks of this run, as Ctrl-C would (tests).")
def generate(prompt, prompts_file, seconds, memory_spec, beta_from, checkpoint, lora, wan_dir, out, seed, switch_specs,
             device, dtype, height, width, context_noise, weights, opening, crf, state_path, state_every,
             resume_path, stop_after_chunks, image, video, video_seconds, compile_mode="auto", precision="dtype",
             low_memory=False):
    """Generate long videos chunk by chunk under a fixed KV-memory budget.

    Two generators: without --checkpoint/--wan-dir, the small embedded model shipped in the package
    (64x64, 8 fps, prompts from its procedural world's grammar; CPU is fine); with both, a real
    causal Wan generator (480x832 by default, 16 fps).
    """
    from click.core import ParameterSource

    from fademem.cli.common import check_device, check_out_path, check_seconds, resolve_memory_option
    from fademem.cli.generate_state import StateRun, resume
    from fademem.pipeline import parse_switch

    if resume_path is not None:
        if beta_from is not None:
            raise click.UsageError("--beta-from is not used with --resume: the state holds the memory spec with "
                                   "the beta it resolved")
        return resume(click.get_current_context(), resume_path, state_path, state_every, stop_after_chunks)
    prompts = _read_prompts(prompt, prompts_file)
    run = StateRun.fresh(state_path, state_every, stop_after_chunks, len(prompts), crf)
    run.seconds = seconds
    check_seconds(seconds)
    if not math.isfinite(opening) or opening < 0:
        raise click.BadParameter(f"must be >= 0 seconds, got {opening}", param_hint="--opening")
    if opening and opening >= seconds:
        raise click.BadParameter(f"the opening ({opening:g} s) must be shorter than the video (--seconds "
                                 f"{seconds:g})", param_hint="--opening")
    is_embedded = checkpoint is None and wan_dir is None
    if not is_embedded:
        if opening:
            raise click.UsageError("--opening is for the embedded model (no --checkpoint / --wan-dir)")
        if weights is not None:
            raise click.UsageError("--weights is for the embedded model; a real generator takes --checkpoint")
        if checkpoint is None or wan_dir is None:
            raise click.UsageError("--checkpoint and --wan-dir go together (the generator, and the Wan2.1 "
                                   "text encoder + VAE it runs with)")
    for p in lora:
        if not os.path.exists(p):
            raise click.BadParameter(f"LoRA not found: {p}", param_hint="--lora")
    for s in switch_specs:  # syntax now; frames once the model's fps is known
        try:
            parse_switch(s)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--switch") from None
    memory_spec = resolve_memory_option(memory_spec, beta_from)  # knob=auto resolved; a bad spec is a usage error
    if weights is not None and not os.path.isfile(weights):
        raise click.BadParameter(f"embedded-model weights file not found: {weights}", param_hint="--weights")
    given = click.get_current_context().get_parameter_source("video_seconds") == ParameterSource.COMMANDLINE
    start = StartFrom.from_options(image, video, video_seconds, seconds, opening, given)
    dev = check_device(device)
    fast = _fast_options(compile_mode, precision, low_memory, dev, is_embedded)
    if fast["fp8"] and state_path is not None:
        raise click.UsageError("--state is not available with --precision fp8: a resumed run loads the generator "
                               "in its dtype, so the saved state would not continue the same model")
    dtype = dtype or ("float32" if dev.type == "cpu" else "bfloat16")
    paths = _out_paths(out, len(prompts))
    for p in paths:
        check_out_path(p)
    if is_embedded:
        _generate_embedded(prompts, seconds, memory_spec, paths, seed, switch_specs, dev, dtype, context_noise,
                           weights, opening, height, width, run, start=start, lora=lora)
    else:
        _generate_wan(prompts, seconds, memory_spec, checkpoint, lora, wan_dir, paths, seed, switch_specs, dev,
                      dtype, height, width, context_noise, run, start=start, fast=fast)


def _fast_options(compile_mode, precision, low_memory, device, is_embedded) -> dict:
    """--compile / --precision / --low-memory checked before any work: {'compile', 'fp8', 'low_memory',
    'fallback', 'fast_decode'}; 'fast_decode' (channels-last decoder, overlapped decode) only compiled on CUDA."""
    from click.core import ParameterSource

    from fademem.pipeline.fast import Fp8Unavailable, check_fp8, fast_decode, resolve_compile

    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("compile_mode") == ParameterSource.COMMANDLINE
    try:
        mode = resolve_compile(compile_mode, device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--compile") from None
    if is_embedded:
        for flag, on in (("--compile", given and mode != "none"), ("--precision fp8", precision == "fp8"),
                         ("--low-memory", low_memory)):
            if on:
                raise click.UsageError(f"{flag} is for a real generator (--checkpoint / --wan-dir); the embedded "
                                       "model runs eager in its dtype")
        return {"compile": "none", "fp8": False, "low_memory": False, "fast_decode": False}
    if precision == "fp8":
        try:
            check_fp8(device)
        except Fp8Unavailable as exc:
            raise click.BadParameter(str(exc), param_hint="--precision") from None
    # compiling by default (not asked for): a region that fails to compile runs eagerly instead of failing the run
    return {"compile": mode, "fp8": precision == "fp8", "low_memory": bool(low_memory), "fallback": not given,
            "fast_decode": fast_decode(mode, device)}


def _read_prompts(prompt, prompts_file) -> list[str]:
    if (prompt is None) == (prompts_file is None):
        raise click.UsageError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompts_file is None:
        if not prompt.strip():
            raise click.BadParameter("empty prompt", param_hint="--prompt")
        return [prompt]
    if not os.path.isfile(prompts_file):
        raise click.BadParameter(f"file not found: {prompts_file}", param_hint="--prompts")
    with open(prompts_file, encoding="utf-8") as fh:
        prompts = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise click.BadParameter(f"no prompts in {prompts_file}", param_hint="--prompts")
    return prompts


def _switches(specs, fps: float, temporal_stride: int) -> list[tuple[int, str]]:
    from fademem.pipeline import parse_switch

    return [parse_switch(s, fps=fps, temporal_stride=temporal_stride) for s in specs]


def _out_paths(out: str, n: int) -> list[str]:
    stem, ext = os.path.splitext(out)
    return [out] if n == 1 else [f"{stem}_{i}{ext or '.mp4'}" for i in range(n)]


def _generate_wan(prompts, seconds, memory_spec, checkpoint, lora, wan_dir, paths, seed, switch_specs, device,
                  dtype, height, width, context_noise, run, start=None, fast=None):
    import torch

    from fademem.pipeline import load_wan_pipeline
    from fademem.pipeline.fast import RegionalCompile, apply_fast_decode, apply_fp8, enable_compile_cache

    fast = fast or {"compile": "none", "fp8": False, "low_memory": False}

    height, width = height or 480, width or 832
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise click.BadParameter(f"height and width must be positive multiples of 16, got {height}x{width}",
                                 param_hint="--height/--width")
    try:
        pipe = load_wan_pipeline(checkpoint, wan_dir, lora=list(lora), device=device, dtype=getattr(torch, dtype),
                                 context_noise=context_noise, offload_text=fast["low_memory"])
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if fast["low_memory"]:
        click.echo("low memory: the text encoder stays in host memory and visits the GPU only to encode", err=True)
    if fast["fp8"]:
        click.echo(f"fp8: {apply_fp8(pipe.model)} block linears in torchao float8", err=True)
    if fast["compile"] != "none":
        cache = enable_compile_cache()
        click.echo(f"compile {fast['compile']}: the DiT blocks and the VAE decoder compile on the first chunk "
                   f"(kernels cached in {cache['dir']}); --compile none runs eager", err=True)
    if fast.get("fast_decode"):
        click.echo(apply_fast_decode(pipe), err=True)
    with RegionalCompile(pipe.model, fast["compile"], decoder=pipe.decoder, fallback=fast.get("fallback", False)):
        _run_wan(pipe, prompts, seconds, memory_spec, checkpoint, lora, wan_dir, paths, seed, switch_specs, device,
                 dtype, height, width, run, start)


def _run_wan(pipe, prompts, seconds, memory_spec, checkpoint, lora, wan_dir, paths, seed, switch_specs, device,
             dtype, height, width, run, start):
    from fademem.pipeline import latent_frames_for_seconds

    num_frames = latent_frames_for_seconds(seconds, fps=pipe.fps, temporal_stride=WAN_TEMPORAL_STRIDE)
    switches = _switches(switch_specs, pipe.fps, WAN_TEMPORAL_STRIDE)
    latent_shape = (pipe.decoder.z_dim, height // 8, width // 8)
    click.echo(f"{num_frames} latent frames ({4 * num_frames - 3} video frames at {pipe.fps:g} fps), "
               f"memory {memory_spec}, {device} {dtype}", err=True)
    prefix = _start_prefix(start, run, pipe.decoder.encode, height, width, pipe,
                           pipe.decoder.video_frames, num_frames)
    _echo_positions(pipe, memory_spec, num_frames, run)
    for i, (p, path) in enumerate(zip(prompts, paths)):
        if len(prompts) > 1:
            click.echo(f"[{i + 1}/{len(prompts)}] {p}", err=True)
        try:
            run.generate(pipe, p, num_frames, path, memory_spec, seed, switches, latent_shape, prefix=prefix,
                         files=[checkpoint, *lora], cli=dict(kind="wan", checkpoint=os.path.abspath(checkpoint),
                         lora=[os.path.abspath(x) for x in lora], wan_dir=os.path.abspath(wan_dir), height=height,
                         width=width, **_start_meta(start)))
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        _echo_used(pipe)
        click.echo(path)


def _start_prefix(start, run, encode, height, width, pipe, video_frames_for, num_frames):
    """The teacher-forced latents of --image / --video (None without one, or when a resumed run is past them)."""
    if start is None:
        return None
    done = run.resume_state["start_frame"] if run.resume_state is not None else 0
    prefix = start.prefix(encode, height, width, pipe.fps, video_frames_for, pipe.frames_per_chunk, num_frames, done)
    if prefix is not None:
        click.echo(start.describe(), err=True)
    return prefix


def _start_meta(start) -> dict:
    return start.meta() if start is not None else {"image": None, "video": None}


def _echo_positions(pipe, memory_spec, num_frames, run) -> None:
    from fademem.cli.generate_input import position_note

    if run.resume_state is None:  # a resumed run keeps its state's positions
        click.echo(position_note(pipe, memory_spec, num_frames), err=True)


def _echo_used(pipe) -> None:
    from fademem.cli.generate_input import positions_used_note

    note = positions_used_note(pipe)
    if note:
        click.echo(note, err=True)


def _load_embedded(weights, device, dtype):
    """The embedded bundle; a bad --weights file is a usage error, a package without its asset is not."""
    import torch

    from fademem import embedded

    try:
        return embedded.load(weights, device=device, dtype=getattr(torch, dtype))
    except (FileNotFoundError, ValueError) as e:
        if weights is not None:
            raise click.BadParameter(str(e), param_hint="--weights") from None
        raise click.ClickException(str(e)) from None


def _generate_embedded(prompts, seconds, memory_spec, paths, seed, switch_specs, device, dtype, context_noise,
                       weights, opening, height, width, run, start=None, lora=()):
    """`fademem generate` with no checkpoint: the small model shipped in the package (CPU is fine).
    ``start`` (--image / --video, a ``StartFrom``) gives the teacher-forced first chunks; ``lora``: LoRA
    files / adapter directories merged into the DiT at load (``fademem finetune``'s)."""
    import dataclasses

    from fademem import embedded
    from fademem.pipeline import embedded_pipeline, generator_for_memory, latent_frames_for_seconds

    bundle = _load_embedded(weights, device, dtype)
    size = bundle.cfg.frame_size
    if (height is not None and height != size) or (width is not None and width != size):
        given = ", ".join(f"--{k} {v}" for k, v in (("height", height), ("width", width)) if v is not None)
        raise click.BadParameter(f"the embedded model works at {size}x{size}, got {given} (--height/--width are "
                                 "for a Wan --checkpoint)", param_hint="--height/--width")
    fps = bundle.cfg.fps
    switches = _switches(switch_specs, fps, EMBEDDED_TEMPORAL_STRIDE)
    for hint, texts in (("--prompt", prompts), ("--switch", [s[1] for s in switches])):
        try:
            for p in texts:
                bundle.text.tokenize([p])  # prompts outside the world's grammar fail before any work
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=hint) from None
    base = _merge_embedded_lora(bundle.model, lora)
    try:
        model = generator_for_memory(base, memory_spec)  # what the policy declares, e.g. a LoRA
    except (FileNotFoundError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--memory") from None
    if model is not base:
        click.echo(f"memory {memory_spec}: the generator LoRA it declares (Memory.generator_adapter) is merged "
                   "into the embedded model", err=True)
    pipe = embedded_pipeline(dataclasses.replace(bundle, model=model), context_noise=context_noise)
    num_frames = latent_frames_for_seconds(seconds, fps=fps, temporal_stride=EMBEDDED_TEMPORAL_STRIDE)
    click.echo(f"embedded model: {num_frames} frames of {size}x{size} at {fps} fps "
               f"({num_frames / fps:g} s), memory {memory_spec}, {device}", err=True)
    start_prefix = _start_prefix(start, run, bundle.codec.encode, size, size, pipe, lambda n: n, num_frames)
    _echo_positions(pipe, memory_spec, num_frames, run)
    for i, (p, path) in enumerate(zip(prompts, paths)):
        if len(prompts) > 1:
            click.echo(f"[{i + 1}/{len(prompts)}] {p}", err=True)
        try:
            prefix = embedded.opening(bundle, [p], seed, min(opening, num_frames / fps)) if opening else start_prefix
            run.generate(pipe, p, num_frames, path, memory_spec, seed, switches, embedded.latent_shape(bundle.cfg),
                         prefix=prefix, files=[weights or embedded.default_path(), *lora],
                         cli=dict(kind="embedded", weights=weights and os.path.abspath(weights), opening=opening,
                                  lora=[os.path.abspath(x) for x in lora], **_start_meta(start)))
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        _echo_used(pipe)
        click.echo(path)


def _merge_embedded_lora(model, lora):
    """The embedded DiT with the ``--lora`` adapters merged in order (a copy; the model itself without any)."""
    if not lora:
        return model
    import copy

    from fademem.wan.lora import load_lora

    model = copy.deepcopy(model)
    for path in lora:
        try:
            model = load_lora(model, path)
        except ValueError as e:  # CheckpointError: not a LoRA, or one for another model
            raise click.BadParameter(str(e), param_hint="--lora") from None
        click.echo(f"LoRA {path} merged into the embedded model", err=True)
    return model
