"""Embedded v2 (issue 14): a learned latent codec inside the bundle, the sampling schedule recorded in the
file and enforced by the pipeline, training in any codec's latent space."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from torch import nn

from fademem import embedded
from fademem.embedded.bundle import (
    EmbeddedConfig,
    SamplingSchedule,
    build,
    config_for_codec,
    latent_shape,
    load,
    opening,
    save,
)
from fademem.embedded.train import TrainConfig, train
from fademem.pipeline import embedded_pipeline
from fademem.wan.model import WanConfig
from fademem.wan.sampling import DEFAULT_SHIFT, DEFAULT_STEPS, FlowSchedule

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = ("a large red circle bouncing over a striped blue background , "
          "camera pans right and returns after 4 seconds")


# -- a tiny latent codec: the real LatentCodec at a tiny config --------------------------------------------
@pytest.fixture()
def ae():
    import fademem.embedded.autoencoder as ae

    cfg = ae.AutoencoderConfig(enc_channels=(8, 8), enc_blocks=(1, 1), dec_channels=(8, 8), dec_blocks=(1, 1),
                               groups=4)
    ae_mod = types.SimpleNamespace(**{k: getattr(ae, k) for k in ("codec_state", "codec_from_state", "save_codec",
                                                                   "load_codec", "LatentCodec")})
    ae_mod.make_codec = lambda: ae.LatentCodec(cfg).eval().requires_grad_(False)
    return ae_mod


def tiny_dit(channels: int) -> WanConfig:
    import dataclasses

    return dataclasses.replace(EmbeddedConfig().dit_config(dim=32, layers=1, heads=2, ffn=64), in_dim=channels,
                               out_dim=channels)


# -- 1. the codec inside the bundle ------------------------------------------------------------------------
def test_autoencoder_bundle_round_trip(ae, tmp_path):
    torch.manual_seed(0)
    codec = ae.make_codec()
    codec.set_stats([0.1 * i for i in range(codec.channels)], [2.0] * codec.channels)  # travel in the config
    b = build(EmbeddedConfig(), tiny_dit(codec.channels), codec=codec,
              schedule=SamplingSchedule.uniform(32, 3.0))
    assert b.cfg.codec == "autoencoder" and b.cfg.channels == codec.channels
    assert latent_shape(b.cfg) == (codec.channels, 16, 16)
    save(b, tmp_path / "v2.safetensors", info={"note": "tiny"}, dtype=torch.float32)
    c = load(tmp_path / "v2.safetensors")
    assert c.cfg == b.cfg and c.info == {"note": "tiny"}
    assert c.schedule == SamplingSchedule.uniform(32, 3.0) and len(c.steps) == 32 and c.shift == 3.0
    for k, v in b.codec.state_dict().items():
        assert torch.equal(v.float(), c.codec.state_dict()[k].float()), k
    assert torch.equal(c.codec.latent_std, codec.latent_std) and torch.equal(c.codec.latent_mean, codec.latent_mean)
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, c.model.state_dict()[k]), k
    z = opening(c, [PROMPT], seed=1, seconds=1.0)
    assert z.shape == (1, codec.channels, 9, 16, 16)
    assert c.codec.decode(z).shape == (1, 9, 64, 64, 3)
    with torch.no_grad():  # the pipeline samples in the codec's space and decodes through it
        chunks = list(embedded_pipeline(c).generate(PROMPT, 6, memory="window:budget=3", seed=0, prefix=z[:, :, :3],
                                                    latent_shape=latent_shape(c.cfg), progress=False))
    assert torch.cat([ch.frames for ch in chunks], 1).shape == (1, 6, 64, 64, 3)
    with pytest.raises(ValueError, match="latent_channels"):
        EmbeddedConfig(codec="autoencoder")  # no latent shape
    with pytest.raises(ValueError, match="unknown codec"):
        EmbeddedConfig(codec="vae")


def test_v1_file_loads_as_pixel_bundle_with_the_default_schedule(tmp_path):
    # a file in the v1 layout (folded pixels, no recorded schedule), as the package shipped until v2
    from safetensors import safe_open
    from safetensors.torch import save_file

    b = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64), schedule=SamplingSchedule.distilled())
    save(b, tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "schedule"}
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(tmp_path / "v1.safetensors"), metadata=meta)
    b = embedded.load(tmp_path / "v1.safetensors")
    assert b.cfg.codec == "pixel" and latent_shape(b.cfg) == (48, 16, 16)
    assert b.schedule.inferred and b.schedule.steps == tuple(map(float, DEFAULT_STEPS))
    assert b.schedule.shift == DEFAULT_SHIFT
    pipe = embedded_pipeline(b)
    assert pipe.schedule == FlowSchedule(DEFAULT_STEPS, DEFAULT_SHIFT)


def test_pixel_bundle_round_trip_keeps_v1_layout(tmp_path):
    b = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64), schedule=SamplingSchedule.distilled())
    save(b, tmp_path / "p.safetensors")
    c = load(tmp_path / "p.safetensors")
    assert c.cfg.codec == "pixel" and isinstance(c.codec, embedded.PixelCodec)
    assert c.schedule == SamplingSchedule.distilled() and not c.schedule.inferred
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:
        meta = f.metadata()
        assert not any(k.startswith("codec.") for k in f.keys())
    assert json.loads(meta["schedule"]) == {"kind": "distilled-4step", "steps": [1000.0, 750.0, 500.0, 250.0],
                                            "shift": 5.0}
    assert "codec" not in meta


# -- 2. the schedule is recorded and enforced --------------------------------------------------------------
class TimestepSpy(nn.Module):
    """Wraps a model, recording every distinct timestep it is called with."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.seen = model, []
        self.config = model.config

    def forward(self, x, t, *a, **kw):
        self.seen.append(float(torch.as_tensor(t).flatten()[0]))
        return self.inner(x, t, *a, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.mark.parametrize("schedule", [SamplingSchedule.v1(), SamplingSchedule.uniform(8, 3.0),
                                      SamplingSchedule.distilled()])
@torch.no_grad()
def test_model_is_sampled_with_the_schedule_it_was_trained_for(tmp_path, schedule):
    """FAILS if a pipeline over a model file samples at any timesteps other than the file's schedule."""
    torch.manual_seed(0)
    b = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64), schedule=schedule)
    b.model.eval()
    save(b, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    import dataclasses

    spy = TimestepSpy(loaded.model)
    pipe = embedded_pipeline(dataclasses.replace(loaded, model=spy))
    list(pipe.generate(PROMPT, 3, memory="full", seed=0, latent_shape=latent_shape(loaded.cfg), progress=False))
    want = list(FlowSchedule(schedule.steps, schedule.shift).timesteps) + [0.0]  # + the cache-writing pass
    assert spy.seen == pytest.approx(want, abs=1e-3)


def test_pipeline_refuses_a_schedule_the_model_was_not_trained_for():
    b = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64), schedule=SamplingSchedule.uniform(32))
    assert len(embedded_pipeline(b).schedule) == 32
    with pytest.raises(ValueError, match=r"trained for flow-matching \(32 steps.*asked to sample with steps "
                                         r"\(1000, 750, 500, 250\)"):
        embedded_pipeline(b, steps=DEFAULT_STEPS)
    with pytest.raises(ValueError, match="shift 3"):
        embedded_pipeline(b, shift=3.0)
    assert len(embedded_pipeline(b, steps=DEFAULT_STEPS, override_schedule=True).schedule) == 4
    assert len(embedded_pipeline(b, steps=b.steps, shift=b.shift).schedule) == 32  # the same: fine
    v1 = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64))
    with pytest.raises(ValueError, match=r"1000, 750, 500, 250; shift 5\) \[inferred"):
        embedded_pipeline(v1, steps=(1000, 500))


