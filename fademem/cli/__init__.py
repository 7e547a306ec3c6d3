"""The ``fademem`` command line: the click group ``main`` and one module per command group.

``generate`` (fademem.cli.generate), ``train`` (fademem.cli.train), ``finetune`` (fademem.cli.finetune),
``bench speed|memory`` (fademem.cli.bench), ``spectrum`` and ``schedule`` (fademem.cli.analysis), ``train-compressor``
(fademem.cli.compressor), ``serve`` (fademem.cli.serve), ``eval score|run|report`` (fademem.cli.eval).
Each command imports its heavy modules inside its function so ``fademem --help`` stays fast.
"""

from __future__ import annotations

import click

from fademem.cli.analysis import schedule, spectrum
from fademem.cli.bench import bench
from fademem.cli.compressor import train_compressor
from fademem.cli.eval import eval_group
from fademem.cli.finetune import finetune_cmd
from fademem.cli.generate import generate
from fademem.cli.serve import serve
from fademem.cli.train import train_cmd

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fademem")
def main() -> None:
    """Long-horizon autoregressive video diffusion under a fixed memory budget."""


for _command in (spectrum, schedule, generate, train_cmd, finetune_cmd, bench, train_compressor, serve, eval_group):
    main.add_command(_command)
del _command
