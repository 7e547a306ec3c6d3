"""The feature extractors' libraries, imported on first use with a clear error when one is missing.

``fademem eval`` scores with the libraries made for each model: torchvision (RAFT, the resize and crop
VBench applies), timm (DINO ViT-B/16), open-clip-torch (CLIP ViT-B/32 and ViT-L/14), pyiqa (MUSIQ).
``pip install 'fademem[eval]'`` installs them.

One environment needs care: a CPU-only torch beside torchvision's PyPI wheel, which is built against
CUDA torch. Its C++ operators (``torchvision::nms`` and friends, used only by detection models) then
fail to load, and torchvision 0.28's own import breaks on registering a fake kernel for ``nms``
("operator torchvision::nms does not exist"). Nothing fademem scores with uses those operators, so in
exactly that case ``torchvision()`` declares the two operator schemas torchvision's import registers
unconditionally (nms, qnms; they stay without a kernel: calling them raises) and imports again.
Every other import failure is reported as it is.
"""

from __future__ import annotations

import importlib

__all__ = ["EvalDependencyError", "require", "torchvision"]

EXTRA = "pip install 'fademem[eval]'  (torchvision, timm, open-clip-torch, pyiqa)"


class EvalDependencyError(ImportError):
    """A library a scorer needs is not installed (the message names it and how to install it)."""


def torchvision():
    """``import torchvision``, working around the CPU-torch + CUDA-wheel operator-registration failure
    (``fademem._compat.hf_ready``)."""
    from fademem._compat import hf_ready

    tv = hf_ready()
    if tv is None:
        raise EvalDependencyError(f"torchvision is not installed: {EXTRA}")
    return tv


def require(module: str, package: str | None = None):
    """Import ``module`` (torchvision first, see ``torchvision()``), or raise ``EvalDependencyError``
    naming the PyPI ``package`` and the ``eval`` extra."""
    torchvision()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise EvalDependencyError(f"{package or module.split('.')[0]} is not installed ({e}): {EXTRA}") from e
