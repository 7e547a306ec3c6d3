"""``fademem train``: train the embedded model on the procedural world."""

from __future__ import annotations

import click


@click.command("train")
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
