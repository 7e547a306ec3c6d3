"""``fademem eval``: VBench-Long scoring (``score``), the paper's tables generated and scored over
prompts x memory specs x seeds (``run``, sharded with torchrun), and their report (``report``).

Every option is checked, and every weight file looked for, before a model loads.
"""

from __future__ import annotations

import json
import os

import click

DIMENSION_HELP = ("Comma-separated VBench-Long dimensions (default: all six: subject_consistency, "
                  "background_consistency, motion_smoothness, dynamic_degree, aesthetic_quality, imaging_quality).")


SCENE_HELP = ("Split at scene cuts first (PySceneDetect, as VBench-Long's --use_semantic_splitting; off by "
              "default as there), then into 2 s clips inside each scene. Needs pip install 'fademem[eval-scenes]'.")


def _dimensions(text: str | None) -> tuple[str, ...]:
    from fademem.eval.weights import DIMENSIONS

    if not text:
        return DIMENSIONS
    dims = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise click.BadParameter(f"unknown dimension(s) {', '.join(bad) or '(none given)'}; known: "
                                 f"{', '.join(DIMENSIONS)}", param_hint="--dimensions")
    return dims


def _weights(weights_dir: str, dims) -> None:
    from fademem.eval.weights import MissingWeights, find_weights

    if not os.path.isdir(os.path.expanduser(weights_dir)):
        raise click.BadParameter(f"{weights_dir} is not a directory", param_hint="--weights-dir")
    try:
        find_weights(weights_dir, dims)
    except MissingWeights as e:
        raise click.BadParameter(str(e), param_hint="--weights-dir") from None


def _scenedetect(scene_split: bool) -> None:
    """--scene-split needs PySceneDetect: a usage error naming the extra, before any work."""
    if scene_split:
        from fademem.eval._deps import EvalDependencyError
        from fademem.eval.scenes import require_scenedetect

        try:
            require_scenedetect()
        except EvalDependencyError as e:
            raise click.UsageError(str(e)) from None


def _device(device):
    from fademem.cli.common import check_device

    return str(check_device(device))


@click.group("eval")
def eval_group() -> None:
    """VBench-Long evaluation as the papers report it: score videos, run and report the tables."""


@eval_group.command("score")
@click.argument("videos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--weights-dir", required=True, type=click.Path(file_okay=False),
              help="Local weight files (flat, or VBench's cache layout, e.g. ~/.cache/vbench). Nothing is downloaded.")
@click.option("--dimensions", default=None, help=DIMENSION_HELP)
@click.option("--device", default=None, help="torch device (default: cuda when available).")
@click.option("--slow-fast", is_flag=True, help="Fuse clip-to-clip consistency with VBench-Long's slow-fast weights "
                                                "(its --dev_flag) instead of its default in-clip score.")
@click.option("--imaging-mode", default="longer", show_default=True,
              type=click.Choice(["longer", "shorter", "shorter_centercrop", "None"]),
              help="VBench's imaging-quality preprocessing.")
@click.option("--scene-split", is_flag=True, help=SCENE_HELP)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="JSON with per-video, per-clip scores.")
def score(videos, weights_dir, dimensions, device, slow_fast, imaging_mode, scene_split, out):
    """Score VIDEOS on VBench-Long's dimensions; prints the table (per video, then all videos pooled)."""
    dims = _dimensions(dimensions)
    missing = [v for v in videos if not os.path.isfile(v)]
    if missing:
        raise click.BadParameter(f"video file(s) not found: {', '.join(missing)}", param_hint="VIDEOS")
    _scenedetect(scene_split)
    _weights(weights_dir, dims)
    dev = _device(device)
    from fademem.eval.protocol import aggregate
    from fademem.eval.report import NAMES
    from fademem.eval.scorer import Scorer

    try:
        scorer = Scorer(weights_dir, dims, dev, slow_fast=slow_fast, imaging_mode=imaging_mode,
                        scene_split=scene_split).load()
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    results = []
    for v in videos:
        try:
            results.append(scorer.score_file(v))
        except ValueError as e:
            raise click.ClickException(f"{v}: {e}") from None
        scenes = results[-1].scenes
        click.echo(f"scored {v}: {len(results[-1].clip_ranges)} clip(s)"
                   + (f" in {len(scenes)} scene(s)" if scenes is not None else ""), err=True)
    total = aggregate([(r.scores, len(r.clip_ranges)) for r in results])
    cols = [d for d in dims] + (["avg"] if "avg" in total else [])
    click.echo("| Video | " + " | ".join(NAMES[c] for c in cols) + " |")
    click.echo("|---|" + "---:|" * len(cols))
    for r in results:
        click.echo(f"| {r.path} | " + " | ".join(f"{100 * r.scores[c]:.2f}" if c in r.scores else "–"
                                              for c in cols) + " |")
    click.echo("| **all** | " + " | ".join(f"{100 * total[c]:.2f}" for c in cols) + " |")
    if out:
        with open(out, "w") as f:
            json.dump({"videos": [r.to_dict() for r in results], "all": total, "dimensions": list(dims),
                       "slow_fast": slow_fast, "scene_split": scene_split}, f, indent=1, default=float)


@eval_group.command("run")
@click.option("--prompts", required=True, type=click.Path(dir_okay=False),
              help="Prompt file, one prompt per line (MovieGenBench's list format).")
@click.option("--memory", "specs", multiple=True, required=True,
              help="Memory spec; repeat for each method (e.g. --memory fademem:budget=12 --memory sink:budget=12).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--seconds", default=60.0, show_default=True, type=float, help="Video length.")
