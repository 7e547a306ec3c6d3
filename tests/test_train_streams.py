"""A training run continued from a checkpoint draws new data and noise (TrainConfig.stream and its kin in
distill, the critic and the autoencoder): every GPU lease used to restart at seed 0 and replay the batches the
first lease had trained on. A fresh run keeps its old streams (stream 0), so its results do not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fademem.embedded.bundle import load
from fademem.embedded.train import train
from fademem.embedded.train_data import WorldBatches, continued_stream, stream_seed
from tests.test_embedded_v2 import _tiny_train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stream_seed_keeps_fresh_runs_and_separates_continued_ones():
    assert stream_seed(0, 0) == 0 and stream_seed(7, None) == 7  # a fresh run: the seed it always had
    a, b = stream_seed(0, 12345), stream_seed(0, 12346)
    assert a != 0 and b != a and stream_seed(0, 12345) == a  # distinct per stream, reproducible


def _first_video(cfg) -> np.ndarray:
    from fademem.embedded.bundle import EmbeddedConfig

    return next(iter(WorldBatches(cfg, EmbeddedConfig())))["video"].numpy()


def test_world_batches_draw_new_data_on_another_stream():
    fresh, again = _first_video(_tiny_train()), _first_video(_tiny_train(stream=0))
    np.testing.assert_array_equal(fresh, again)  # None and 0: the same (old) stream
    other = _first_video(_tiny_train(stream=99))
    assert other.shape != fresh.shape or not np.array_equal(other, fresh)


def test_a_continued_run_records_a_stream_of_its_own(tmp_path):
    torch.manual_seed(0)
    first = train(_tiny_train(), tmp_path / "a.safetensors", device="cpu", log=lambda *_: None)
    assert first["train"]["stream"] == 0
    init = str(tmp_path / "a.safetensors")
    second = train(_tiny_train(init=init), tmp_path / "b.safetensors", device="cpu", log=lambda *_: None)
    want = continued_stream(load(init).model)
    assert second["train"]["stream"] == want != 0
    third = train(_tiny_train(init=str(tmp_path / "b.safetensors")), tmp_path / "c.safetensors", device="cpu",
                  log=lambda *_: None)
    assert third["train"]["stream"] not in (0, want)  # each lease its own: the weights changed
