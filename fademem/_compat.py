"""Environment workarounds shared by every layer (imports nothing of fademem).

``hf_ready()``: call before importing diffusers, transformers, peft, timm, open-clip or pyiqa. A CPU-only
torch beside torchvision's PyPI wheel (built against CUDA torch) cannot load torchvision's C++ operators,
and torchvision 0.28's own import then breaks on registering a fake kernel for ``nms`` ("operator
torchvision::nms does not exist"); diffusers and transformers import torchvision when it is installed,
so the Wan VAE and UMT5 would fail to load in such an environment (a CPU CI with the eval extra). In
exactly that case the two operator schemas torchvision's import registers unconditionally (nms, qnms)
are declared without kernels (calling them raises; nothing fademem runs uses them) and the import is
retried. Every other failure is left as it is. It also quiets one import-time warning of bitsandbytes
(below).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

__all__ = ["hf_ready"]

_SHIM = None  # the torch.library.Library holding the declared schemas (kept alive for the process)
_CHECKED = False


def hf_ready():
    """Make ``import torchvision`` (and so diffusers / transformers) work; returns torchvision or None when
    it is not installed."""
    global _SHIM, _CHECKED  # noqa: PLW0603
    # peft imports bitsandbytes when it is installed (pyiqa, in the eval extra, brings it); on a CPU with
    # AVX512-BF16 that import warns that an optional Hub kernel ("kernels-community") is missing, in the
    # middle of a user's `--lora` run. Nothing fademem runs uses 4-bit kernels.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e) or _SHIM is not None:
            raise
    finally:
        _CHECKED = True
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _SHIM = torch.library.Library("torchvision", "DEF")  # schemas only, see the module doc
    _SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")
