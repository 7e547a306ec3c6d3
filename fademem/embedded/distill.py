"""Few-step distillation of a flow-matching teacher bundle into a 4-step student (embedded v2).

A teacher trained by ``fademem.embedded.train`` with many uniform sampling steps (``sample_steps=32``)
samples sharp videos with its multi-step ODE but only a blurred posterior mean in four steps. This
module trains a student (initialised from the teacher) for the distilled schedule the pipeline
samples with -- nominal (1000, 750, 500, 250), shift 5, i.e. warped timesteps
(1000, 937.5, 833.3, 625), plus the t=0 cache-writing pass -- and saves a bundle that records
that schedule (``kind="distilled-4step"``).

Method (a first step towards the Self-Forcing recipe; trajectory / consistency distillation, not DMD):
each example is the training loop's memory-shaped example (a target chunk after a context of clean,
possibly blurred, earlier frames at the positions a memory rule gives them). One of the four student
levels ``s_k`` is drawn per batch; the student's input at that level is

* ``k = 0``: pure noise ``z`` (what the sampler starts from);
* ``k > 0``: the clean target re-noised to ``s_k`` with fresh noise, as the sampler re-noises its
  previous prediction, ``x = (1 - s_k) x0 + s_k eps``;

and its regression target is the teacher's deterministic flow ODE solution from that input (Euler over
the teacher's own recorded levels below ``s_k``, then to 0), with the same context and mask. So the
student learns, in one forward per level, the sample the teacher's many-step ODE would give (a point
on the data manifold), not the mean over all of them. The teacher runs under no grad; the context is
the same for both. Not done here (next steps): the student's own autoregressive rollout in the loop
and distribution matching (DMD with a fake-score critic).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fademem.embedded.bundle import SamplingSchedule, build, latent_shape, load
from fademem.embedded.train import TrainConfig, WorldBatches, _save_ema, degrade, encode_frames, optimise, token_mask
from fademem.embedded.train_data import continued_stream, stream_seed
from fademem.wan.sampling import FlowSchedule


@dataclass
class DistillConfig:
    teacher: str = ""  # a flow-matching bundle (fademem.embedded.train with sample_steps > 4)
    steps: int = 5000
    batch: int = 32
    lr: float = 5e-5
    warmup: int = 100
    weight_decay: float = 0.0
    ema: float = 0.99
    teacher_steps: int | None = None  # ODE steps of the teacher over (0, 1]; None = its recorded schedule
    guidance: float = 1.0  # classifier-free guidance of the teacher (needs one trained with text_dropout)
    context_guidance: float | None = None  # the guidance of targets after a context (None: ``guidance``). The
    #   prompt decides what a text-only first chunk draws; after it the frames in context do, and a guided
    #   teacher continuing true frames breaks them (session 11: guidance 3 from pure noise after 9 true frames
    #   bends the stripes and moves the object; guidance 1 continues both)
    max_history: int = 600
    max_context: int = 24
    context_noise: float = 0.1
    degrade_p: float = 0.5
    compact_p: float = 0.25
    revisit_p: float = 0.0  # share of revisit batches (fademem.embedded.train_data): the teacher's recall passed on
    first_chunk_p: float = 0.12  # share of the other batches whose target is a video's first chunk (text only)
    revisit_swap_p: float = 0.5
    revisit_context: int = 128
    seed: int = 0
    workers: int = 4
    pool: int = 96
    refresh: int = 4
    log_every: int = 100
    time_limit: float | None = None  # seconds; stop early (and save)
    checkpoint_every: float | None = None  # seconds; also save the (EMA) student this often
    compile: bool = False  # torch.compile teacher and student (dynamic: the context length varies by batch)
    init: str | None = None  # a 4-step student of this teacher to continue (None: start from the teacher's weights)
    stream: int | None = None  # data and noise streams (as TrainConfig.stream): None = 0 from the teacher, else
    #   one of the continued student's own, so a continued lease does not replay the first one's batches

    def guidance_for(self, n_ctx: int) -> float:
        """The teacher's guidance for a target after ``n_ctx`` context frames."""
        return self.guidance if n_ctx == 0 or self.context_guidance is None else self.context_guidance

    def data_config(self) -> TrainConfig:
        return TrainConfig(batch=self.batch, seed=self.seed, stream=self.stream, workers=self.workers, pool=self.pool,
                           refresh=self.refresh, max_history=self.max_history, max_context=self.max_context,
                           compact_p=self.compact_p, context_noise=self.context_noise, degrade_p=self.degrade_p,
                           revisit_p=self.revisit_p, revisit_swap_p=self.revisit_swap_p,
                           revisit_context=self.revisit_context, first_chunk_p=self.first_chunk_p)


