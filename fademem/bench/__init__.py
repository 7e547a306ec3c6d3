"""Benchmarks: ``speed`` (DiT throughput, latency and memory against video length).

Each benchmark is one module with a ``run_*`` function returning a JSON-able dict, and one
subcommand under ``fademem bench`` (fademem/cli/bench.py). Modules are imported lazily by the CLI.
"""

__all__ = ["speed"]
