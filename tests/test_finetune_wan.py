"""FadeMem-FT toward the real Wan size (issue 21): gradient checkpointing in ``CausalWanModel``, the generic
``memory_step_loss`` behind ``step_loss``, and the real-size step benchmark's tiny CPU mode.

Checkpointing recomputes every block in the backward pass: a step's loss and LoRA gradients are those without it
(same seed); the recompute reuses the forward's memory view (the policy is asked once per layer) and a
cache-writing forward with grad is refused (its recompute would insert the chunk twice).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main
from fademem.embedded.bundle import save
from fademem.embedded.train import TrainConfig
from fademem.memory import MemoryStack
from fademem.memory.base import Memory
from fademem.pipeline.finetune import (
    CHUNK,
    FinetuneConfig,
    _chunk_t,
    episode_latents,
    memory_pipeline,
    step_loss,
    teacher_force,
)
from fademem.pipeline.finetune_data import EpisodeBatches
from fademem.pipeline.finetune_lora import add_lora, lora_targets
from fademem.wan.model import CausalWanModel, WanConfig
from fademem.wan.sampling import FlowSchedule
from tests.test_finetune import SPEC, tiny_bundle


def _lora_bundle():
    b = tiny_bundle()
    add_lora(b.model, lora_targets(b.model, None), rank=4, alpha=4.0)
    with torch.no_grad():  # a non-zero LoRA: lora_A gets gradients too, and the memory is the adapted model's
        g = torch.Generator().manual_seed(7)
        for n, p in b.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return b


def _batch(b, cfg):
    n = cfg.history_frames(b.cfg.fps)
    return next(iter(EpisodeBatches(TrainConfig(batch=2, seed=3, max_history=n, revisit_p=0.0), b.cfg)))


def _step(b, batch, cfg, checkpointing: bool):
    """(loss, {LoRA parameter: grad}, block-0 forward calls) of one fine-tune step."""
    model = b.model
    model.enable_gradient_checkpointing(checkpointing)
    calls = []
    hook = model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (a recompute stops early)
    try:
        sigmas = torch.tensor(FlowSchedule(b.schedule.steps, b.schedule.shift).sigmas)
        loss, _ = step_loss(model, memory_pipeline(b), b.codec, batch, cfg, torch.Generator().manual_seed(0), 0,
                            sched_sigmas=sigmas)
        model.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        hook.remove()
        model.enable_gradient_checkpointing(False)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, len(calls)


def test_grad_checkpointing_gives_the_same_loss_and_lora_gradients():
    b = _lora_bundle()
    assert b.model.gradient_checkpointing is False  # off by default
    cfg = FinetuneConfig(memory=SPEC, batch=2, seconds=1.5, revisit_p=0.0, degrade_p=0.0)
    batch = _batch(b, cfg)
    loss0, g0, calls0 = _step(b, batch, cfg, False)
    loss1, g1, calls1 = _step(b, batch, cfg, True)
    chunks = cfg.history_frames(b.cfg.fps) // CHUNK
    assert calls0 == chunks + 1 and calls1 == chunks + 2  # the target chunk's block ran again in the backward
    assert torch.allclose(loss0, loss1, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and len(g0) == 2 * 2 * 10  # A and B of every Linear of both blocks
    for n in g0:
        assert g0[n].abs().max() > 0, n
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), (n, (g0[n] - g1[n]).abs().max())


def test_checkpointing_asks_the_policy_once_and_refuses_cache_writes_with_grad(monkeypatch):
    torch.manual_seed(0)
    cfg = WanConfig.tiny()
    model = CausalWanModel(cfg).eval().requires_grad_(False)
    model.blocks[1].ffn[0].weight.requires_grad_(True)
    text = torch.randn(1, 8, cfg.text_dim)
    g = torch.Generator().manual_seed(1)
    stack = MemoryStack("omnimem", cfg.num_layers)  # query-aware: views are never cached by the policy
    with torch.no_grad():
        for s in range(0, 12, 3):
            model(torch.randn(1, 16, 3, 4, 4, generator=g), torch.zeros(1, 3), text, memory=stack, start_frame=s,
                  write_memory=True)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    asked = []
    original = Memory.view
    monkeypatch.setattr(Memory, "view", lambda self, q: asked.append(self.layer) or original(self, q))
    want = torch.autograd.grad(model(x, torch.full((1, 3), 500.0), text, memory=stack, start_frame=12).square().mean(),
                               model.blocks[1].ffn[0].weight)[0]
    assert asked == [0, 1]
    asked.clear()
    model.enable_gradient_checkpointing()
    out = model(x, torch.full((1, 3), 500.0), text, memory=stack, start_frame=12)
    got = torch.autograd.grad(out.square().mean(), model.blocks[1].ffn[0].weight)[0]
    assert asked == [0, 1]  # the backward's recompute reused the forward's views
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    seen = stack.frames_seen
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(x, torch.zeros(1, 3), text, memory=stack, start_frame=12, write_memory=True)
    assert stack.frames_seen == seen
    with torch.no_grad():  # the sampler's cache-writing pass is untouched
        model(x, torch.zeros(1, 3), text, memory=stack, start_frame=12, write_memory=True)
    assert stack.frames_seen == seen + 3


def test_memory_step_loss_gives_step_loss_number():
    """``step_loss`` is now ``memory_step_loss`` on the episode's tensors: the number of the computation it
    replaced (teacher-force, noise, level, the denoising forward reading the memory, x0 error), written out."""
    b = _lora_bundle()
    cfg = FinetuneConfig(memory=SPEC, batch=2, seconds=1.5, revisit_p=0.0, degrade_p=0.5)
    batch = _batch(b, cfg)
    from fademem.embedded.train import target_sigmas

    sigmas = torch.tensor(FlowSchedule(b.schedule.steps, b.schedule.shift).sigmas)
    pipe = memory_pipeline(b)
    got, what = step_loss(b.model, pipe, b.codec, batch, cfg, torch.Generator().manual_seed(0), 0,
                          sched_sigmas=sigmas)
    gen = torch.Generator().manual_seed(0)
    history, x0, prompts = episode_latents(b.codec, batch, cfg.degrade_p, gen, "cpu")
    n = history.shape[2]
    session = teacher_force(pipe, prompts, history, cfg.memory, n + CHUNK)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = target_sigmas(2, cfg.schedule_p, sigmas, gen, float(pipe.schedule.shift))
    s5 = sigma.view(2, 1, 1, 1, 1)
    xt = (1 - s5) * x0 + s5 * noise
    v = b.model(xt, _chunk_t(sigma), session.states[0], memory=session.stack, start_frame=n).float()
    want = (xt - s5 * v - x0).pow(2).mean()
    assert torch.equal(got, want) and what["n_ctx"] == n


def test_cli_grad_checkpoint_is_recorded(tmp_path):
    weights = tmp_path / "tiny.safetensors"
    save(tiny_bundle(), weights, dtype=torch.float32)
    out = tmp_path / "lora"
    r = CliRunner().invoke(main, ["finetune", "--out", str(out), "--weights", str(weights), "--memory", SPEC,
                                  "--steps", "1", "--batch", "1", "--seconds", "1", "--rank", "4",
                                  "--revisit-p", "0", "--device", "cpu", "--grad-checkpoint"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "adapter_config.json").read_text())["fademem"]["finetune"]
    assert rec["grad_checkpoint"] is True


def test_real_size_step_benchmark_tiny_mode(tmp_path, benchmark_script):
    bench = benchmark_script("finetune_wan_step")
    out = tmp_path / "ft.json"
    lines = []
    rep = bench.main(["--config", "tiny", "--device", "cpu", "--history-seconds", "2", "--steps", "2", "--rank", "8",
                      "--out", str(out)], log=lines.append)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rep))
    assert rep["stopped"] is None and rep["lora"]["parameters"] > 0 and rep["lora"]["rank"] == 8
    assert set(rep["modes"]) == {"off", "on"}
    for key, res in rep["modes"].items():
        assert res["grad_checkpoint"] == (key == "on") and res["error"] is None
        assert res["history_frames"] == 9 and len(res["steps"]) == 2
        for r in res["steps"]:
            for f in ("history_s", "fwd_bwd_s", "optimizer_s", "step_s", "loss", "grad_norm",
                      "history_peak_bytes", "fwd_bwd_peak_bytes", "optimizer_peak_bytes"):
                assert f in r, f
            assert r["history_s"] > 0 and r["fwd_bwd_s"] > 0 and r["loss"] > 0
        assert res["summary"]["steps_used"] == 1
    assert rep["comparison"]["first_step_loss_rel_diff"] < 1e-6  # same data, same LoRA start
    assert any("forward+backward" in line for line in lines)
