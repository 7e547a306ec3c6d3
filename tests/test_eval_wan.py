"""``fademem eval run`` on a causal Wan checkpoint: a tiny random Wan DiT with a tiny UMT5 + VAE folder
in the real (diffusers) layout, two prompts x two memory specs, scored on subject consistency. Every row
records the checkpoint's hash and the Wan frame count; a rerun runs nothing; the video is the one
``fademem generate`` writes for the same prompt, spec and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main

try:
    from tests.test_eval_models import eval_weights  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import eval_weights  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    try:
        from tests.test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir
    except ImportError:  # pragma: no cover
        from test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir
    from fademem.wan.checkpoints import save_generator
    from fademem.wan.model import CausalWanModel, WanConfig

    root = tmp_path_factory.mktemp("wan")
    wan_dir = make_wan_dir(root / "wan")
    torch.manual_seed(0)
    gen = CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512))
    return str(save_generator(gen, root / "gen.safetensors")), str(wan_dir)


def test_eval_run_on_a_wan_checkpoint(wan, eval_weights, tmp_path):  # noqa: F811
    from fademem.eval.store import ResultStore
    from fademem.pipeline.video_io import read_video_info

    ckpt, wan_dir = wan
    (tmp_path / "prompts.txt").write_text("a cat runs\na dog sleeps\n")
    args = ["eval", "run", "--prompts", str(tmp_path / "prompts.txt"), "--memory", "sink", "--memory",
            "fademem:budget=3", "--seeds", "0", "--seconds", "1.5", "--store", str(tmp_path / "s.sqlite"),
            "--weights-dir", str(eval_weights), "--dimensions", "subject_consistency", "--checkpoint", ckpt,
            "--wan-dir", wan_dir, "--height", "32", "--width", "48", "--dtype", "float32", "--device", "cpu",
            "--videos", str(tmp_path / "videos"), "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rows = ResultStore(tmp_path / "s.sqlite").rows()
    assert sorted((x["prompt"], x["spec"]) for x in rows) == sorted(
        (p, s) for p in ("a cat runs", "a dog sleeps") for s in ("sink", "fademem:budget=3"))
    hashes = {x["checkpoint_hash"] for x in rows}
    assert len(hashes) == 1 and len(hashes.pop()) == 64
    from fademem.pipeline import latent_frames_for_seconds

    n = latent_frames_for_seconds(1.5)  # whole chunks of 3 latent frames covering 1.5 s at 16 fps
    for x in rows:
        assert x["frames"] == 4 * n - 3  # the Wan VAE: 4 video frames per latent frame, 1 for the first
        assert 0 < x["scores"]["subject_consistency"] <= 1 and np.isfinite(x["scores"]["subject_consistency"])
        frames, _, size = read_video_info(x["video"])
        assert frames == 4 * n - 3 and tuple(size) == (32, 48)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "4 already stored, 0 to run" in again.output
