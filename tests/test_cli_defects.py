"""The CLI as a new user meets it (issue 16): every bad option is refused before any work, with a clear
message and click's exit codes (2: usage, 1: runtime); switches in seconds follow the model's own fps;
omnimem's grid adapts to the embedded model; mp4 files are repeatable; the README snippet runs."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main
from fademem.cli.common import check_device, check_out_path, check_seconds

pytestmark = pytest.mark.usefixtures("one_thread")
gen_cli = importlib.import_module("fademem.cli.generate")  # the module (fademem.cli.generate is the command)

PROMPT = "a large red circle bouncing over a striped blue background , camera is static"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_generation(monkeypatch):
    """Any run that gets past the checks fails the test: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("generation started")
    monkeypatch.setattr(gen_cli, "_generate_embedded", boom)
    monkeypatch.setattr(gen_cli, "_generate_wan", boom)


@pytest.fixture
def no_video(monkeypatch):
    """The embedded model loads and checks its prompts, but producing a video fails the test."""
    from fademem.pipeline.sampler import VideoPipeline

    def boom(*a, **k):
        raise AssertionError("generation started")
    monkeypatch.setattr(VideoPipeline, "generate_video", boom)


def gen(*args, out=None):
    out = ["--out", str(out)] if out is not None else []
    return CliRunner().invoke(main, ["generate", "--prompt", PROMPT, *out, *args])


# -- 1. switches in seconds use the model's fps and frames per latent frame --------------------------------
def test_switch_seconds_follow_the_model():
    from fademem.pipeline import parse_switch

    assert parse_switch("4s:x", fps=8, temporal_stride=1) == (32, "x")  # embedded: 4 s = frame 32
    assert parse_switch("4s:x") == (16, "x")  # Wan defaults: 64 video frames -> latent 16
    assert gen_cli._switches(["4s:a b", "6:c"], 8, gen_cli.EMBEDDED_TEMPORAL_STRIDE) == [(32, "a b"), (6, "c")]
    assert gen_cli._switches(["4s:a"], 16, gen_cli.WAN_TEMPORAL_STRIDE) == [(16, "a")]


def test_cli_switch_in_seconds_lands_at_the_time_on_the_embedded_model(monkeypatch, tmp_path):
    seen = {}

    def fake_generate_video(self, prompt, num_frames, **kw):
        seen.update(num_frames=num_frames, switches=kw["switches"])
        return [kw["out"]]

    from fademem.pipeline.sampler import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "generate_video", fake_generate_video)
    res = gen("--seconds", "6", "--switch", f"4s:{PROMPT}", "--device", "cpu", out=tmp_path / "v.mp4")
    assert res.exit_code == 0, res.output
    assert seen["num_frames"] == 48 and seen["switches"] == [(32, PROMPT)]  # 4 s * 8 fps, not 2.25 s


# -- 2. an unwritable --out fails before generating ---------------------------------------------------------
@pytest.mark.parametrize("bad", ["/proc/x.mp4", "/sys/x.mp4", "{tmp}/missing/x.mp4", "{tmp}", "{tmp}/x.txt"])
def test_unwritable_out_is_refused_up_front(no_generation, tmp_path, bad):
    res = gen("--seconds", "1", out=bad.format(tmp=tmp_path))
    assert res.exit_code == 2 and "--out" in res.output and "generation started" not in res.output, res.output
    assert not (tmp_path / "x.txt").exists()


def test_check_out_path_leaves_no_file(tmp_path):
    p = tmp_path / "ok.mp4"
    assert check_out_path(str(p)) == str(p) and not p.exists()
    p.write_bytes(b"keep")
    check_out_path(str(p))
    assert p.read_bytes() == b"keep"  # probed for append, never truncated


