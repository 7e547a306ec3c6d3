"""Training the K/V compressor and the generator that reads it (``fademem train-compressor``).

Two stages, as in the paper, on any :class:`~fademem.wan.model.CausalWanModel` (the embedded model and
its procedural world by default; a real Wan generator with user latents through the same
functions):

1. **Frame-preservation pretraining** (generator frozen). A clean history of ``history`` frames
   goes through the generator once (t = 0, each chunk seeing the chunks of the last ``window + t``
   frames, like the cache pass of generation); every layer's K/V are compressed group by group;
   a light retrieval decoder reads every layer's compressed tokens and reconstructs randomly chosen
   history frames that were replaced by noise at random levels (noise-as-mask). Loss: MSE on the
   clean latents.
2. **Generator fine-tuning** through the compressed memory. For a target chunk at a random start
   ``s`` (up to ``max_start`` frames into a video) the memory is exactly what the ``compressor``
   policy holds at ``s`` (:func:`fademem.memory.compressor.layout`): the newest ``budget`` groups
   compressed, the window raw, keys rotated at group centres / frame indices. The generator gets a
   peft LoRA on its self-attention projections; LoRA and compressor train together on the
   flow-matching loss of the target chunk (x0 form, noise levels as the embedded model's training).
   The LoRA's ``LoRAInfo`` records the generator's weights digest (``fademem.wan.fingerprint``):
   it merges into that base model only.

The history K/V are computed without gradient (the generator's own cache pass does not backpropagate
either); gradients reach the compressor through the compressed memory and the LoRA through the
target chunk.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from fademem.compressor.kv import KVCompressor, KVCompressorConfig, KVRetrieval, LoRAInfo
from fademem.compressor.views import GivenViews, compressed_views, history_kv, kv_taps  # noqa: F401  (re-exported)
from fademem.embedded.train import CHUNK
from fademem.memory.compressor import group_centre, layout
from fademem.memory.compressor_net import parse_rate
from fademem.wan.fingerprint import weights_digest

LORA_TARGETS = r".*self_attn\.(q|k|v|o)$"


@dataclass
class CompressorTrainConfig:
    rate: str = "4x4x2"
    channels: str = "32-64-128"
    hidden: int = 128
    window: int = 4  # raw frames the policy keeps (its default)
    budget: int = 40  # compressed groups the policy keeps (its default)
    history: int = 32  # pretraining history frames (a multiple of the rate's t)
    queries: int = 4  # frames retrieved per history in pretraining
    max_start: int = 320  # fine-tuning target chunks start up to here (40 s at 8 fps)
    batch: int = 32
    lr: float = 3e-4
    lora_lr: float = 2e-4
    lora_rank: int = 16
    context_noise: float = 0.1
    schedule_p: float = 0.7
    pretrain_steps: int = 10 ** 9
    pretrain_seconds: float | None = 60.0
    finetune_steps: int = 10 ** 9
    finetune_seconds: float | None = 240.0
    freeze_encoder: bool = False  # pretraining ablation: train the decoder on plain span averaging
    pool: int = 64  # worlds kept per data worker (building one costs far more than rendering a frame)
    warmup: int = 100
    workers: int = 4
    seed: int = 0
    log_every: int = 50


# -- data ---------------------------------------------------------------------------------------------------
class WorldClips(IterableDataset):
    """Endless batches of contiguous world clips: frames [lo, s + CHUNK) of videos (uint8), one ``s``
    per batch; ``pretrain``: s = lo + history - CHUNK (the clip is just the history)."""

    def __init__(self, cfg: CompressorTrainConfig, stage: str, frame_size: int = 64, fps: int = 8,
                 text_len: int = 64):
        self.cfg, self.stage, self.size, self.fps, self.text_len = cfg, stage, frame_size, fps, text_len
        self.pool = cfg.pool

    def span(self, rng: np.random.Generator) -> tuple[int, int]:
        cfg = self.cfg
        t = parse_rate(cfg.rate)[0]
        if self.stage == "pretrain":
            return 0, cfg.history
        # log-uniform starts: short and long histories both common; s on the chunk grid
        s = CHUNK * int(math.exp(rng.uniform(math.log(2), math.log(cfg.max_start / CHUNK))))
        groups, raw = layout(s, cfg.window, t, cfg.budget)
        first = groups.start * t if groups else raw.start
        lo = max(0, first - 2 * (cfg.window + t)) // CHUNK * CHUNK  # some context for the first held frames
        return lo, s + CHUNK

    def __iter__(self):
        from fademem.embedded.train import random_world

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.cfg.seed, info.id if info else 0, self.stage == "pretrain"])

        def new_world():
            return random_world(rng, self.size, self.fps, self.text_len)

        pool = [new_world() for _ in range(self.pool)]
        while True:
            for _ in range(4):
                pool[int(rng.integers(len(pool)))] = new_world()
            lo, hi = self.span(rng)
            video = np.empty((self.cfg.batch, hi - lo, self.size, self.size, 3), np.uint8)
            ids = np.zeros((self.cfg.batch, self.text_len), np.int64)
            for b in range(self.cfg.batch):
                world, ids[b] = pool[int(rng.integers(len(pool)))]
                offset = int(rng.integers(0, 2000))
                for j in range(hi - lo):
                    video[b, j] = (world.frame_at(offset + lo + j) * 255 + 0.5).astype(np.uint8)
            yield {"video": torch.from_numpy(video), "ids": torch.from_numpy(ids), "lo": lo,
                   "s": hi - CHUNK if self.stage != "pretrain" else hi}


def loader(cfg: CompressorTrainConfig, stage: str, device: str) -> DataLoader:
    return DataLoader(WorldClips(cfg, stage), batch_size=None, num_workers=cfg.workers,
                      persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None,
                      pin_memory=device.startswith("cuda"))


# -- stages -------------------------------------------------------------------------------------------------
def _lr(base: float, step: int, elapsed: float, warmup: int, steps: int, seconds: float | None) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    if seconds:
        p = max(p, elapsed / seconds)
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, p))))


def _amp(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)


def _latents(batch: dict, codec, device: str) -> torch.Tensor:
    """A batch's latents [B, C, F, h, w]: given (``latents``) or encoded from uint8 ``video`` [B, F, H, W, 3]."""
    if "latents" in batch:
        return batch["latents"].to(device)
    return codec.encode(batch["video"].to(device, non_blocking=True).float() / 255.0)


