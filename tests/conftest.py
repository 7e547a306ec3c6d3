"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fademem._compat import hf_ready

# Tests build diffusers / transformers models directly: with the eval extra's torchvision (a CUDA wheel) beside
# the CPU torch, importing them needs the same workaround fademem applies before its own imports.
hf_ready()


@pytest.fixture(scope="session")
def benchmark_script():
    """Load ``benchmarks/<name>.py`` (scripts, not a package) as a module: ``benchmark_script("recall_probe")``."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription on busy CI machines (40x here).

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An embedded-model file with a one-layer, 32-wide random DiT (seed 0): CLI runs in seconds."""
    from fademem import embedded

    torch.manual_seed(0)
    cfg = embedded.EmbeddedConfig()
    bundle = embedded.build(cfg, cfg.dit_config(32, 1, 2, 64))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    embedded.save(bundle, path)
    return str(path)