def teacher_sigmas(teacher: SamplingSchedule, n: int | None = None) -> list[float]:
    """The teacher's ODE levels (descending, in (0, 1]): its recorded schedule, or ``n`` uniform steps warped
    by its shift."""
    sched = teacher if n is None else SamplingSchedule.uniform(n, teacher.shift)
    return list(FlowSchedule(sched.steps, sched.shift).sigmas)


def ode_path(start: float, levels: list[float]) -> list[float]:
    """[start, the teacher levels strictly below start..., 0]."""
    return [start] + [s for s in levels if s < start - 1e-6] + [0.0]


@torch.no_grad()
def teacher_ode(model, x: torch.Tensor, n_ctx: int, ctx_sig: torch.Tensor, path: list[float], context,
                positions, mask, amp, guidance: float = 1.0) -> torch.Tensor:
    """Euler-integrate the teacher's flow for the target frames (``x[:, :, n_ctx:]``) along ``path``
    (noise levels, descending to 0), the context frames held fixed. Returns the target's x0 [B, C, F', h, w].

    ``guidance != 1``: classifier-free guidance, ``v = v(empty) + guidance * (v(text) - v(empty))``, the
    empty prompt being the zero text context (what ``TrainConfig.text_dropout`` trains), both branches in
    one batched forward. The real generators are distilled from a guided teacher the same way.
    """
    b, f = x.shape[0], x.shape[2]
    x = x.clone()
    guided = guidance != 1.0
    if guided:
        context = torch.cat([context, torch.zeros_like(context)])
        ctx_sig = torch.cat([ctx_sig, ctx_sig])
    for s, s_next in zip(path, path[1:]):
        xin = torch.cat([x, x]) if guided else x
        sig_f = torch.zeros(xin.shape[0], f, device=x.device)
        sig_f[:, :n_ctx] = ctx_sig
        sig_f[:, n_ctx:] = s
        with amp:
            v = model(xin, sig_f * 1000, context, positions=positions, attn_mask=mask)
        v = v[:, :, n_ctx:].float()
        if guided:
            v = v[b:] + guidance * (v[:b] - v[b:])
        x[:, :, n_ctx:] = x[:, :, n_ctx:] + (s_next - s) * v
    return x[:, :, n_ctx:]


