"""Embedded v2 (issue 14): a learned latent codec inside the bundle, the sampling schedule recorded in the
file and enforced by the pipeline, training in any codec's latent space."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fademem import embedded
from fademem.embedded.bundle import (
    EmbeddedConfig,
    SamplingSchedule,
    build,
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
