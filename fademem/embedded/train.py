"""Training the embedded model on the procedural world (``fademem train``).

What makes it work far beyond its training length under every memory policy: *memory-shaped
context sampling*. Each example is one target chunk (3 latent frames) at a random point of a
long video (up to ``max_history`` frames, 75 s at 8 fps by default), conditioned on a context of
earlier clean frames chosen by a randomly drawn memory rule, at the temporal positions that rule
assigns at inference:

* ``window``  the most recent W frames;
* ``sink``    the first S frames plus the most recent ones;
* ``fademem`` one frame per FadeMem entry (the library's own schedule, random budget and beta),
              at the entry's fractional centre ``mu`` -- the positions merged entries take;
* ``sparse``  a random subset whose density falls with distance;
* ``full``    everything, for short histories.

With probability ``compact_p`` the positions are squeezed as compact / online-RoPE-indexing
policies do (history at 0..n-1, the chunk right after). So the model meets, during training,
the relative distances (up to minutes), the gaps and the squeezed layouts that each policy
produces at inference, without ever running a 10-minute rollout. Context frames get a little
noise (``context_noise``) so the model tolerates its own imperfect history. The loss is the
flow-matching loss measured on x0 (what the few-step sampler outputs), with noise levels drawn
mostly from the sampler's own levels.

Latent space: the frames go through the bundle's codec on the training device (batched, no grad):
folded pixels (``codec=None``, v1) or a frozen ``LatentCodec`` file (``codec=path``, saved inside the
resulting bundle). Sampling schedule: ``sample_steps=4`` trains for the default four steps
(1000, 750, 500, 250); more (e.g. 32) trains a flow-matching teacher sampled with that many uniform
steps (warped by ``sample_shift``), to be distilled (``fademem.embedded.distill``). The saved file
records the schedule, and ``embedded_pipeline`` samples with it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fademem.embedded.bundle import (
    EmbeddedBundle,
    EmbeddedConfig,
    SamplingSchedule,
    build,
    config_for_codec,
    latent_shape,
    save,
)
from fademem.embedded.bundle import load as load_bundle
from fademem.embedded.train_data import (  # noqa: F401 (API)
    CHUNK,
    WorldBatches,
    context_rule,
    continued_stream,
    data_throughput,
    random_world,
    stream_seed,
)
from fademem.wan.sampling import FlowSchedule


@dataclass
class TrainConfig:
    steps: int = 20000
    batch: int = 32
    lr: float = 4e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema: float = 0.999
    max_history: int = 600
    max_context: int = 24
    context_noise: float = 0.1
    degrade_p: float = 0.5  # share of examples whose context is blurred like the model's own outputs
    compact_p: float = 0.25
    schedule_p: float = 0.7  # share of targets at the sampler's own noise levels
    seed: int = 0
    stream: int | None = None  # data and noise streams: None = 0 for a fresh run, and for one continued from
    #   ``init`` a stream of its own (from init's weights), so each GPU lease sees new data instead of replaying
    #   the first lease's (session 12: every lease had restarted at seed 0)
    workers: int = 4
    pool: int = 96  # worlds kept per data worker
    refresh: int = 4  # worlds replaced per batch
    dim: int = 256
    layers: int = 6
    heads: int = 4
    ffn: int = 1024
    log_every: int = 100
    time_limit: float | None = None  # seconds; stop early (and save) to fit a GPU lease
    init: str | None = None  # continue from this bundle (its DiT architecture, text encoder and codec)
    codec: str | None = None  # a LatentCodec file (fademem.embedded.autoencoder.save_codec); None = pixels
    sample_steps: int = 4  # the sampling schedule trained for: n uniform nominal steps (4 = the default)
    sample_shift: float = 5.0  # its shift (also the warp of the uniformly drawn noise levels)
    checkpoint_every: float | None = None  # seconds; also save the (EMA) bundle this often while training
    loss: str = "x0"  # "x0": error of the x0 prediction (few-step models); "v": of the flow (teachers, as Wan)
    target_copies: int = 1  # noise levels trained per example in one forward (the context computed once)
    object_weight: float = 0.0  # extra loss weight on latent pixels the world's objects cover (small, sharp,
    #                             a few % of the pixels: unweighted, a model learns the background long before them)
    compile: bool = False  # torch.compile the DiT for training (dynamic shapes: the context length varies)
    revisit_p: float = 0.0  # share of revisit batches (train_data's docstring): returning views, recalled from memory
    revisit_swap_p: float = 0.5  # share of their examples whose history after the first visit is another world's
    revisit_context: int = 128  # most context frames of a revisit example (its 'full' rule, up to this many)
    text_dropout: float = 0.0  # share of examples trained without their prompt (zero text context): the
    #                            unconditional branch classifier-free guidance needs (distillation with guidance)
    first_chunk_p: float = 0.12  # share of the non-revisit batches whose target is a video's first chunk (no
    #                              context: drawn from the prompt alone, the hardest target and the first one seen)


def degrade(frames: torch.Tensor, n_ctx: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Blur the context frames of a random share ``p`` of the examples (Gaussian, sigma 0-1.5 px).

    The model's own outputs are a little soft; training on softened context teaches it to carry
    on from such history (and to restore detail from sharper, older memory where it has some).
    frames: float [B, F, H, W, 3] in [0, 1]; only frames [:n_ctx] are touched.
    """
    if n_ctx == 0 or p <= 0:
        return frames
    b = frames.shape[0]
    dev = frames.device
    sigma = 1.5 * torch.rand(b, device=dev, generator=gen) * (torch.rand(b, device=dev, generator=gen) < p)
    r = torch.arange(-3, 4, device=dev, dtype=torch.float32)
    k = torch.exp(-r[None] ** 2 / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)  # [B, 7]; sigma ~0 gives a delta
    ctx = frames[:, :n_ctx].permute(0, 1, 4, 2, 3)  # [B, n, 3, H, W]
    n, h, w = ctx.shape[1], ctx.shape[3], ctx.shape[4]
    x = ctx.reshape(1, b * n * 3, h, w)
    kk = k.repeat_interleave(n * 3, 0)  # one kernel per (example, frame, channel)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), kk[:, None, None, :], groups=b * n * 3)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), kk[:, None, :, None], groups=b * n * 3)
    out = frames.clone()
    out[:, :n_ctx] = x.reshape(b, n, 3, h, w).permute(0, 1, 3, 4, 2)
    return out