def _lr(step: int, elapsed: float, cfg: DistillConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit:
        p = max(p, elapsed / cfg.time_limit)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def distill(cfg: DistillConfig, out: str | Path, device: str = "cuda", log=print) -> dict:
    """Distill ``cfg.teacher`` into a 4-step student saved at ``out`` (its schedule: ``distilled-4step``)."""
    if not cfg.teacher:
        raise ValueError("distill needs a teacher bundle (DistillConfig(teacher=path))")
    if not 0 <= cfg.first_chunk_p <= 1:
        raise ValueError(f"first_chunk_p must be in [0, 1], got {cfg.first_chunk_p}")
    if cfg.guidance < 0 or (cfg.context_guidance is not None and cfg.context_guidance < 0):
        raise ValueError(f"guidance and context_guidance must be >= 0, got {cfg.guidance}, {cfg.context_guidance}")
    torch.manual_seed(cfg.seed)
    teacher = load(cfg.teacher)
    if teacher.schedule.kind != "flow-matching":
        raise ValueError(f"the teacher {cfg.teacher} is {teacher.schedule.describe()}: distill a flow-matching "
                         "teacher (fademem.embedded.train with sample_steps > 4)")
    student_schedule = SamplingSchedule.distilled()
    levels = teacher_sigmas(teacher.schedule, cfg.teacher_steps)
    student = build(teacher.cfg, teacher.model.config,
                    codec=None if teacher.cfg.codec == "pixel" else teacher.codec, schedule=student_schedule)
    student.cfg = teacher.cfg
    start = _student_start(cfg.init, teacher, student_schedule) if cfg.init else teacher
    student.model.load_state_dict(start.model.state_dict())
    student.text.load_state_dict(start.text.state_dict())
    prior_steps = int(start.info.get("steps_total", start.info.get("steps_done", 0))) if cfg.init else 0
    if cfg.stream is None:
        cfg = replace(cfg, stream=continued_stream(start.model) if cfg.init else 0)
    seed = stream_seed(cfg.seed, cfg.stream)
    codec = student.codec
    if isinstance(codec, torch.nn.Module):
        codec.to(device).eval().requires_grad_(False)
    t_model = teacher.model.to(device).eval().requires_grad_(False)
    t_text = teacher.text.to(device).eval().requires_grad_(False)
    model, text = student.model.to(device).train().requires_grad_(True), student.text.to(device).train()
    params = list(model.parameters()) + list(text.parameters())
    t_fwd, fwd = t_model, model
    if cfg.compile:  # the saved and EMA weights stay the modules' own; only the forwards are compiled
        t_fwd, fwd = torch.compile(t_model, dynamic=True), torch.compile(model, dynamic=True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    tokens_per_frame = (student.cfg.latent_hw // 2) ** 2
    s_levels = list(FlowSchedule(student_schedule.steps, student_schedule.shift).sigmas)
    dcfg = cfg.data_config()
    loader = DataLoader(WorldBatches(dcfg, student.cfg), batch_size=None, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None,
                        pin_memory=device.startswith("cuda"))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    t0, last_ckpt, history, step = time.time(), time.time(), [], 0

    def record(steps_done: int) -> dict:
        return {"distill": asdict(cfg), "teacher_schedule": json.loads(teacher.schedule.to_json()),
                "teacher_info_steps": teacher.info.get("steps_done"), "steps_done": steps_done,
                "steps_total": prior_steps + steps_done,  # with the steps of the student continued (``init``)
                "seconds": round(time.time() - t0, 1), "history": history, "codec": student.cfg.codec,
                "latent": list(latent_shape(student.cfg)), "schedule": json.loads(student_schedule.to_json()),
                "device": torch.cuda.get_device_name() if device.startswith("cuda") else device}

    for step, batch in enumerate(loader):
        if step >= cfg.steps or (cfg.time_limit and time.time() - t0 > cfg.time_limit):
            break
        if cfg.checkpoint_every and time.time() - last_ckpt > cfg.checkpoint_every:
            _save_ema(student, params, ema, out, record(step), student_schedule)
            last_ckpt = time.time()
        n_ctx = batch["n_ctx"]
        frames = batch["video"].to(device, non_blocking=True).float() / 255.0
        x0 = encode_frames(codec, frames)
        if n_ctx:
            x0 = torch.cat([encode_frames(codec, degrade(frames[:, :n_ctx], n_ctx, cfg.degrade_p, gen)),
                            x0[:, :, n_ctx:]], dim=2)
        b, f = x0.shape[0], x0.shape[2]
        k = int(torch.randint(len(s_levels), (1,), generator=torch.Generator().manual_seed(seed * 7919 + step)))
        s_k = s_levels[k]
        ctx_sig = cfg.context_noise * torch.rand(b, 1, device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        x = x0.clone()
        x[:, :, :n_ctx] = (1 - ctx_sig[:, None, :, None, None]) * x0[:, :, :n_ctx] + \
            ctx_sig[:, None, :, None, None] * noise[:, :, :n_ctx]
        x[:, :, n_ctx:] = (1 - s_k) * x0[:, :, n_ctx:] + s_k * noise[:, :, n_ctx:]  # k=0: s_k = 1, pure noise
        mask = token_mask(batch, n_ctx, tokens_per_frame, device)
        positions = batch["positions"].to(device)
        ids = batch["ids"].to(device)
        with torch.no_grad(), amp:
            t_ctx = t_text(ids)
        target = teacher_ode(t_fwd, x, n_ctx, ctx_sig, ode_path(s_k, levels), t_ctx, positions, mask, amp,
                             cfg.guidance_for(n_ctx))
        sig_f = torch.zeros(b, f, device=device)
        sig_f[:, :n_ctx] = ctx_sig
        sig_f[:, n_ctx:] = s_k
        with amp:
            v = fwd(x, sig_f * 1000, text(ids), positions=positions, attn_mask=mask)
        x0_hat = x[:, :, n_ctx:] - s_k * v[:, :, n_ctx:].float()
        loss = (x0_hat - target).pow(2).mean()
        optimise(opt, loss, params, ema, _lr(step, time.time() - t0, cfg), cfg.ema, step)
        if step % cfg.log_every == 0:
            lv = float(loss.detach())
            history.append({"step": step, "loss": lv, "level": k, "kind": batch["kind"], "n_ctx": n_ctx,
                            "seconds": round(time.time() - t0, 1)})
            log(f"step {step:6d}  loss {lv:.4f}  level {k}  ctx {batch['kind']}:{n_ctx}  {time.time() - t0:.0f}s")
    info = record(step)
    _save_ema(student, params, ema, out, info, student_schedule)  # the EMA weights, as every checkpoint
    return info


def _student_start(path: str, teacher, schedule: SamplingSchedule):
    """The student bundle ``DistillConfig.init`` continues: distilled for ``schedule``, the teacher's shape."""
    start = load(path)
    if start.schedule.kind != schedule.kind:
        raise ValueError(f"init {path} is {start.schedule.describe()}: continue a student distilled for "
                         f"{schedule.describe()} (or leave init empty to start from the teacher)")
    if start.model.config != teacher.model.config or start.cfg.codec != teacher.cfg.codec:
        raise ValueError(f"init {path} is not the teacher's architecture ({start.model.config}, codec "
                         f"{start.cfg.codec}; the teacher: {teacher.model.config}, codec {teacher.cfg.codec})")
    return start


@torch.no_grad()
def teacher_rollout(bundle, prompt: str, num_frames: int, *, guidance: float = 1.0, seed: int = 0,
                    steps: int | None = None, device: str = "cpu",
                    context_guidance: float | None = None) -> torch.Tensor:
    """A flow-matching teacher's own video from ``prompt`` (text only), chunk by chunk, each chunk integrated
    by ``teacher_ode`` (with classifier-free ``guidance``) over all earlier frames at their true positions
    (full memory, memory-free forwards); ``context_guidance`` (None: ``guidance``) guides the chunks after the
    first, as ``DistillConfig.context_guidance`` does. What the teacher's targets look like before distilling them:
    the pipeline samples distilled models (one branch, bounded memory); this is a training tool.
    Returns uint8 frames [num_frames, H, W, 3]."""
    from fademem.embedded.train_data import CHUNK

    if num_frames % CHUNK:
        raise ValueError(f"num_frames must be a multiple of {CHUNK}, got {num_frames}")
    model, text = bundle.model.to(device).eval(), bundle.text.to(device).eval()
    codec = bundle.codec.to(device) if isinstance(bundle.codec, torch.nn.Module) else bundle.codec
    levels = teacher_sigmas(bundle.schedule, steps)
    ctx = text(text.tokenize([prompt]).to(device))
    c, hw = bundle.cfg.channels, bundle.cfg.latent_hw
    gen = torch.Generator().manual_seed(seed)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    latents = torch.zeros(1, c, 0, hw, hw, device=device)
    tokens_per_frame = (hw // 2) ** 2
    for start in range(0, num_frames, CHUNK):
        noise = torch.randn(1, c, CHUNK, hw, hw, generator=gen).to(device)
        x = torch.cat([latents, noise], dim=2)
        chunks = torch.tensor([i // CHUNK for i in range(start)] + [start // CHUNK] * CHUNK)
        mask = token_mask({"chunks": chunks}, start, tokens_per_frame, device)
        positions = torch.arange(start + CHUNK, dtype=torch.float32, device=device)
        g = guidance if start == 0 or context_guidance is None else context_guidance
        out = teacher_ode(model, x, start, torch.zeros(1, 1, device=device), ode_path(1.0, levels), ctx,
                          positions, mask, amp, g)
        latents = torch.cat([latents, out], dim=2)
    return codec.decode(latents).cpu()[0]


__all__ = ["DistillConfig", "distill", "ode_path", "teacher_ode", "teacher_rollout", "teacher_sigmas"]
