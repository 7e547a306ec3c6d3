"""``fademem generate --image FILE`` (issue 16, start from an image) for the embedded model: the image,
center-cropped and resized to 64x64, is the teacher-forced first chunk; an unreadable file is a usage error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_resume import _cli, _frames

from fademem import embedded
from fademem.cli.generate import image_frames
from fademem.pipeline.video_io import VideoWriter

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a large red circle bouncing over a striped blue background , camera is static"
ARGS = ["generate", "--prompt", PROMPT, "--seconds", "0.75", "--device", "cpu", "--crf", "0"]


def test_image_is_the_first_chunk(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    pixels[:, 10:40] = np.linspace(0, 255, 30, dtype=np.uint8)[:, None, None]  # the square the crop keeps
    Image.fromarray(pixels).save(tmp_path / "start.png")
    r = _cli(ARGS + ["--image", str(tmp_path / "start.png"), "--out", str(tmp_path / "v.mp4")])
    assert r.exit_code == 0, r.output
    got = _frames(tmp_path / "v.mp4")
    assert got.shape == (6, 64, 64, 3)

    bundle = embedded.load()
    with Image.open(tmp_path / "start.png") as im:
        video = image_frames(im.convert("RGB"), 64, 3)
    expect = np.asarray(Image.fromarray(pixels[:, 10:40]).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(video[0, 0].numpy(), expect)  # center crop to a square, then 64x64
    with torch.no_grad():
        roundtrip = bundle.codec.decode(bundle.codec.encode(video))[0].numpy()
    with VideoWriter(tmp_path / "want.mp4", fps=8, crf=0) as w:  # through the same lossless yuv420p encode
        w.write(roundtrip)
    assert np.array_equal(got[:3], _frames(tmp_path / "want.mp4"))


def test_bad_image_is_a_usage_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    out = str(tmp_path / "v.mp4")
    r = _cli(ARGS + ["--image", str(tmp_path / "junk.png"), "--out", out])
    assert r.exit_code == 2 and "cannot read" in r.output and "--image" in r.output
    r = _cli(ARGS + ["--image", str(tmp_path / "missing.png"), "--out", out])
    assert r.exit_code == 2 and "image file not found" in r.output
    r = _cli(ARGS + ["--image", str(tmp_path / "junk.png"), "--opening", "0.375", "--out", out])
    assert r.exit_code == 2 and "give one" in r.output
    r = _cli(ARGS + ["--image", str(tmp_path / "junk.png"), "--checkpoint", "c", "--wan-dir", "w", "--out", out])
    assert r.exit_code == 2 and "cannot read" in r.output  # Wan takes --image too (tests/test_generate_video.py)


def test_image_run_stops_and_resumes_exactly(tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    args = ARGS + ["--image", str(tmp_path / "a.png")]
    assert _cli(args + ["--out", str(tmp_path / "full.mp4")]).exit_code == 0
    state = str(tmp_path / "run.state")
    r = _cli(args + ["--out", str(tmp_path / "part.mp4"), "--state", state, "--stop-after-chunks", "1"])
    assert r.exit_code == 0, r.output
    r = _cli(["generate", "--resume", state, "--image", str(tmp_path / "b.png")])
    assert r.exit_code == 2 and "--image" in r.output and "differs" in r.output
    r = _cli(["generate", "--resume", state])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_frames(tmp_path / "full.mp4"), _frames(tmp_path / "part.mp4"))
