"""Revisit batches of the embedded model's training data (fademem.embedded.train_data): a returning view whose
truth is only in the frames of the first visit when the history in between comes from another world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fademem.embedded.bundle import EmbeddedConfig
from fademem.embedded.train import TrainConfig, train
from fademem.embedded.train_data import CHUNK, WorldBatches, revisit_context_rule, revisit_target
from fademem.embedded.world import World, revisit_scene, tokenize
from fademem.embedded.world.grammar import CameraSpec
from fademem.embedded.world.scene import camera_x


def test_revisit_targets_lie_on_the_way_back_or_just_home():
    rng = np.random.default_rng(0)
    fps = 8
    for _ in range(300):
        gap, start, home = revisit_target(rng, fps, 600)
        assert start % CHUNK == 0 and home == 24
        assert gap in (2, 4, 8, 16, 32)
        x = camera_x(CameraSpec("return", "right", gap), start / fps)
        # the second half of the pan back (x <= 0.5 viewport; the start rounded down to a chunk: 3 frames,
        # 3/16 viewport earlier at most) or home; never away
        assert x <= 0.5 + 3 / 16 + 1e-9, (gap, start, x)
        cycle = gap + 4
        assert (start / fps) % cycle >= gap + 2 + 0.5 * 2 - 3 / fps - 1e-9 or (start / fps) % cycle < 1.0, (gap, start)


@pytest.mark.parametrize("seed", range(4))
def test_revisit_context_rules_keep_the_first_visit(seed):
    rng = np.random.default_rng(seed)
    cfg = TrainConfig(max_context=24, revisit_context=128)
    kinds = set()
    for _ in range(200):
        start = 3 * int(rng.integers(10, 200))
        kind, idx, pos = revisit_context_rule(start, rng, cfg, home=24)
        kinds.add(kind)
        assert all(0 <= i < start for i in idx)
        assert kind == "fademem" or (idx == sorted(set(idx)) and idx[-1] == start - 1)
        if kind != "window":
            assert min(idx) < 24, (kind, idx[:5])  # the first visit stays in view
        if kind == "full":
            assert idx == list(range(start)) and start <= 128
        if kind != "fademem":
            assert pos == [float(i) for i in idx]
        assert len(idx) <= max(cfg.revisit_context, cfg.max_context)
    assert kinds == {"full", "sink", "fademem", "sparse", "window"}


def _pool(gap: int, size: int = 32):
    prompt = revisit_scene(5, gap_seconds=gap).to_prompt()
    ids = np.zeros(EmbeddedConfig().text_len, np.int64)
    tok = tokenize(prompt)
    ids[:len(tok)] = tok
    return World(prompt, 11, size, 8), World(prompt, 12, size, 8), ids


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_revisit_batch_swaps_only_the_history_after_the_first_visit(swap):
    cfg = TrainConfig(batch=2, workers=0, pool=64, revisit_p=1.0, revisit_swap_p=swap, max_history=200)
    ds = WorldBatches(cfg, EmbeddedConfig(frame_size=32))
    rng = np.random.default_rng(1)
    by_gap = {g: _pool(g) for g in (2, 4, 8, 16, 32)}
    pool = [(*by_gap[g], g) for g in by_gap for _ in range(8)]  # full: no new worlds drawn
    for _ in range(5):
        b = ds._revisit_batch(rng, pool)
        n = b["n_ctx"]
        t_all = b["positions"].long().tolist() if not b["kind"].endswith("fademem") else None
        if t_all is None:
            continue
        t_last = t_all[-1]  # the batch's gap: the one world whose render is the target
        target = b["video"][0, -1].numpy()
        (world, alt, _), = [w for w in by_gap.values()
                            if np.abs(target - np.floor(w[0].frame_at(t_last) * 255 + 0.5)).max() == 0]
        for j, t in enumerate(t_all):
            got = b["video"][0, j].numpy().astype(np.float32)
            same = np.abs(got - np.floor(world.frame_at(t) * 255 + 0.5)).max() == 0
            if j >= n or t < 24 or swap == 0.0:
                assert same, (b["kind"], j, t)  # targets and the first visit: the true world
            else:
                assert np.abs(got - np.floor(alt.frame_at(t) * 255 + 0.5)).max() == 0, (b["kind"], j, t)
        assert b["kind"].startswith("revisit-") and b["video"].shape[1] == n + CHUNK


def test_training_with_revisit_batches_runs(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=3, batch=2, workers=0, dim=32, layers=1, heads=2, ffn=64, log_every=1, max_history=120,
                      pool=4, warmup=1, revisit_p=1.0, revisit_context=40)
    info = train(cfg, tmp_path / "w.safetensors", device="cpu", log=lambda *_: None)
    assert info["steps_done"] == 3
    assert all(h["kind"].startswith("revisit-") and np.isfinite(h["loss"]) for h in info["history"])
