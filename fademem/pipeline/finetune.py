"""FadeMem-FT: a light LoRA fine-tune of the generator with the memory policy in the loop (``fademem finetune``).

The FadeMem paper's best row fine-tunes the generator so that it learns to read *consolidated* memory
(merged, re-positioned entries) rather than the raw frames it was trained on. Here, on the embedded model
(any ``EmbeddedBundle``, the shipped one or a tiny test config):

* **Memory in the loop.** Each episode (``fademem.pipeline.finetune_data``: a contiguous history of world
  frames, revisit episodes included, then a target chunk) is encoded by the bundle's codec and teacher-forced
  through an inference ``GenerationSession`` (``prefix=``: the cache-writing pass of every history chunk,
  ``Memory.for_run`` and all), so the policy inserts, merges, evicts and re-positions exactly as at
  inference. The target chunk's training forward is the sampler's denoising forward:
  ``model(x_t, t, text, memory=session.stack, start_frame=history)``, reading each layer's memory view.
* **What is trained.** A peft LoRA (``fademem.pipeline.finetune_lora``: preset ``attn-ffn`` rank 16, or
  ``official`` rank 256 on every Linear of every block); everything else is frozen.
  The memory (the history's K/V) is written under no_grad by the LoRA-adapted model (the LoRA is injected
  into the very model the session runs, so the memory is what the fine-tuned generator would write):
  gradients flow only through the target chunk's forward. This is the inference computation exactly,
  and it costs one no-grad pass over the history instead of backpropagating through it.
* **Objective.** With a teacher bundle (a flow-matching model): the distillation objective of
  ``fademem.embedded.distill`` -- one of the student's four levels ``s_k`` per batch, input pure noise
  (k = 0) or the clean target re-noised to ``s_k``, regressed onto the teacher's ODE solution from that input
  (Euler over the teacher's levels, ``ode_path``; classifier-free ``guidance`` with the empty prompt). The
  teacher attends to the *full* history (memory ``teacher_memory="full"``, the same frames teacher-forced
  through its own cache pass): its answer is what a model with everything in view produces, which is what
  the student must learn to recover from the consolidated memory (a teacher behind the same bounded memory
  would only pass on its own losses). Without a teacher: the embedded training's flow-matching loss on the
  target chunk (x0 error; noise levels mostly the sampler's own, ``target_sigmas``).

* **Size.** The history pass holds no graph, so a long rollout costs only its bounded memory; with
  ``grad_checkpoint`` (``--grad-checkpoint``) the target chunk's blocks are recomputed in the backward pass
  (``CausalWanModel.enable_gradient_checkpointing``) instead of keeping their activations. ``memory_step_loss``
  is the step on tensors for any ``VideoPipeline`` (``benchmarks/finetune_wan_step.py`` runs it at the Wan 1.3B
  size).

The LoRA is saved as a peft adapter directory that ``fademem generate --lora DIR`` merges at load.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fademem.embedded.bundle import EmbeddedBundle, SamplingSchedule, load
from fademem.embedded.distill import ode_path, teacher_sigmas
from fademem.embedded.train import TrainConfig, _lr, degrade, encode_frames, target_sigmas
from fademem.embedded.world import detokenize
from fademem.pipeline.build import embedded_pipeline
from fademem.pipeline.finetune_data import CHUNK, EpisodeBatches, revisit_min_frames
from fademem.pipeline.finetune_lora import (
    LORA_PRESETS,
    add_lora,
    check_adapter_dir,
    load_into,
    lora_targets,
    read_adapter,
    save_lora,
)
from fademem.wan.sampling import FlowSchedule


@dataclass
class FinetuneConfig:
    memory: str = "fademem:budget=12"  # the policy the generator learns to read (a spec, as --memory)
    preset: str = "attn-ffn"  # LoRA preset (finetune_lora.LORA_PRESETS): attn-ffn (rank 16) | official (rank 256)
    rank: int | None = None  # None: the preset's
    alpha: float | None = None  # None: = rank (scale 1)
    targets: tuple[str, ...] | None = None  # in-block Linear names (e.g. "self_attn.q"); None: the preset's
    steps: int = 500
    lr: float = 1e-4
    warmup: int = 20
    batch: int = 4
    seconds: float = 8.0  # history before the target chunk (revisit episodes: up to this long)
    run_seconds: float | None = None  # the video length the LoRA is for: the memory runs as the policy chooses for
    #                                   it (Memory.for_run, e.g. FadeMem's compact positions past the trained window)
    revisit_p: float = 0.5  # share of revisit episodes (the camera returns: old frames matter)
    revisit_swap_p: float = 0.5
    degrade_p: float = 0.5  # share of examples whose history is blurred like the model's own outputs
    schedule_p: float = 0.7  # flow matching: share of target noise levels at the sampler's own
    seed: int = 0
    device: str = "cpu"
    weights: str | None = None  # the generator bundle (None: the shipped embedded model)
    teacher: str | None = None  # a flow-matching teacher bundle: distillation objective; None: flow matching
    teacher_memory: str = "full"
    teacher_steps: int | None = None  # None: the student's recorded distillation setting, else the teacher's schedule
    guidance: float | None = None  # None: the student's recorded distillation guidance, else 1
    time_limit: float | None = None  # seconds
    resume: str | None = None  # a LoRA directory of an earlier run: its weights, rank, alpha, targets; steps go on
    log_every: int = 10
    pool: int = 8  # WorldBatches' world pool (episodes draw fresh worlds; kept small)
    grad_checkpoint: bool = False  # recompute each block in the backward pass (CausalWanModel gradient checkpointing)

    def lora(self) -> tuple[int, float, tuple[str, ...] | None]:
        """(rank, alpha, in-block target names or None for every Linear)."""
        rank, names = LORA_PRESETS[self.preset]
        rank = self.rank if self.rank is not None else rank
        return rank, float(self.alpha if self.alpha is not None else rank), self.targets or names

    def history_frames(self, fps: int) -> int:
        return CHUNK * max(1, math.ceil(self.seconds * fps / CHUNK - 1e-9))

    def validate(self) -> None:
        """ValueError (FileNotFoundError for files) for anything wrong, before any work."""
        from fademem.memory import build_memory

        if self.preset not in LORA_PRESETS:
            raise ValueError(f"unknown LoRA preset {self.preset!r}: expected one of {', '.join(LORA_PRESETS)}")
        for name in ("rank", "steps", "batch", "warmup", "log_every", "teacher_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "warmup" else 1)):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("alpha", "lr", "seconds", "run_seconds", "time_limit", "guidance"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and (v > 0 or (name == "guidance" and v == 0))):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("revisit_p", "revisit_swap_p", "degrade_p", "schedule_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for spec in (self.memory, self.teacher_memory):
            build_memory(spec)  # ValueError naming the policies for an unknown one
        for what, path in (("weights", self.weights), ("teacher", self.teacher)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{what} file not found: {path}")
        if self.resume is not None:
            check_adapter_dir(self.resume)  # ValueError when it is no LoRA directory of ours


class _GuidedText:
    """A text encoder for the teacher's guided sessions: the empty prompt "" is the zero text context
    (the unconditional branch of classifier-free guidance, as ``TrainConfig.text_dropout`` trains it)."""

    def __init__(self, text):
        self.text = text

    def encode(self, prompts: list[str]) -> torch.Tensor:
        real = [i for i, p in enumerate(prompts) if p]
        states = self.text.encode([prompts[i] for i in real])
        out = torch.zeros(len(prompts), *states.shape[1:], dtype=states.dtype, device=states.device)
        out[real] = states
        return out


def memory_pipeline(bundle: EmbeddedBundle, guided_text: bool = False):
    """The inference pipeline over ``bundle`` (its schedule, trained window and memory handling), without a
    decoder: the fine-tune needs its sessions' memory, not frames."""
    pipe = embedded_pipeline(bundle)
    pipe.decoder = None
    if guided_text:
        pipe.text_encoder = _GuidedText(bundle.text)
    return pipe


