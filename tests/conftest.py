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


@pytest.fixture()
def ae():
    """A tiny latent codec (the real LatentCodec at a tiny config) and the autoencoder module's file functions."""
    import types

    import fademem.embedded.autoencoder as ae

    cfg = ae.AutoencoderConfig(enc_channels=(8, 8), enc_blocks=(1, 1), dec_channels=(8, 8), dec_blocks=(1, 1),
                               groups=4)
    ae_mod = types.SimpleNamespace(**{k: getattr(ae, k) for k in ("codec_state", "codec_from_state", "save_codec",
                                                                   "load_codec", "LatentCodec")})
    ae_mod.make_codec = lambda: ae.LatentCodec(cfg).eval().requires_grad_(False)
    return ae_mod


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
