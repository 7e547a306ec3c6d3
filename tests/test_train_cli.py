"""``fademem train --stage ...``: every stage runs a few steps at a tiny config on the CPU and writes a
loadable file; options that do not apply, missing or wrong files and bad values are usage errors
before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fademem.cli import main

ROOT = Path(__file__).resolve().parents[1]
V2 = ROOT / "training" / "embedded_v2"
TINY_DIT = ["--dim", "32", "--layers", "1", "--heads", "2", "--ffn", "64"]
FAST = ["--batch", "2", "--workers", "0", "--steps", "2", "--time-limit", "20", "--device", "cpu"]


def _train(*args):
    return CliRunner().invoke(main, ["train", *args])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("dit") / "teacher.safetensors"
    res = _train("--out", str(out), *TINY_DIT, *FAST, "--max-history", "30", "--sample-steps", "8", "--loss", "v",
                 "--target-copies", "2", "--object-weight", "4", "--text-dropout", "0.1")
    assert res.exit_code == 0, res.output
    return out


def test_dit_stage_default_and_sample_steps(teacher):
    from fademem import embedded

    b = embedded.load(teacher)
    assert b.model.config.dim == 32 and b.cfg.codec == "pixel"
    assert b.schedule.kind == "flow-matching" and len(b.schedule.steps) == 8
    assert b.info["steps_done"] == 2
    recipe = b.info["train"]
    got = (recipe["loss"], recipe["target_copies"], recipe["object_weight"], recipe["text_dropout"])
    assert got == ("v", 2, 4, 0.1)


def test_distill_stage(teacher, tmp_path):
    from fademem import embedded

    out = tmp_path / "student.safetensors"
    res = _train("--stage", "distill", "--teacher", str(teacher), "--teacher-steps", "2", "--out", str(out),
                 "--max-history", "30", "--guidance", "3", "--context-guidance", "1", *FAST)
    assert res.exit_code == 0, res.output
    b = embedded.load(out)
    assert b.schedule.kind == "distilled-4step" and b.model.config.dim == 32
    assert b.info["distill"]["guidance"] == 3.0 and b.info["distill"]["context_guidance"] == 1.0
    res = _train("--out", str(tmp_path / "x.safetensors"), "--context-guidance", "1", *TINY_DIT, *FAST)
    assert res.exit_code == 2 and "--context-guidance does not apply to --stage dit" in res.output


def test_compile_reaches_the_training_config(teacher, tmp_path, monkeypatch):
    """--compile is a dit / distill option carried to their configs (the GPU leases compile); elsewhere a usage
    error. The training functions are replaced: compiling on a CPU takes minutes."""
    import fademem.embedded.distill as distill_mod
    import fademem.embedded.train as train_mod

    seen = {}

    def fake(name):
        def run(cfg, out, device="cpu", log=None):
            seen[name] = cfg.compile
            return {"steps_done": 0, "seconds": 0.0}
        return run

    monkeypatch.setattr(train_mod, "train", fake("dit"))
    monkeypatch.setattr(distill_mod, "distill", fake("distill"))
    out = str(tmp_path / "x.safetensors")
    assert _train("--out", out, "--compile", *TINY_DIT, *FAST).exit_code == 0
    res = _train("--stage", "distill", "--teacher", str(teacher), "--out", out, "--compile", *FAST)
    assert res.exit_code == 0, res.output
    assert seen == {"dit": True, "distill": True}
    res = _train("--stage", "critic", "--out", out, "--compile", *FAST)
    assert res.exit_code == 2 and "--compile does not apply to --stage critic" in res.output


def test_autoencoder_stage(tmp_path):
    from fademem.embedded.autoencoder import load_codec

    out = tmp_path / "ae.safetensors"
    res = _train("--stage", "autoencoder", "--out", str(out), "--eval-clips", "1", "--stats-frames", "8", *FAST)
    assert res.exit_code == 0, res.output
    assert "held-out PSNR" in res.output
    assert load_codec(out).info["steps_done"] == 2


def test_critic_stage(tmp_path):
    from fademem.embedded.critic import load_critic

    out = tmp_path / "critic.safetensors"
    res = _train("--stage", "critic", "--out", str(out), "--eval-clips", "2", *FAST)
    assert res.exit_code == 0, res.output
    assert load_critic(out).info["steps_done"] >= 1


def test_dit_stage_on_a_codec(tmp_path):
    from fademem import embedded

    out = tmp_path / "w.safetensors"
    res = _train("--out", str(out), "--codec", str(V2 / "autoencoder.safetensors"), *TINY_DIT, *FAST,
                 "--max-history", "30", "--steps", "1")
    assert res.exit_code == 0, res.output
    assert embedded.load(out).cfg.codec == "autoencoder"


@pytest.mark.parametrize("args, message", [
    (["--stage", "critic", "--dim", "8"], "--dim does not apply to --stage critic"),
    (["--stage", "autoencoder", "--teacher", "x"], "--teacher does not apply to --stage autoencoder"),
    (["--stage", "dit", "--eval-clips", "3"], "--eval-clips does not apply to --stage dit"),
    (["--stage", "distill"], "needs --teacher"),
    (["--guidance", "3"], "--guidance does not apply to --stage dit"),
    (["--stage", "distill", "--teacher", "x", "--text-dropout", "0.1"], "--text-dropout does not apply to --stage"),
    (["--text-dropout", "1"], "--text-dropout"),
    (["--loss", "l1"], "--loss"),
    (["--stage", "distill", "--teacher", "/no/such.safetensors"], "file not found"),
    (["--stage", "distill", "--teacher", str(V2 / "critic.safetensors")], "expected an embedded-model bundle"),
    (["--stage", "distill", "--teacher", str(V2 / "teacher.safetensors"), "--init", str(V2 / "teacher.safetensors")],
     "--init for --stage distill continues a 4-step student"),
    (["--init", str(V2 / "teacher.safetensors"), "--layers", "2"], "cannot be given with --init"),
    (["--codec", str(V2 / "critic.safetensors")], "expected an autoencoder file"),
    (["--stage", "critic", "--init", str(V2 / "autoencoder.safetensors")], "expected a world-critic file"),
    (["--init", "/no/such.safetensors"], "file not found"),
    (["--dim", "30", "--heads", "4"], "not a multiple of --heads"),
    (["--batch", "0"], "--batch"),
    (["--lr", "-1"], "--lr"),
    (["--time-limit", "0"], "--time-limit"),
    (["--stage", "nope"], "--stage"),
])
def test_bad_options_are_usage_errors_before_work(tmp_path, args, message):
    out = tmp_path / "x.safetensors"
    res = _train("--out", str(out), "--device", "cpu", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists()


def test_distilled_teacher_refused(teacher, tmp_path):
    student = tmp_path / "s.safetensors"
    assert _train("--stage", "distill", "--teacher", str(teacher), "--out", str(student), "--max-history", "30",
                  "--teacher-steps", "2", *FAST).exit_code == 0
    res = _train("--stage", "distill", "--teacher", str(student), "--out", str(tmp_path / "t.safetensors"))
    assert res.exit_code == 2 and "distill a flow-matching teacher" in res.output


def test_v2_training_script_uses_the_cli_functions(benchmark_script):
    script = ROOT / "benchmarks" / "train_embedded_v2.py"
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--stage" in res.stdout
    mod = benchmark_script("train_embedded_v2")

    class Args:
        device, workers, batch, compile, guidance, object_weight, revisit_p = "cpu", 0, 0, False, 1.0, 4.0, 0.3
        context_guidance, first_chunk_p, resume_student = None, 0.12, False

    for stage, want in (("ae", "autoencoder"), ("critic", "critic"), ("teacher", "dit"), ("distill", "distill")):
        path, o = mod.stage_options(stage, V2, 60.0, Args)
        assert o["stage"] == want and o["time_limit"] == 60.0 and path.parent == V2
        if stage in ("teacher", "distill"):
            assert o["revisit_p"] == 0.3 and o["compile"] is False
        if stage == "distill":  # without --resume-student the student starts from the teacher
            assert o["init"] is None