def frame_mask(chunks: torch.Tensor, n_ctx: int, copies: int = 1) -> torch.Tensor:
    """[F, F] bool: context frames see context of earlier-or-same chunks; the target sees all.

    ``copies > 1``: the target chunk (the frames after ``n_ctx``; ``chunks`` lists them once) appears
    ``copies`` times, each copy seeing the context and itself only: one forward trains the same
    target at several noise levels, the context computed once (the context does not see the targets).
    """
    f = chunks.numel()
    m = chunks[None, :] <= chunks[:, None]
    m[:n_ctx, n_ctx:] = False
    m[n_ctx:, :] = True
    if copies == 1:
        return m.reshape(f, f)
    t = f - n_ctx
    out = torch.zeros(n_ctx + copies * t, n_ctx + copies * t, dtype=torch.bool)
    out[:n_ctx, :n_ctx] = m[:n_ctx, :n_ctx]
    out[n_ctx:, :n_ctx] = True
    for k in range(copies):
        a = n_ctx + k * t
        out[a:a + t, a:a + t] = True
    return out


def token_mask(batch: dict, n_ctx: int, tokens_per_frame: int, device, copies: int = 1) -> torch.Tensor:
    """The example's frame mask (``frame_mask``) expanded to tokens, on ``device``. A dense bool mask: SDPA runs
    it on cuDNN's flash kernels on an H200; a flex_attention BlockMask of it trained slower under torch.compile
    (docs/results/profile_train_step_h200.json)."""
    mask = frame_mask(batch["chunks"], n_ctx, copies).to(device)
    return mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def object_weights(objects: torch.Tensor, latent_hw: int) -> torch.Tensor:
    """[B, 1, F, h, w] float: the share of each latent pixel's footprint that the world's objects cover
    (``objects``: bool [B, F, H, W] at frame size), for weighting the loss towards them."""
    b, f, hh, ww = objects.shape
    x = objects.reshape(b * f, 1, hh, ww).float()
    return F.adaptive_avg_pool2d(x, latent_hw).reshape(b, 1, f, latent_hw, latent_hw)


