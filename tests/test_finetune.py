"""``fademem finetune`` (FadeMem-FT): a LoRA trained with the memory policy in the loop.

On a tiny embedded bundle (folded-pixel codec, a 2-block DiT of width 32): the loss falls; the memory the
training step reads is the memory an inference session holds after teacher-forcing the same frames; the
saved LoRA merged at load gives the trained model's outputs; bad options fail before any work.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main
from fademem.embedded.bundle import EmbeddedConfig, SamplingSchedule, build, save
from fademem.memory.base import Memory
from fademem.pipeline import embedded_pipeline
from fademem.pipeline.finetune import FinetuneConfig, episode_latents, finetune, memory_pipeline, step_loss
from fademem.pipeline.finetune_data import EpisodeBatches
from fademem.pipeline.finetune_lora import add_lora, lora_targets
from fademem.wan.config import WanConfig
from fademem.wan.fingerprint import weights_digest
from fademem.wan.lora import load_lora
from fademem.wan.sampling import FlowSchedule

SPEC = "fademem:budget=6"


def tiny_bundle(schedule: SamplingSchedule | None = None, seed: int = 0):
    e = EmbeddedConfig()
    dit = WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=e.channels, out_dim=e.channels,
                    text_dim=e.text_dim, freq_dim=32, text_len=e.text_len)
    torch.manual_seed(seed)
    b = build(e, dit, schedule=schedule)
    b.model.eval().requires_grad_(False)
    b.text.eval().requires_grad_(False)
    return b


@pytest.mark.slow
def test_loss_falls(tmp_path):
    # one noise level (a one-step schedule, schedule_p=1): the step-to-step spread is the data's, not the level's
    b = tiny_bundle(SamplingSchedule("flow-matching", (500.0,), 5.0))
    cfg = FinetuneConfig(memory=SPEC, preset="official", rank=16, steps=40, lr=1e-2, warmup=2, batch=2, seconds=1.0,
                         revisit_p=0.0, degrade_p=0.0, schedule_p=1.0, log_every=100)
    rec = finetune(cfg, tmp_path / "lora", bundle=b, log=lambda *_: None)
    losses = [h["loss"] for h in rec["history"]]
    assert len(losses) == 40 and all(np.isfinite(losses))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.93 * first, (first, last, losses)


def _record_views(monkeypatch, start: int) -> list:
    """Every memory view given to a chunk starting at ``start``: (layer, positions, query positions, k, v)."""
    seen = []
    original = Memory.view

    def view(self, query):
        out = original(self, query)
        if query.start == start and out is not None:
            seen.append((self.layer, out.positions, out.query_positions, out.k.clone(), out.v.clone()))
        return out

    monkeypatch.setattr(Memory, "view", view)
    return seen


@pytest.mark.parametrize("run_frames", [0, 60])  # 60: a longer video than the episode (Memory.for_run's choice)
def test_training_memory_is_inference_memory(monkeypatch, run_frames):
    b = tiny_bundle()
    b.info = {"train": {"max_history": 24}}  # trained window: 27 frames (the episode's length)
    model = b.model
    add_lora(model, lora_targets(model, None), rank=4, alpha=4.0)
    with torch.no_grad():  # a LoRA that changes the model: the memory is written by the adapted model
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    cfg = FinetuneConfig(memory=SPEC, batch=2, seconds=3.0, revisit_p=0.0, degrade_p=0.0)
    from fademem.embedded.train import TrainConfig

    n = cfg.history_frames(b.cfg.fps)  # 24 frames: FadeMem (budget 6) has merged and re-positioned entries
    batch = next(iter(EpisodeBatches(TrainConfig(batch=2, seed=3, max_history=n, revisit_p=0.0), b.cfg)))
    gen = torch.Generator().manual_seed(0)
    history, _, prompts = episode_latents(b.codec, batch, 0.0, gen, "cpu")
    assert history.shape[2] == n == 24

    seen = _record_views(monkeypatch, n)
    sigmas = torch.tensor(FlowSchedule(b.schedule.steps, b.schedule.shift).sigmas)
    step_loss(model, memory_pipeline(b), b.codec, batch, cfg, gen, 0, sched_sigmas=sigmas, run_frames=run_frames)
    train_views = list(seen)
    assert [v[0] for v in train_views] == [0, 1]
    seen.clear()
    # inference: the ordinary pipeline (decoder and all) generating the chunk after the same teacher-forced frames
    pipe = embedded_pipeline(b)
    session = pipe.session(prompts, max(n + 3, run_frames), memory=SPEC, prefix=history)
    for _ in range(n // 3 + 1):
        session.step()
    infer_views = seen[:2]  # the first denoising forward of the target chunk, both layers
    entries = session.stack.entries()
    assert any(e.kind == "merged" or e.span > 1 for e in entries), entries  # consolidation happened
    for (la, pa, qa, ka, va), (lb, pb, qb, kb, vb) in zip(train_views, infer_views):
        assert la == lb and pa == pb and qa == qb
        assert ka.shape == kb.shape and torch.equal(ka, kb) and torch.equal(va, vb)
    assert len(train_views[0][1]) < n  # the memory is bounded: fewer slots than history frames
    # within the trained window the chunk sits at its true frames; a longer run takes the policy's compact layout
    assert (train_views[0][2] == (24.0, 25.0, 26.0)) == (run_frames == 0), train_views[0][2]


def test_saved_lora_reloads_to_identical_outputs(tmp_path):
    b = tiny_bundle()
    base = copy.deepcopy(b.model)
    out = tmp_path / "lora"
    cfg = FinetuneConfig(memory=SPEC, rank=4, steps=3, lr=1e-2, warmup=1, batch=1, seconds=1.0, revisit_p=0.0,
                         log_every=100)
    finetune(cfg, out, bundle=b, log=lambda *_: None)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    trained = b.model  # the peft-injected model
    assert any(float(p.detach().abs().max()) > 0 for n, p in trained.named_parameters() if "lora_B" in n)
    merged = load_lora(base, out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, b.cfg.channels, 6, b.cfg.latent_hw, b.cfg.latent_hw, generator=g)
    states = b.text.encode(["a small red circle drifting right over a plain blue background, camera is static"])
    with torch.no_grad():
        t = torch.full((1, 6), 600.0)
        want, got = trained(x, t, states), merged(x, t, states)
    assert torch.allclose(want, got, atol=1e-5, rtol=1e-4), (want - got).abs().max()


def test_cli_finetune_then_generate_with_lora(tmp_path):
    b = tiny_bundle()
    weights = tmp_path / "tiny.safetensors"
    save(b, weights, dtype=torch.float32)
    out = tmp_path / "lora"
    r = CliRunner().invoke(main, ["finetune", "--out", str(out), "--weights", str(weights), "--memory", SPEC,
                                  "--steps", "2", "--batch", "1", "--seconds", "1", "--rank", "4", "--lr", "1e-2",
                                  "--revisit-p", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert '"objective": "flow-matching"' in r.output and (out / "adapter_config.json").is_file()
    prompt = "a small red circle drifting right over a plain blue background, camera is static"
    r = CliRunner().invoke(main, ["generate", "--prompt", prompt, "--seconds", "0.75", "--weights", str(weights),
                                  "--lora", str(out), "--memory", SPEC, "--device", "cpu",
                                  "--out", str(tmp_path / "v.mp4")])
    assert r.exit_code == 0, r.output
    assert "merged into the embedded model" in r.output and (tmp_path / "v.mp4").is_file()


@pytest.mark.parametrize("args,match", [
    (["--memory", "bogus"], "unknown memory policy"),
    (["--rank", "0"], "--rank"),
    (["--rank", "-3"], "--rank"),
    (["--teacher", "/nonexistent/teacher.safetensors"], "file not found"),
    (["--weights", "/nonexistent/model.safetensors"], "file not found"),
    (["--targets", "self_attn.q,nope"], "not Linear layers"),
])
def test_bad_options_fail_before_any_work(tmp_path, monkeypatch, args, match):
    import fademem.pipeline.finetune as ft

    called = []
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: called.append(1))
    r = CliRunner().invoke(main, ["finetune", "--out", str(tmp_path / "lora"), "--device", "cpu", *args])
    assert r.exit_code == 2 and match in r.output, r.output
    assert not called and not (tmp_path / "lora").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="unknown memory policy"):
        FinetuneConfig(memory="bogus").validate()
    with pytest.raises(ValueError, match="rank"):
        FinetuneConfig(rank=0).validate()
    with pytest.raises(ValueError, match="preset"):
        FinetuneConfig(preset="huge").validate()
    with pytest.raises(FileNotFoundError, match="teacher"):
        FinetuneConfig(teacher="/nonexistent.safetensors").validate()


def test_teacher_full_memory_target_is_distillation_teacher_ode():
    """The teacher reading the full memory of the teacher-forced history gives the distillation teacher's ODE
    solution over the true full context (``fademem.embedded.distill.teacher_ode``), guidance included."""
    from fademem.embedded.distill import ode_path, teacher_ode, teacher_sigmas
    from fademem.embedded.train import token_mask
    from fademem.pipeline.finetune import teacher_target

    t = tiny_bundle(SamplingSchedule.uniform(8), seed=5)
    levels = teacher_sigmas(t.schedule)
    g = torch.Generator().manual_seed(2)
    n, c, hw = 9, t.cfg.channels, t.cfg.latent_hw
    history = torch.randn(2, c, n, hw, hw, generator=g).clamp(-1, 1)
    x = torch.randn(2, c, 3, hw, hw, generator=g)
    prompts = ["a small red circle drifting right over a plain blue background, camera is static",
               "a large green star bouncing over a striped gray background, camera is static"]
    tpipe = memory_pipeline(t, guided_text=True)
    got = teacher_target(tpipe, prompts, history, x, levels[2], levels, 2.5, "full")
    chunks = torch.tensor([i // 3 for i in range(n + 3)])
    mask = token_mask({"chunks": chunks}, n, (hw // 2) ** 2, "cpu")
    want = teacher_ode(t.model, torch.cat([history, x], dim=2), n, torch.zeros(2, 1), ode_path(levels[2], levels),
                       t.text.encode(prompts), torch.arange(n + 3, dtype=torch.float32), mask,
                       torch.autocast("cpu", enabled=False), 2.5)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_distill_objective_runs(tmp_path):
    student = tiny_bundle(SamplingSchedule.distilled())
    teacher = tiny_bundle(SamplingSchedule.uniform(8), seed=5)
    cfg = FinetuneConfig(memory=SPEC, rank=4, steps=3, lr=1e-3, warmup=1, batch=1, seconds=1.0, revisit_p=0.0,
                         guidance=2.0, teacher_steps=4, log_every=100)
    rec = finetune(cfg, tmp_path / "lora", bundle=student, teacher=teacher, log=lambda *_: None)
    assert rec["objective"] == "distill" and rec["steps_done"] == 3
    assert all(np.isfinite(h["loss"]) and h["level"] in range(4) for h in rec["history"])


def test_lora_directory_has_a_file_identity(tmp_path):
    """``generate --lora DIR --state``: the state records the adapter directory's identity (its files)."""
    from fademem.pipeline.state import file_identity

    d = tmp_path / "lora"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"x" * 10)
    a = file_identity(d)
    assert a["name"] == "lora" and a["size"] == 12
    (d / "adapter_model.safetensors").write_bytes(b"y" * 10)
    assert file_identity(d)["digest"] != a["digest"]