def kv_config(model, cfg: CompressorTrainConfig, latent_hw: tuple[int, int]) -> KVCompressorConfig:
    mc = model.config
    grid = (latent_hw[0] // mc.patch_size[1], latent_hw[1] // mc.patch_size[2])
    return KVCompressorConfig(layers=mc.num_layers, heads=mc.num_heads, head_dim=mc.head_dim, grid=grid,
                              rate=cfg.rate, channels=cfg.channels, hidden=cfg.hidden)


def pretrain(model, text, codec, cfg: CompressorTrainConfig, device: str = "cuda", batches=None,
             comp: KVCompressor | None = None, retrieval: KVRetrieval | None = None, log=print):
    """Stage 1. ``batches``: an iterable of dicts like :class:`WorldClips` yields (default: the world),
    with ``latents`` [B, C, F, h, w] instead of ``video`` for user data (a real Wan generator).
    Returns (compressor, retrieval decoder, history of logged losses)."""
    torch.manual_seed(cfg.seed)
    model.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    batches = batches if batches is not None else loader(cfg, "pretrain", device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    hist, t0, opt, params = [], time.time(), None, None
    for step, batch in enumerate(batches):
        if step >= cfg.pretrain_steps or (cfg.pretrain_seconds is not None and time.time() - t0 > cfg.pretrain_seconds):
            break
        x = _latents(batch, codec, device)  # [B, C, F, h, w]
        if comp is None:
            comp = KVCompressor(kv_config(model, cfg, tuple(x.shape[3:]))).to(device)
        if opt is None:
            if retrieval is None:
                retrieval = KVRetrieval(comp.cfg, x.shape[1], tuple(x.shape[3:])).to(device)
            comp.to(device).train()
            retrieval.to(device).train()
            t = comp.cfg.factors[0]
            if x.shape[2] % t:
                raise ValueError(f"pretraining history of {x.shape[2]} frames is not whole groups of {t}")
            comp.requires_grad_(not cfg.freeze_encoder)
            retrieval.requires_grad_(True)
            params = [p for p in [*comp.parameters(), *retrieval.parameters()] if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        b, _, f = x.shape[:3]
        with _amp(device):
            ctx = model.encode_text(text(batch["ids"].to(device)))
            kv = history_kv(model, x, ctx, 0, cfg.window + t)
            views = [comp.compress(i, k, v) for i, (k, v) in enumerate(kv)]
            centres = torch.tensor([group_centre(g, t) for g in range(f // t)])
            idx = torch.randint(0, f, (b, cfg.queries), device=device, generator=gen)
            target = x.permute(0, 2, 1, 3, 4)[torch.arange(b, device=device)[:, None], idx]
            sigma = 0.5 + 0.5 * torch.rand(b, cfg.queries, device=device, generator=gen)
            eps = torch.randn(target.shape, device=device, generator=gen)
            s = sigma[..., None, None, None]
            pred = retrieval(views, centres, (1 - s) * target + s * eps, sigma, idx.float())
        loss = F.mse_loss(pred.float(), target)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg.lr, step, time.time() - t0, cfg.warmup, cfg.pretrain_steps, cfg.pretrain_seconds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % cfg.log_every == 0:
            hist.append({"step": step, "loss": float(loss.detach()), "seconds": round(time.time() - t0, 1)})
            log(f"pretrain step {step:5d}  retrieval loss {hist[-1]['loss']:.4f}  {time.time() - t0:.0f}s")
    for m in (comp, retrieval):
        if m is not None:
            m.eval().requires_grad_(False)
    return comp, retrieval, hist


def add_lora(model, rank: int):
    """peft LoRA on the self-attention projections (B zero-initialised: starts as the base model)."""
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=LORA_TARGETS),
                            model)
    return [p for n, p in model.named_parameters() if "lora_" in n]


def lora_state(model) -> dict[str, torch.Tensor]:
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(model))


def finetune(model, text, codec, comp: KVCompressor, cfg: CompressorTrainConfig, device: str = "cuda",
             batches=None, log=print):
    """Stage 2 (LoRA is added to ``model`` in place). Returns (LoRA tensors, LoRAInfo, logged losses)."""
    from fademem.embedded.train import degrade, target_sigmas
    from fademem.wan.sampling import FlowSchedule

    torch.manual_seed(cfg.seed + 1)
    text.eval().requires_grad_(False)
    base_digest = weights_digest(model)  # the base the LoRA is trained on, recorded in its LoRAInfo
    lora = add_lora(model, cfg.lora_rank)
    model.train()
    comp.requires_grad_(True).train()
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lora_lr, "base": cfg.lora_lr},
                             {"params": list(comp.parameters()), "lr": cfg.lr, "base": cfg.lr}], weight_decay=0.0)
    params = lora + list(comp.parameters())
    batches = batches if batches is not None else loader(cfg, "finetune", device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    sched = torch.tensor(FlowSchedule().sigmas, device=device)
    t = comp.cfg.factors[0]
    hist, t0, step = [], time.time(), 0
    for step, batch in enumerate(batches):
        if step >= cfg.finetune_steps or (cfg.finetune_seconds is not None and time.time() - t0 > cfg.finetune_seconds):
            break
        lo, s = int(batch["lo"]), int(batch["s"])
        n_hist = s - lo
        if "latents" in batch:  # user latents (a real Wan generator): no pixel-space blur
            x_all = batch["latents"].to(device)
            x_hist, x0 = x_all[:, :, :n_hist], x_all[:, :, n_hist:]
        else:  # the world's frames; history blurred like the model's own outputs, as in `fademem train`
            frames = batch["video"].to(device, non_blocking=True).float() / 255.0
            x_hist = codec.encode(degrade(frames[:, :n_hist], n_hist, 0.5, gen)) if n_hist else None
            x0 = codec.encode(frames[:, n_hist:])
        b = x0.shape[0]
        sigma = target_sigmas(b, cfg.schedule_p, sched, gen)
        s5 = sigma[:, None, None, None, None]
        xt = (1 - s5) * x0 + s5 * torch.randn(x0.shape, device=device, generator=gen)
        with _amp(device):
            ctx = model.encode_text(text(batch["ids"].to(device)))
            views = [None] * model.config.num_layers
            if n_hist:
                x_hist = x_hist + cfg.context_noise * torch.rand(b, 1, 1, 1, 1, device=device, generator=gen) * \
                    torch.randn(x_hist.shape, device=device, generator=gen)
                kv = history_kv(model, x_hist, ctx, lo, cfg.window + t)
                tpf = kv[0][0].shape[1] // n_hist
                views = compressed_views(comp, kv, lo, s, cfg.window, cfg.budget, model.rope, tpf)
            v = model(xt, (sigma * 1000)[:, None].expand(b, CHUNK), ctx, memory=GivenViews(views, s), start_frame=s)
        loss = (xt - s5 * v.float() - x0).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = _lr(g["base"], step, time.time() - t0, cfg.warmup, cfg.finetune_steps, cfg.finetune_seconds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % cfg.log_every == 0:
            hist.append({"step": step, "loss": float(loss.detach()), "start": s, "seconds": round(time.time() - t0, 1)})
            log(f"finetune step {step:5d}  loss {hist[-1]['loss']:.4f}  start {s:4d}  {time.time() - t0:.0f}s")
    model.eval()
    comp.eval().requires_grad_(False)
    return lora_state(model), LoRAInfo(cfg.lora_rank, float(cfg.lora_rank), [LORA_TARGETS], base_digest), hist


# -- evaluation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_eval(model, text, codec, comp: KVCompressor, retrieval: KVRetrieval, cfg: CompressorTrainConfig,
                   device: str = "cpu", clips: int = 32, seed: int = 1234) -> dict:
    """Retrieve every frame of held-out world histories from pure noise (sigma = 1, one decoder
    step) and score the decoded pixels: PSNR / SSIM, tokens per group and compression factor."""
    from fademem.metrics import psnr, ssim

    ecfg = dict(batch=clips, seed=seed, workers=0, pool=clips)
    data = next(iter(WorldClips(CompressorTrainConfig(**{**asdict(cfg), **ecfg}), "pretrain")))
    x = _latents(data, codec, device)
    b, c, f = x.shape[:3]
    t = comp.cfg.factors[0]
    with _amp(device):
        ctx = model.encode_text(text(data["ids"].to(device)))
        kv = history_kv(model, x, ctx, 0, cfg.window + t)
        views = [comp.compress(i, k, v) for i, (k, v) in enumerate(kv)]
        centres = torch.tensor([group_centre(g, t) for g in range(f // t)])
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((b, f, c, *x.shape[3:]), generator=g).to(device)
        idx = torch.arange(f, device=device).expand(b, f)
        pred = retrieval(views, centres, eps, torch.ones(b, f, device=device), idx.float()).float()
    true = codec.to_frames(x)
    got = codec.to_frames(pred.permute(0, 2, 1, 3, 4))
    per_group = comp.cfg.tokens_per_group
    return {"rate": comp.cfg.rate, "tokens_per_group": per_group, "frames_per_group": t,
            "compression": t * comp.cfg.tokens_per_frame / per_group, "clips": b, "frames": f,
            "psnr": float(psnr(got, true, max_db=100.0).mean()), "ssim": float(ssim(got, true).mean())}
