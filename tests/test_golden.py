"""Golden outputs: a short generation under every registered memory policy, hashed.

Recorded before the package was restructured (issue 13) and kept so that any change that should
not alter behaviour can be checked bit for bit: the shipped embedded model (its own spec per
policy, one prompt switch so the recache path runs) and a tiny random Wan config with a toy text
encoder. On the machine and torch build that recorded them the hashes must match exactly; on
another CPU or torch build float reductions may round differently, so there the stored samples of
each output are compared with a tolerance instead.

Record again (only when a change of behaviour is intended):
``FADEMEM_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import zlib
from pathlib import Path

import pytest
import torch

from fademem import embedded
from fademem.memory import REGISTRY
from fademem.pipeline import VideoPipeline, embedded_pipeline, generator_for_memory
from fademem.wan.model import CausalWanModel, WanConfig

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
RECORD = os.environ.get("FADEMEM_RECORD_GOLDEN") == "1"
pytestmark = pytest.mark.usefixtures("one_thread")

EMBEDDED_PROMPT = ("a large red circle bouncing over a striped blue background , "
                   "camera pans right and returns after 4 seconds")
EMBEDDED_SWITCH = "a small green square drifting left over a dotted yellow background , camera is static"
# Budgets small enough that every policy evicts, merges or compresses within 6 chunks.
EMBEDDED_SPECS = {
    "full": "full",
    "window": "window:budget=6",
    "sink": "sink:budget=6,sink=2",
    "memrope": "memrope:recent=3",
    "fademem": "fademem:budget=6",
    "deepforcing": "deepforcing:cache=9,budget=6,sink=2,recent=3",
    "omnimem": "omnimem:topk=4,block_h=2,block_w=4,query_group=8,window_chunks=1,grid=8x8",
    "memflow": "memflow:window=3,bank=2,every=1",
    "compressor": "compressor:window=2,budget=4,allow_random=true",  # no compressor ships for the v2 model yet
}
WAN_SPECS = dict(EMBEDDED_SPECS,
                 omnimem="omnimem:topk=2,block_h=1,block_w=3,query_group=3,window_chunks=1,grid=2x3",
                 compressor="compressor:window=2,budget=4,rate=2x1x1,grid_w=3,allow_random=true")
FRAMES = 18  # 6 chunks of 3 latent frames; the prompt switches at frame 9


def fingerprint() -> str:
    return f"{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}|{platform.machine()}"


class ToyText:
    """Deterministic text states [B, 8, text_dim] from each prompt's CRC."""

    def __init__(self, dim):
        self.dim = dim

    def encode(self, prompts):
        return torch.stack([torch.randn(8, self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                            for p in prompts])


def _run(pipe, prompt, switch, spec, shape) -> tuple[torch.Tensor, torch.Tensor | None]:
    chunks = list(pipe.generate(prompt, FRAMES, memory=spec, seed=7, switches=[(9, switch)],
                                latent_shape=shape, progress=False))
    lat = torch.cat([c.latents for c in chunks], dim=2)
    frames = torch.cat([c.frames for c in chunks], dim=1) if chunks[0].frames is not None else None
    return lat, frames


def _summary(lat: torch.Tensor, frames: torch.Tensor | None) -> dict:
    h = hashlib.sha256(lat.detach().float().contiguous().numpy().tobytes())
    if frames is not None:
        h.update(frames.contiguous().numpy().tobytes())
    flat = lat.detach().float().flatten()
    idx = torch.linspace(0, flat.numel() - 1, 64).long()
    return {"sha256": h.hexdigest(), "samples": flat[idx].tolist(), "norm": float(flat.norm())}


def embedded_case(policy: str) -> dict:
    torch.manual_seed(0)
    bundle = embedded.load()
    spec = EMBEDDED_SPECS[policy]
    model = generator_for_memory(bundle.model, spec)
    pipe = embedded_pipeline(dataclasses.replace(bundle, model=model))  # the file's own sampling schedule
    return _summary(*_run(pipe, EMBEDDED_PROMPT, EMBEDDED_SWITCH, spec, embedded.latent_shape(bundle.cfg)))


def wan_case(policy: str) -> dict:
    torch.manual_seed(0)
    cfg = WanConfig.tiny()
    model = CausalWanModel(cfg).eval()
    pipe = VideoPipeline(model, ToyText(cfg.text_dim))
    return _summary(*_run(pipe, "a cat", "a dog", WAN_SPECS[policy], (cfg.in_dim, 4, 6)))


CASES = [(kind, p) for kind in ("embedded", "wan") for p in sorted(EMBEDDED_SPECS)]


def test_every_policy_has_a_golden_case():
    assert sorted(REGISTRY) == sorted(EMBEDDED_SPECS), "a new policy needs a golden case here"


@pytest.fixture(scope="module")
def golden():
    if RECORD:
        data = {"fingerprint": fingerprint(), "cases": {}}
        yield data
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    else:
        if not GOLDEN.is_file():
            pytest.fail(f"{GOLDEN} missing: record it with FADEMEM_RECORD_GOLDEN=1")
        yield json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("kind,policy", CASES)
def test_golden(golden, kind, policy):
    got = (embedded_case if kind == "embedded" else wan_case)(policy)
    key = f"{kind}/{policy}"
    if RECORD:
        golden["cases"][key] = got
        return
    want = golden["cases"][key]
    if golden["fingerprint"] == fingerprint():
        assert got["sha256"] == want["sha256"], f"{key}: output changed bit-wise on the recording machine"
    else:  # another CPU kernel or torch build: the same function within rounding
        torch.testing.assert_close(torch.tensor(got["samples"]), torch.tensor(want["samples"]), rtol=1e-3, atol=1e-3)
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-4)
