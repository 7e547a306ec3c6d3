"""``fademem finetune --history self``: the history after a true opening is the model's own rollout, generated
through the inference session (``fademem.pipeline.finetune_rollout``).

On the tiny bundle of ``tests/test_finetune.py``: self without a teacher is refused before any work; a short self
run trains and records its setting; the memory the student reads is the memory an inference session holds after
generating the same video with the same seed; the default (``true``) history gives the loss it always gave.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main
from fademem.embedded.bundle import SamplingSchedule, save
from fademem.embedded.train import TrainConfig, target_sigmas
from fademem.pipeline import embedded_pipeline
from fademem.pipeline.finetune import (
    FinetuneConfig,
    _teacher,
    episode_latents,
    memory_pipeline,
    memory_step_loss,
    step_loss,
    teacher_target,
)
from fademem.pipeline.finetune_data import EpisodeBatches
from fademem.pipeline.finetune_lora import add_lora, lora_targets
from fademem.pipeline.finetune_rollout import sampler_input, self_rollout
from fademem.wan.sampling import FlowSchedule
from tests.test_finetune import SPEC, _record_views, tiny_bundle


def test_self_needs_a_teacher_and_a_shorter_opening(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        FinetuneConfig(history="self").validate()
    with pytest.raises(ValueError, match="history must be"):
        FinetuneConfig(history="model").validate()
    teacher = tmp_path / "t.safetensors"
    save(tiny_bundle(SamplingSchedule.uniform(8), seed=5), teacher, dtype=torch.float32)
    with pytest.raises(ValueError, match="shorter than the history"):
        FinetuneConfig(history="self", teacher=str(teacher), seconds=1.0, opening_seconds=1.0).validate()
    FinetuneConfig(history="self", teacher=str(teacher), seconds=1.0, opening_seconds=0.5).validate()
    for args, match in ((["--history", "self"], "needs a teacher"),
                        (["--history", "self", "--teacher", str(teacher), "--seconds", "1", "--opening-seconds", "1"],
                         "shorter than")):
        r = CliRunner().invoke(main, ["finetune", "--out", str(tmp_path / "lora"), "--device", "cpu", *args])
        assert r.exit_code == 2 and match in r.output, r.output
        assert not (tmp_path / "lora").exists()


def test_self_run_trains_and_records(tmp_path):
    student = tiny_bundle(SamplingSchedule.distilled())
    weights, teacher = tmp_path / "s.safetensors", tmp_path / "t.safetensors"
    save(student, weights, dtype=torch.float32)
    save(tiny_bundle(SamplingSchedule.uniform(8), seed=5), teacher, dtype=torch.float32)
    out = tmp_path / "lora"
    r = CliRunner().invoke(main, ["finetune", "--out", str(out), "--weights", str(weights), "--teacher", str(teacher),
                                  "--history", "self", "--opening-seconds", "0.5", "--memory", SPEC, "--steps", "2",
                                  "--batch", "1", "--seconds", "1.5", "--rank", "4", "--lr", "1e-2",
                                  "--teacher-steps", "4", "--revisit-p", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert '"objective": "distill"' in r.output and '"steps": 2' in r.output
    rec = json.loads((out / "adapter_config.json").read_text())["fademem"]
    assert rec["finetune"]["history"] == "self" and rec["finetune"]["opening_seconds"] == 0.5
    assert rec["opening_frames"] == 3 and rec["history_frames"] == 12
    assert all(h["opening"] == 3 and h["n_ctx"] == 12 and h["level"] in range(4) for h in rec["history"])


def _lora_bundle(schedule=None):
    b = tiny_bundle(schedule)
    b.info = {"train": {"max_history": 24}}  # trained window: 27 frames (the episode's length)
    add_lora(b.model, lora_targets(b.model, None), rank=4, alpha=4.0)
    with torch.no_grad():  # a LoRA that changes the model: the rollout and memory are the adapted model's
        for n, p in b.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return b


def test_self_training_memory_is_inference_memory(monkeypatch):
    """The student's forward in a self example reads the memory that an ordinary inference session (decoder
    and all) holds when it generates the same video: the same opening as prefix, the same seed."""
    b = _lora_bundle(SamplingSchedule.distilled())
    cfg = FinetuneConfig(memory=SPEC, batch=2, seconds=3.0, revisit_p=0.0, degrade_p=0.0, history="self",
                         teacher="t", teacher_steps=4, guidance=1.0)
    n, o = cfg.history_frames(b.cfg.fps), cfg.opening_frames(b.cfg.fps)
    assert (n, o) == (24, 15)  # 3 generated chunks; FadeMem (budget 6) merges and re-positions
    batch = next(iter(EpisodeBatches(TrainConfig(batch=2, seed=3, max_history=n, revisit_p=0.0), b.cfg)))
    tinfo = _teacher(cfg, b, tiny_bundle(SamplingSchedule.uniform(8), seed=5), "cpu")
    sigmas = torch.tensor(FlowSchedule(b.schedule.steps, b.schedule.shift).sigmas)
    seen = _record_views(monkeypatch, n)
    gen = torch.Generator().manual_seed(0)
    _, what = step_loss(b.model, memory_pipeline(b), b.codec, batch, cfg, gen, 1, sched_sigmas=sigmas, teacher=tinfo)
    train_views = seen[-2:]  # the student's forward is the last reader (after its sampler steps and the teacher)
    assert what["opening"] == o and [v[0] for v in train_views] == [0, 1]
    seen.clear()
    history, _, prompts = episode_latents(b.codec, batch, 0.0, torch.Generator().manual_seed(0), "cpu")
    pipe = embedded_pipeline(b)
    session = pipe.session(prompts, n + 3, memory=SPEC, prefix=history[:, :, :o], seed=what["rollout_seed"])
    chunks = [c for _ in range(n // 3) for c in session.step()]
    assert not torch.equal(torch.cat([c.latents for c in chunks], 2)[:, :, o:], history[:, :, o:])  # generated
    session.step()
    infer_views = seen[:2]  # the first denoising forward of the chunk after the history, both layers
    assert any(e.kind == "merged" or e.span > 1 for e in session.stack.entries())
    for (la, pa, qa, ka, va), (lb, pb, qb, kb, vb) in zip(train_views, infer_views):
        assert la == lb and pa == pb and qa == qb
        assert ka.shape == kb.shape and torch.equal(ka, kb) and torch.equal(va, vb)
    assert len(train_views[0][1]) < n  # bounded memory


def test_rollout_and_sampler_input_are_the_sampler():
    """``self_rollout``'s history is what the session generates; ``sampler_input`` at the last level, taken one
    more step, is the sampler's own chunk when fed the sampler's noise (here: k = all steps, compared through
    ``generate``)."""
    b = _lora_bundle(SamplingSchedule.distilled())
    pipe = memory_pipeline(b)
    prompts = ["a small red circle drifting right over a plain blue background, camera is static"]
    shape = (1, b.cfg.channels, 3, b.cfg.latent_hw, b.cfg.latent_hw)
    opening = torch.randn(1, b.cfg.channels, 3, b.cfg.latent_hw, b.cfg.latent_hw,
                          generator=torch.Generator().manual_seed(4)).clamp(-1, 1)
    session, hist = self_rollout(pipe, prompts, opening, 9, SPEC, 12, seed=11)
    want = torch.cat([c.latents for c in pipe.generate(prompts, 9, memory=SPEC, seed=11, prefix=opening,
                                                       progress=False)], 2)
    assert torch.equal(hist, want) and torch.equal(hist[:, :, :3], opening) and session.start == 9
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sampler_input(pipe, session, 0, shape, g1), torch.randn(shape, generator=g2))
    # level k by hand: the sampler's steps (x0 = x - sigma v, re-noised with fresh noise)
    sched, g = pipe.schedule, torch.Generator().manual_seed(6)
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        for i in range(2):
            v = b.model(x, torch.full((1, 3), sched.timesteps[i]), session.ctx, memory=session.stack, start_frame=9)
            x = (1 - sched.sigmas[i + 1]) * (x - sched.sigmas[i] * v) + sched.sigmas[i + 1] * torch.randn(shape,
                                                                                                      generator=g)
    got = sampler_input(pipe, session, 2, shape, torch.Generator().manual_seed(6))
    assert torch.allclose(got, x, atol=1e-6)


def _old_step_loss(model, pipe, codec, batch, cfg, gen, step, *, sched_sigmas, teacher=None, run_frames=0):
    """``step_loss`` as it was before ``--history`` (the regression reference)."""
    history, x0, prompts = episode_latents(codec, batch, cfg.degrade_p, gen, sched_sigmas.device)
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen)
    if teacher is None:
        sigma = target_sigmas(b, cfg.schedule_p, sched_sigmas, gen, float(pipe.schedule.shift))
        target = None
    else:
        k = int(torch.randint(len(sched_sigmas), (1,), generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)))
        sigma = sched_sigmas[k].expand(b)
        tpipe, levels, guidance = teacher
        target = lambda xt, s: teacher_target(tpipe, prompts, history, xt, float(s[0]), levels,  # noqa: E731
                                              guidance, cfg.teacher_memory)
    return memory_step_loss(model, pipe, history, x0, prompts, cfg.memory, sigma, target, run_frames, noise=noise)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_true_history_loss_is_unchanged(with_teacher):
    b = _lora_bundle(SamplingSchedule.distilled())
    cfg = FinetuneConfig(memory=SPEC, batch=2, seconds=1.5, revisit_p=0.0, degrade_p=0.5, teacher_steps=4)
    assert cfg.history == "true"
    tinfo = _teacher(cfg, b, tiny_bundle(SamplingSchedule.uniform(8), seed=5), "cpu") if with_teacher else None
    batch = next(iter(EpisodeBatches(TrainConfig(batch=2, seed=3, max_history=12, revisit_p=0.0), b.cfg)))
    sigmas = torch.tensor(FlowSchedule(b.schedule.steps, b.schedule.shift).sigmas)
    pipe = memory_pipeline(b)
    new, what = step_loss(b.model, pipe, b.codec, batch, cfg, torch.Generator().manual_seed(7), 2,
                          sched_sigmas=sigmas, teacher=tinfo)
    old = _old_step_loss(b.model, pipe, b.codec, batch, cfg, torch.Generator().manual_seed(7), 2,
                         sched_sigmas=sigmas, teacher=tinfo)
    assert torch.equal(new, old) and set(what) == {"level", "n_ctx", "kind"}
