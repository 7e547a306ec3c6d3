"""``fademem bench``: the benchmark group (speed, memory); each subcommand writes a JSON report."""

from __future__ import annotations

import click


@click.group("bench")
def bench() -> None:
    """Benchmarks (speed, ...): each subcommand writes a JSON report."""


@bench.command("speed")
@click.option("--policies", default=",".join(("full", "window:budget=12", "sink:budget=12,sink=3", "memrope",
                                               "fademem:budget=12")), show_default=True,
              help="Memory specs, comma separated (a key=value after a comma continues the previous spec).")
@click.option("--seconds", default=60.0, show_default=True, type=float,
              help="Video length (16 fps, 4 video frames per latent frame).")
@click.option("--full-max-frames", default=120, show_default=True, type=int,
              help="Cap (latent frames) for the unbounded 'full' policy; 0 = no cap.")
@click.option("--long-policies", default="", help="Specs run for --long-seconds in the timed mode (see --timed-every).")
@click.option("--long-seconds", default=600.0, show_default=True, type=float)
@click.option("--timed-every", default=None, type=float,
              help="Timed mode: time windows of --timed-chunks chunks every N seconds of video (and the first "
                   "--timed-first chunks and the last window); the other chunks run only the cache-writing forward. "
                   "Applies to --long-policies (default 60) and, when given, to --policies.")
@click.option("--timed-chunks", default=4, show_default=True, type=int, help="Chunks per timed window.")
@click.option("--timed-first", default=40, show_default=True, type=int,
              help="Chunks timed at the start of a timed-mode run.")
@click.option("--e2e-policies", default="", help="Specs run end to end: DiT + streaming decode by a random-weight "
                                                 "Wan2.1 VAE (needs diffusers).")
@click.option("--e2e-seconds", default=7.5, show_default=True, type=float)
@click.option("--overlap", default="both", show_default=True, type=click.Choice(["off", "on", "both"]),
              help="End to end: decode in place, on a side stream overlapped with the next chunk, or both "
                   "(both on the first --e2e-policies spec; the others overlapped when compiled on CUDA, where the "
                   "decoder also runs channels-last, as fademem generate does, else in place).")
@click.option("--vae", "vae_kind", default="wan2.1", show_default=True, type=click.Choice(["wan2.1", "tiny"]),
              help="VAE configuration for --e2e-policies (tiny: tests).")
@click.option("--config", "config_name", default="1.3b", show_default=True, type=click.Choice(["1.3b", "14b", "tiny"]))
@click.option("--latent", default="16x60x104", show_default=True, help="Latent C x h x w (480x832 video: 16x60x104).")
@click.option("--device", default="cuda", show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--warmup", default=3, show_default=True, type=int,
              help="Chunks left out of the steady-state statistics.")
@click.option("--sdpa", default="auto", show_default=True,
              type=click.Choice(["auto", "cudnn", "flash", "efficient", "math"]),
              help="SDPA backend for the policy sweep.")
@click.option("--compile", "compile_mode", default="auto", show_default=True,
              help="Regional torch.compile of the DiT's memory-free block parts (and of the VAE decoder end to end): "
                   "auto (default on CUDA, none elsewhere), none (eager), default, max-autotune-no-cudagraphs. "
                   "Compiled kernels are cached under ~/.cache/fademem (or $TORCHINDUCTOR_CACHE_DIR). "
                   "'reduce-overhead' / 'max-autotune' are refused: their CUDA-graph trees overwrite a previous "
                   "block's output (use the 'graph' variant for CUDA-graph replay).")
@click.option("--precision", default="dtype", show_default=True, type=click.Choice(["dtype", "fp8"]),
              help="dtype: every layer in --dtype; fp8: the DiT's block linears in torchao float8 (dynamic per-row "
                   "scales; a CUDA GPU of compute capability >= 8.9 and torchao, refused up front otherwise).")
@click.option("--variants", default="", help="Extra runs of --variant-policy, e.g. 'eager+e2e,compile+e2e,"
                                             "fp8+compile,graph,sdpa=cudnn' (parts join with '+': eager, "
                                             "compile[=<mode>], fp8, graph = CUDA-graph replay of the denoising "
                                             "forwards, sdpa=<backend>, "
                                             "e2e = with streaming VAE decode, overlap = end to end with the decode "
                                             "on a side stream, vae=cl = end to end with a channels_last_3d "
                                             "decoder); each reports its cold start and a "
                                             "per-forward check against eager; the first is the baseline.")
