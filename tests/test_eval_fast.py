"""``fademem eval run``'s speed options, as ``fademem generate``'s (--compile, default on CUDA and eager
elsewhere; --precision fp8): refused up front with generate's messages; on the CPU auto and none run the
plain path and a rerun under the other mode runs nothing (compiling never changes a job's key); the fast
decode (forced on the CPU) gives the plain frames; each distinct generator of a run is compiled once and
its context left at the end of the run."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner

from fademem.cli import main

try:
    from tests.test_eval_models import eval_weights  # noqa: F401 - fixture
    from tests.test_eval_wan import wan  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import eval_weights  # noqa: F401
    from test_eval_wan import wan  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _args(tmp_path, *extra):
    (tmp_path / "prompts.txt").write_text("a cat runs\n")
    return ["eval", "run", "--prompts", str(tmp_path / "prompts.txt"), "--memory", "sink", "--seeds", "0",
            "--seconds", "0.5", "--store", str(tmp_path / "s.sqlite"), "--videos", str(tmp_path / "videos"),
            "--device", "cpu", "--no-progress", *extra]


def test_compile_and_fp8_refused_up_front_with_generates_messages(tmp_path, monkeypatch):
    import fademem.eval.runner as runner

    monkeypatch.setattr(runner, "_generator", lambda *a: pytest.fail("loaded a generator"))
    r = CliRunner()
    crit = ["--critic", str(tmp_path / "critic.pt")]
    res = r.invoke(main, _args(tmp_path, *crit, "--compile", "default"))  # the embedded model: eager only
    assert res.exit_code == 2 and "--compile is for a real generator" in res.output, res.output
    res = r.invoke(main, _args(tmp_path, *crit, "--precision", "fp8"))
    assert res.exit_code == 2 and "--precision fp8 is for a real generator" in res.output, res.output
    wan_args = ["--weights-dir", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--wan-dir", str(tmp_path)]
    res = r.invoke(main, _args(tmp_path, *wan_args, "--compile", "reduce-overhead"))
    assert res.exit_code == 2 and "not supported" in res.output and "CUDA-graph" in res.output, res.output
    res = r.invoke(main, _args(tmp_path, *wan_args, "--compile", "turbo"))
    assert res.exit_code == 2 and "unknown compile mode 'turbo'" in res.output, res.output
    res = r.invoke(main, _args(tmp_path, *wan_args, "--precision", "fp8"))
    assert res.exit_code == 2 and "needs a CUDA GPU of compute capability" in res.output, res.output
    assert not (tmp_path / "videos").exists() and not (tmp_path / "s.sqlite").exists()
    with pytest.raises(ValueError, match="not supported"):  # the runner's own check, without the CLI
        runner.validate(runner.EvalRun(prompts=str(tmp_path / "prompts.txt"), specs=["sink"], seeds=[0],
                                       store=str(tmp_path / "s.sqlite"), videos=str(tmp_path / "v"),
                                       critic=crit[1], compile="max-autotune"))


def test_auto_and_none_on_cpu_run_eager_and_share_the_store(wan, eval_weights, tmp_path, monkeypatch):  # noqa: F811
    from fademem.eval.generators import WanGenerator
    from fademem.eval.store import ResultStore

    closed = []
    close = WanGenerator.close
    monkeypatch.setattr(WanGenerator, "close", lambda self: (closed.append(self), close(self))[1])
    ckpt, wan_dir = wan
    args = _args(tmp_path, "--weights-dir", str(eval_weights), "--dimensions", "subject_consistency",
                 "--checkpoint", ckpt, "--wan-dir", wan_dir, "--height", "32", "--width", "48", "--dtype", "float32")
    res = CliRunner().invoke(main, args)  # --compile auto: eager on the CPU, decoded in place
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "compile" not in res.output.lower() and "side CUDA stream" not in res.output
    rows = ResultStore(tmp_path / "s.sqlite").rows()
    assert len(rows) == 1 and rows[0]["model"] == "wan:" + ckpt.rsplit("/", 1)[-1]
    assert rows[0]["details"]["generation"] == {"compile": "none", "precision": "dtype", "fast_decode": False}
    assert len(closed) == 1  # the runner leaves the generator's contexts at the end
    again = CliRunner().invoke(main, args + ["--compile", "none"])
    assert again.exit_code == 0, again.output
    assert "1 already stored, 0 to run" in again.output and len(closed) == 2


def test_wan_generator_fast_path_gives_the_plain_frames_and_compiles_each_model_once(wan, monkeypatch):  # noqa: F811
    import fademem.memory
    import fademem.pipeline
    import fademem.pipeline.fast as fast
    from fademem.eval.generators import WanGenerator

    ckpt, wan_dir = wan
    kw = dict(device="cpu", dtype=torch.float32, height=32, width=48)
    plain = WanGenerator(ckpt, wan_dir, **kw)
    want = {s: plain.frames("a cat runs", s, 0, 0.5) for s in ("sink", "fademem:budget=3", "fademem:budget=4")}
    assert plain.options() == {"compile": "none", "precision": "dtype", "fast_decode": False} and not plain.notes

    entered, exited = [], []

    class FakeCompile:  # records the contexts instead of compiling (Inductor on the CPU is slow)
        def __init__(self, model, mode, decoder=None, fallback=False):
            self.model, self.mode, self.decoder, self.fallback = model, mode, decoder, fallback

        def __enter__(self):
            entered.append(self)
            return self

        def __exit__(self, *exc):
            exited.append(self)
            return False

    monkeypatch.setattr(fast, "RegionalCompile", FakeCompile)
    monkeypatch.setattr(fast, "enable_compile_cache", lambda: {"dir": "/cache", "source": "test"})
    real = fademem.pipeline.generator_for_memory  # one spec gets its own model, as a policy's adapter would give
    monkeypatch.setattr(fademem.pipeline, "generator_for_memory",
                        lambda model, spec: copy.deepcopy(model) if spec.startswith("fademem") else real(model, spec))
    with WanGenerator(ckpt, wan_dir, compile="default", compile_fallback=True, fast_decode=True, **kw) as gen:
        assert gen.pipe.overlap_decode and any("channels_last_3d" in n for n in gen.notes)
        assert gen.options() == {"compile": "default", "precision": "dtype", "fast_decode": True}
        gen.prepare(["sink", "fademem:budget=3", "sink"])
        assert [c.model for c in entered] == [gen.pipe.model, gen._models["fademem:budget=3"]]
        assert entered[0].decoder is gen.pipe.decoder and entered[1].decoder is None  # the shared decoder once
        assert all(c.mode == "default" and c.fallback for c in entered) and not exited
        for s in ("sink", "fademem:budget=3"):
            assert (gen.frames("a cat runs", s, 0, 0.5) == want[s]).all(), s
        assert len(entered) == 2 and not exited
        assert gen.model_id == plain.model_id  # compiling is not part of a job
        # a spec first seen after compiling, whose policy merges an adapter: the copy is made from the
        # uncompiled model (every context left), then every distinct model compiled again
        build = fademem.memory.build_memory
        monkeypatch.setattr(fademem.memory, "build_memory", lambda spec: type("M", (), {
            "generator_adapter": lambda self: object() if spec.startswith("fademem") else None})())
        assert (gen.frames("a cat runs", "fademem:budget=4", 0, 0.5) == want["fademem:budget=4"]).all()
        monkeypatch.setattr(fademem.memory, "build_memory", build)
        assert len(exited) == 2 and len(entered) == 5 and entered[2].decoder is gen.pipe.decoder
        assert [c.model for c in entered[2:]] == [gen._models[s] for s in ("sink", "fademem:budget=3",
                                                                          "fademem:budget=4")]
    assert sorted(map(id, exited)) == sorted(map(id, entered))


def test_a_policys_own_lora_files_key_its_jobs(tmp_path):
    """A spec that merges its own adapter (``fademem:lora=DIR``) keys its jobs by those files too: a LoRA
    retrained in place gets new keys (a rerun scores it again), other specs keep the plain hash."""
    import shutil

    from fademem.eval.jobs import expand_jobs, spec_hashes
    from fademem.memory.fademem import shipped_lora_dir

    lora = tmp_path / "ft"
    shutil.copytree(shipped_lora_dir(), lora)
    specs = ["fademem:budget=12", f"fademem:budget=12,lora={lora}"]
    first = spec_hashes(specs, "abc")
    assert first[specs[0]] == "abc" and first[specs[1]] != "abc"
    jobs = expand_jobs(["p"], specs, [0], seconds=2.0, model="wan:x", checkpoint_hash=first, size="64x64")
    assert [j.checkpoint_hash for j in jobs] == [first[specs[0]], first[specs[1]]]
    cfg = lora / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"r": 16', '"r": 16 '))
    again = spec_hashes(specs, "abc")
    assert again[specs[0]] == "abc" and again[specs[1]] != first[specs[1]]
    assert spec_hashes(specs, "abd")[specs[1]] != again[specs[1]]
