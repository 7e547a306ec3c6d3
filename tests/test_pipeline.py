"""The chunk-wise sampler: schedule, determinism, NaN check, prompt switches, the generate CLI.

All on the real ``CausalWanModel`` at ``WanConfig.tiny()`` (CPU, fp32) with a deterministic toy
text encoder; the CLI test builds a tiny checkpoint + Wan2.1 directory in tmp_path.
"""

from __future__ import annotations

import logging
import math
import zlib

import pytest
import torch
from torch import nn

from fademem.pipeline import (
    Chunk,
    NonFiniteError,
    VideoPipeline,
    initial_noise,
    latent_frames_for_seconds,
    parse_switch,
    plan_switches,
)
from fademem.wan.model import CausalWanModel, WanConfig
from fademem.wan.sampling import FlowSchedule, shift_sigma, warp_timesteps

SHAPE = (16, 4, 6)  # latent (C, h, w): 2x3 tokens per frame

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class ToyText:
    """Deterministic text states [B, 8, 32] from each prompt's CRC."""

    def __init__(self, dim=32):
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            out.append(torch.randn(8, self.dim, generator=g))
        return torch.stack(out)


class ToyDecoder:
    """Streaming 'decoder' with the causal VAE's frame count: 1 + 4(F-1) frames first, then 4F."""

    fps = 16

    def __init__(self):
        self.reset_calls = 0

    def reset(self):
        self.reset_calls += 1
        self.first = True

    def decode(self, z):
        b, _, f, h, w = z.shape
        t = 4 * f - 3 if self.first else 4 * f
        self.first = False
        img = ((z[:, :3].float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)  # [B, 3, F, h, w]
        img = img.repeat_interleave(4, dim=2)[:, :, -t:]
        return img.permute(0, 2, 3, 4, 1).repeat_interleave(8, 2).repeat_interleave(8, 3).contiguous()


class Spy(nn.Module):
    """Wraps a model and records every forward / recache call."""

    def __init__(self, model, nan_from_frame=None):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.calls: list[dict] = []
        self.recaches: list[dict] = []
        self.nan_from_frame = nan_from_frame

    def encode_text(self, states):
        return self.inner.encode_text(states)

    def forward(self, x, t, context, memory=None, start_frame=0, write_memory=False):
        self.calls.append(dict(x=x.clone(), t=t.clone(), start=start_frame, write=write_memory, context=context))
        v = self.inner(x, t, context, memory=memory, start_frame=start_frame, write_memory=write_memory)
        if self.nan_from_frame is not None and start_frame >= self.nan_from_frame:
            v = v.clone()
            v[0, 0, 0, 0, 0] = float("nan")
        return v

    def recache(self, x_clean, context, memory, frames):
        self.recaches.append(dict(x=x_clean.clone(), frames=list(frames), context=context,
                                  policy_frames=memory.policy.recache_frames(limit=12),
                                  frames_seen=memory.frames_seen))
        return self.inner.recache(x_clean, context, memory, frames)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanModel(WanConfig.tiny()).eval()


def run(pipe, prompts="a cat", n=9, **kw):
    kw.setdefault("latent_shape", SHAPE)
    kw.setdefault("progress", False)
    return list(pipe.generate(prompts, n, **kw))


def latents(chunks):
    return torch.cat([c.latents for c in chunks], dim=2)


# -- schedule ----------------------------------------------------------------------------------
def test_schedule_values():
    s = FlowSchedule()
    assert s.timesteps == pytest.approx((1000.0, 937.5, 2500 / 3, 625.0), abs=1e-9)
    assert s.sigmas == pytest.approx((1.0, 0.9375, 5 / 6, 0.625))
    assert shift_sigma(0.5, 5.0) == pytest.approx(5 / 6) and shift_sigma(0.3, 1.0) == pytest.approx(0.3)
    # LongLive's construction (sigma_min 0, extra_one_step): linspace(1, 0, 1001)[:-1], shifted,
    # x1000, indexed at 1000 - t (warp_denoising_step), in float32
    sig = torch.linspace(1.0, 0.0, 1001)[:-1]
    table = torch.cat([1000 * (5 * sig / (1 + 4 * sig)), torch.zeros(1)])
    ref = table[1000 - torch.tensor([1000, 750, 500, 250])]
    assert torch.allclose(torch.tensor(s.timesteps, dtype=torch.float32), ref, atol=1e-3)
    with pytest.raises(ValueError, match="decreasing"):
        warp_timesteps((500, 750))
    with pytest.raises(ValueError, match="t=0"):
        warp_timesteps((1000, 0))


def test_update_rules():
    x_t, v, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    x0 = FlowSchedule.x0_from_flow(x_t, v, 0.8)
    torch.testing.assert_close(x0, x_t - 0.8 * v)
    torch.testing.assert_close(FlowSchedule.add_noise(x0, n, 0.25), 0.75 * x0 + 0.25 * n)
    # x_t = (1 - s) x0 + s n and v = n - x0 give back x0
    s = 0.6
    torch.testing.assert_close(FlowSchedule.x0_from_flow((1 - s) * x0 + s * n, n - x0, s), x0)


def test_seconds_to_latent_frames():
    assert latent_frames_for_seconds(60) == 243  # 960 frames -> ceil(963/4) = 241 -> 243
    assert latent_frames_for_seconds(1) == 6  # 16 -> 5 -> 6
    assert latent_frames_for_seconds(0.5) == 3  # 8 -> 3
    for s in (0.1, 1, 5, 10, 59.9, 240):
        t = latent_frames_for_seconds(s)
        assert t % 3 == 0 and 4 * t - 3 >= math.ceil(16 * s) > 4 * (t - 3) - 3
    with pytest.raises(ValueError):
        latent_frames_for_seconds(0)


def test_plan_and_parse_switches(caplog):
    with caplog.at_level(logging.WARNING, logger="fademem.pipeline.switches"):
        plan = plan_switches([(3, "dog"), (7, ["b0", "b1"])], 12, 3, batch=2)
    assert plan == [(3, ["dog", "dog"]), (9, ["b0", "b1"])]
    assert "moved to the chunk boundary 9" in caplog.text
    with pytest.raises(ValueError, match="initial prompt"):
        plan_switches([(0, "x")], 12, 3, 1)
    with pytest.raises(ValueError, match="not inside"):
        plan_switches([(11, "x")], 12, 3, 1)
    with pytest.raises(ValueError, match="increasing"):
        plan_switches([(6, "x"), (4, "y")], 12, 3, 1)
    with pytest.raises(ValueError, match="batch"):
        plan_switches([(3, ["a", "b", "c"])], 12, 3, 2)
    assert parse_switch("12:a dog: running") == (12, "a dog: running")
    assert parse_switch("10s: a dog") == (40, "a dog")  # video frame 160 -> latent 40
    with pytest.raises(ValueError):
        parse_switch("x:dog")
    with pytest.raises(ValueError):
        parse_switch("12")


# -- sampling --------------------------------------------------------------------------------------
def test_call_sequence_per_chunk(model):
    spy = Spy(model)
    chunks = run(VideoPipeline(spy, ToyText()), n=6, memory="full", seed=3)
    assert [c.start for c in chunks] == [0, 3] and all(isinstance(c, Chunk) for c in chunks)
    assert len(spy.calls) == 10  # 4 denoising forwards + 1 cache-writing forward per chunk
    warped = FlowSchedule().timesteps
    for k, call in enumerate(spy.calls):
        chunk, step = divmod(k, 5)
        assert call["start"] == 3 * chunk and call["t"].shape == (1, 3)
        if step < 4:
            assert not call["write"] and torch.allclose(call["t"], torch.full((1, 3), warped[step]))
        else:
            assert call["write"] and torch.all(call["t"] == 0)
            torch.testing.assert_close(call["x"], chunks[chunk].latents)  # the clean chunk, t = 0


def test_context_noise_renoises_the_cache_pass(model):
    spy = Spy(model)
    chunks = run(VideoPipeline(spy, ToyText(), context_noise=100.0), n=3, memory="full", seed=3)
    write = spy.calls[4]
    assert write["write"] and torch.all(write["t"] == 100.0)
    assert not torch.allclose(write["x"], chunks[0].latents)
    with pytest.raises(ValueError, match="context_noise"):
        VideoPipeline(model, ToyText(), context_noise=1000)


def test_determinism_and_given_noise(model):
    pipe = VideoPipeline(model, ToyText())
    a = latents(run(pipe, n=6, memory="sink", seed=7))
    b = latents(run(pipe, n=6, memory="sink", seed=7))
    c = latents(run(pipe, n=6, memory="sink", seed=8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the seed's initial noise, passed explicitly, gives the same video
    noise = initial_noise(7, (1, *SHAPE[:1], 6, *SHAPE[1:]))
    assert torch.equal(latents(run(pipe, n=6, memory="sink", seed=7, noise=noise)), a)
    # given noise is what the first denoising forward of each chunk sees
    spy = Spy(model)
    mine = torch.randn(1, 16, 6, 4, 6)
    d = latents(run(VideoPipeline(spy, ToyText()), n=6, memory="sink", seed=7, noise=mine))
    assert not torch.allclose(d, a)
    torch.testing.assert_close(spy.calls[0]["x"], mine[:, :, :3])
    torch.testing.assert_close(spy.calls[5]["x"], mine[:, :, 3:])
    with pytest.raises(ValueError, match="noise must be a tensor of shape"):
        pipe.generate("a cat", 6, noise=torch.randn(1, 16, 3, 4, 6), latent_shape=SHAPE)
    with pytest.raises(ValueError, match="multiple of frames_per_chunk"):
        pipe.generate("a cat", 7, latent_shape=SHAPE)
    with pytest.raises(ValueError, match="knob|unknown|memory"):
        pipe.generate("a cat", 6, memory="sink:nonsense=1", latent_shape=SHAPE)


def test_batch_matches_its_items_and_memory_state(model):
    pipe = VideoPipeline(model, ToyText())
    both = latents(run(pipe, ["a cat", "a dog"], n=6, memory="full", seed=1))
    assert both.shape == (2, 16, 6, 4, 6)
    assert not torch.allclose(both[0], both[1])  # different prompts (and noise)
    assert pipe.memory.frames_seen == 6 and len(pipe.memory) == model.config.num_layers


def test_nan_raises_naming_the_chunk(model):
    pipe = VideoPipeline(Spy(model, nan_from_frame=3), ToyText())
    gen = pipe.generate("a cat", 9, memory="full", seed=0, latent_shape=SHAPE, progress=False)
    first = next(gen)
    assert torch.isfinite(first.latents).all()
    with pytest.raises(NonFiniteError, match=r"chunk 1 \(latent frames 3-5\)"):
        next(gen)


# -- prompt switches --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["sink", "full"])
def test_switch_recaches_the_policys_frames(model, spec):
    spy, text = Spy(model), ToyText()
    pipe = VideoPipeline(spy, text)
    chunks = run(pipe, n=24, memory=spec, seed=2, switches=[(15, "a dog"), (20, "a red ball")])
    assert [c.prompts for c in chunks] == [["a cat"]] * 5 + [["a dog"]] * 2 + [["a red ball"]]
    assert text.calls == [["a cat"], ["a dog"], ["a red ball"]]
    assert [r["frames_seen"] for r in spy.recaches] == [15, 21]
    all_lat = latents(chunks)
    for r, chunk in zip(spy.recaches, (chunks[5], chunks[7])):
        # the policy decides; the pipeline re-encodes those frames (all of them are in the ring)
        assert r["frames"] == r["policy_frames"] == chunk.recached and r["frames"]
        assert r["frames"] == sorted(r["frames"]) and r["frames"][-1] == r["frames_seen"] - 1
        torch.testing.assert_close(r["x"], all_lat[:, :, r["frames"]])
        # the new prompt's context is used from the switch on
        first_call = spy.calls[5 * chunk.index]
        assert first_call["context"] is r["context"]
    if spec == "full":
        assert spy.recaches[0]["frames"] == list(range(3, 15))  # the 12 newest (LongLive's limit)
    else:
        assert 0 not in spy.recaches[0]["frames"]  # sink frames keep their K/V
    # switching changes the video from the switch on, not before
    plain = latents(run(VideoPipeline(model, ToyText()), n=24, memory=spec, seed=2))
    assert torch.equal(plain[:, :, :15], all_lat[:, :, :15])
    assert not torch.allclose(plain[:, :, 15:], all_lat[:, :, 15:])


def test_recache_changes_memory_under_switch(model):
    """With recache the K/V of held frames change; the frames after the switch depend on it."""
    spy = Spy(model)
    pipe = VideoPipeline(spy, ToyText())
    with_recache = latents(run(pipe, n=12, memory="full", seed=4, switches=[(6, "a dog")]))
    no_recache = latents(run(VideoPipeline(model, ToyText(), recache_limit=0), n=12, memory="full", seed=4,
                             switches=[(6, "a dog")]))
    assert torch.equal(with_recache[:, :, :6], no_recache[:, :, :6])
    assert not torch.allclose(with_recache[:, :, 6:], no_recache[:, :, 6:])


# -- decoding and files -------------------------------------------------------------------------------
def test_streaming_decoder_and_mp4(model, tmp_path):
    from fademem.pipeline.video_io import read_video_info

    dec = ToyDecoder()
    pipe = VideoPipeline(model, ToyText(), dec)
    chunks = run(pipe, n=9, memory="full", seed=0)
    assert dec.reset_calls == 1
    assert [c.frames.shape for c in chunks] == [(1, 9, 32, 48, 3), (1, 12, 32, 48, 3), (1, 12, 32, 48, 3)]
    paths, lat = pipe.generate_video(["a cat", "a dog"], 9, out=tmp_path / "v.mp4", memory="sink", seed=0,
                                     latent_shape=SHAPE, progress=False, return_latents=True)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["v_0.mp4", "v_1.mp4"] and lat.shape[2] == 9
    for p in paths:
        assert read_video_info(p) == (4 * 9 - 3, 16.0, (32, 48))


# -- the CLI -----------------------------------------------------------------------------------------
def test_generate_cli_end_to_end(tmp_path):
    from click.testing import CliRunner
    from test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir

    from fademem.cli import main
    from fademem.pipeline.video_io import iter_video_frames, read_video_info
    from fademem.wan.checkpoints import save_generator

    wan = make_wan_dir(tmp_path / "wan")
    torch.manual_seed(0)
    gen = CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512))
    ckpt = save_generator(gen, tmp_path / "gen.safetensors")
    (tmp_path / "prompts.txt").write_text("a cat runs on the beach\n\n# comment\na red ball\n")
    runner = CliRunner()
    args = ["generate", "--prompts", str(tmp_path / "prompts.txt"), "--seconds", "1", "--memory", "sink",
            "--checkpoint", str(ckpt), "--wan-dir", str(wan), "--out", str(tmp_path / "out.mp4"),
            "--seed", "3", "--switch", "3:a dog jumps", "--device", "cpu", "--height", "32", "--width", "48"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    outs = [tmp_path / "out_0.mp4", tmp_path / "out_1.mp4"]
    t = latent_frames_for_seconds(1)  # 6 latent frames
    for p in outs:
        assert read_video_info(p) == (4 * t - 3, 16.0, (32, 48))
        assert len(list(iter_video_frames(p))) == 4 * t - 3
    assert [ln for ln in res.stdout.splitlines() if ln.endswith(".mp4")] == [str(p) for p in outs]

    # errors: without a checkpoint the embedded model runs and knows only its world's grammar;
    # missing files, incompatible parts, bad memory spec
    res = runner.invoke(main, ["generate", "--prompt", "a cat", "--out", str(tmp_path / "x.mp4")])
    assert res.exit_code != 0 and "cannot parse prompt" in res.output and "<texture>" in res.output
    res = runner.invoke(main, ["generate", "--prompt", "a cat", "--checkpoint", str(tmp_path / "missing.pt"),
                               "--out", str(tmp_path / "x.mp4")])
    assert res.exit_code != 0 and "--checkpoint and --wan-dir go together" in res.output
    res = runner.invoke(main, ["generate", "--prompt", "a cat", "--checkpoint", str(tmp_path / "missing.pt"),
                               "--wan-dir", str(wan), "--out", str(tmp_path / "x.mp4"), "--device", "cpu"])
    assert res.exit_code != 0 and "checkpoint not found" in res.output
    bad = save_generator(CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=8, text_len=512)),
                         tmp_path / "bad.safetensors")
    res = runner.invoke(main, ["generate", "--prompt", "a cat", "--checkpoint", str(bad), "--wan-dir", str(wan),
                               "--out", str(tmp_path / "x.mp4"), "--device", "cpu", "--seconds", "1"])
    assert res.exit_code != 0 and "text states of width 8" in res.output
    res = runner.invoke(main, ["generate", "--prompt", "a cat", "--checkpoint", str(ckpt), "--wan-dir", str(wan),
                               "--memory", "nonsense-policy", "--out", str(tmp_path / "x.mp4")])
    assert res.exit_code != 0 and "--memory" in res.output
    assert not (tmp_path / "x.mp4").exists()