@click.option("--variant-policy", default="fademem:budget=12", show_default=True)
@click.option("--variant-seconds", default=15.0, show_default=True, type=float)
@click.option("--low-memory", is_flag=True,
              help="Also run the 24 GB mode end to end: a random-weight UMT5-XXL text encoder at its real size kept "
                   "on the host and moved to the GPU only to encode (as `fademem generate --low-memory`), the DiT, "
                   "the VAE; reports peak GPU memory and fps.")
@click.option("--low-memory-policy", default=None,
              help="Memory spec of the low-memory run [default: --variant-policy].")
@click.option("--low-memory-seconds", default=6.0, show_default=True, type=float)
@click.option("--time-budget", default=None, type=float,
              help="Seconds: a part that would not fit (forecast from the chunk costs measured so far) is skipped "
                   "and listed; a run still going at the limit stops early.")
@click.option("--no-peak", is_flag=True, help="Skip the 8192^3 matmul peak measurement.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="JSON report; the plot goes next to it (.png).")
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_speed(policies, seconds, full_max_frames, long_policies, long_seconds, timed_every, timed_chunks, timed_first,
                e2e_policies, e2e_seconds, overlap, vae_kind, config_name, latent, device, dtype, warmup, sdpa,
                compile_mode, precision, variants, variant_policy, variant_seconds, low_memory, low_memory_policy,
                low_memory_seconds, time_budget, no_peak, seed, out, plot, progress):
    """DiT speed per memory policy at equal visible context: latency, fps, memory, TFLOP/s vs video length;
    10-minute runs in the timed mode, end to end with VAE decode, speed-option variants."""
    import os

    from fademem.bench import speed as sp

    try:
        sp.check_compile_mode(compile_mode)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--compile") from None
    try:
        lat = tuple(int(v) for v in latent.lower().split("x"))
        if len(lat) != 3 or min(lat) <= 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"expected CxHxW, got {latent!r}", param_hint="--latent") from None
    try:
        setup = sp.SpeedSetup(config=config_name, latent=lat, device=device, dtype=dtype, seed=seed, warmup=warmup,
                              sdpa=sdpa, compile=compile_mode, precision=precision)
        run = sp.SpeedRun(setup=setup, policies=sp.parse_list(policies), seconds=seconds,
                          full_max_frames=full_max_frames or None, timed_every_s=timed_every,
                          timed_window=timed_chunks, timed_first=timed_first,
                          long_policies=sp.parse_list(long_policies), long_seconds=long_seconds,
                          e2e_policies=sp.parse_list(e2e_policies), e2e_seconds=e2e_seconds, overlap=overlap,
                          vae=vae_kind, variants=sp.parse_list(variants), variant_policy=variant_policy,
                          variant_seconds=variant_seconds, low_memory=low_memory, low_memory_policy=low_memory_policy,
                          low_memory_seconds=low_memory_seconds, time_budget_s=time_budget, measure_peak=not no_peak,
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
@click.option("--episodes", default=None, type=int,
              help="Episodes [default: 48 with --device cuda, 4 on the CPU (a run of minutes)]: the BENCHMARK_SCENES "
                   "in order (or --scenes) that bring content back within --seconds (others are skipped and listed), "
                   "then revisit scenes built to return within --seconds.")
@click.option("--budget", default=12, show_default=True, type=int, help="History latent frames per bounded policy.")
@click.option("--seconds", default=40.0, show_default=True, type=float, help="Episode length (8 fps).")
@click.option("--opening-seconds", default=6.0, show_default=True, type=float,
              help="True opening, teacher-forced into the memory before generation.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Embedded-model file: the shipped fademem/assets/embedded.safetensors (default) or another bundle "
                   "(autoencoder codec, recorded sampling schedule).")
@click.option("--critic", default=None, type=click.Path(dir_okay=False),
              help="World-critic file: adds the identity score (object colour/shape/size) on revisit windows; "
                   "skipped with a note when not given.")
@click.option("--out", "out_dir", default="bench_memory", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: memory.json, memory.png, memory.txt.")
@click.option("--seed", default=0, show_default=True, type=int, help="Episode i uses noise seed seed+i.")
@click.option("--steps", default="", help="Nominal denoising timesteps [default: the model file's schedule]; an "
                                           "explicit list must agree with the file's (an error otherwise).")
@click.option("--batch", default=0, show_default=True, type=int,
              help="Episodes per batch (0: all in one batch; the same grouping for every policy).")
@click.option("--scenes", default="", help="Benchmark scene indices for the first episodes, e.g. '0,1,2,3'.")
@click.option("--long-lag-seconds", default=8.0, show_default=True, type=float, help="'Long lag' threshold.")
@click.option("--beta-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A fademem spectrum report (spectrum.json): its suggested beta replaces beta=auto in --policies "
                   "(e.g. 'fademem,fademem:beta=auto' compares the paper's 0.3 with the measured one).")
@click.option("--threads", default=None, type=int, help="torch.set_num_threads (CPU).")
@click.option("--time-budget", default=None, type=float,
              help="Seconds from the start: a policy is started only if forecast to fit (the largest measured time "
                   "of a finished policy of the same name, else of the same kind, unbounded or bounded, else of any; "
                   "the first always runs); skipped policies are listed in the report with the reason.")
@click.option("--episodes-kind", default="revisit", show_default=True, type=click.Choice(["revisit", "cuts"]),
              help="cuts: scene A, a hard cut to scene B inside the true opening, generated B, a cut (prompt switch) "
                   "back to A resuming where it left; A's return is scored (bench.memory_cuts).")
@click.option("--cuts", "cuts", default="3,12", show_default=True,
              help="With --episodes-kind cuts: the two cut times in seconds (rounded up to whole chunks); the first "
                   "inside the opening, the second after it.")
@click.option("--merge", "merge", multiple=True, type=click.Path(dir_okay=False),
              help="Run no model: merge these reports (memory.json, or .json.gz; repeat the option) of the same "
                   "benchmark (same episodes, seed, seconds, budget, weights, schedule, critic, ...) run with "
                   "different policies into one report in --out, every pair of the union compared (Holm) as one run "
                   "would; a policy in several reports must have identical scores (kept once).")
@click.option("--plot/--no-plot", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench_memory(policies, episodes, budget, seconds, opening_seconds, device, dtype, weights, critic, out_dir, seed,
                 steps, batch, scenes, long_lag_seconds, beta_from, threads, time_budget, episodes_kind, cuts, merge,
                 plot, progress):
    """Long-memory quality vs ground truth: true opening, then generation; PSNR/SSIM (and the critic's identity
    score) on the frames after each revisit, by lag; every pair of policies compared (Holm-corrected).

    After every finished policy memory.json and memory.txt are rewritten with the results so far ("partial":
    true, "policies_finished", "policies_not_run"). On SIGINT (Ctrl-C, timeout -s INT) during a policy the
    finished policies are reported ("interrupted" says when; memory.json, memory.txt, memory.png) and the
    command exits with status 130. With --merge: no model run, the given reports merged (see --merge)."""
    import os

    if merge:
        return _merge_memory(list(merge), out_dir, plot)
    import torch

    from fademem.bench import memory as bm
    from fademem.cli.common import measured_knobs, resolve_auto_specs

    try:
        specs = bm.parse_policies(policies)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policies") from None
    specs = resolve_auto_specs(specs, measured_knobs(beta_from), beta_from)
    if threads:
        torch.set_num_threads(threads)
    try:
        step_list = tuple(float(v) for v in steps.split(",") if v.strip()) or None
        scene_list = [int(v) for v in scenes.split(",") if v.strip()] or None
        cut_list = tuple(float(v) for v in cuts.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers", param_hint="--steps/--scenes/--cuts") from None
    if len(cut_list) != 2:
        raise click.BadParameter(f"expected two cut times, got {cuts!r}", param_hint="--cuts")

    def partial(rep):
        path, _ = bm.write_outputs(rep, out_dir)
        click.echo(f"partial report ({len(rep['policies_finished'])} policies finished): {path}")

    try:
        run = bm.MemoryRun(policies=specs, episodes=episodes, budget=budget, seconds=seconds,
                           opening_seconds=opening_seconds, device=device, dtype=dtype, weights=weights, seed=seed,
                           steps=step_list, batch=batch, scenes=scene_list, long_lag_seconds=long_lag_seconds,
                           critic=critic, time_budget_s=time_budget, progress=progress, episodes_kind=episodes_kind,
                           cut_seconds=cut_list)
        bm.validate(run)
        report = bm.run_memory(run, log=click.echo, on_report=partial)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    path, table = bm.write_outputs(report, out_dir)
    click.echo(f"wrote {path}")
    if plot and any(r["error"] is None for r in report["policies"]):
        click.echo(f"wrote {bm.plot(report, os.path.join(out_dir, 'memory.png'))}")
    click.echo(table)
    if report.get("interrupted"):
        click.echo(f"interrupted: {report['interrupted']}; the report covers the finished policies", err=True)
        raise SystemExit(130)


MERGE_KEEPS = ("merge", "out_dir", "plot", "progress")  # the options --merge takes; the others run a model


def _merge_memory(paths: list[str], out_dir: str, plot: bool) -> None:
    """``bench memory --merge``: one report from several (``bench.memory_merge``), written as a run writes it."""
    import os

    from click.core import ParameterSource

    from fademem.bench import memory_merge as mm
    from fademem.bench.memory_report import format_table, write_json
    from fademem.bench.memory_report import plot as plot_report

    ctx = click.get_current_context()
    given = [p for p in ctx.command.params if p.name not in MERGE_KEEPS
             and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)]
    if given:
        raise click.UsageError(f"--merge runs no model: {', '.join(p.opts[0] for p in given)} does not apply "
                               "(the reports' own settings are used)")
    try:
        report = mm.merge(paths)
    except mm.MergeError as exc:
        raise click.ClickException(str(exc)) from None
    table = mm.header(report) + "\n" + format_table(report)
    path = write_json(report, os.path.join(out_dir, "memory.json"))
    with open(os.path.join(out_dir, "memory.txt"), "w") as fh:
        fh.write(table + "\n")
    click.echo(f"wrote {path} ({len(report['policies_finished'])} policies from {len(paths)} reports)")
    if plot:
        click.echo(f"wrote {plot_report(report, os.path.join(out_dir, 'memory.png'))}")
    click.echo(table)


@bench.command("fidelity")
@click.option("--critic", default=None, type=click.Path(dir_okay=False),
              help="World-critic file (fademem train --stage critic); required unless the package ships "
                   "fademem/assets/critic.safetensors.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Embedded-model bundle (default: the shipped one); sampled with its own recorded schedule.")
@click.option("--episodes", default=8, show_default=True, type=click.IntRange(min=1),
              help="Held-out prompts (and, separately, held-out panning scenes for the continuation metric).")
@click.option("--seconds", default=60.0, show_default=True, type=float, help="Video length, text only.")
@click.option("--memory", "memory_spec", default="fademem", show_default=True, help="Memory policy spec.")
@click.option("--opening-seconds", default=6.0, show_default=True, type=float,
              help="Continuation: true opening teacher-forced before generating.")
@click.option("--continuation-seconds", default=2.0, show_default=True, type=float,
              help="Continuation: generated seconds scored against the truth (and the frozen last true frame).")
@click.option("--continuation/--no-continuation", default=True, show_default=True)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out episode stream.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", default="bench_fidelity", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: fidelity.json, fidelity.txt, fidelity.png.")
@click.option("--plot/--no-plot", default=True, show_default=True)
def bench_fidelity(critic, weights, episodes, seconds, memory_spec, opening_seconds, continuation_seconds,
                   continuation, seed, device, out_dir, plot):
    """Prompt fidelity over time (world critic on every window, held-out prompts, vs the true renders) and
    the continuation metric (PSNR of 2 s after a 6 s true opening vs freezing the last true frame)."""
    import os

    from fademem.bench import fidelity as bf
    from fademem.cli.common import check_device, check_seconds

    check_seconds(seconds)
    check_device(device)
    run = bf.FidelityRun(critic=critic, weights=weights, episodes=episodes, seconds=seconds, memory=memory_spec,
                         device=device, seed=seed, opening_seconds=opening_seconds,
                         continuation_seconds=continuation_seconds, continuation=continuation)
    try:
        bf.validate(run)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        report = bf.run_fidelity(run, log=click.echo)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    os.makedirs(out_dir, exist_ok=True)
    table = bf.format_table(report)
    click.echo(f"wrote {bf.write_json(report, os.path.join(out_dir, 'fidelity.json'))}")
    with open(os.path.join(out_dir, "fidelity.txt"), "w") as fh:
        fh.write(table + "\n")
    if plot:
        click.echo(f"wrote {bf.plot(report, os.path.join(out_dir, 'fidelity.png'))}")
    click.echo(table)
