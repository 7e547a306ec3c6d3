"""Learned memory compression (issue 8): the latent-space history encoder and its retrieval
pretraining (``fademem.compressor.nets``). The K/V compressor, its training and the policy:
tests/test_compressor_kv.py."""

from __future__ import annotations

import math

import pytest
import torch

from fademem import compressor as C

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def tiny_cfg(rate="2x2x1", **kw) -> C.CompressorConfig:
    return C.CompressorConfig(**{**dict(in_channels=48, out_dim=16, channels=(8, 16), rate=rate, dec_dim=16,
                                        dec_layers=1, latent_hw=(8, 8)), **kw})


@pytest.fixture(scope="module")
def world_batch():
    return C.world_histories(2, 4, rng=0)[..., :8, :8].contiguous()  # [2, 48, 4, 8, 8]


# -- encoder / decoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,tokens,centre", [("2x2x1", 2 * 4 * 8, 0.5), ("4x4x2", 1 * 2 * 4, 1.5)])
def test_shapes_for_both_rates(rate, tokens, centre):
    torch.manual_seed(0)
    enc, dec = C.build(tiny_cfg(rate))
    x = torch.randn(2, 48, 4, 8, 8)
    out = enc(x, start=10)
    assert out.tokens.shape == (2, tokens, 16)
    assert out.positions.shape == (tokens,) and out.coords.shape == (tokens, 2)
    assert out.positions[0].item() == 10 + centre  # the centre of the span each token summarises
    assert out.positions.min() >= 10 and out.positions.max() <= 13
    q = torch.randn(2, 3, 48, 8, 8)
    pred = dec(out, q, torch.rand(2, 3), torch.tensor([[10.0, 11, 13]] * 2))
    assert pred.shape == q.shape and torch.isfinite(pred).all()


def test_time_is_reduced_before_space():
    enc = C.HistoryEncoder(tiny_cfg("4x4x2"))
    assert enc.strides == ((2, 1, 1), (2, 1, 1), (1, 2, 2), (1, 2, 1))
    first_space = next(i for i, s in enumerate(enc.strides) if s[1:] != (1, 1))
    assert all(s[0] == 1 for s in enc.strides[first_space:])  # no time reduction after space starts
    assert C.HistoryEncoder(tiny_cfg("2x2x1")).strides == ((2, 1, 1), (1, 2, 1))
    # channel ladder: each downsampling step moves one rung up, then stays on the last
    convs = [m for m in enc.down if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 16]


def test_bad_input_is_a_clear_error():
    for bad in ("3x2x1", "2x2", "axbxc", "0x1x1"):
        with pytest.raises(ValueError, match="rate"):
            C.parse_rate(bad)
    with pytest.raises(ValueError, match="channels"):
        C.parse_channels("8-x")
    enc, dec = C.build(tiny_cfg("4x4x2"))
    with pytest.raises(ValueError, match=r"2 frames.*4 frames"):
        enc(torch.randn(1, 48, 2, 8, 8))
    with pytest.raises(ValueError, match=r"16 latent channels.*48"):
        enc(torch.randn(1, 16, 4, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.randn(1, 48, 4, 6, 8))
    out = enc(torch.randn(1, 48, 4, 8, 8))
    with pytest.raises(ValueError, match=r"32 wide.*takes 16"):
        dec(C.Encoded(torch.randn(1, 8, 32), out.positions, out.grid, out.coords),
            torch.randn(1, 1, 48, 8, 8), torch.ones(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="query must be"):
        dec(out, torch.randn(1, 1, 16, 8, 8), torch.ones(1, 1), torch.zeros(1, 1))


def test_smoke_pretraining_overfits_a_fixed_batch_and_saves(world_batch, tmp_path):
    path = tmp_path / "c.safetensors"
    enc, dec, losses = C.pretrain(tiny_cfg(), 30, data=world_batch, lr=2e-3, seed=0, out=path)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    _, _, again = C.pretrain(tiny_cfg(), 3, data=world_batch, lr=2e-3, seed=0)
    assert again == losses[:3]  # seeded
    enc2, dec2, info = C.load(path)
    assert info["steps"] == 30 and enc2.cfg == enc.cfg
    x = world_batch[:1]
    assert torch.equal(enc2(x).tokens, enc.eval()(x).tokens)
    m = C.retrieval_metrics(enc2, dec2, world_batch)
    assert m["rate"] == "2x2x1" and m["tokens"] == 64 and math.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1
    _, _, short = C.pretrain(tiny_cfg(), 1000, data=world_batch, seconds=0.0)
    assert short == []  # time limit
