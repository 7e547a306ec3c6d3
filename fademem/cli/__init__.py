"""The ``fademem`` command line: one module per command group."""

from fademem.cli.commands import main

__all__ = ["main"]
