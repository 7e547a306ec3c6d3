"""The training data of the embedded model: random worlds of the prompt grammar rendered on the fly, each
example a target chunk after a *memory-shaped* context (``fademem.embedded.train``'s docstring says why).

``context_rule`` draws the memory rule and the context frames with their positions; ``WorldBatches`` is the
endless stream of batches (uint8 video, prompt ids, positions, chunk ids, and the target frames' object
pixels, for the object-weighted loss) that the training and distillation loops read through a DataLoader.

*Revisit batches* (a share ``revisit_p`` of them) teach the model to read its long memory. On random
worlds the recent frames almost always hold what the next chunk shows, so a model trained on true
contexts learns to copy from them and never from old frames: with a memory full of the first visit, it
still redraws a returning view from scratch. A revisit batch is a camera that pans away and returns
(``revisit_scene``), its target chunk on the way back or just home, its context a rule that keeps old
frames (all of them up to ``revisit_context`` frames, a sink, FadeMem's entries, a sparse draw; now and
then a plain window, where nothing can be recalled). In a share ``revisit_swap_p`` of the examples every
context frame after the first departure is rendered from another world of the same prompt (another seed:
same camera path, other texture details and object places), as a model's own history looks when it made
up the view it returns to: the true view is then only in the frames of the first visit, and the target
is the true view.
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
        s = int(rng.integers(1, min(4, cfg.max_context - 2)))  # leaves room for a window of 3 (max_context >= 4)
        w = int(rng.integers(3, cfg.max_context - s + 1))
        idx = sorted(set(frames[:s].tolist()) | set(frames[-w:].tolist()))
    else:  # sparse: keep frame at distance d with probability ~ d^-0.7, the newest always
        d = start - frames
        keep = rng.random(start) < np.minimum(1.0, 2.0 * d ** -0.7)
        keep[-1] = True
        idx = frames[keep].tolist()[-cfg.max_context:]
    return str(kind), idx, [float(i) for i in idx]


def revisit_context_rule(start: int, rng: np.random.Generator, cfg: TrainConfig, home: int
                         ) -> tuple[str, list[int], list[float]]:
    """The context of a revisit example: a rule that keeps the first visit (frames ``0..home-1``) in view,
    or now and then one that does not (``window``)."""
    frames = np.arange(start)
    kind = str(rng.choice(["full", "sink", "fademem", "sparse", "window"], p=[0.35, 0.2, 0.2, 0.15, 0.1]))
    if kind == "full" and start > cfg.revisit_context:
        kind = "sparse"
    if kind == "fademem":
        idx, pos = _fademem_frames(start, rng, cfg.max_context)
        return kind, idx, pos
    if kind == "full":
        idx = frames.tolist()
    elif kind == "window":
        idx = frames[-int(rng.integers(3, cfg.max_context + 1)):].tolist()
    elif kind == "sink":  # LongLive's sink: the first frames (the home view), then the most recent ones
        s = int(rng.integers(1, min(home, 8) + 1))
        w = int(rng.integers(3, cfg.max_context - min(s, cfg.max_context - 3) + 1))
        idx = sorted(set(frames[:s].tolist()) | set(frames[-w:].tolist()))
    else:  # sparse, as context_rule's, with at least one frame of the first visit
        d = start - frames
        keep = rng.random(start) < np.minimum(1.0, 2.0 * d ** -0.7)
        keep[-1] = True
        keep[int(rng.integers(0, home))] = True
        idx = frames[keep].tolist()
        idx = idx[:1] + idx[1:][-(cfg.revisit_context - 1):]
    return kind, idx, [float(i) for i in idx]


def revisit_target(rng: np.random.Generator, fps: int, max_start: int) -> tuple[int, int, int]:
    """(gap seconds, target start frame, first-visit frames) for a 'pans ... and returns after gap' camera:
    the start lies in the last second of the pan back or the first second home, of the first cycle
    whose return fits ``max_start``, or of a random earlier one."""
    from fademem.embedded.world.scene import HOME_HOLD, RETURN_SPEED

    travel = 1.0 / RETURN_SPEED
    fits = [g for g in (2, 4, 8, 16, 32) if (g + travel + HOME_HOLD + 1) * fps <= max_start]
    gap = int(rng.choice(fits or [2]))
    cycle = gap + travel + HOME_HOLD
    # which return: the first one half of the time (full contexts fit), else any that fits
    k = 0 if rng.random() < 0.5 else int(rng.integers(0, max(1, int(max_start / fps // cycle))))
    t = k * cycle + gap + HOME_HOLD + travel * 0.5 + rng.uniform(0, travel * 0.5 + 1.0)  # seconds
    start = CHUNK * max(1, int(t * fps) // CHUNK)
    return gap, start, int((HOME_HOLD + 0.5 * travel) * fps)  # the home view is whole until 1 s into the pan


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


def stream_seed(seed: int, stream: int | None) -> int:
    """The seed of a run's random streams: ``seed`` itself for stream 0 (a fresh run), else one mixed with
    ``stream`` (a continued run), so a run continued from a checkpoint does not replay its data and noise."""
    return seed if not stream else int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def continued_stream(model: torch.nn.Module) -> int:
    """The stream of a run continued from ``model``: from its weights' digest, new for every checkpoint and
    the same for the same one (reproducible)."""
    from fademem.wan.fingerprint import weights_digest

    return int(weights_digest(model).split(":")[1][:8], 16) or 1


class WorldBatches(IterableDataset):
    """Endless batches rendered on the fly; each worker draws from its own seeded stream."""

    def __init__(self, cfg: TrainConfig, ecfg: EmbeddedConfig):
        self.cfg, self.size, self.fps, self.text_len = cfg, ecfg.frame_size, ecfg.fps, ecfg.text_len

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        stream = self.cfg.stream  # a continued run draws new data (TrainConfig.stream)
        rng = np.random.default_rng([self.cfg.seed, info.id if info else 0] + ([stream] if stream else []))
        cfg = self.cfg

        def new_world():
            return random_world(rng, self.size, self.fps, self.text_len)

        # Building a world (its texture) costs far more than rendering a frame of it: keep a pool
        # and refresh a few worlds per batch; time offsets keep the examples distinct.
        pool = [new_world() for _ in range(cfg.pool)]
        revisit_pool: list = []
        while True:
            if cfg.revisit_p > 0 and rng.random() < cfg.revisit_p:
                yield self._revisit_batch(rng, revisit_pool)
                continue
            for _ in range(cfg.refresh):
                pool[int(rng.integers(len(pool)))] = new_world()
            start = 0 if rng.random() < cfg.first_chunk_p else CHUNK * int(
                math.exp(rng.uniform(0, math.log(cfg.max_history / CHUNK))))
            kind, idx, pos = context_rule(start, rng, cfg)
            if kind != "none" and rng.random() < cfg.compact_p:
                pos = [float(i) for i in range(len(idx))]
                target_pos = [float(len(idx) + i) for i in range(CHUNK)]
            else:
                target_pos = [float(start + i) for i in range(CHUNK)]
            want = np.asarray(idx + [start + i for i in range(CHUNK)])
            examples, ids = [], []
            for _ in range(cfg.batch):
                world, tok = pool[int(rng.integers(len(pool)))]
                offset = int(rng.integers(0, 4 * cfg.max_history))  # any stretch of the (endless) video
                examples.append([(world, t) for t in want + offset])
                ids.append(tok)
            yield self._assemble(examples, ids, idx, start, pos + target_pos, kind)


    def _revisit_world(self, rng: np.random.Generator, gap: int):
        """(true World, a World of the same prompt from another seed, prompt ids) for a returning camera."""
        from fademem.embedded.world import World, revisit_scene, tokenize

        spec = revisit_scene(int(rng.integers(1 << 31)), gap_seconds=gap)
        prompt = spec.to_prompt()
        ids = np.zeros(self.text_len, np.int64)
        tok = tokenize(prompt)
        ids[:len(tok)] = tok
        seeds = rng.integers(1 << 31, size=2)
        return (World(prompt, int(seeds[0]), self.size, self.fps), World(prompt, int(seeds[1]), self.size, self.fps),
                ids)

    def _revisit_batch(self, rng: np.random.Generator, pool: list) -> dict:
        """One revisit batch (module docstring): one gap, target start and context rule for the batch."""
        cfg = self.cfg
        gap, start, home = revisit_target(rng, self.fps, cfg.max_history)
        kind, idx, pos = revisit_context_rule(start, rng, cfg, home)
        worlds = [w for w in pool if w[3] == gap]
        if len(worlds) < max(4, cfg.pool // 8) or rng.random() < 0.25:  # worlds per gap, a few new per batch
            new = (*self._revisit_world(rng, gap), gap)
            pool.append(new)
            worlds.append(new)
            if len(pool) > cfg.pool:
                pool.pop(0)
        want = np.asarray(idx + [start + i for i in range(CHUNK)])
        # about the frames (tokens) of an ordinary batch: long contexts come in smaller batches
        batch = max(2, min(cfg.batch, cfg.batch * (cfg.max_context + CHUNK) // len(want)))
        examples, ids = [], []
        for _ in range(batch):
            world, alt, tok, _ = worlds[int(rng.integers(len(worlds)))]
            swap = rng.random() < cfg.revisit_swap_p
            examples.append([(alt if swap and j < len(idx) and t >= home else world, t) for j, t in enumerate(want)])
            ids.append(tok)
        return self._assemble(examples, ids, idx, start, pos + [float(start + i) for i in range(CHUNK)],
                              "revisit-" + kind)

    def _assemble(self, examples: list, ids: list, idx: list[int], start: int, positions: list[float],
                  kind: str) -> dict:
        """The batch dict from ``examples`` (per example, a (World, t) for each frame: the context ``idx``,
        then the target chunk at ``start``) and the examples' prompt ids."""
        n_ctx = len(idx)
        # uint8: a quarter of the bytes through worker IPC; each frame is quantised as it is written
        # (the same values as quantising the whole float batch, without the float batch)
        video = np.empty((len(examples), n_ctx + CHUNK, self.size, self.size, 3), np.uint8)
        objects = np.zeros((len(examples), CHUNK, self.size, self.size), np.bool_)  # the targets' object pixels
        for b, frames in enumerate(examples):
            for j, (world, t) in enumerate(frames):
                f, obj = frame_and_objects(world, int(t))
                if j >= n_ctx:
                    objects[b, j - n_ctx] = obj
                f *= 255
                f += 0.5
                video[b, j] = f
        chunks = [i // CHUNK for i in idx] + [start // CHUNK] * CHUNK
        return {"video": torch.from_numpy(video), "ids": torch.from_numpy(np.stack(ids)),
                "objects": torch.from_numpy(objects), "positions": torch.tensor(positions, dtype=torch.float32),
                "chunks": torch.tensor(chunks), "n_ctx": n_ctx, "kind": kind}


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