def teacher_force(pipe, prompts: list[str], history: torch.Tensor, memory: str, total_frames: int):
    """An inference session of ``total_frames`` latent frames whose first ``history.shape[2]`` frames are
    teacher-forced (``generate(prefix=history)``'s cache-writing pass, chunk by chunk): its ``stack`` is the
    memory the next chunk reads, its ``ctx`` / ``states`` the text. No gradient (the session's own no_grad)."""
    session = pipe.session(prompts, total_frames, memory=memory, prefix=history)
    while session.start < history.shape[2]:
        session.step()
    return session


def _chunk_t(sigma: torch.Tensor, frames: int = CHUNK) -> torch.Tensor:
    return (sigma.float() * 1000).view(-1, 1).expand(-1, frames).contiguous()


@torch.no_grad()
def teacher_target(tpipe, prompts, history, x: torch.Tensor, s_k: float, levels: list[float], guidance: float,
                   memory: str = "full") -> torch.Tensor:
    """The teacher's ODE solution (Euler along ``ode_path(s_k, levels)``) for the chunk after ``history`` from
    ``x`` at level ``s_k``, the teacher reading ``memory`` built from the same history (``teacher_force``);
    guidance as ``fademem.embedded.distill.teacher_ode``."""
    b, n = x.shape[0], history.shape[2]
    guided = guidance != 1.0
    session = teacher_force(tpipe, list(prompts) + ([""] * b if guided else []),
                            torch.cat([history, history]) if guided else history, memory, n + x.shape[2])
    path = ode_path(s_k, levels)
    for s, s_next in zip(path, path[1:]):
        xin = torch.cat([x, x]) if guided else x
        v = tpipe.model(xin, _chunk_t(torch.full((xin.shape[0],), s)), session.ctx, memory=session.stack,
                        start_frame=n).float()
        if guided:
            v = v[b:] + guidance * (v[:b] - v[b:])
        x = x + (s_next - s) * v
    return x