def optimise(opt, loss: torch.Tensor, params: list, ema: list, lr: float, ema_max: float, step: int) -> None:
    """One optimiser step (gradient clipping at 1) and the EMA update; shared by training and distillation."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
        d = min(ema_max, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)


def target_sigmas(b: int, schedule_p: float, sched_sigmas: torch.Tensor, gen: torch.Generator,
                  shift: float = 5.0) -> torch.Tensor:
    """[b] noise levels of target chunks: the sampler's own levels with probability ``schedule_p``,
    else a shifted uniform draw (``shift``, as the sampler's warp) over (0, 1)."""
    device = sched_sigmas.device
    pick = torch.rand(b, device=device, generator=gen) < schedule_p
    u = torch.rand(b, device=device, generator=gen)
    return torch.where(pick, sched_sigmas[torch.randint(len(sched_sigmas), (b,), device=device, generator=gen)],
                       shift * u / (1 + (shift - 1) * u))


def _lr(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to 10% over the run (by steps, or by time under a time limit)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit:
        p = max(p, elapsed / cfg.time_limit)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def training_schedule(cfg: TrainConfig) -> SamplingSchedule:
    """The sampling schedule a run trains for (and records in the saved file)."""
    return SamplingSchedule.uniform(cfg.sample_steps, cfg.sample_shift, kind="flow-matching")


def load_codec_file(path: str | Path):
    """A frozen LatentCodec from its file (``fademem.embedded.autoencoder.save_codec``)."""
    from fademem.embedded.autoencoder import load_codec

    if not Path(path).is_file():
        raise FileNotFoundError(f"codec file not found: {path}")
    return load_codec(path).eval().requires_grad_(False)


def build_for_training(cfg: TrainConfig) -> EmbeddedBundle:
    """The bundle a run starts from: fresh (``cfg.codec`` or pixels, ``cfg.dim``...), or ``cfg.init``'s
    weights, architecture and codec (a ``cfg.codec`` given with ``init`` must give the same latents)."""
    codec = load_codec_file(cfg.codec) if cfg.codec else None
    if not cfg.init:
        ecfg = EmbeddedConfig() if codec is None else config_for_codec(EmbeddedConfig(), codec)
        return build(ecfg, ecfg.dit_config(cfg.dim, cfg.layers, cfg.heads, cfg.ffn), codec=codec)
    init = load_bundle(cfg.init)
    if codec is None:
        codec = None if init.cfg.codec == "pixel" else init.codec
    else:
        got = config_for_codec(init.cfg, codec)
        if (got.channels, got.latent_hw) != (init.cfg.channels, init.cfg.latent_hw):
            raise ValueError(f"--init {cfg.init} works on [{init.cfg.channels}, {init.cfg.latent_hw}, "
                             f"{init.cfg.latent_hw}] latents ({init.cfg.codec}), the codec {cfg.codec} gives "
                             f"[{got.channels}, {got.latent_hw}, {got.latent_hw}]")
    bundle = build(init.cfg, init.model.config, codec=codec)
    bundle.model.load_state_dict(init.model.state_dict())
    bundle.text.load_state_dict(init.text.state_dict())
    return bundle


@torch.no_grad()
def encode_frames(codec, frames: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """frames [B, F, H, W, 3] (float [0, 1] or uint8, on the training device) -> latents [B, C, F, h, w]
    through the frozen codec, ``batch`` examples per call (0: all at once)."""
    if not batch or frames.shape[0] <= batch:
        return codec.encode(frames).float()
    return torch.cat([codec.encode(frames[i:i + batch]).float() for i in range(0, frames.shape[0], batch)])


def batch_loss(model, text, codec, batch: dict, cfg: TrainConfig, sched_sigmas: torch.Tensor, gen: torch.Generator,
               amp, device) -> torch.Tensor:
    """The training loss of one ``WorldBatches`` batch: the target chunk at ``cfg.target_copies`` noise levels
    after its (noised, possibly blurred) context; flow or x0 error, object-weighted, with text dropout."""
    n_ctx = batch["n_ctx"]
    frames = batch["video"].to(device, non_blocking=True).float() / 255.0
    k = cfg.target_copies
    with amp:  # each frame encoded once: the context (possibly blurred like the model's own outputs), the targets
        x0 = encode_frames(codec, frames[:, n_ctx:]).repeat(1, 1, k, 1, 1)  # [B, C, 3k, h, w]: clean targets
        x_in = torch.cat([encode_frames(codec, degrade(frames[:, :n_ctx], n_ctx, cfg.degrade_p, gen)), x0],
                         dim=2) if n_ctx else x0
    b, f = x_in.shape[0], x_in.shape[2]
    # noise level of each target copy: mostly the sampler's own levels
    sigma = target_sigmas(b * k, cfg.schedule_p, sched_sigmas, gen, cfg.sample_shift).view(b, k)
    sig_f = torch.zeros(b, f, device=device)
    sig_f[:, n_ctx:] = sigma.repeat_interleave(CHUNK, 1)
    sig_f[:, :n_ctx] = cfg.context_noise * torch.rand(b, 1, device=device, generator=gen)
    noise = torch.randn(x_in.shape, device=device, generator=gen)
    s5 = sig_f[:, None, :, None, None]
    xt = (1 - s5) * x_in + s5 * noise
    mask = token_mask(batch, n_ctx, (x_in.shape[-1] // 2) ** 2, device, k)
    positions = batch["positions"]
    positions = torch.cat([positions[:n_ctx], positions[n_ctx:].repeat(k)]).to(device)
    with amp:
        ctx = text(batch["ids"].to(device))
        if cfg.text_dropout > 0:  # zero context = no prompt (the unconditional branch of guidance)
            ctx = ctx * (torch.rand(b, 1, 1, device=device, generator=gen) >= cfg.text_dropout).to(ctx.dtype)
        v = model(xt, sig_f * 1000, ctx, positions=positions, attn_mask=mask)
    v = v[:, :, n_ctx:].float()
    if cfg.loss == "v":
        err = (v - (noise[:, :, n_ctx:] - x0)).pow(2)
    else:
        err = (xt[:, :, n_ctx:] - s5[:, :, n_ctx:] * v - x0).pow(2)
    if cfg.object_weight > 0:
        w = 1 + cfg.object_weight * object_weights(batch["objects"].to(device), x0.shape[-1]).repeat(1, 1, k, 1, 1)
        loss = (err * w).mean() / w.mean()
    else:
        loss = err.mean()
    return loss


def _save_ema(bundle: EmbeddedBundle, params, ema, out, info: dict, schedule: SamplingSchedule) -> None:
    """Save with the EMA weights swapped in, then restore the live ones."""
    with torch.no_grad():
        live = [p.detach().clone() for p in params]
        for p, e in zip(params, ema):
            p.copy_(e)
        save(bundle, out, info=info, schedule=schedule)
        for p, v in zip(params, live):
            p.copy_(v)
    Path(str(out) + ".json").write_text(json.dumps(info, indent=1))


def train(cfg: TrainConfig, out: str | Path, device: str = "cuda", log=print) -> dict:
    if cfg.loss not in ("x0", "v"):
        raise ValueError(f"loss must be 'x0' or 'v', got {cfg.loss!r}")
    if cfg.object_weight < 0 or not 0 <= cfg.text_dropout < 1:
        raise ValueError(f"object_weight must be >= 0 and text_dropout in [0, 1), got {cfg.object_weight}, "
                         f"{cfg.text_dropout}")
    if cfg.target_copies < 1:
        raise ValueError(f"target_copies must be >= 1, got {cfg.target_copies}")
    if not 0 <= cfg.first_chunk_p <= 1:
        raise ValueError(f"first_chunk_p must be in [0, 1], got {cfg.first_chunk_p}")
    torch.manual_seed(cfg.seed)
    bundle = build_for_training(cfg)
    if cfg.stream is None:
        cfg = replace(cfg, stream=continued_stream(bundle.model) if cfg.init else 0)
    ecfg = bundle.cfg
    schedule = training_schedule(cfg)
    bundle.schedule = schedule
    codec = bundle.codec
    if isinstance(codec, torch.nn.Module):
        codec.to(device).eval().requires_grad_(False)
    model, text = bundle.model.to(device).train().requires_grad_(True), bundle.text.to(device).train()
    params = list(model.parameters()) + list(text.parameters())
    fwd = torch.compile(model, dynamic=True) if cfg.compile else model  # fuses the many small elementwise ops
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched_sigmas = torch.tensor(FlowSchedule(schedule.steps, schedule.shift).sigmas, device=device)
    loader = DataLoader(WorldBatches(cfg, ecfg), batch_size=None,
                        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                        prefetch_factor=4 if cfg.workers else None, pin_memory=device.startswith("cuda"))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    t0, history, step = time.time(), [], 0
    last_ckpt = t_wait = t0
    t_data = 0.0  # seconds spent waiting for the data loader (vs. the GPU's step)

    def record(steps_done: int) -> dict:
        return {"train": asdict(cfg), "steps_done": steps_done, "seconds": round(time.time() - t0, 1),
                "data_wait_s": round(t_data, 1),
                "history": history, "codec": ecfg.codec, "latent": list(latent_shape(ecfg)),
                "schedule": json.loads(schedule.to_json()),
                "device": torch.cuda.get_device_name() if device.startswith("cuda") else device}

    gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, cfg.stream))
    for step, batch in enumerate(loader):
        if step >= cfg.steps or (cfg.time_limit and time.time() - t0 > cfg.time_limit):
            break
        if cfg.checkpoint_every and time.time() - last_ckpt > cfg.checkpoint_every:
            _save_ema(bundle, params, ema, out, record(step), schedule)
            last_ckpt = time.time()
        n_ctx = batch["n_ctx"]
        t_data += time.time() - t_wait
        loss = batch_loss(fwd, text, codec, batch, cfg, sched_sigmas, gen, amp, device)
        optimise(opt, loss, params, ema, _lr(step, time.time() - t0, cfg), cfg.ema, step)
        if step % cfg.log_every == 0:
            lv = float(loss.detach())
            history.append({"step": step, "loss": lv, "kind": batch["kind"], "n_ctx": n_ctx,
                            "seconds": round(time.time() - t0, 1)})
            log(f"step {step:6d}  loss {lv:.4f}  ctx {batch['kind']}:{n_ctx}  {time.time() - t0:.0f}s  "
                f"(data wait {t_data:.0f}s)")
        t_wait = time.time()
    info = record(step)
    _save_ema(bundle, params, ema, out, info, schedule)  # the file holds the EMA weights, as every checkpoint does
    return info
