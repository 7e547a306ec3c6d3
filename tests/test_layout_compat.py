"""Import paths users may already use keep working after the layered layout (issue 13), or fail
with a message that names the new path."""

from __future__ import annotations

import importlib
import warnings

import pytest


@pytest.mark.parametrize("old,new", [
    ("fademem.model", "fademem.wan.model"),
    ("fademem.checkpoints", "fademem.wan.checkpoints"),
    ("fademem.sampling", "fademem.wan.sampling"),
    ("fademem.world", "fademem.embedded.world"),
    ("fademem.train", "fademem.embedded.train"),
    ("fademem.video_io", "fademem.pipeline.video_io"),
    ("fademem.schedule", "fademem.analysis.schedule"),
])
def test_moved_module_is_an_alias_with_a_warning(old, new):
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_named_user_paths():
    from fademem.checkpoints import load_generator
    from fademem.memory import build_memory
    from fademem.pipeline import VideoPipeline
    from fademem.wan.checkpoints import load_generator as new_load

    assert load_generator is new_load and callable(build_memory)
    assert VideoPipeline.__module__ == "fademem.pipeline.sampler"


def test_embedded_pipeline_names_its_new_home():
    import fademem.embedded as embedded

    with pytest.raises(AttributeError, match="fademem.pipeline.embedded_pipeline"):
        embedded.pipeline  # noqa: B018


def test_compressor_generator_for_memory_names_its_new_home():
    from fademem.compressor import kv

    with pytest.raises(AttributeError, match="fademem.pipeline.generator_for_memory"):
        kv.generator_for_memory  # noqa: B018


def test_memory_layer_loads_no_generator_or_training_code():
    import subprocess
    import sys

    code = "import sys, fademem.memory; print(sorted(m for m in sys.modules if m.startswith('fademem')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not any(p in out for p in ("fademem.wan", "fademem.embedded", "fademem.pipeline", "fademem.compressor"))
