"""Issue 15's fast decode, on by default for a compiled generation on CUDA: the VAE decoder's conv3d
weights in channels_last_3d (``decoder_channels_last``) and the decode overlapped with the next chunk
(``apply_fast_decode``), which must give the plain path's frames, also through a saved and resumed
session; ``fademem generate``'s option resolution (only compiled, only on CUDA); and the bench's
steady statistics, which leave out the drained last chunk of an overlapped end-to-end run."""

from __future__ import annotations

import copy

import pytest
import torch

from fademem.bench import speed as sp
from fademem.bench.speed_stats import summarise
from fademem.pipeline import VideoPipeline
from fademem.pipeline.fast import apply_fast_decode, decoder_channels_last, fast_decode
from fademem.pipeline.state import load_state, save_state
from fademem.wan.model import CausalWanModel, WanConfig

try:
    from tests.test_speed_paths import SHAPE, Text
except ImportError:  # pragma: no cover - run from tests/
    from test_speed_paths import SHAPE, Text

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanModel(WanConfig.tiny()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def decoder():
    from fademem.bench.speed_e2e import build_random_vae

    return build_random_vae("cpu", torch.float32, "tiny", seed=1)


# -- channels-last decoder --------------------------------------------------------------------------------
def test_channels_last_converts_exactly_the_decoder_conv3d_weights_and_keeps_the_frames(decoder):
    fast = copy.deepcopy(decoder)
    before = {n: p.detach().clone() for n, p in fast.vae.named_parameters()}
    n5 = sum(p.dim() == 5 for p in fast.vae.decoder.parameters())
    assert n5 > 0 and decoder_channels_last(fast) == n5
    moved = 0
    for name, p in fast.vae.named_parameters():
        assert torch.equal(p, before[name])  # same values, only the layout moves
        if p.dim() == 5 and name.startswith("decoder."):
            assert p.is_contiguous(memory_format=torch.channels_last_3d), name
            moved += not p.is_contiguous()  # a 1x1x1 kernel is both
        else:  # the rest (norms, biases, the encoder, post_quant_conv outside the decoder) stays as it was
            assert p.is_contiguous(), name
    assert moved > n5 // 2
    assert decoder_channels_last(fast.vae.decoder) == n5  # the module itself; converting twice is harmless
    with pytest.raises(TypeError, match="WanVAEDecoder"):
        decoder_channels_last(object())
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, *SHAPE[:1], 6, *SHAPE[1:], generator=g)
    decoder.reset()
    fast.reset()
    for s in (0, 3):
        a, b = decoder.decode(z[:, :, s:s + 3]), fast.decode(z[:, :, s:s + 3])
        assert a.dtype == torch.uint8 and torch.equal(a, b)
    decoder.reset()


def _frames(chunks):
    chunks = list(chunks)
    return torch.cat([c.latents for c in chunks], dim=2), torch.cat([c.frames for c in chunks], dim=1)


def test_fast_decode_gives_the_plain_video_and_resumes_exactly(model, decoder, tmp_path):
    kw = dict(memory="fademem:budget=4", seed=5, latent_shape=SHAPE)
    want = _frames(VideoPipeline(model, Text(), decoder).generate("a cat", 12, progress=False, **kw))

    def fast_pipe():
        pipe = VideoPipeline(model, Text(), copy.deepcopy(decoder))
        line = apply_fast_decode(pipe)
        assert pipe.overlap_decode and "channels_last_3d" in line and "side CUDA stream" in line
        return pipe

    got = _frames(fast_pipe().generate("a cat", 12, progress=False, **kw))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # --state / --resume: two chunks, drained and saved, then a fresh fast pipeline continues
    s1 = fast_pipe().session("a cat", 12, **kw)
    head = s1.step() + s1.step()
    assert [c.index for c in head] == [0]  # overlapped: chunk 1 is still being decoded
    head += s1.drain()
    path = save_state(tmp_path / "run.state", s1.state_dict())
    s2 = fast_pipe().session("a cat", 12, **kw)
    s2.load_state_dict(load_state(path))
    tail = []
    while not s2.done:
        tail += s2.step()
    tail += s2.drain()
    got = _frames(head + tail)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# -- fademem generate's options ---------------------------------------------------------------------------
