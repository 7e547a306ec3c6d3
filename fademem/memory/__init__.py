"""Bounded KV memories: one interface (``base``), one file per policy, one registry.

Adding a policy: write ``memory/<name>.py`` with a ``@register``-ed ``Memory`` subclass and
import it below.
"""

from fademem.memory.base import ChunkQuery, Entry, GeneratorAdapter, Memory, MemoryView, SlotStore
from fademem.memory.registry import REGISTRY, build_memory, describe, parse_spec, register, resolve_auto
from fademem.memory.stack import MemoryStack

# Policies register themselves on import.
from fademem.memory import full, window, sink, memrope, fademem  # noqa: E402,F401  isort:skip
from fademem.memory import deepforcing, omnimem, memflow  # noqa: E402,F401  isort:skip
from fademem.memory import compressor  # noqa: E402,F401  isort:skip
from fademem.memory.fademem import beta_from_spectrum  # noqa: E402  isort:skip

__all__ = ["ChunkQuery", "Entry", "GeneratorAdapter", "Memory", "MemoryView", "SlotStore", "MemoryStack",
           "REGISTRY", "beta_from_spectrum", "build_memory", "describe", "parse_spec", "register", "resolve_auto"]