# -- 3. training in a codec's latent space -----------------------------------------------------------------
def _tiny_train(**kw) -> TrainConfig:
    base = dict(steps=2, batch=2, workers=0, dim=32, layers=1, heads=2, ffn=64, log_every=1, max_history=30,
                pool=4, warmup=1)
    base.update(kw)
    return TrainConfig(**base)


def test_training_loss_falls_in_pixel_space(tmp_path):
    torch.manual_seed(0)
    cfg = _tiny_train(steps=60, batch=4, lr=3e-3, warmup=5, max_context=6, schedule_p=1.0, degrade_p=0.0)
    info = train(cfg, tmp_path / "w.safetensors", device="cpu", log=lambda *_: None)
    losses = [h["loss"] for h in info["history"]]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses  # ~0.66 here
    b = load(tmp_path / "w.safetensors")
    assert b.schedule == SamplingSchedule.uniform(4) == SamplingSchedule("flow-matching", DEFAULT_STEPS, 5.0)


def test_training_in_a_latent_codec_space_records_codec_and_teacher_schedule(ae, tmp_path):
    torch.manual_seed(0)
    codec = ae.make_codec()
    ae.save_codec(codec, tmp_path / "codec.safetensors")
    cfg = _tiny_train(codec=str(tmp_path / "codec.safetensors"), sample_steps=32, sample_shift=3.0, steps=3)
    info = train(cfg, tmp_path / "teacher.safetensors", device="cpu", log=lambda *_: None)
    assert info["steps_done"] == 3 and info["codec"] == "autoencoder"
    assert info["latent"] == [codec.channels, 16, 16]
    t = load(tmp_path / "teacher.safetensors")
    assert t.cfg.codec == "autoencoder" and t.model.config.in_dim == t.model.config.out_dim == codec.channels
    assert t.schedule == SamplingSchedule.uniform(32, 3.0) and t.schedule.kind == "flow-matching"
    used = ae.load_codec(tmp_path / "codec.safetensors")
    for k, v in used.state_dict().items():  # the frozen codec travels unchanged
        assert torch.equal(v, t.codec.state_dict()[k]), k
    # continue from the bundle: same architecture and codec, new schedule recorded
    info2 = train(_tiny_train(init=str(tmp_path / "teacher.safetensors"), steps=1, dim=64),
                  tmp_path / "more.safetensors", device="cpu", log=lambda *_: None)
    m = load(tmp_path / "more.safetensors")
    assert info2["steps_done"] == 1 and m.model.config.dim == 32 and m.cfg == t.cfg
    assert m.schedule == SamplingSchedule.uniform(4)