@click.option("--store", required=True, type=click.Path(dir_okay=False), help="Results store (SQLite); resumable.")
@click.option("--videos", "videos_dir", default=None, type=click.Path(file_okay=False),
              help="Where videos go (default: <store>.videos/).")
@click.option("--weights-dir", default=None, type=click.Path(file_okay=False),
              help="VBench-Long weight files (see `fademem eval score`); without it only the critic scores.")
@click.option("--dimensions", default=None, help=DIMENSION_HELP)
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Causal Wan checkpoint (Self-Forcing / LongLive / FadeMem layouts); default: the embedded model.")
@click.option("--wan-dir", default=None, type=click.Path(file_okay=False), help="Wan2.1 Diffusers dir (UMT5, VAE).")
@click.option("--lora", multiple=True, type=click.Path(dir_okay=False), help="LoRA file(s) merged in order.")
@click.option("--height", default=480, show_default=True, type=int)
@click.option("--width", default=832, show_default=True, type=int)
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--embedded-weights", default=None, type=click.Path(dir_okay=False),
              help="An embedded-model file (default: the shipped one).")
@click.option("--critic", default=None, type=click.Path(dir_okay=False),
              help="World critic file: the embedded model's fidelity score in the same report.")
@click.option("--device", default=None,
              help="torch device (default: cuda when available; under torchrun cuda:LOCAL_RANK).")
@click.option("--slow-fast", is_flag=True,
              help="Slow-fast fusion of clip-to-clip consistency (VBench-Long --dev_flag).")
@click.option("--scene-split", is_flag=True, help=SCENE_HELP)
@click.option("--no-progress", is_flag=True, help="One log line per video instead of progress bars.")
@click.option("--compile", "compile_mode", default="auto", show_default=True,
              help="Wan only, as `fademem generate --compile`: regional torch.compile of the DiT blocks and the VAE "
                   "decoder: auto (default on CUDA, none elsewhere), none (eager), default, "
                   "max-autotune-no-cudagraphs. Each generator (one per memory spec that merges an adapter) compiles "
                   "on its first chunk; kernels are cached under ~/.cache/fademem (or $TORCHINDUCTOR_CACHE_DIR). "
                   "Compiled on CUDA, the VAE decoder also runs channels-last and decodes each chunk on a side "
                   "stream (same frames). Speed only: a job's key and a resumed store are the same either way.")
@click.option("--precision", default="dtype", show_default=True, type=click.Choice(["dtype", "fp8"]),
              help="Wan only, as `fademem generate --precision`: fp8 runs the DiT's block linears in torchao "
                   "float8; needs a CUDA GPU of compute capability >= 8.9 and torchao. Other numbers: fp8 rows are "
                   "stored as their own model ('<model>@fp8').")
def run(prompts, specs, seeds, seconds, store, videos_dir, weights_dir, dimensions, checkpoint, wan_dir, lora,
        height, width, dtype, embedded_weights, critic, device, slow_fast, scene_split, no_progress,
        compile_mode="auto", precision="dtype"):
    """Generate and score prompts x memory specs x seeds into a resumable store.

    One process, or many: `torchrun --nproc_per_node N -m fademem.cli eval run ...` gives each rank its
    share of the pending jobs (none dropped or duplicated). A rerun skips what the store holds.
    """
    from fademem.eval._deps import EvalDependencyError
    from fademem.eval.runner import EvalRun, run_eval, validate
    from fademem.eval.weights import MissingWeights

    dims = _dimensions(dimensions)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: expected integers separated by commas", param_hint="--seeds") from None
    dev = _device(device)
    from fademem.cli.generate import _fast_options  # generate's checks and messages, before any loading

    fast = _fast_options(compile_mode, precision, False, dev, checkpoint is None)
    if weights_dir is not None:
        _weights(weights_dir, dims)
    cfg = EvalRun(prompts=prompts, specs=list(specs), seeds=seed_list, store=store,
                  videos=videos_dir or f"{store}.videos", seconds=seconds, weights_dir=weights_dir, dimensions=dims,
                  checkpoint=checkpoint, wan_dir=wan_dir, lora=tuple(lora), height=height, width=width, dtype=dtype,
                  embedded_weights=embedded_weights, critic=critic, device=dev, slow_fast=slow_fast,
                  scene_split=scene_split, progress=not no_progress, compile=fast["compile"],
                  compile_fallback=fast.get("fallback", False), precision="fp8" if fast["fp8"] else "dtype")
    try:
        validate(cfg)
    except MissingWeights as e:
        raise click.BadParameter(str(e), param_hint="--weights-dir") from None
    except (EvalDependencyError, ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    try:
        res = run_eval(cfg, log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"rank {res['rank']}: ran {res['done']} of {res['pending']} pending jobs ({res['jobs']} in all); "
               f"store {store}", err=True)


@eval_group.command("report")
@click.option("--store", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for report.md, report.json and the plots.")
def report(store, out_dir):
    """The paper's table (methods x dimensions, Avg., best in bold) and plots from a results store."""
    from fademem.eval.report import write_report
    from fademem.eval.store import ResultStore

    if not os.path.isfile(store):
        raise click.BadParameter(f"results store not found: {store}", param_hint="--store")
    rows = ResultStore(store).rows()
    if not rows:
        raise click.ClickException(f"{store} holds no results yet")
    res = write_report(rows, out_dir)
    click.echo(res["markdown"])
    click.echo("wrote " + ", ".join(str(f) for f in res["files"]), err=True)