def test_resume_continues_from_the_saved_lora(tmp_path):
    """Training across sessions: a second run loads the first run's LoRA (its rank and targets win) and
    counts steps on; with a vanishing learning rate its saved LoRA is the first one's."""
    from safetensors.torch import load_file

    cfg = FinetuneConfig(memory=SPEC, rank=4, steps=3, lr=1e-2, warmup=1, batch=1, seconds=1.0, revisit_p=0.0,
                         log_every=100)
    finetune(cfg, tmp_path / "a", bundle=tiny_bundle(), log=lambda *_: None)
    again = FinetuneConfig(memory=SPEC, rank=8, steps=2, lr=1e-12, warmup=1, batch=1, seconds=1.0, revisit_p=0.0,
                           log_every=100, resume=str(tmp_path / "a"))
    rec = finetune(again, tmp_path / "b", bundle=tiny_bundle(), log=lambda *_: None)
    assert rec["rank"] == 4 and rec["steps_done"] == 2 and rec["steps_done_total"] == 5
    assert rec["base_digest"] == weights_digest(tiny_bundle().model)  # the base it was trained on
    with pytest.raises(ValueError, match="trained on a different base model.*without --resume"):
        finetune(again, tmp_path / "d", bundle=tiny_bundle(seed=1), log=lambda *_: None)  # another base: refused
    assert rec["resumed_from"]["steps_done_total"] == 3 and [h["step"] for h in rec["history"]] == [3, 4]
    a, b = load_file(str(tmp_path / "a" / "adapter_model.safetensors")), load_file(str(tmp_path / "b" /
                                                                                       "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(float(t.abs().max()) > 0 for k, t in a.items() if "lora_B" in k)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="not a LoRA adapter directory"):
        FinetuneConfig(memory=SPEC, resume=str(tmp_path / "c")).validate()


def test_fademem_ft_is_a_policy_spec(tmp_path):
    """FadeMem-FT as a policy: ``fademem:...,lora=DIR`` declares the fine-tune's LoRA, so every caller that runs
    a policy (generate, bench memory, eval) merges it through ``generator_for_memory`` like ``--lora`` would."""
    from fademem.memory import build_memory
    from fademem.pipeline import generator_for_memory

    b = tiny_bundle()
    base = copy.deepcopy(b.model)
    cfg = FinetuneConfig(memory=SPEC, rank=4, steps=2, lr=1e-2, warmup=1, batch=1, seconds=1.0, revisit_p=0.0,
                         log_every=100)
    finetune(cfg, tmp_path / "ft", bundle=b, log=lambda *_: None)
    spec = f"{SPEC},lora={tmp_path / 'ft'}"
    assert build_memory(spec).spec() == spec and generator_for_memory(base, SPEC) is base
    ft, ref = generator_for_memory(base, spec), load_lora(copy.deepcopy(base), tmp_path / "ft")
    x = torch.randn(1, b.cfg.channels, 3, b.cfg.latent_hw, b.cfg.latent_hw, generator=torch.Generator().manual_seed(2))
    states = b.text.encode(["a small red circle drifting right over a plain blue background, camera is static"])
    t = torch.full((1, 3), 500.0)
    with torch.no_grad():
        got, want, plain = ft(x, t, states), ref(x, t, states), base(x, t, states)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-6)
    with pytest.raises(ValueError, match="lora must be a LoRA directory"):
        build_memory(f"{SPEC},lora={tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a LoRA adapter directory"):
        build_memory(f"{SPEC},lora={tmp_path / 'empty'}").generator_adapter()
