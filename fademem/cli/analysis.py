"""``fademem spectrum`` and ``fademem schedule``: the analysis commands (paper Sec. 3.2, the FadeMem layout)."""

from __future__ import annotations

import click


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


@click.command("spectrum")
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (JSON + PNGs).")
@click.option("--bands", default=8, show_default=True, type=int, help="Radial frequency bands (>= 2).")
@click.option("--max-lag", default=32, show_default=True, type=int, help="Largest lag, in analysed frames.")
@click.option("--channels", default="luma", show_default=True, type=click.Choice(["luma", "rgb"]),
              help="Pixel features (ignored with --vae-dir / --codec).")
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
@click.option("--codec", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Analyse the embedded model's latents: its autoencoder file or a v2 bundle (frames "
                   "centre-cropped to its frame size).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the VAE or codec.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def spectrum(videos, out_dir, bands, max_lag, channels, size, stride, max_frames, rule, eps, lookahead, min_drop,
             censor_frac, window, ci_method, n_boot, block, level, seed, pool, suggest_beta, beta_floor, vae_dir,
             codec, device, progress):
    """Spectral decay of VIDEO(s): C_r(lag) per band, horizons t*(r), r*(t) ~ t^-b (paper Sec. 3.2, Fig. 2)."""
    from fademem.analysis.spectrum import SpectrumParams, analyse_videos
    from fademem.analysis.spectrum_plot import format_summary, write_report
    from fademem.cli.common import check_device

    if vae_dir is not None or codec is not None:  # the device only runs the VAE / codec
        device = str(check_device(device))
    try:
        params = SpectrumParams(bands=bands, max_lag=max_lag, channels=channels, window=window, rule=rule, eps=eps,
                                lookahead=lookahead, min_drop=min_drop, censor_frac=censor_frac, block=block,
                                n_boot=n_boot, level=level, ci=ci_method, seed=seed,
                                beta_floor=beta_floor).validate()
        report = analyse_videos(list(videos), params, size=size, stride=stride, max_frames=max_frames,
                                vae_dir=vae_dir, device=device, pool=pool, progress=progress, codec=codec)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    paths = write_report(report, out_dir)
    for res in report["videos"]:
        click.echo(format_summary(res, res["name"], suggest_beta, level))
    if len(report["videos"]) > 1 and report["pooled"] is not None:
        click.echo(format_summary(report["pooled"], f"pooled ({len(videos)} videos)", suggest_beta, level))
    click.echo(f"wrote {paths['json']} and {len(paths['figures'])} figure(s) to {out_dir}")


@click.command("schedule")
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