def episode_latents(codec, batch: dict, degrade_p: float, gen: torch.Generator, device) -> tuple:
    """(history latents [B, C, n, h, w], clean target latents [B, C, 3, h, w], prompts) of an episode batch;
    the history possibly blurred (``fademem.embedded.train.degrade``) like the model's own frames."""
    n = batch["n_ctx"]
    frames = degrade(batch["video"].to(device).float() / 255.0, n, degrade_p, gen)
    z = encode_frames(codec, frames)
    prompts = [detokenize([int(t) for t in row if t]) for row in batch["ids"]]
    return z[:, :, :n], z[:, :, n:], prompts


def memory_step_loss(model, pipe, history: torch.Tensor, x0: torch.Tensor, prompts: list[str], memory: str,
                     sigma: torch.Tensor, target=None, run_frames: int = 0, gen: torch.Generator | None = None,
                     noise: torch.Tensor | None = None, session=None) -> torch.Tensor:
    """The x0-error loss of the chunk ``x0`` [B, C, 3, h, w] after the clean ``history`` [B, C, n, h, w] under
    ``memory``, for any ``VideoPipeline`` over ``model`` (the embedded one, or Wan's): the history teacher-forced
    through an inference session of ``max(n + 3, run_frames)`` frames (no grad), x0 noised to ``sigma`` [B]
    (``noise``, default drawn from ``gen``), the sampler's denoising forward with grad reading ``session.stack``.
    ``target``: None (x0: flow matching), a tensor, or ``target(xt, sigma) -> tensor`` (e.g. a teacher's).
    ``session``: that teacher-forced session when the caller already ran it (benchmarks time the two apart)."""
    n, b = history.shape[2], x0.shape[0]
    if session is None:  # as at inference
        session = teacher_force(pipe, prompts, history, memory, max(n + x0.shape[2], run_frames))
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, generator=gen)
    s5 = sigma.view(b, 1, 1, 1, 1)
    xt = (1 - s5) * x0 + s5 * noise  # level 0 (sigma 1): pure noise, what the sampler starts from
    target = x0 if target is None else target(xt, sigma) if callable(target) else target
    # the sampler's denoising forward, with grad (text re-encoded here so LoRA on cross-attention K/V trains)
    v = model(xt, _chunk_t(sigma, x0.shape[2]), session.states[0], memory=session.stack, start_frame=n).float()
    return (xt - s5 * v - target).pow(2).mean()


