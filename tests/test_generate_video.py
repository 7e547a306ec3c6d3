"""``fademem generate --video FILE`` (continue a clip) for the embedded model and Wan checkpoints, and
``--image FILE`` for Wan (issue 16): the clip's last seconds are resampled to the model's fps, fitted
to its frame, encoded by the model's own encoder (codec / Wan VAE) and teacher-forced as the first
chunks; clear usage errors for unreadable files and clips too short; resumable like any run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_resume import _cli, _frames

from fademem import embedded
from fademem.pipeline import embedded_pipeline
from fademem.pipeline.video_io import VideoWriter, fit_image, read_clip_tail

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a large red circle bouncing over a striped blue background , camera is static"
ARGS = ["generate", "--prompt", PROMPT, "--device", "cpu", "--crf", "0", "--memory", "sink"]


def _clip(path, n: int, fps: float, h: int = 48, w: int = 96, seed: int = 0):
    """A clip whose frame i has a top half of red 6 i (so a read frame tells its index), random below."""
    rng = np.random.default_rng(seed)
    with VideoWriter(path, fps=fps, crf=0) as wr:
        for i in range(n):
            f = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            f[: h // 2] = (6 * i, 90, 40)
            wr.write(f)
    return str(path)


def _index(frame) -> int:
    h = frame.shape[0]
    return int(round(float(frame[: h // 2 - 2, :, 0].astype(np.float64).mean()) / 6))


# -- reading ----------------------------------------------------------------------------------------
def test_clip_tail_resamples_by_time(tmp_path):
    clip = _clip(tmp_path / "c.mp4", 40, 16)
    assert [_index(f) for f in read_clip_tail(clip, 8, 8, (64, 64))] == list(range(25, 40, 2))  # thinned
    assert [_index(f) for f in read_clip_tail(clip, 5, 16, (32, 32))] == list(range(35, 40))  # same rate
    slow = read_clip_tail(clip, 100, 4, (16, 24))  # longer than the clip: as many as 39/16 s give at 4 fps
    assert slow.shape == (10, 16, 24, 3) and [_index(f) for f in slow] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]
    fast = read_clip_tail(clip, 6, 32, (16, 16))  # faster than the clip: frames repeated
    assert [_index(f) for f in fast] == [36, 37, 37, 38, 38, 39]  # halfway instants: the earlier frame
    with pytest.raises(ValueError, match="cannot read"):
        (tmp_path / "junk.mp4").write_bytes(b"nope")
        read_clip_tail(tmp_path / "junk.mp4", 3, 8, (8, 8))


def test_fit_image_crops_to_the_aspect_then_resizes():
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (30, 100, 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    want = np.asarray(Image.fromarray(pixels[:, 5:95]).resize((48, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(fit_image(im, 16, 48), want)  # 30 x 90 is the 1:3 region
    want = np.asarray(Image.fromarray(pixels[:, 35:65]).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(fit_image(im, 64, 64), want)  # square: the middle 30 x 30, upscaled
    with pytest.raises(ValueError, match="positive"):
        fit_image(im, 0, 4)


# -- the embedded model --------------------------------------------------------------------------------
def _embedded_want(tmp_path, clip, frames, seconds_frames, name="want.mp4"):
    """The same run through the Python API with the prefix built by hand."""
    bundle = embedded.load()
    tail = read_clip_tail(clip, frames, 8, (64, 64))
    with torch.no_grad():
        prefix = bundle.codec.encode(torch.from_numpy(tail)[None])
    out = tmp_path / name
    embedded_pipeline(bundle).generate_video(PROMPT, seconds_frames, out=out, memory="sink", seed=0, progress=False,
                                             latent_shape=embedded.latent_shape(bundle.cfg), prefix=prefix, crf=0)
    return _frames(out)


def test_embedded_video_continues_the_clip(tmp_path):
    clip = _clip(tmp_path / "clip.mp4", 40, 16)  # 2.5 s at 16 fps, 96x48
    r = _cli(ARGS + ["--seconds", "1.5", "--video", clip, "--video-seconds", "0.8", "--out", str(tmp_path / "v.mp4")])
    assert r.exit_code == 0, r.output
    assert "its last 6 latent frames" in r.output and "temporal positions used: 0..11" in r.output
    got = _frames(tmp_path / "v.mp4")
    assert got.shape == (12, 64, 64, 3)
    assert np.array_equal(got, _embedded_want(tmp_path, clip, 6, 12))  # 0.8 s = 6.4 frames -> 2 chunks


def test_embedded_video_run_stopped_inside_the_clip_resumes_exactly(tmp_path):
    clip = _clip(tmp_path / "clip.mp4", 24, 8)
    args = ARGS + ["--seconds", "1.5", "--video", clip, "--video-seconds", "0.75"]
    assert _cli(args + ["--out", str(tmp_path / "full.mp4")]).exit_code == 0
    state = str(tmp_path / "run.state")
    r = _cli(args + ["--out", str(tmp_path / "part.mp4"), "--state", state, "--stop-after-chunks", "1"])
    assert r.exit_code == 0, r.output  # stopped after 3 of the clip's 6 teacher-forced frames
    r = _cli(["generate", "--resume", state, "--video", str(tmp_path / "other.mp4")])
    assert r.exit_code == 2 and "--video" in r.output and "differs" in r.output
    r = _cli(["generate", "--resume", state])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_frames(tmp_path / "full.mp4"), _frames(tmp_path / "part.mp4"))

    r = _cli(args + ["--out", str(tmp_path / "p2.mp4"), "--state", state, "--stop-after-chunks", "1"])
    assert r.exit_code == 0, r.output
    _clip(clip, 24, 8, seed=5)  # the clip changes before the rest of it is read
    r = _cli(["generate", "--resume", state])
    assert r.exit_code == 2 and "changed since the state was saved" in r.output


def test_video_errors_are_usage_errors(tmp_path):
    out = ["--out", str(tmp_path / "v.mp4"), "--seconds", "1.5"]
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    r = _cli(ARGS + out + ["--video", str(tmp_path / "junk.mp4")])
    assert r.exit_code == 2 and "cannot read" in r.output and "--video" in r.output
    r = _cli(ARGS + out + ["--video", str(tmp_path / "missing.mp4")])
    assert r.exit_code == 2 and "video file not found" in r.output
    short = _clip(tmp_path / "short.mp4", 2, 8)
    r = _cli(ARGS + out + ["--video", short])
    assert r.exit_code == 2 and "give 2 frames at 8 fps; one chunk needs 3" in r.output
    clip = _clip(tmp_path / "clip.mp4", 24, 8)
    r = _cli(ARGS + out + ["--video", clip, "--video-seconds", "2"])
    assert r.exit_code == 2 and "must be shorter than the video" in r.output
    r = _cli(ARGS + out + ["--video", clip, "--image", clip])
    assert r.exit_code == 2 and "give one" in r.output
    r = _cli(ARGS + out + ["--video", clip, "--opening", "0.5"])
    assert r.exit_code == 2 and "give one" in r.output
    r = _cli(ARGS + out + ["--video-seconds", "1"])
    assert r.exit_code == 2 and "--video-seconds goes with --video" in r.output
    assert not (tmp_path / "v.mp4").exists()


# -- Wan checkpoints (tiny random config, tiny Wan VAE) --------------------------------------------------
def test_wan_vae_encode_is_the_posterior_mean_normalised():
    from test_vae_text import Z_DIM, make_vae

    from fademem.wan.vae import WanVAEDecoder

    vae = make_vae()
    dec = WanVAEDecoder(vae)
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 9, 32, 48, 3), dtype=np.uint8))
    z = dec.encode(frames)
    assert z.shape == (1, Z_DIM, 3, 4, 6)
    x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, Z_DIM, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, Z_DIM, 1, 1, 1)
    torch.testing.assert_close(z, (ref - mean) / std)
    assert dec.decode(z).shape == (1, 9, 32, 48, 3)
    with pytest.raises(ValueError, match="1 \\+ 4k frames, got 8"):
        dec.encode(frames[:, :8])
    with pytest.raises(ValueError, match="not a multiple"):
        dec.encode(frames[:, :, :30])


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    from test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir

    from fademem.wan.checkpoints import save_generator
    from fademem.wan.model import CausalWanModel, WanConfig

    root = tmp_path_factory.mktemp("wan")
    wan_dir = make_wan_dir(root / "wan")
    torch.manual_seed(0)
    gen = CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512))
    return str(save_generator(gen, root / "gen.safetensors")), str(wan_dir)


def _wan_args(wan, tmp_path, out):
    ckpt, wan_dir = wan
    return ["generate", "--prompt", "a cat runs", "--device", "cpu", "--crf", "0", "--memory", "sink",
            "--checkpoint", ckpt, "--wan-dir", wan_dir, "--height", "32", "--width", "48", "--seconds", "1.5",
            "--out", str(tmp_path / out)]


def _wan_want(wan, tmp_path, frames):
    from fademem.pipeline import latent_frames_for_seconds, load_wan_pipeline

    pipe = load_wan_pipeline(*wan)
    n = latent_frames_for_seconds(1.5)
    prefix = pipe.decoder.encode(torch.from_numpy(frames)[None])
    pipe.generate_video("a cat runs", n, out=tmp_path / "want.mp4", memory="sink", seed=0, progress=False,
                        latent_shape=(pipe.decoder.z_dim, 4, 6), prefix=prefix, crf=0)
    return _frames(tmp_path / "want.mp4")


def test_wan_image_is_the_first_chunk(wan, tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (50, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    r = _cli(_wan_args(wan, tmp_path, "v.mp4") + ["--image", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "a.png") as im:
        still = np.repeat(fit_image(im.convert("RGB"), 32, 48)[None], 9, axis=0)  # one chunk: 4 * 3 - 3 frames
    assert np.array_equal(_frames(tmp_path / "v.mp4"), _wan_want(wan, tmp_path, still))


def test_wan_video_continues_the_clip_and_resumes(wan, tmp_path):
    clip = _clip(tmp_path / "clip.mp4", 30, 16, h=40, w=40)
    args = _wan_args(wan, tmp_path, "full.mp4") + ["--video", clip, "--video-seconds", "1.4"]
    r = _cli(args)
    assert r.exit_code == 0, r.output
    assert "its last 6 latent frames" in r.output  # 22 frames at 16 fps: 6 latent frames take 21
    tail = read_clip_tail(clip, 21, 16, (32, 48))
    full = _frames(tmp_path / "full.mp4")
    assert np.array_equal(full, _wan_want(wan, tmp_path, tail))
    state = str(tmp_path / "run.state")
    part = _wan_args(wan, tmp_path, "part.mp4") + ["--video", clip, "--video-seconds", "1.4"]
    r = _cli(part + ["--state", state, "--stop-after-chunks", "1"])
    assert r.exit_code == 0, r.output
    r = _cli(["generate", "--resume", state])
    assert r.exit_code == 0, r.output
    assert np.array_equal(full, _frames(tmp_path / "part.mp4"))