def test_generate_fast_decode_only_compiled_on_cuda(monkeypatch):
    import fademem.pipeline.fast as fast
    from fademem.cli.generate import _fast_options

    monkeypatch.setattr(fast, "_has_triton", lambda: True)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    on = _fast_options("auto", "dtype", False, cuda, False)
    assert on["compile"] == "default" and on["fast_decode"] is True
    assert _fast_options("max-autotune-no-cudagraphs", "dtype", False, cuda, False)["fast_decode"] is True
    off = _fast_options("none", "dtype", False, cuda, False)  # --compile none: the previous plain path
    assert off["compile"] == "none" and off["fast_decode"] is False
    assert _fast_options("auto", "dtype", False, cpu, False)["fast_decode"] is False  # never off CUDA
    assert _fast_options("default", "dtype", False, cpu, False) == {
        "compile": "default", "fp8": False, "low_memory": False, "fallback": True, "fast_decode": False}
    assert _fast_options("auto", "dtype", False, cuda, True)["fast_decode"] is False  # the embedded model
    monkeypatch.setattr(fast, "_has_triton", lambda: False)  # CUDA without Triton: eager, plain decode
    assert _fast_options("auto", "dtype", False, cuda, False)["fast_decode"] is False
    assert fast_decode("default", "cuda:1") and not fast_decode("auto", "cuda") and not fast_decode("default", "cpu")


# -- the bench's steady statistics ------------------------------------------------------------------------
def _rec(i, ms, **kw):
    return {"index": i, "start": 3 * i, "latency_ms": ms, "wall_ms": ms, "flops": 1e12, **kw}


def test_steady_statistics_leave_out_the_drained_last_chunk():
    walls = [900.0] * 6 + [499.1, 545.4, 492.1, 495.2, 523.3]
    chunks = [_rec(i, ms) for i, ms in enumerate(walls)] + [_rec(11, 136.4, drain=True)]
    s = summarise(chunks, 6, 3, None)
    assert s["steady_chunks"] == 5 and s["latency_ms_median"] == 499.1 and s["wall_ms_median"] == 499.1
    assert s["drain_ms"] == 136.4 and s["latency_ms_p10"] == 492.1
    assert s["latency_ms_mean"] == pytest.approx(sum(walls[6:]) / 5)
    assert s["video_fps"] == pytest.approx(12e3 / 499.1)
    unmarked = summarise([dict(c, drain=False) for c in chunks], 6, 3, None)  # what it was: a median too low
    assert unmarked["steady_chunks"] == 6 and unmarked["latency_ms_median"] < 499.1 and "drain_ms" not in unmarked


def test_run_policy_marks_the_drained_chunk_only_under_overlap(model, decoder):
    setup = sp.SpeedSetup(config="tiny", latent=SHAPE, device="cpu", dtype="float32", warmup=1)
    for overlap in (False, True):
        res = sp.run_policy(model, "window:budget=3", 9, setup, decoder=decoder, overlap_decode=overlap)
        drained = [c["index"] for c in res["chunks"] if c.get("drain")]
        assert drained == ([2] if overlap else [])
        assert res["summary"]["steady_chunks"] == (1 if overlap else 2)
        assert ("drain_ms" in res["summary"]) == overlap and ("drain=true" in res["end_to_end"]["timing"]) == overlap
    one = sp.run_policy(model, "window:budget=3", 3, setup, decoder=decoder, overlap_decode=True)
    assert not any(c.get("drain") for c in one["chunks"])  # a single chunk's yield holds its DiT too