# -- 3. --weights errors say what is wrong -----------------------------------------------------------------
def test_weights_errors_are_distinct(tmp_path, monkeypatch):
    from fademem import embedded
    from fademem.embedded import bundle as B

    with pytest.raises(FileNotFoundError, match="weights file not found") as e:
        embedded.load(tmp_path / "nope.safetensors")
    assert "installed without its assets" not in str(e.value)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    shipped = B.default_path().read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(shipped[: len(shipped) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all" * 4)
    for name in ("empty", "cut", "junk"):
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            embedded.load(tmp_path / f"{name}.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a fademem embedded-model file"):
        embedded.load(tmp_path / "other.safetensors")
    monkeypatch.setattr(B, "default_path", lambda: tmp_path / "assets" / "embedded.safetensors")
    with pytest.raises(FileNotFoundError, match="shipped embedded model is missing"):
        embedded.load()


def test_cli_weights_errors_are_usage_errors(no_video, tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"")
    res = gen("--weights", str(tmp_path / "nope.safetensors"), "--device", "cpu", out=tmp_path / "v.mp4")
    assert res.exit_code == 2 and "weights file not found" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["generate", "--prompt", PROMPT, "--weights", str(tmp_path / "junk.safetensors"),
                                    "--device", "cpu", "--out", str(tmp_path / "v.mp4")])
    assert res.exit_code == 2 and "not a readable safetensors file" in res.output, res.output


# -- 4. devices -------------------------------------------------------------------------------------------
def test_check_device(monkeypatch):
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(None).type in ("cpu", "cuda")
    with pytest.raises(click.BadParameter, match="'bogus' is not a torch device"):
        check_device("bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(click.BadParameter, match=r"'cuda': no CUDA GPU is available.*available: cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(click.BadParameter, match="there are 2 CUDA device"):
        check_device("cuda:2")


@pytest.mark.parametrize("cmd", [["generate", "--prompt", PROMPT], ["train-compressor", "--out", "c.safetensors"]])
def test_cli_cuda_without_gpu_is_a_clear_error(no_generation, monkeypatch, tmp_path, cmd):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, [*cmd, "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA GPU is available" in res.output and "--device" in res.output, res.output


# -- 5. help for both generators; --height/--width refused on the embedded model --------------------------
def test_help_describes_both_generators():
    res = CliRunner().invoke(main, ["generate", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert "embedded" in text and "64x64" in text and "8 fps" in text and "16 fps" in text and "Wan only" in text


def test_height_width_refused_for_the_embedded_model(monkeypatch, tmp_path):
    from fademem.pipeline.sampler import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "generate_video", lambda self, *a, **k: [k["out"]])
    for args in (["--height", "480"], ["--width", "832"], ["--height", "480", "--width", "832"]):
        res = gen("--seconds", "1", "--device", "cpu", *args, out=tmp_path / "v.mp4")
        assert res.exit_code == 2 and "works at 64x64" in res.output, res.output
    res = gen("--seconds", "1", "--device", "cpu", "--height", "64", "--width", "64", out=tmp_path / "v.mp4")
    assert res.exit_code == 0, res.output


# -- 6. omnimem's grid=auto adapts to the token grid ------------------------------------------------------
def test_omnimem_auto_grid():
    from fademem.memory import ChunkQuery, build_memory
    from fademem.rope import WanRoPE

    rope = WanRoPE(16)
    wan = build_memory("omnimem").bind(rope, 1560)
    assert wan._block == (15, 2) and wan.blocks_per_frame == 52  # Wan: unchanged
    emb = build_memory("omnimem").bind(rope, 64)  # the embedded model's 8x8 tokens
    assert emb._block == (8, 2) and emb.blocks_per_frame == 4
    assert build_memory("omnimem:block_h=2,block_w=2").bind(rope, 64)._block == (2, 2)  # 2 divides 30 and 8
    assert build_memory("omnimem:grid=8x8,block_h=4,block_w=4").bind(rope, 64)._block == (4, 4)  # explicit
    with pytest.raises(ValueError, match="give grid=HxW"):
        build_memory("omnimem").bind(rope, 48)
    with pytest.raises(ValueError, match="block_h 5 does not divide the grid height 8"):
        build_memory("omnimem:block_h=5").bind(rope, 64)  # a side given in the spec is never changed
    with pytest.raises(ValueError, match="block_h 15 does not divide the grid height 8"):
        build_memory("omnimem:grid=8x8").bind(rope, 64)  # explicit grid: unchanged behaviour
    # auto on 8x8 is exactly the explicit grid=8x8,block_h=8,block_w=2
    a = build_memory("omnimem:topk=3,window_chunks=1").bind(rope, 64)
    b = build_memory("omnimem:topk=3,window_chunks=1,grid=8x8,block_h=8,block_w=2").bind(rope, 64)
    g = torch.Generator().manual_seed(0)
    for c in range(4):
        q, k, v = (torch.randn(1, 3 * 64, 2, 16, generator=g) for _ in range(3))
        va, vb = a.view(ChunkQuery(3 * c, 3, q)), b.view(ChunkQuery(3 * c, 3, q))
        assert (va is None) == (vb is None)
        if va is not None:
            assert torch.equal(va.k, vb.k) and torch.equal(va.v, vb.v)
        a.insert(k, v, 3 * c)
        b.insert(k, v, 3 * c)


def test_cli_omnimem_defaults_run_on_the_embedded_model(tmp_path):
    out = tmp_path / "o.mp4"
    res = gen("--seconds", "0.5", "--memory", "omnimem", "--device", "cpu", out=out)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0


# -- 7. absurd lengths, openings longer than the video ----------------------------------------------------
def test_lengths_are_checked(no_generation, tmp_path):
    assert check_seconds(60) == 60
    for bad in ("1e9", "nan", "inf", "0", "-1"):
        res = gen("--seconds", bad, out=tmp_path / "v.mp4")
        assert res.exit_code == 2 and "--seconds" in res.output, (bad, res.output)
    res = gen("--seconds", "1e9", out=tmp_path / "v.mp4")
    assert "hours of video" in res.output and "24 h" in res.output
    res = gen("--seconds", "2", "--opening", "100", out=tmp_path / "v.mp4")
    assert res.exit_code == 2 and "must be shorter than the video" in res.output
    res = gen("--seconds", "2", "--opening", "2", out=tmp_path / "v.mp4")
    assert res.exit_code == 2 and "must be shorter than the video" in res.output


# -- 8. the mp4 bytes do not depend on the CPUs the process may use ---------------------------------------
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_video_file_is_deterministic(tmp_path):
    from fademem.pipeline.video_io import VideoWriter, iter_video_frames

    rng = np.random.default_rng(0)
    # 96x96 blocky noise: with x264's defaults (AVX-512, CPU-count threads) 8 writes gave 5 different files
    frames = np.repeat(np.repeat((rng.random((12, 24, 24, 3)) * 255).astype(np.uint8), 4, 1), 4, 2)
    cpus = os.sched_getaffinity(0)

    def write(name, allowed):
        os.sched_setaffinity(0, allowed)  # x264's default thread count follows this
        try:
            with VideoWriter(tmp_path / name, fps=16) as w:
                w.write(frames[:5])
                w.write(frames[5:])
        finally:
            os.sched_setaffinity(0, cpus)
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    hashes = {write(f"{i}.mp4", allowed) for i, allowed in enumerate([{min(cpus)}, cpus, cpus, {max(cpus)}, cpus])}
    assert len(hashes) == 1
    os.replace(tmp_path / "0.mp4", tmp_path / "a.mp4")
    os.replace(tmp_path / "1.mp4", tmp_path / "b.mp4")
    a, b = list(iter_video_frames(tmp_path / "a.mp4")), list(iter_video_frames(tmp_path / "b.mp4"))
    assert len(a) == 12 and all(np.array_equal(x, y) for x, y in zip(a, b))


# -- 9. exit codes: usage errors 2, runtime failures 1 ----------------------------------------------------
@pytest.mark.parametrize("args,match", [
    (["--memory", "bogus"], "unknown memory policy"),
    (["--memory", "fademem:budget=x"], "budget must be int"),
    (["--memory", "fademem:budget=0"], "budget 0 is too small"),  # a valid parse, a bad value: still usage
    (["--memory", "omnimem:block_h=7"], "block_h 7"),
    (["--memory", "compressor:weights=/nonexistent.safetensors"], "not found"),
    (["--switch", "soon:x"], "neither a latent frame"),
    (["--lora", "x.pt"], "LoRA not found"),
])
def test_usage_errors_exit_2(no_generation, tmp_path, args, match):
    res = gen("--device", "cpu", *args, out=tmp_path / "v.mp4")
    assert res.exit_code == 2 and match in res.output, res.output


def test_bad_prompts_exit_2(no_video, tmp_path):
    res = CliRunner().invoke(main, ["generate", "--prompt", "a cat on a sofa", "--device", "cpu",
                                    "--out", str(tmp_path / "v.mp4")])
    assert res.exit_code == 2 and "--prompt" in res.output and "<texture>" in res.output, res.output
    res = gen("--device", "cpu", "--switch", "3s:a dog", out=tmp_path / "v.mp4")
    assert res.exit_code == 2 and "--switch" in res.output and "<texture>" in res.output, res.output


def test_runtime_failures_exit_1(tmp_path, monkeypatch):
    from fademem.pipeline.sampler import VideoPipeline

    def fail(self, *a, **k):
        raise ValueError("NaN in the latents")

    monkeypatch.setattr(VideoPipeline, "generate_video", fail)
    res = gen("--seconds", "1", "--device", "cpu", out=tmp_path / "v.mp4")
    assert res.exit_code == 1 and "NaN in the latents" in res.output


# -- 10. .venv-ci is ignored ------------------------------------------------------------------------------
def test_ci_venv_is_ignored():
    lines = (ROOT / ".gitignore").read_text().split()
    assert ".venv-ci/" in lines and ".venv-ci" in (ROOT / ".ci" / "run").read_text()


# -- 11. the README's Python snippet runs as written ------------------------------------------------------
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"From Python:\s*```python\n(.*?)```", text, re.S).group(1)
    assert "MemoryStack" not in snippet and "prompt = " in snippet
    snippet = snippet.replace("num_frames=48", "num_frames=3").replace("(prompt, 48,", "(prompt, 3,")  # fast
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert (tmp_path / "demo.mp4").stat().st_size > 0