def step_loss(model, pipe, codec, batch: dict, cfg: FinetuneConfig, gen: torch.Generator, step: int, *,
              sched_sigmas: torch.Tensor, teacher=None, run_frames: int = 0) -> tuple[torch.Tensor, dict]:
    """The loss of one episode batch (module docstring, ``memory_step_loss``) and what it was:
    ``{"level", "n_ctx", "kind"}``. ``teacher``: None (flow matching) or ``(teacher pipeline, teacher levels,
    guidance)``; ``run_frames``: the inference video length whose memory layout to train on (at least the
    episode's)."""
    device = sched_sigmas.device
    history, x0, prompts = episode_latents(codec, batch, cfg.degrade_p, gen, device)
    n, b = history.shape[2], x0.shape[0]
    noise = torch.randn(x0.shape, device=device, generator=gen)  # (the session draws from its own generators)
    if teacher is None:
        sigma = target_sigmas(b, cfg.schedule_p, sched_sigmas, gen, float(pipe.schedule.shift))
        level, target = None, None
    else:
        k = int(torch.randint(len(sched_sigmas), (1,), generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)))
        sigma, level = sched_sigmas[k].expand(b), k
        tpipe, levels, guidance = teacher
        target = lambda xt, s: teacher_target(tpipe, prompts, history, xt, float(s[0]), levels,  # noqa: E731
                                              guidance, cfg.teacher_memory)
    loss = memory_step_loss(model, pipe, history, x0, prompts, cfg.memory, sigma, target, run_frames, noise=noise)
    return loss, {"level": level, "n_ctx": n, "kind": batch["kind"]}


def _teacher(cfg: FinetuneConfig, bundle: EmbeddedBundle, teacher: EmbeddedBundle | None, device):
    """(teacher pipeline, its ODE levels, guidance) or None."""
    if teacher is None and cfg.teacher is None:
        return None
    teacher = teacher or load(cfg.teacher, device=device)
    if teacher.schedule.kind != "flow-matching":
        raise ValueError(f"the teacher {cfg.teacher} is {teacher.schedule.describe()}: distillation needs a "
                         "flow-matching teacher (fademem train --stage dit --sample-steps N)")
    if (teacher.cfg.channels, teacher.cfg.latent_hw) != (bundle.cfg.channels, bundle.cfg.latent_hw):
        raise ValueError(f"the teacher works on [{teacher.cfg.channels}, {teacher.cfg.latent_hw}] latents, the "
                         f"generator on [{bundle.cfg.channels}, {bundle.cfg.latent_hw}]: not the same codec")
    rec = bundle.info.get("distill") or {}
    steps = cfg.teacher_steps or rec.get("teacher_steps")
    guidance = cfg.guidance if cfg.guidance is not None else float(rec.get("guidance", 1.0))
    teacher.to(device)
    teacher.model.eval().requires_grad_(False)
    tpipe = memory_pipeline(teacher, guided_text=guidance != 1.0)  # the teacher reads its own text encoder
    return tpipe, teacher_sigmas(teacher.schedule, steps), guidance


