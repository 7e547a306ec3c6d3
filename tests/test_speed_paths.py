"""The pipeline's speed options on the CPU at the tiny config: overlapped decode, cache-only
chunks (the speed benchmark's timed mode) and the static-buffer forward that CUDA graphs replay.
Each must give exactly what the plain path gives."""

from __future__ import annotations

import pytest
import torch

from fademem.memory import MemoryStack
from fademem.pipeline import VideoPipeline, initial_noise
from fademem.pipeline.cuda_graph import GraphedDenoiser
from fademem.wan.model import CausalWanModel, WanConfig

SHAPE = (16, 4, 6)  # latent (C, h, w): 2x3 tokens per frame

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Text:
    def encode(self, prompts):
        g = torch.Generator().manual_seed(len(prompts[0]))
        return torch.randn(len(prompts), 8, 32, generator=g)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanModel(WanConfig.tiny()).eval()


@pytest.fixture(scope="module")
def decoder():
    from fademem.bench.speed_e2e import build_random_vae

    return build_random_vae("cpu", torch.float32, "tiny", seed=1)


def gen(pipe, n, **kw):
    return pipe.generate("a red ball", n, latent_shape=SHAPE, progress=False, seed=5, **kw)


@pytest.mark.parametrize("spec", ["window:budget=3", "sink:budget=3,sink=1", "fademem:budget=4", "memrope"])
def test_static_graph_path_equals_the_plain_forward(model, spec):
    plain = torch.cat([c.latents for c in gen(VideoPipeline(model, Text()), 21, memory=spec)], dim=2)
    pipe = VideoPipeline(model, Text(), cuda_graph=True)
    fast = torch.cat([c.latents for c in gen(pipe, 21, memory=spec)], dim=2)
    assert torch.equal(fast, plain)
    g = pipe.graphed.summary()
    # chunk 0 has no memory and the memory grows for a chunk or two: eager; then the static buffers
    assert g["static"] >= 4 * 3 and g["eager"] >= 4 and g["captures"] == 0
    assert "no CUDA" in g["why_not"]
    # a second video through the same pipeline starts afresh (no stale buffers)
    again = torch.cat([c.latents for c in gen(pipe, 21, memory=spec)], dim=2)
    assert torch.equal(again, plain)


def test_static_graph_path_stays_eager_for_query_aware_policies(model):
    spec = "deepforcing:budget=4,cache=4,sink=1,recent=1"
    plain = torch.cat([c.latents for c in gen(VideoPipeline(model, Text()), 12, memory=spec)], dim=2)
    pipe = VideoPipeline(model, Text(), cuda_graph=True)
    fast = torch.cat([c.latents for c in gen(pipe, 12, memory=spec)], dim=2)
    assert torch.equal(fast, plain)
    assert pipe.graphed.stats["static"] == 0 and pipe.graphed.stats["eager"] == 16


def test_graphed_denoiser_refuses_capture_off_cuda(model):
    g = GraphedDenoiser(model, capture=True)
    stack = MemoryStack("window:budget=3", model.config.num_layers)
    pipe = VideoPipeline(model, Text())
    pipe.graphed = g
    with pytest.raises(RuntimeError, match="CUDA"):
        list(gen(pipe, 12, memory=stack))


def test_overlapped_decode_equals_sequential(model, decoder):
    seq = VideoPipeline(model, Text(), decoder)
    ovl = VideoPipeline(model, Text(), decoder, overlap_decode=True)
    a = list(gen(seq, 9, memory="fademem:budget=4"))
    seen = []
    b = []
    for chunk in gen(ovl, 9, memory="fademem:budget=4"):
        seen.append(ovl.memory.frames_seen)
        b.append(chunk)
    assert [c.index for c in b] == [0, 1, 2]
    for x, y in zip(a, b):
        assert torch.equal(x.latents, y.latents)
        assert y.frames.dtype == torch.uint8 and torch.equal(x.frames, y.frames)
    assert [c.frames.shape[1] for c in b] == [9, 12, 12]
    # chunk i is handed out once chunk i+1 has been sampled and written (the last one at the end)
    assert seen == [6, 9, 9]


def test_overlapped_decode_closes_early(model, decoder):
    pipe = VideoPipeline(model, Text(), decoder, overlap_decode=True)
    g = gen(pipe, 9, memory="sink:budget=3,sink=1")
    first = next(g)
    g.close()
    assert first.index == 0 and first.frames.shape[1] == 9


def test_cache_only_chunks_keep_memory_and_noise_aligned(model):
    spec = "fademem:budget=4"
    full = list(gen(VideoPipeline(model, Text()), 15, memory=spec))
    pipe = VideoPipeline(model, Text())
    calls = []
    orig = model.forward

    def spy(x, t, ctx, memory=None, start_frame=0, write_memory=False, **kw):
        calls.append((start_frame, write_memory, x.clone()))
        return orig(x, t, ctx, memory=memory, start_frame=start_frame, write_memory=write_memory, **kw)

    model.forward = spy
    try:
        part = list(gen(pipe, 15, memory=spec, cache_only={1, 2}))
    finally:
        del model.forward
    assert [c.cache_only for c in part] == [False, True, True, False, False]
    # cache-only chunks: one forward, the cache-writing one, on the chunk's initial noise
    noise = initial_noise(5, (1, SHAPE[0], 15, *SHAPE[1:]))
    assert [(s, w) for s, w, _ in calls] == [(0, False)] * 4 + [(0, True), (3, True), (6, True)] + \
        [(9, False)] * 4 + [(9, True)] + [(12, False)] * 4 + [(12, True)]
    assert torch.equal(part[1].latents, noise[:, :, 3:6]) and torch.equal(calls[5][2], noise[:, :, 3:6])
    # later chunks start from the same noise as in the full run
    assert torch.equal(calls[7][2], noise[:, :, 9:12])
    assert torch.equal(part[0].latents, full[0].latents)
    assert not torch.equal(part[3].latents, full[3].latents)  # its memory holds other K/V
    # the memory's bookkeeping is the full run's
    assert pipe.memory.frames_seen == 15
    ref = MemoryStack(spec, model.config.num_layers)
    list(gen(VideoPipeline(model, Text()), 15, memory=ref))
    assert [(e.mu, e.span, e.position, e.kind) for e in pipe.memory.entries()] == \
        [(e.mu, e.span, e.position, e.kind) for e in ref.entries()]