def test_time_limit_stops_and_saves(tmp_path):
    info = train(_tiny_train(steps=10_000, time_limit=2.0), tmp_path / "t.safetensors", device="cpu",
                 log=lambda *_: None)
    assert 0 < info["steps_done"] < 10_000
    assert load(tmp_path / "t.safetensors").info["steps_done"] == info["steps_done"]


# -- 4. distillation into the 4-step schedule --------------------------------------------------------------
def test_ode_path_and_teacher_levels():
    from fademem.embedded.distill import ode_path, teacher_sigmas

    levels = teacher_sigmas(SamplingSchedule.uniform(8, 5.0))
    assert len(levels) == 8 and levels[0] == 1.0 and all(a > b for a, b in zip(levels, levels[1:]))
    assert ode_path(1.0, levels) == levels + [0.0]
    mid = ode_path(0.625, levels)
    assert mid[0] == 0.625 and mid[-1] == 0.0 and all(0 < s < 0.625 for s in mid[1:-1])
    assert len(teacher_sigmas(SamplingSchedule.uniform(32), 12)) == 12


@torch.no_grad()
def test_teacher_ode_is_exact_for_a_straight_flow():
    """With the true flow of a single point (v = (x - x0) / s), Euler lands exactly on x0."""
    from fademem.embedded.distill import ode_path, teacher_ode

    x0 = torch.randn(2, 4, 5, 2, 2)

    def model(x, t, ctx, positions=None, attn_mask=None):
        s = (t / 1000)[:, None, :, None, None].clamp_min(1e-6)
        return (x - x0) / s

    noise = torch.randn_like(x0)
    x = x0.clone()
    x[:, :, 2:] = noise[:, :, 2:]
    out = teacher_ode(model, x, 2, torch.zeros(2, 1), ode_path(1.0, [1.0, 0.8, 0.5, 0.2]), None, None, None,
                      torch.autocast("cpu", enabled=False))
    torch.testing.assert_close(out, x0[:, :, 2:])