def finetune(cfg: FinetuneConfig, out: str | Path, bundle: EmbeddedBundle | None = None,
             teacher: EmbeddedBundle | None = None, log=print) -> dict:
    """Fine-tune a LoRA on ``bundle`` (default: ``cfg.weights`` or the shipped model) with ``cfg.memory`` in the
    loop and save it to the directory ``out``. Returns the record (``history``: one entry per step), also
    stored in the adapter config. The LoRA stays injected in ``bundle.model`` (the trained peft model)."""
    cfg.validate()
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    bundle = bundle if bundle is not None else load(cfg.weights, device=device)
    bundle.to(device)
    model = bundle.model.eval()
    rank, alpha, names = cfg.lora()
    targets = lora_targets(model, names)
    before: dict = {}
    if cfg.resume is not None:  # across sessions: the saved LoRA's shape wins; AdamW's moments start afresh
        saved, pairs = read_adapter(cfg.resume)
        rank, alpha, targets = int(saved["r"]), float(saved["lora_alpha"]), list(saved["target_modules"])
        before = saved.get("fademem") or {}
    tinfo = _teacher(cfg, bundle, teacher, device)
    pipe = memory_pipeline(bundle)
    n_hist = cfg.history_frames(bundle.cfg.fps)
    run_frames = CHUNK * math.ceil(cfg.run_seconds * bundle.cfg.fps / CHUNK - 1e-9) if cfg.run_seconds else 0
    params = add_lora(model, targets, rank, alpha)
    model.enable_gradient_checkpointing(cfg.grad_checkpoint)
    if cfg.resume is not None:
        load_into(model, pairs)
    done = int(before.get("steps_done_total", before.get("steps_done", 0)))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = bundle.schedule
    sched_sigmas = torch.tensor(FlowSchedule(sched.steps, sched.shift).sigmas, device=device, dtype=torch.float32)
    dcfg = TrainConfig(batch=cfg.batch, seed=cfg.seed, workers=0, pool=cfg.pool, max_history=n_hist,
                       revisit_p=cfg.revisit_p, revisit_swap_p=cfg.revisit_swap_p)
    data = iter(EpisodeBatches(dcfg, bundle.cfg))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    objective = "distill" if tinfo else "flow-matching"
    log(f"finetune: {objective}, memory {cfg.memory}, LoRA rank {rank} alpha {alpha:g} on {len(targets)} Linears "
        f"({sum(p.numel() for p in params)} parameters), history {n_hist} frames, batch {cfg.batch}, {device}")
    if cfg.revisit_p > 0 and n_hist < revisit_min_frames(bundle.cfg.fps):
        log(f"note: a history of {n_hist} frames is too short for revisit episodes (they need "
            f"{revisit_min_frames(bundle.cfg.fps)}); none are drawn")
    t0, history = time.time(), []
    for step in range(done, done + cfg.steps):  # step numbers go on; each run has its own warm-up and cosine
        if cfg.time_limit and time.time() - t0 > cfg.time_limit:
            break
        loss, what = step_loss(model, pipe, bundle.codec, next(data), cfg, gen, step, sched_sigmas=sched_sigmas,
                               teacher=tinfo, run_frames=run_frames)
        for g in opt.param_groups:
            g["lr"] = _lr(step - done, time.time() - t0, cfg)  # fresh AdamW moments: warm up again
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), **what, "seconds": round(time.time() - t0, 2)})
        if step % cfg.log_every == 0 or step == done + cfg.steps - 1:
            h = history[-1]
            log(f"step {step:5d}  loss {h['loss']:.4f}  {h['kind']}:{h['n_ctx']}"
                + (f"  level {h['level']}" if h["level"] is not None else "") + f"  {h['seconds']:.0f}s")
    record = {"finetune": {**asdict(cfg), "targets": list(cfg.targets) if cfg.targets else None},
              "objective": objective, "rank": rank, "alpha": alpha, "history_frames": n_hist,
              "steps_done": len(history), "seconds": round(time.time() - t0, 1), "history": history,
              "steps_done_total": done + len(history),
              "resumed_from": {"path": str(cfg.resume), "steps_done_total": done,
                               "seconds_total": before.get("seconds_total", before.get("seconds"))}
              if cfg.resume else None,
              "seconds_total": round(time.time() - t0 + float(before.get("seconds_total", before.get("seconds")) or 0),
                                     1),
              "schedule": json.loads(sched.to_json()) if isinstance(sched, SamplingSchedule) else None}
    save_lora(model, out, rank, alpha, targets, record)
    return record


__all__ = ["FinetuneConfig", "episode_latents", "finetune", "memory_pipeline", "memory_step_loss", "step_loss",
           "teacher_force", "teacher_target"]
