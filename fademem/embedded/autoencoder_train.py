"""Training and evaluating the frame autoencoder (``fademem.embedded.autoencoder``): rendered frame
batches, the loss, the training loop, latent stats, held-out reconstruction quality and throughput.

    train_autoencoder(AutoencoderConfig(), "ae.safetensors", device="cuda", time_limit=600)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from fademem.embedded.autoencoder import AutoencoderConfig, LatentCodec, load_codec, param_count, save_codec
from fademem.embedded.train_data import continued_stream, stream_seed

EVAL_SEED = 0xE7A1  # stream key of held-out renders (training streams use other keys)


# ---------------------------------------------------------------- data
def _random_world(rng: np.random.Generator, size: int, fps: int):
    from fademem.embedded.world import World, sample_prompt

    return World(sample_prompt(rng), int(rng.integers(1 << 31)), size, fps)


MAX_TIME = 8 * 600  # frames: random times within 10 minutes of video (every camera/motion phase)


class FrameBatches(IterableDataset):
    """Endless uint8 batches [batch, H, W, 3] of frames of random worlds at random times.

    Building a world (its texture) costs more than rendering a frame: each worker keeps a pool of
    worlds and replaces `refresh` of them per batch. Worker w draws from rng([seed, w, 0xAE]).
    """

    def __init__(self, batch: int, size: int = 64, fps: int = 8, seed: int = 0, pool: int = 64, refresh: int = 2):
        self.batch, self.size, self.fps, self.seed, self.pool, self.refresh = batch, size, fps, seed, pool, refresh

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, 0xAE])
        pool = [_random_world(rng, self.size, self.fps) for _ in range(self.pool)]
        while True:
            for _ in range(self.refresh):
                pool[int(rng.integers(len(pool)))] = _random_world(rng, self.size, self.fps)
            out = np.empty((self.batch, self.size, self.size, 3), np.uint8)
            for b in range(self.batch):
                world = pool[int(rng.integers(len(pool)))]
                out[b] = world.frame_at(int(rng.integers(MAX_TIME))) * 255 + 0.5
            yield torch.from_numpy(out)


def render_throughput(seconds: float = 3.0, size: int = 64, batch: int = 64) -> float:
    """Frames/s of `FrameBatches` in this process (pool building included)."""
    it, n, t0 = iter(FrameBatches(batch, size, seed=1234)), 0, time.time()
    while time.time() - t0 < seconds:
        n += len(next(it))
    return n / (time.time() - t0)


# ---------------------------------------------------------------- training
def _ae_loss(codec: LatentCodec, x: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """x [N, 3, H, W] in [-1, 1] -> (loss, parts)."""
    cfg = codec.cfg
    z = codec.encoder(x)
    noise = torch.randn(z.shape, device=z.device, generator=gen, dtype=z.dtype)
    y = codec.decoder(z + cfg.noise_std * noise).float()
    l1 = (y - x).abs().mean()
    gx = ((y[..., 1:] - y[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()
    gy = ((y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean()
    l2 = z.float().pow(2).mean()
    loss = l1 + cfg.grad_weight * (gx + gy) + cfg.l2_weight * l2
    return loss, {"l1": l1.detach(), "l2": l2.detach()}


def _lr(step: int, elapsed: float, lr: float, steps: int, warmup: int, time_limit: float | None) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    if time_limit:
        p = max(p, elapsed / time_limit)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def latent_stats(codec: LatentCodec, n_frames: int = 2048, seed: int = 7, batch: int = 256) -> tuple[list, list]:
    """Per-channel mean and std of raw latents over fresh renders."""
    it = iter(FrameBatches(batch, codec.cfg.frame_size, codec.cfg.fps, seed=seed, pool=32))
    zs = []
    dev = codec._param.device
    for _ in range(max(1, n_frames // batch)):
        x = next(it).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1
        zs.append(codec.encode_raw(x).float().transpose(0, 1).reshape(codec.channels, -1).cpu())
    z = torch.cat(zs, 1).double()
    return z.mean(1).tolist(), z.std(1).tolist()


def train_autoencoder(cfg: AutoencoderConfig | None, out: str | Path | None, *, device: str = "cuda",
                      steps: int = 20000, batch: int = 128, lr: float = 1e-3, warmup: int = 200,
                      time_limit: float | None = None, seed: int = 0, workers: int = 8, log=print,
                      log_every: int = 100, init: str | Path | None = None, eval_clips: int = 32,
                      stats_frames: int = 4096) -> dict:
    """Train on rendered frames; stop after `steps` or `time_limit` seconds; compute latent stats;
    save to `out` (if given; plus `out`.json with the info) and return the info dict.

    The returned info has "history" (step, loss, l1, seconds), "latent_std_raw" (per-channel std
    before normalisation), "eval" (evaluate_autoencoder on held-out renders) and "frames_per_s".
    """
    torch.manual_seed(seed)
    if init is not None:
        codec = load_codec(init)
        cfg = codec.cfg
    else:
        cfg = cfg or AutoencoderConfig()
        codec = LatentCodec(cfg)
    stream = continued_stream(codec) if init is not None else 0  # a continued run draws new frames
    codec.set_stats([0.0] * cfg.latent_channels, [1.0] * cfg.latent_channels)
    codec = codec.to(device).train().requires_grad_(True)
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    loader = DataLoader(FrameBatches(batch, cfg.frame_size, cfg.fps, seed=stream_seed(seed, stream)), batch_size=None,
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None, pin_memory=cuda)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    gen = torch.Generator(device=device).manual_seed(stream_seed(seed, stream))
    t0, history, step, frames_seen = time.time(), [], 0, 0
    for step, frames in enumerate(loader):
        elapsed = time.time() - t0
        if step >= steps or (time_limit and elapsed > time_limit):
            break
        x = frames.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1
        for g in opt.param_groups:
            g["lr"] = _lr(step, elapsed, lr, steps, warmup, time_limit)
        with amp:
            loss, parts = _ae_loss(codec, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        frames_seen += len(x)
        if step % log_every == 0:
            rec = {"step": step, "loss": float(loss.detach()), "l1": float(parts["l1"]), "l2": float(parts["l2"]),
                   "seconds": round(time.time() - t0, 1)}
            history.append(rec)
            log(f"ae step {step:6d}  loss {rec['loss']:.4f}  l1 {rec['l1']:.4f}  z^2 {rec['l2']:.3f}  "
                f"{rec['seconds']:.0f}s  {frames_seen / max(1e-9, time.time() - t0):.0f} frames/s")
    seconds = time.time() - t0
    codec.eval().requires_grad_(False)
    mean, std = latent_stats(codec, stats_frames, batch=min(256, stats_frames))
    codec.set_stats(mean, std)
    info = {"train": {"steps": steps, "batch": batch, "lr": lr, "time_limit": time_limit, "seed": seed,
                      "stream": stream, "workers": workers, "init": str(init) if init else None},
            "steps_done": step, "seconds": round(seconds, 1), "frames_per_s": round(frames_seen / max(seconds, 1e-9)),
            "history": history, "latent_mean_raw": mean, "latent_std_raw": std,
            "params": {"encoder": param_count(codec.encoder), "decoder": param_count(codec.decoder)},
            "device": torch.cuda.get_device_name() if cuda else device}
    if eval_clips:
        info["eval"] = evaluate_autoencoder(codec, eval_clips)
        log(f"ae eval: {info['eval']}")
    if out is not None:
        save_codec(codec, out, info)
        Path(str(out) + ".json").write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_autoencoder(codec: LatentCodec, n_clips: int = 64, seed: int = 1, frames_per_clip: int = 8,
                         noise: float = 0.0) -> dict:
    """Reconstruction PSNR / SSIM on held-out renders: n_clips random worlds from rng([seed, EVAL_SEED])
    (training uses other streams), frames_per_clip frames at random times each. With noise > 0, the
    normalised latents get N(0, noise^2) added before decoding (robustness to generation errors)."""
    from fademem.metrics import psnr, ssim

    rng = np.random.default_rng([seed, EVAL_SEED])
    s, fps = codec.cfg.frame_size, codec.cfg.fps
    videos = np.empty((n_clips, frames_per_clip, s, s, 3), np.float32)
    for i in range(n_clips):
        world = _random_world(rng, s, fps)
        for j in range(frames_per_clip):
            videos[i, j] = world.frame_at(int(rng.integers(MAX_TIME)))
    truth = torch.from_numpy((videos * 255 + 0.5).astype(np.uint8))
    z = codec.encode(truth)
    if noise:
        z = z + noise * torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z.device)
    rec = codec.decode(z).cpu()
    a, b = truth.float().div(255).numpy(), rec.float().div(255).numpy()
    p = psnr(a, b, max_db=100).ravel()
    q = ssim(a, b).ravel()
    return {"psnr": float(p.mean()), "psnr_p5": float(np.percentile(p, 5)), "ssim": float(q.mean()),
            "ssim_p5": float(np.percentile(q, 5)), "frames": int(p.size)}


def decode_ms_per_frame(codec: LatentCodec, frames: int = 480, threads: int | None = 2) -> float:
    """CPU ms per decoded frame (uint8), decoding `frames` frames at once."""
    n = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        z = torch.randn(1, codec.channels, frames, codec.latent_hw, codec.latent_hw)
        codec.decode(z[:, :, :8])
        t0 = time.perf_counter()
        codec.decode(z)
        return (time.perf_counter() - t0) / frames * 1000
    finally:
        torch.set_num_threads(n)
