"""The training data of the embedded model: random worlds of the prompt grammar rendered on the fly, each
example a target chunk after a *memory-shaped* context (``fademem.embedded.train``'s docstring says why).

``context_rule`` draws the memory rule and the context frames with their positions; ``WorldBatches`` is the
endless stream of batches (uint8 video, prompt ids, positions, chunk ids, and the target frames' object
pixels, for the object-weighted loss) that the training and distillation loops read through a DataLoader.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from fademem.embedded.bundle import EmbeddedConfig

if TYPE_CHECKING:
    from fademem.embedded.train import TrainConfig

CHUNK = 3


# -- context rules ----------------------------------------------------------------------------------
def _fademem_frames(start: int, rng: np.random.Generator, max_context: int) -> tuple[list[int], list[float]]:
    from fademem.memory.fademem import simulate

    budget = int(rng.integers(4, max_context + 1))
    beta = float(rng.choice([0.3, 0.5, 0.7, 1.0]))
    entries = simulate(budget=budget, beta=beta, steps=start).as_json()
    idx, pos = [], []
    for e in entries:
        idx.append(min(start - 1, max(0, int(round(e["mu"])))))
        pos.append(float(e["mu"]))
    return idx, pos


def context_rule(start: int, rng: np.random.Generator, cfg: TrainConfig) -> tuple[str, list[int], list[float]]:
    """Pick a memory rule and return (name, context frame indices, their temporal positions)."""
    if start == 0:
        return "none", [], []
    frames = np.arange(start)
    kind = rng.choice(["window", "sink", "fademem", "sparse", "full"], p=[0.25, 0.2, 0.3, 0.15, 0.1])
    if kind == "full" and start > 2 * cfg.max_context:
        kind = "window"
    if kind == "fademem":
        idx, pos = _fademem_frames(start, rng, cfg.max_context)
        return str(kind), idx, pos
    if kind == "full":
        idx = frames.tolist()
    elif kind == "window":
        w = int(rng.integers(3, cfg.max_context + 1))
        idx = frames[-w:].tolist()
    elif kind == "sink":
        s = int(rng.integers(1, 4))
        w = int(rng.integers(3, cfg.max_context - s + 1))
        idx = sorted(set(frames[:s].tolist()) | set(frames[-w:].tolist()))
    else:  # sparse: keep frame at distance d with probability ~ d^-0.7, the newest always
        d = start - frames
        keep = rng.random(start) < np.minimum(1.0, 2.0 * d ** -0.7)
        keep[-1] = True
        idx = frames[keep].tolist()[-cfg.max_context:]
    return str(kind), idx, [float(i) for i in idx]


def random_world(rng: np.random.Generator, size: int, fps: int, text_len: int):
    """(World, its prompt's token ids [text_len]) for a random prompt of the grammar."""
    from fademem.embedded.world import World, sample_prompt, tokenize

    prompt = sample_prompt(rng)
    ids = np.zeros(text_len, np.int64)
    tok = tokenize(prompt)
    ids[:len(tok)] = tok
    return World(prompt, int(rng.integers(1 << 31)), size, fps), ids


def frame_and_objects(world, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame t [H, W, 3] float32, bool [H, W]: the pixels the world's objects cover, occluders not counted)."""
    frame, top, _ = world.layers_at(t)
    return frame, (top >= 0) & (top < len(world.layout.objects))


class WorldBatches(IterableDataset):
    """Endless batches rendered on the fly; each worker draws from its own seeded stream."""

    def __init__(self, cfg: TrainConfig, ecfg: EmbeddedConfig):
        self.cfg, self.size, self.fps, self.text_len = cfg, ecfg.frame_size, ecfg.fps, ecfg.text_len

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.cfg.seed, info.id if info else 0])
        cfg = self.cfg

        def new_world():
            return random_world(rng, self.size, self.fps, self.text_len)

        # Building a world (its texture) costs far more than rendering a frame of it: keep a pool
        # and refresh a few worlds per batch; time offsets keep the examples distinct.
        pool = [new_world() for _ in range(cfg.pool)]
        while True:
            for _ in range(cfg.refresh):
                pool[int(rng.integers(len(pool)))] = new_world()
            start = 0 if rng.random() < 0.12 else CHUNK * int(
                math.exp(rng.uniform(0, math.log(cfg.max_history / CHUNK))))
            kind, idx, pos = context_rule(start, rng, cfg)
            if kind != "none" and rng.random() < cfg.compact_p:
                pos = [float(i) for i in range(len(idx))]
                target_pos = [float(len(idx) + i) for i in range(CHUNK)]
            else:
                target_pos = [float(start + i) for i in range(CHUNK)]
            want = np.asarray(idx + [start + i for i in range(CHUNK)])
            # uint8: a quarter of the bytes through worker IPC; each frame is quantised as it is written
            # (the same values as quantising the whole float batch, without the float batch)
            video = np.empty((cfg.batch, len(want), self.size, self.size, 3), np.uint8)
            objects = np.zeros((cfg.batch, CHUNK, self.size, self.size), np.bool_)  # the targets' object pixels
            ids = np.zeros((cfg.batch, self.text_len), np.int64)
            for b in range(cfg.batch):
                world, ids[b] = pool[int(rng.integers(len(pool)))]
                offset = int(rng.integers(0, 4 * cfg.max_history))  # any stretch of the (endless) video
                for j, t in enumerate(want + offset):
                    f, obj = frame_and_objects(world, int(t))
                    if j >= len(idx):
                        objects[b, j - len(idx)] = obj
                    f *= 255
                    f += 0.5
                    video[b, j] = f
            chunks = [i // CHUNK for i in idx] + [start // CHUNK] * CHUNK
            yield {"video": torch.from_numpy(video), "ids": torch.from_numpy(ids), "objects": torch.from_numpy(objects),
                   "positions": torch.tensor(pos + target_pos, dtype=torch.float32),
                   "chunks": torch.tensor(chunks), "n_ctx": len(idx), "kind": kind}


def data_throughput(cfg: TrainConfig, seconds: float = 10.0, ecfg: EmbeddedConfig | None = None) -> dict:
    """Batches (and frames) per second that ``cfg.workers`` rendering processes deliver through the
    training DataLoader (after the first batch, i.e. without worker start-up). For picking ``workers``:
    the GPU needs about as many batches/s as it trains steps/s."""
    loader = DataLoader(WorldBatches(cfg, ecfg or EmbeddedConfig()), batch_size=None, num_workers=cfg.workers,
                        persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    it = iter(loader)
    t_start = time.time()
    next(it)
    t0, n, frames = time.time(), 0, 0
    while time.time() - t0 < seconds:
        b = next(it)
        n, frames = n + 1, frames + b["video"].shape[0] * b["video"].shape[1]
    dt = time.time() - t0
    del it
    return {"workers": cfg.workers, "batch": cfg.batch, "startup_s": round(t0 - t_start, 2),
            "batches_per_s": round(n / dt, 2), "frames_per_s": round(frames / dt)}
