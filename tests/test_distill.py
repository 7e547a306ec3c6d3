"""Distillation of the embedded flow-matching teacher into the 4-step student (fademem.embedded.distill): the
teacher's ODE and its guidance, the distill loop (smoke, compiled forwards, context guidance) and the teacher's own
rollout against the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fademem.embedded.bundle import EmbeddedConfig, SamplingSchedule, build, config_for_codec, latent_shape, load
from fademem.embedded.train import train
from fademem.pipeline import embedded_pipeline
from fademem.wan.sampling import DEFAULT_SHIFT, DEFAULT_STEPS, FlowSchedule
from tests.test_embedded_v2 import PROMPT, _tiny_train

pytestmark = pytest.mark.usefixtures("one_thread")

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
    # a later lease continues the student (init), not the teacher: its first step starts from the saved weights
    # and the step count adds up
    info2 = distill(DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), steps=2, batch=2, workers=0,
                                  max_history=30, pool=4, log_every=1, warmup=1, lr=0.0,
                                  init=str(tmp_path / "student.safetensors")),
                    tmp_path / "student2.safetensors", device="cpu", log=lambda *_: None)
    assert info2["steps_done"] == 2 and info2["steps_total"] == 5
    assert info["distill"]["stream"] == 0 and info2["distill"]["stream"] != 0  # the continued lease: new batches
    s2 = load(tmp_path / "student2.safetensors")
    for name, p in s.model.state_dict().items():  # lr 0: the continued weights are the saved student's, exactly
        torch.testing.assert_close(s2.model.state_dict()[name], p)
    with pytest.raises(ValueError, match="continue a student distilled for"):
        distill(DistillConfig(teacher=str(tmp_path / "teacher.safetensors"), steps=1, workers=0,
                              init=str(tmp_path / "teacher.safetensors")), tmp_path / "x.safetensors", device="cpu")


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
