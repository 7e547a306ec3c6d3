"""The embedded model's frame autoencoder (fademem.embedded.autoencoder): shapes, streaming, files, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fademem.embedded.autoencoder import (
    AutoencoderConfig,
    LatentCodec,
    codec_from_state,
    codec_state,
    load_codec,
    save_codec,
)
from fademem.embedded.autoencoder_train import evaluate_autoencoder, train_autoencoder
from fademem.embedded.world import World

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(enc_channels=(8, 16), enc_blocks=(1, 1), dec_channels=(16, 8), dec_blocks=(1, 1), latent_channels=4)


def tiny(seed: int = 0, stats: bool = True) -> LatentCodec:
    torch.manual_seed(seed)
    codec = LatentCodec(AutoencoderConfig(**TINY)).eval()
    if stats:
        codec.set_stats([0.1, -0.2, 0.0, 0.3], [0.5, 1.5, 1.0, 2.0])
    return codec


def clip(n: int = 5) -> torch.Tensor:
    video = World("a small red circle drifting right over a striped green background, camera steadily keeps "
                  "panning left", seed=3).render(n)
    return torch.from_numpy((video * 255 + 0.5).astype(np.uint8))[None]


def test_round_trip_shapes_and_dtypes():
    codec = tiny()
    frames = clip(5)
    z = codec.encode(frames)
    assert z.shape == (1, 4, 5, 16, 16) and z.dtype == torch.float32
    assert codec.channels == 4 and codec.latent_hw == 16 and codec.fps == 8
    assert torch.allclose(codec.encode(frames.float() / 255), z, atol=1e-5)  # uint8 or float in [0, 1]
    x = codec.to_frames(z)
    assert x.shape == (1, 5, 64, 64, 3) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    u = codec.decode(z)
    assert u.shape == (1, 5, 64, 64, 3) and u.dtype == torch.uint8
    codec.reset()
    # normalisation: encode subtracts the stored mean and divides by the std, to_frames undoes it
    raw = codec.encode_raw(frames[0].permute(0, 3, 1, 2).float() / 127.5 - 1)
    mean, std = torch.tensor([0.1, -0.2, 0.0, 0.3]), torch.tensor([0.5, 1.5, 1.0, 2.0])
    assert torch.allclose(z[0].transpose(0, 1), (raw - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_streaming_decode_equals_batch_decode():
    codec = tiny()
    z = codec.encode(clip(6))
    whole = codec.to_frames(z)
    one_by_one = torch.cat([codec.to_frames(z[:, :, t:t + 1]) for t in range(z.shape[2])], 1)
    assert torch.allclose(whole, one_by_one, atol=1e-5)
    codec.max_batch = 2  # chunked inside the codec: same result
    one_by_one = torch.cat([codec.decode(z[:, :, t:t + 1]) for t in range(6)], 1)
    assert (codec.decode(z).int() - one_by_one.int()).abs().max() <= 1


def test_bad_shapes_raise():
    codec = tiny()
    with pytest.raises(ValueError, match="batch, time"):
        codec.encode(torch.zeros(2, 64, 64, 3))
    with pytest.raises(ValueError, match="32x32"):
        codec.encode(torch.zeros(1, 2, 32, 32, 3))
    with pytest.raises(ValueError, match="latents"):
        codec.to_frames(torch.zeros(1, 5, 2, 16, 16))
    with pytest.raises(ValueError, match="latents"):
        codec.decode(torch.zeros(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="power of 2"):
        AutoencoderConfig(stride=3)
    with pytest.raises(ValueError, match="entries"):
        AutoencoderConfig(stride=8)


def test_save_load_round_trip_is_exact(tmp_path):
    codec = tiny()
    with torch.no_grad():  # fp16 file: round the weights first, then the round trip is exact
        for p in codec.parameters():
            p.copy_(p.half().float())
    path = tmp_path / "ae.safetensors"
    save_codec(codec, path, {"note": "test"})
    back = load_codec(path)
    assert back.info == {"note": "test"} and back.cfg == codec.cfg
    for k, v in codec.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    z = torch.randn(1, 4, 3, 16, 16)
    assert torch.equal(back.decode(z), codec.decode(z))
    assert torch.equal(back.encode(clip(2)), codec.encode(clip(2)))
    # embedding under a prefix in another file
    tensors, meta = codec_state(codec, prefix="codec.")
    assert all(k.startswith("codec.") for k in tensors)
    again = codec_from_state({**tensors, "dit.x": torch.zeros(1)}, meta, prefix="codec.")
    assert torch.equal(again.decode(z), codec.decode(z))
    with pytest.raises(ValueError, match="not a fademem autoencoder"):
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        load_codec(tmp_path / "bad.safetensors")


def test_training_smoke_loss_falls(tmp_path):
    logs = []
    out = tmp_path / "ae.safetensors"
    info = train_autoencoder(AutoencoderConfig(**TINY), out, device="cpu", steps=12, batch=8, lr=3e-3, warmup=1,
                             workers=0, log=logs.append, log_every=1, eval_clips=0, stats_frames=64, seed=0)
    losses = [h["loss"] for h in info["history"]]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert len(info["latent_std_raw"]) == 4 and all(s > 0 for s in info["latent_std_raw"])
    codec = load_codec(out)
    assert codec.cfg.latent_std == pytest.approx(info["latent_std_raw"], rel=1e-6)
    # deterministic for a fixed seed
    again = train_autoencoder(AutoencoderConfig(**TINY), None, device="cpu", steps=3, batch=8, lr=3e-3, warmup=1,
                              workers=0, log=logs.append, log_every=1, eval_clips=0, stats_frames=64, seed=0)
    assert [h["loss"] for h in again["history"]] == pytest.approx(losses[:3], rel=1e-5)
    # continue from the file
    more = train_autoencoder(None, None, device="cpu", steps=2, batch=8, workers=0, log=logs.append,
                             eval_clips=0, stats_frames=64, init=out)
    assert more["steps_done"] == 2


def test_evaluate_reports_psnr_and_ssim():
    res = evaluate_autoencoder(tiny(), n_clips=2, seed=0, frames_per_clip=2)
    assert res["frames"] == 4 and np.isfinite(res["psnr"]) and res["psnr_p5"] <= res["psnr"]
    assert -1 <= res["ssim"] <= 1
