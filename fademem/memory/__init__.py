"""Bounded KV memories: one interface (``base``), one file per policy, one registry.

Adding a policy: write ``memory/<name>.py`` with a ``@register``-ed ``Memory`` subclass and
import it below.
"""

from .base import ChunkQuery, Entry, Memory, MemoryView, SlotStore
from .registry import REGISTRY, build_memory, describe, parse_spec, register
from .stack import MemoryStack

# Policies register themselves on import.
from . import full, window, sink, memrope, fademem  # noqa: E402,F401  isort:skip
from . import deepforcing, omnimem, memflow  # noqa: E402,F401  isort:skip
from . import compressor  # noqa: E402,F401  isort:skip

__all__ = ["ChunkQuery", "Entry", "Memory", "MemoryView", "SlotStore", "MemoryStack",
           "REGISTRY", "build_memory", "describe", "parse_spec", "register"]
