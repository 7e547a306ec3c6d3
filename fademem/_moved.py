"""Old import paths of modules that moved when the package was laid out in layers (issue 13).

``import fademem.model`` and friends keep working: the old name is an alias of the module at its
new place, with a DeprecationWarning that names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "fademem.model": "fademem.wan.model",
    "fademem.checkpoints": "fademem.wan.checkpoints",
    "fademem.checkpoints_read": "fademem.wan.checkpoints_read",
    "fademem.checkpoints_names": "fademem.wan.checkpoints_names",
    "fademem.lora": "fademem.wan.lora",
    "fademem.text": "fademem.wan.text",
    "fademem.vae": "fademem.wan.vae",
    "fademem.sampling": "fademem.wan.sampling",
    "fademem.cuda_graph": "fademem.pipeline.cuda_graph",
    "fademem.video_io": "fademem.pipeline.video_io",
    "fademem.world": "fademem.embedded.world",
    "fademem.train": "fademem.embedded.train",
    "fademem.schedule": "fademem.analysis.schedule",
    "fademem.compressor.cli": "fademem.cli.compressor",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module name (and names below it) to the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        for old, new in MOVED.items():
            if fullname == old or fullname.startswith(old + "."):
                target_name = new + fullname[len(old):]
                warnings.warn(f"{fullname} moved to {target_name}", DeprecationWarning, stacklevel=3)
                return importlib.util.spec_from_loader(fullname, _Alias(target_name))
        return None


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
