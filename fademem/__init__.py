"""fademem: bounded KV memories for long-horizon autoregressive video diffusion.

Layers, each a folder, importing only downwards (``docs/ARCHITECTURE.md``; enforced by
import-linter): ``cli`` -> ``bench`` | ``analysis`` | ``compressor`` -> ``pipeline`` ->
``embedded`` -> ``wan`` -> ``memory`` -> ``rope`` | ``metrics``.
"""

from fademem import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (fademem.model, fademem.checkpoints, ...) keep working, with a warning
