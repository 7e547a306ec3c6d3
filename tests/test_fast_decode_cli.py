"""``fademem generate`` with a Wan checkpoint takes the fast decode (channels-last VAE decoder, decode
overlapped with the next chunk) where ``fast_decode`` says so (compiled on CUDA); forced here on the CPU
(with ``--compile none``, so nothing compiles), it gives the plain path's video and its --state works."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main
from fademem.wan.model import CausalWanModel, WanConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def wan_cmd(tmp_path):
    """`fademem generate` of 1 s on a tiny random Wan checkpoint in the real layouts, on the CPU."""
    from test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir

    from fademem.wan.checkpoints import save_generator

    wan = make_wan_dir(tmp_path / "wan")
    torch.manual_seed(0)
    ckpt = save_generator(CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512)),
                          tmp_path / "gen.safetensors")
    return ["generate", "--prompt", "a cat runs", "--seconds", "1", "--memory", "sink", "--checkpoint", str(ckpt),
            "--wan-dir", str(wan), "--device", "cpu", "--height", "32", "--width", "48", "--crf", "0"]


def test_generate_with_the_fast_decode_gives_the_plain_video(tmp_path, monkeypatch, wan_cmd):
    import fademem.pipeline.fast as fast
    from fademem.pipeline.state import load_state
    from fademem.pipeline.video_io import iter_video_frames

    base = wan_cmd + ["--compile", "none"]
    res = CliRunner().invoke(main, base + ["--out", str(tmp_path / "plain.mp4")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "side CUDA stream" not in res.output  # off CUDA (and with --compile none) nothing changes
    monkeypatch.setattr(fast, "fast_decode", lambda mode, device: True)
    res = CliRunner().invoke(main, base + ["--out", str(tmp_path / "fast.mp4"), "--state", str(tmp_path / "s.state")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "VAE decoder in channels_last_3d" in res.output and "side CUDA stream" in res.output
    videos = [torch.stack([torch.as_tensor(f) for f in iter_video_frames(str(tmp_path / f"{n}.mp4"))])
              for n in ("plain", "fast")]
    assert videos[0].shape[0] == 4 * 6 - 3 and torch.equal(videos[0], videos[1])
    assert load_state(tmp_path / "s.state")["video"]["frames"] == videos[1].shape[0]


def test_resume_takes_the_speed_options_of_a_fresh_run(tmp_path, monkeypatch, wan_cmd):
    """A Wan run resumed with --resume goes through the same speed options as a fresh run (compiled by default
    on CUDA, where the run being resumed was compiled too): with the fast decode forced on the CPU, the
    resumed run says so and finishes the uninterrupted run's video; --precision fp8 is refused."""
    import fademem.pipeline.fast as fast
    from fademem.pipeline.video_io import iter_video_frames

    base = wan_cmd
    res = CliRunner().invoke(main, base + ["--out", str(tmp_path / "whole.mp4"), "--compile", "none"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    monkeypatch.setattr(fast, "fast_decode", lambda mode, device: True)
    state = str(tmp_path / "s.state")
    res = CliRunner().invoke(main, base + ["--out", str(tmp_path / "cut.mp4"), "--state", state,
                                           "--stop-after-chunks", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(main, ["generate", "--resume", state, "--precision", "fp8"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["generate", "--resume", state])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "side CUDA stream" in res.output
    videos = [torch.stack([torch.as_tensor(f) for f in iter_video_frames(str(tmp_path / f"{n}.mp4"))])
              for n in ("whole", "cut")]
    assert torch.equal(videos[0], videos[1])