def test_distill_smoke_saves_a_4step_student(tmp_path):
    from fademem.embedded.distill import DistillConfig, distill

    torch.manual_seed(0)
    train(_tiny_train(sample_steps=8, steps=2), tmp_path / "teacher.safetensors", device="cpu",
          log=lambda *_: None)
    info = distill(DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), steps=3, batch=2, workers=0,
                                 max_history=30, pool=4, log_every=1, warmup=1),
                   tmp_path / "student.safetensors", device="cpu", log=lambda *_: None)
    assert info["steps_done"] == 3 and len(info["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in info["history"])
    s = load(tmp_path / "student.safetensors")
    assert s.schedule == SamplingSchedule.distilled() and s.schedule.kind == "distilled-4step"
    assert embedded_pipeline(s).schedule == FlowSchedule(DEFAULT_STEPS, DEFAULT_SHIFT)
    with pytest.raises(ValueError, match="distilled-4step"):
        distill(DistillConfig(teacher=str(tmp_path / "student.safetensors"), steps=1, workers=0),
                tmp_path / "x.safetensors", device="cpu")


def test_distill_compile_wraps_teacher_and_student_forwards(tmp_path, monkeypatch):
    """compile=True (the GPU leases' setting) runs the teacher's and the student's forwards through
    torch.compile(dynamic=True) and trains what the eager run does. torch.compile is replaced by a recording
    pass-through here (compiling on a CPU runner takes minutes); the kernels' numerics are torch's."""
    from fademem.embedded.distill import DistillConfig, distill

    torch.manual_seed(0)
    train(_tiny_train(sample_steps=8, steps=1), tmp_path / "teacher.safetensors", device="cpu", log=lambda *_: None)
    compiled, calls = [], []

    def fake_compile(module, **kw):
        compiled.append((module, kw))

        def forward(*a, **k):
            calls.append(module)
            return module(*a, **k)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    runs = []
    for compile_ in (False, True):
        cfg = DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), steps=2, batch=2, workers=0, max_history=30,
                            pool=4, log_every=1, warmup=1, teacher_steps=4, guidance=2.0, compile=compile_)
        torch.manual_seed(0)
        info = distill(cfg, tmp_path / f"s{int(compile_)}.safetensors", device="cpu", log=lambda *_: None)
        runs.append(([h["loss"] for h in info["history"]], load(tmp_path / f"s{int(compile_)}.safetensors")))
    assert len(compiled) == 2 and all(kw == {"dynamic": True} for _, kw in compiled)
    teacher_model, student_model = (m for m, _ in compiled)
    assert not any(p.requires_grad for p in teacher_model.parameters())
    assert all(p.requires_grad for p in student_model.parameters())
    assert calls.count(student_model) == 2 and calls.count(teacher_model) >= 2  # one student forward per step
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-6)
    for a, b in zip(runs[0][1].model.state_dict().values(), runs[1][1].model.state_dict().values()):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_teacher_ode_with_guidance_follows_the_guided_flow():
    """A constant flow per branch: the text branch flows by A, the empty-prompt branch (zero context) by U;
    Euler to 0 from 1 moves the targets by -(U + g (A - U)); g = 1 is the unguided path."""
    from fademem.embedded.distill import ode_path, teacher_ode

    a, u = torch.randn(1, 4, 1, 2, 2), torch.randn(1, 4, 1, 2, 2)

    def model(x, t, ctx, positions=None, attn_mask=None):
        text = (ctx.flatten(1).abs().sum(1) > 0).float()[:, None, None, None, None]
        return text * a + (1 - text) * u + 0 * x

    x = torch.randn(2, 4, 4, 2, 2)
    ctx = torch.ones(2, 3, 8)
    path = ode_path(1.0, [1.0, 0.7, 0.3])
    amp = torch.autocast("cpu", enabled=False)
    for g in (1.0, 3.0):
        out = teacher_ode(model, x, 2, torch.zeros(2, 1), path, ctx, None, None, amp, guidance=g)
        torch.testing.assert_close(out, x[:, :, 2:] - (u + g * (a - u)))


@pytest.mark.parametrize("schedule,update", [(SamplingSchedule.uniform(8, 3.0), "ode"),
                                             (SamplingSchedule.v1(), "renoise"),
                                             (SamplingSchedule.distilled(), "renoise")])
@torch.no_grad()
def test_teachers_follow_their_ode_distilled_models_renoise(schedule, update):
    """FAILS if a multi-step flow-matching teacher is sampled by re-noising its x0 (flat, averaged frames)
    or a distilled model by the ODE: the step from level s to s' is checked on the model's own inputs."""
    import dataclasses

    torch.manual_seed(0)
    b = build(EmbeddedConfig(), EmbeddedConfig().dit_config(32, 1, 2, 64), schedule=schedule)
    b.model.eval()
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t, *args, **kw):
            v = self.inner(x, t, *args, **kw)
            seen.append((x.clone(), v.clone(), float(torch.as_tensor(t).flatten()[0]) / 1000))
            return v

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    pipe = embedded_pipeline(dataclasses.replace(b, model=Spy(b.model)))
    assert pipe.update == update
    list(pipe.generate(PROMPT, 3, memory="full", seed=0, latent_shape=latent_shape(b.cfg), progress=False))
    steps = seen[:len(pipe.schedule)]  # the denoising forwards (then the cache pass)
    (x, v, s), (x_next, _, s_next) = steps[0], steps[1]
    euler = x + (s_next - s) * v
    assert torch.allclose(x_next, euler, atol=1e-5) == (update == "ode")


