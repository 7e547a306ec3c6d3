"""Training the world critic (``fademem.embedded.critic``): labelled clips of random true renders,
the loss, the training loop and held-out accuracy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from fademem.embedded.critic import (
    CriticConfig,
    WorldCritic,
    _label_arrays,
    _predict,
    _summarise,
    load_critic,
    param_count,
    save_critic,
)
from fademem.embedded.critic_labels import OBJECT_HEADS, SCENE_HEADS, clip_labels
from fademem.embedded.train_data import continued_stream, stream_seed
from fademem.embedded.world.grammar import sample_scene
from fademem.embedded.world.render import World

EVAL_KEY = 0xC217  # stream key of held-out clips (training streams use others)
MAX_TIME = 8 * 600  # window starts: anywhere in 10 minutes of video


# ---------------------------------------------------------------- data
def _new_world(rng: np.random.Generator, cfg: CriticConfig) -> World:
    return World(sample_scene(rng), int(rng.integers(1 << 31)), cfg.frame_size, cfg.fps)


def random_clips(rng: np.random.Generator, n: int, cfg: CriticConfig, pool: list | None = None,
                 refresh: int = 0) -> tuple[torch.Tensor, dict]:
    """n clips of random worlds (uint8 [n, frames, H, W, 3]) and their label tensors; object query =
    a random object of the scene. With `pool` (a list of worlds), clips come from it and `refresh`
    of its worlds are replaced first."""
    for _ in range(refresh):
        pool[int(rng.integers(len(pool)))] = _new_world(rng, cfg)
    S = cfg.frame_size
    video = np.empty((n, cfg.frames, S, S, 3), np.float32)
    labs = []
    for b in range(n):
        world = pool[int(rng.integers(len(pool)))] if pool else _new_world(rng, cfg)
        obj = int(rng.integers(len(world.spec.objects)))
        labs.append(clip_labels(world, int(rng.integers(MAX_TIME)), cfg, obj, frames_out=video[b]))
    return torch.from_numpy((video * 255 + 0.5).astype(np.uint8)), _label_arrays(labs)


class ClipBatches(IterableDataset):
    """Endless (clips, labels) batches; worker w draws from rng([seed, w, 0xC1]); a pool of worlds per worker."""

    def __init__(self, cfg: CriticConfig, batch: int, seed: int = 0, pool: int = 64, refresh: int = 2):
        self.cfg, self.batch, self.seed, self.pool, self.refresh = cfg, batch, seed, pool, refresh

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, 0xC1])
        pool = [_new_world(rng, self.cfg) for _ in range(self.pool)]
        while True:
            yield random_clips(rng, self.batch, self.cfg, pool, self.refresh)


def clip_throughput(cfg: CriticConfig | None = None, seconds: float = 3.0, batch: int = 32) -> float:
    """Labelled clips/s rendered by one process (x cfg.frames for frames/s)."""
    it, n = iter(ClipBatches(cfg or CriticConfig(), batch, seed=4321)), 0
    next(it)
    t0 = time.time()
    while time.time() - t0 < seconds:
        n += len(next(it)[0])
    return n / (time.time() - t0)


# ---------------------------------------------------------------- training
def critic_loss(out: dict, labels: dict) -> tuple[torch.Tensor, dict]:
    """Mean CE over observable labels per head (+ masked BCE for 'colours'); per-head losses."""
    parts = {}
    for k in (*SCENE_HEADS, *OBJECT_HEADS):
        y = labels[k]
        if (y >= 0).any():
            parts[k] = F.cross_entropy(out[k], y.clamp_min(0), reduction="none")[y >= 0].mean()
    y = labels["colours"]
    m = y >= 0
    if m.any():
        parts["colours"] = F.binary_cross_entropy_with_logits(out["colours"], y.clamp_min(0).float(),
                                                              reduction="none")[m].mean() * 4
    loss = sum(parts.values()) if parts else out["texture"].sum() * 0
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def train_critic(cfg: CriticConfig | None, out: str | Path | None, *, device: str = "cuda", steps: int = 20000,
                 batch: int = 64, lr: float = 2e-3, warmup: int = 200, time_limit: float | None = None,
                 seed: int = 0, workers: int = 8, log=print, log_every: int = 100, eval_clips: int = 1024,
                 init: str | Path | None = None) -> dict:
    """Train on true renders (random prompts and times); stop after `steps` or `time_limit` seconds;
    save to `out` (if given; plus `out`.json) and return the info dict (history, accuracy)."""
    torch.manual_seed(seed)
    critic = load_critic(init) if init else WorldCritic(cfg or CriticConfig())
    cfg = critic.cfg
    stream = continued_stream(critic) if init else 0  # a continued run draws new clips, not its init's again
    critic = critic.to(device).train().requires_grad_(True)
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    loader = DataLoader(ClipBatches(cfg, batch, seed=stream_seed(seed, stream)), batch_size=None, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None, pin_memory=cuda)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    t0, history, step, clips = time.time(), [], 0, 0
    for step, (video, labels) in enumerate(loader):
        elapsed = time.time() - t0
        if step >= steps or (time_limit and elapsed > time_limit):
            break
        x = video.to(device, non_blocking=True).float() / 255
        labels = {k: v.to(device, non_blocking=True) for k, v in labels.items()}
        if step < warmup:
            cur = lr * (step + 1) / warmup
        else:
            p = (step - warmup) / max(1, steps - warmup)
            if time_limit:
                p = max(p, elapsed / time_limit)
            cur = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))
        for g in opt.param_groups:
            g["lr"] = cur
        with amp:
            outp = critic(x, labels["query"])
        loss, parts = critic_loss(outp, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
        opt.step()
        clips += len(x)
        if step % log_every == 0:
            rec = {"step": step, "loss": float(loss.detach()), "seconds": round(time.time() - t0, 1), **parts}
            history.append(rec)
            log(f"critic step {step:6d}  loss {rec['loss']:.3f}  " + " ".join(f"{k} {v:.2f}" for k, v in parts.items())
                + f"  {rec['seconds']:.0f}s  {clips / max(1e-9, time.time() - t0):.0f} clips/s")
    seconds = time.time() - t0
    critic.eval().requires_grad_(False)
    info = {"train": {"steps": steps, "batch": batch, "lr": lr, "time_limit": time_limit, "seed": seed,
                      "stream": stream, "workers": workers}, "steps_done": step, "seconds": round(seconds, 1),
            "clips_per_s": round(clips / max(seconds, 1e-9), 1), "history": history, "params": param_count(critic),
            "device": torch.cuda.get_device_name() if cuda else device}
    if eval_clips:
        info["accuracy"] = critic_accuracy(critic, eval_clips)
        log("critic accuracy: " + json.dumps({k: round(v["acc"], 4) for k, v in info["accuracy"].items()}))
    if out is not None:
        save_critic(critic, out, info)
        Path(str(out) + ".json").write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def critic_accuracy(critic: WorldCritic, n_clips: int = 1024, seed: int = 1, batch: int = 64) -> dict:
    """Per-attribute accuracy on held-out true renders (worlds, seeds and times from rng([seed, EVAL_KEY])),
    over the clips where the attribute is observable: {attr: {"acc", "n", "observable" (share)}}.
    'colours' is exact match of the visible-colour set (masked colours ignored)."""
    cfg = critic.cfg
    rng = np.random.default_rng([seed, EVAL_KEY])
    tot: dict[str, list] = {}
    for i in range(0, n_clips, batch):
        video, labels = random_clips(rng, min(batch, n_clips - i), cfg)
        out = _predict(critic, video.to(critic.device).float() / 255, labels["query"], batch)
        for k, (ok, _, obs) in _summarise(out, labels).items():
            t = tot.setdefault(k, [0, 0, 0])
            t[0] += int((ok & obs).sum())
            t[1] += int(obs.sum())
            t[2] += len(obs)
    return {k: {"acc": c / max(n, 1), "n": n, "observable": n / max(total, 1)} for k, (c, n, total) in tot.items()}
