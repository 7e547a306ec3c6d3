"""The `fademem` command line: one click group, one small function per subcommand.

Each subcommand imports its module lazily so `fademem --help` stays fast.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fademem")
def main() -> None:
    """Long-horizon autoregressive video diffusion under a fixed memory budget."""


def _parse_size(ctx, param, value):
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"expected S or HxW with positive integers, got {value!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


@main.command("spectrum")
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (JSON + PNGs).")
@click.option("--bands", default=8, show_default=True, type=int, help="Radial frequency bands (>= 2).")
@click.option("--max-lag", default=32, show_default=True, type=int, help="Largest lag, in analysed frames.")
@click.option("--channels", default="luma", show_default=True, type=click.Choice(["luma", "rgb"]),
              help="Pixel features (ignored with --vae-dir).")
@click.option("--size", default=None, callback=_parse_size, help="S (short side S, centre crop SxS) or HxW.")
@click.option("--stride", default=1, show_default=True, type=int, help="Analyse every N-th frame.")
@click.option("--max-frames", default=None, type=int, help="Enlarge the stride evenly so at most N frames are used.")
@click.option("--rule", default="slope", show_default=True, type=click.Choice(["slope", "drop"]),
              help="Horizon rule: local slope <= eps * mean slope so far, or remaining drop <= eps * total drop.")
@click.option("--eps", default=0.1, show_default=True, type=float, help="Horizon threshold of --rule.")
@click.option("--lookahead", default=0.5, show_default=True, type=float,
              help="Slope rule: local slope over [t, (1 + lookahead) t].")
@click.option("--min-drop", default=0.05, show_default=True, type=float, help="Bands dropping less are 'static'.")
@click.option("--censor-frac", default=0.5, show_default=True, type=float,
              help="Horizons beyond censor_frac * max_lag are censored (no flat regime seen).")
@click.option("--window", default="hann", show_default=True, type=click.Choice(["hann", "none"]))
@click.option("--ci", "ci_method", default="bootstrap", show_default=True, type=click.Choice(["bootstrap", "ols"]))
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Block-bootstrap replicates (0: none).")
@click.option("--block", default=None, type=int,
              help="Bootstrap block length in frames [default: censor-frac * max-lag].")
@click.option("--level", default=0.95, show_default=True, type=float, help="Confidence level.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--pool/--no-pool", default=True, show_default=True, help="Also pool all videos' frame pairs.")
@click.option("--suggest-beta", is_flag=True, help="Print the FadeMem exponent beta = 1 - 2b.")
@click.option("--beta-floor", default=0.05, show_default=True, type=float)
@click.option("--vae-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Analyse Wan-VAE latents (diffusers AutoencoderKLWan folder) instead of pixels.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the VAE.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def spectrum(videos, out_dir, bands, max_lag, channels, size, stride, max_frames, rule, eps, lookahead, min_drop,
             censor_frac, window, ci_method, n_boot, block, level, seed, pool, suggest_beta, beta_floor, vae_dir,
             device, progress):
    """Spectral decay of VIDEO(s): C_r(lag) per band, horizons t*(r), r*(t) ~ t^-b (paper Sec. 3.2, Fig. 2)."""
    from fademem.analysis.spectrum import SpectrumParams, analyse_videos
    from fademem.analysis.spectrum_plot import format_summary, write_report

    try:
        params = SpectrumParams(bands=bands, max_lag=max_lag, channels=channels, window=window, rule=rule, eps=eps,
                                lookahead=lookahead, min_drop=min_drop, censor_frac=censor_frac, block=block,
                                n_boot=n_boot, level=level, ci=ci_method, seed=seed,
                                beta_floor=beta_floor).validate()
        report = analyse_videos(list(videos), params, size=size, stride=stride, max_frames=max_frames,
                                vae_dir=vae_dir, device=device, pool=pool, progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    paths = write_report(report, out_dir)
    for res in report["videos"]:
        click.echo(format_summary(res, res["name"], suggest_beta, level))
    if len(report["videos"]) > 1 and report["pooled"] is not None:
        click.echo(format_summary(report["pooled"], f"pooled ({len(videos)} videos)", suggest_beta, level))
    click.echo(f"wrote {paths['json']} and {len(paths['figures'])} figure(s) to {out_dir}")


@main.command("schedule")
@click.option("--budget", default=12, show_default=True, type=int, help="Entries, anchor included.")
@click.option("--beta", default=0.3, show_default=True, type=float, help="Warp exponent in (0, 1].")
@click.option("--steps", default=240, show_default=True, type=int, help="Latent frames to insert.")
@click.option("--no-anchor", is_flag=True, help="Do not protect frame 0 as the global anchor.")
@click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper", "release"]))
@click.option("--merge", default="weighted", show_default=True,
              type=click.Choice(["weighted", "average", "nearest", "max"]))
@click.option("--span-gamma", default=None, type=float, help="Merge weight exponent (default: preset's).")
@click.option("--positions", default=None, type=click.Choice(["absolute", "compact"]),
              help="Position mode for the table (default: preset's).")
@click.option("--chunk", default=3, show_default=True, type=int, help="Frames per chunk (release timing).")
@click.option("--json", "as_json", is_flag=True, help="Print the final memory as JSON [{mu, span}, ...].")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write the layout plot (PNG).")
def schedule(budget, beta, steps, no_anchor, preset, merge, span_gamma, positions, chunk, as_json, plot):
    """FadeMem's memory after STEPS frames (metadata only): mu is a 0-based latent frame index."""
    import json

    from fademem.analysis.schedule import format_table, plot_layout, simulate

    try:
        run = simulate(budget, beta, steps, anchor=not no_anchor, preset=preset, merge=merge,
                       span_gamma=span_gamma, positions=positions, chunk=chunk, record=plot is not None)
        if plot is not None:
            plot_layout(run, plot)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(run.as_json()) if as_json else format_table(run))
    if plot is not None and not as_json:
        click.echo(f"wrote {plot}")