@torch.no_grad()
def test_teacher_rollout_equals_the_pipeline_with_full_memory(ae, tmp_path):
    """Two independent paths to the same video: the pipeline's chunk loop (K/V memory, ODE update) and the
    teacher's full-sequence rollout (memory-free forwards over all earlier frames) at guidance 1."""
    from fademem.embedded.distill import teacher_rollout

    torch.manual_seed(0)
    codec = ae.make_codec()
    ecfg = config_for_codec(EmbeddedConfig(), codec)
    b = build(ecfg, ecfg.dit_config(32, 2, 2, 64), codec=codec, schedule=SamplingSchedule.uniform(6, 5.0))
    b.model.eval()
    pipe = embedded_pipeline(b)
    got = torch.cat([c.frames[0] for c in pipe.generate(PROMPT, 9, memory="full", seed=5,
                                                        latent_shape=latent_shape(b.cfg), progress=False)])
    ref = teacher_rollout(b, PROMPT, 9, guidance=1.0, seed=5)
    assert got.shape == ref.shape == (9, 64, 64, 3)
    diff = (got.int() - ref.int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.05
    assert not torch.equal(ref, teacher_rollout(b, PROMPT, 9, guidance=3.0, seed=5))


@torch.no_grad()
def test_teacher_rollout_context_guidance_guides_only_the_later_chunks(ae):
    """context_guidance: the first (text-only) chunk keeps --guidance, the chunks after it use context_guidance."""
    from fademem.embedded.distill import teacher_rollout

    torch.manual_seed(0)
    codec = ae.make_codec()
    ecfg = config_for_codec(EmbeddedConfig(), codec)
    b = build(ecfg, ecfg.dit_config(32, 2, 2, 64), codec=codec, schedule=SamplingSchedule.uniform(4, 5.0))
    b.model.eval()
    g3 = teacher_rollout(b, PROMPT, 6, guidance=3.0, seed=2)
    mixed = teacher_rollout(b, PROMPT, 6, guidance=3.0, seed=2, context_guidance=1.0)
    assert torch.equal(mixed[:3], g3[:3]) and not torch.equal(mixed[3:], g3[3:])
    assert torch.equal(teacher_rollout(b, PROMPT, 6, guidance=3.0, seed=2, context_guidance=3.0), g3)


def test_distill_context_guidance_applies_after_context_only(tmp_path, monkeypatch):
    """Each batch's teacher targets use --guidance for text-only targets and --context-guidance after context."""
    import fademem.embedded.distill as distill_mod
    from fademem.embedded.distill import DistillConfig, distill

    assert DistillConfig(guidance=3.0).guidance_for(0) == DistillConfig(guidance=3.0).guidance_for(9) == 3.0
    cfg = DistillConfig(guidance=3.0, context_guidance=1.0)
    assert (cfg.guidance_for(0), cfg.guidance_for(9)) == (3.0, 1.0)
    torch.manual_seed(0)
    train(_tiny_train(sample_steps=8, steps=1), tmp_path / "teacher.safetensors", device="cpu", log=lambda *_: None)
    seen, real = [], distill_mod.teacher_ode

    def recording(model, x, n_ctx, *args):
        seen.append((n_ctx, args[-1]))
        return real(model, x, n_ctx, *args)

    monkeypatch.setattr(distill_mod, "teacher_ode", recording)
    distill(DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), steps=12, batch=2, workers=0, max_history=30,
                          pool=4, warmup=1, teacher_steps=2, guidance=3.0, context_guidance=1.0),
            tmp_path / "s.safetensors", device="cpu", log=lambda *_: None)
    assert {n > 0 for n, _ in seen} == {True, False}  # both kinds of batch were drawn
    assert all(g == (1.0 if n else 3.0) for n, g in seen)
    with pytest.raises(ValueError, match="context_guidance"):
        distill(DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), context_guidance=-1.0), "x", device="cpu")