@main.command("generate")
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


@main.command("train")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Weights file (.safetensors).")
@click.option("--steps", default=20000, show_default=True, type=int)
@click.option("--batch", default=32, show_default=True, type=int)
@click.option("--lr", default=4e-4, show_default=True, type=float)
@click.option("--workers", default=4, show_default=True, type=int, help="Data-rendering processes.")
@click.option("--time-limit", default=None, type=float, help="Stop (and save) after this many seconds.")
@click.option("--dim", default=256, show_default=True, type=int)
@click.option("--layers", default=6, show_default=True, type=int)
@click.option("--heads", default=4, show_default=True, type=int)
@click.option("--ffn", default=1024, show_default=True, type=int)
@click.option("--max-history", default=600, show_default=True, type=int,
              help="Longest history (latent frames) a training target sits after.")
@click.option("--max-context", default=24, show_default=True, type=int, help="Most context frames per target.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--init", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Continue from these embedded weights (same architecture).")
@click.option("--device", default="cuda", show_default=True)
def train_cmd(out, steps, batch, lr, workers, time_limit, dim, layers, heads, ffn, max_history, max_context, seed,
              init, device):
    """Train the embedded model on the procedural world (memory-shaped context sampling)."""
    from fademem.embedded.train import TrainConfig, train

    try:
        cfg = TrainConfig(steps=steps, batch=batch, lr=lr, workers=workers, time_limit=time_limit, dim=dim,
                          layers=layers, heads=heads, ffn=ffn, max_history=max_history, max_context=max_context,
                          seed=seed, init=init)
        info = train(cfg, out, device=device, log=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"saved {out} after {info['steps_done']} steps ({info['seconds']} s)")


@main.group("bench")
def bench() -> None:
    """Benchmarks (speed, ...): each subcommand writes a JSON report."""


@bench.command("speed")
@click.option("--policies", default=",".join(("full", "window:budget=12", "sink:budget=12,sink=3", "memrope",
                                               "fademem:budget=12")), show_default=True,
              help="Memory specs, comma separated (a key=value after a comma continues the previous spec).")
@click.option("--seconds", default=60.0, show_default=True, type=float, help="Video length (16 fps, 4 video frames per latent frame).")
@click.option("--full-max-frames", default=120, show_default=True, type=int,
              help="Cap (latent frames) for the unbounded 'full' policy; 0 = no cap.")
@click.option("--long-policies", default="", help="Specs run for --long-seconds in the timed mode (see --timed-every).")
@click.option("--long-seconds", default=600.0, show_default=True, type=float)
@click.option("--timed-every", default=None, type=float,
              help="Timed mode: time windows of --timed-chunks chunks every N seconds of video (and the first "
                   "--timed-first chunks and the last window); the other chunks run only the cache-writing forward. "
                   "Applies to --long-policies (default 60) and, when given, to --policies.")
@click.option("--timed-chunks", default=4, show_default=True, type=int, help="Chunks per timed window.")
@click.option("--timed-first", default=40, show_default=True, type=int, help="Chunks timed at the start of a timed-mode run.")
@click.option("--e2e-policies", default="", help="Specs run end to end: DiT + streaming decode by a random-weight "
                                                 "Wan2.1 VAE (needs diffusers).")
@click.option("--e2e-seconds", default=7.5, show_default=True, type=float)
@click.option("--overlap", default="both", show_default=True, type=click.Choice(["off", "on", "both"]),
              help="End to end: decode in place, on a side stream overlapped with the next chunk, or both "
                   "(both on the first --e2e-policies spec).")
@click.option("--vae", "vae_kind", default="wan2.1", show_default=True, type=click.Choice(["wan2.1", "tiny"]),
              help="VAE configuration for --e2e-policies (tiny: tests).")
@click.option("--config", "config_name", default="1.3b", show_default=True, type=click.Choice(["1.3b", "14b", "tiny"]))
@click.option("--latent", default="16x60x104", show_default=True, help="Latent C x h x w (480x832 video: 16x60x104).")
@click.option("--device", default="cuda", show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--warmup", default=3, show_default=True, type=int, help="Chunks left out of the steady-state statistics.")
@click.option("--sdpa", default="auto", show_default=True, type=click.Choice(["auto", "cudnn", "flash", "efficient", "math"]),
              help="SDPA backend for the policy sweep.")
@click.option("--compile", "compile_mode", default="none", show_default=True,
              type=click.Choice(["none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"]),
              help="Regional torch.compile of the memory-free block parts for the policy sweep.")
@click.option("--variants", default="", help="Extra runs of --variant-policy, e.g. 'eager,graph,sdpa=cudnn,"
                                             "compile=default' ('graph': CUDA-graph replay of the denoising "
                                             "forwards; parts join with '+'); the first is the baseline.")
@click.option("--variant-policy", default="fademem:budget=12", show_default=True)
@click.option("--variant-seconds", default=15.0, show_default=True, type=float)
@click.option("--time-budget", default=None, type=float,
              help="Seconds: a part that would not fit (forecast from the chunk costs measured so far) is skipped "
                   "and listed; a run still going at the limit stops early.")
@click.option("--no-peak", is_flag=True, help="Skip the 8192^3 matmul peak measurement.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON report; the plot goes next to it (.png).")
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_speed(policies, seconds, full_max_frames, long_policies, long_seconds, timed_every, timed_chunks, timed_first,
                e2e_policies, e2e_seconds, overlap, vae_kind, config_name, latent, device, dtype, warmup, sdpa,
                compile_mode, variants, variant_policy, variant_seconds, time_budget, no_peak, seed, out, plot,
                progress):
    """DiT speed per memory policy at equal visible context: latency, fps, memory, TFLOP/s vs video length;
    10-minute runs in the timed mode, end to end with VAE decode, speed-option variants."""
    import os

    from fademem.bench import speed as sp

    try:
        lat = tuple(int(v) for v in latent.lower().split("x"))
        if len(lat) != 3 or min(lat) <= 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"expected CxHxW, got {latent!r}", param_hint="--latent") from None
    try:
        setup = sp.SpeedSetup(config=config_name, latent=lat, device=device, dtype=dtype, seed=seed, warmup=warmup,
                              sdpa=sdpa, compile=compile_mode)
        run = sp.SpeedRun(setup=setup, policies=sp.parse_list(policies), seconds=seconds,
                          full_max_frames=full_max_frames or None, timed_every_s=timed_every,
                          timed_window=timed_chunks, timed_first=timed_first,
                          long_policies=sp.parse_list(long_policies), long_seconds=long_seconds,
                          e2e_policies=sp.parse_list(e2e_policies), e2e_seconds=e2e_seconds, overlap=overlap,
                          vae=vae_kind, variants=sp.parse_list(variants), variant_policy=variant_policy,
                          variant_seconds=variant_seconds, time_budget_s=time_budget, measure_peak=not no_peak,
                          progress=progress)
        report = sp.run_speed(run, log=click.echo)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    sp.write_json(report, out)
    click.echo(sp.format_table(report))
    click.echo(f"wrote {out}")
    if plot:
        png = sp.plot(report, os.path.splitext(out)[0] + ".png")
        click.echo(f"wrote {png}")


@bench.command("memory")
@click.option("--policies", default="full,window,sink,memrope,fademem", show_default=True,
              help="Policies: bare names get --budget history frames (memrope: recent=budget-5); specs with knobs "
                   "(e.g. window:budget=6) run as given. A key=value after a comma continues the previous spec.")
@click.option("--episodes", default=4, show_default=True, type=int,
              help="Episodes: the 13 BENCHMARK_SCENES in order (or --scenes), then revisit_scene(seed+i).")
@click.option("--budget", default=12, show_default=True, type=int, help="History latent frames per bounded policy.")
@click.option("--seconds", default=40.0, show_default=True, type=float, help="Episode length (8 fps).")
@click.option("--opening-seconds", default=6.0, show_default=True, type=float,
              help="True opening, teacher-forced into the memory before generation.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Embedded-model file (default: the shipped fademem/assets/embedded.safetensors).")
@click.option("--out", "out_dir", default="bench_memory", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: memory.json, memory.png, memory.txt.")
@click.option("--seed", default=0, show_default=True, type=int, help="Episode i uses noise seed seed+i.")
@click.option("--steps", default="1000,750,500,250", show_default=True, help="Nominal denoising timesteps.")
@click.option("--batch", default=0, show_default=True, type=int,
              help="Episodes per batch (0: all in one batch; the same grouping for every policy).")
@click.option("--scenes", default="", help="Benchmark scene indices for the first episodes, e.g. '0,1,2,3'.")
@click.option("--long-lag-seconds", default=8.0, show_default=True, type=float, help="'Long lag' threshold.")
@click.option("--threads", default=None, type=int, help="torch.set_num_threads (CPU).")
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_memory(policies, episodes, budget, seconds, opening_seconds, device, dtype, weights, out_dir, seed, steps,
                 batch, scenes, long_lag_seconds, threads, plot, progress):
    """Long-memory quality vs ground truth: true opening, then generation; PSNR/SSIM by revisit lag."""
    import os

    import torch

    from fademem.bench import memory as bm

    if threads:
        torch.set_num_threads(threads)
    try:
        step_list = tuple(float(v) for v in steps.split(",") if v.strip())
        scene_list = [int(v) for v in scenes.split(",") if v.strip()] or None
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers", param_hint="--steps/--scenes") from None
    try:
        run = bm.MemoryRun(policies=bm.parse_policies(policies), episodes=episodes, budget=budget, seconds=seconds,
                           opening_seconds=opening_seconds, device=device, dtype=dtype, weights=weights, seed=seed,
                           steps=step_list, batch=batch, scenes=scene_list, long_lag_seconds=long_lag_seconds,
                           progress=progress)
        bm.validate(run)
        report = bm.run_memory(run, log=click.echo)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    os.makedirs(out_dir, exist_ok=True)
    table = bm.format_table(report)
    click.echo(f"wrote {bm.write_json(report, os.path.join(out_dir, 'memory.json'))}")
    with open(os.path.join(out_dir, "memory.txt"), "w") as fh:
        fh.write(table + "\n")
    if plot:
        click.echo(f"wrote {bm.plot(report, os.path.join(out_dir, 'memory.png'))}")
    click.echo(table)


def _register_commands() -> None:
    from fademem.cli.compressor import train_compressor

    main.add_command(train_compressor)


_register_commands()

if __name__ == "__main__":
    main()
