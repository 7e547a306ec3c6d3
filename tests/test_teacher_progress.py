"""benchmarks/teacher_progress.py on tiny flow-matching teachers (pixel codec, one 32-wide layer): a finite loss,
exactly zero difference for a checkpoint paired with a copy of itself, a trained teacher below its own
initialisation, and clear errors for bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.test_embedded_v2 import _tiny_train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(fresh, trained): the same initialisation saved untrained and after 40 steps of the v loss."""
    from fademem.embedded.train import train

    d = tmp_path_factory.mktemp("t")
    paths = []
    for name, steps in (("fresh", 0), ("trained", 40)):
        cfg = _tiny_train(steps=steps, batch=4, lr=3e-3, warmup=5, max_context=6, sample_steps=8, loss="v",
                          degrade_p=0.0)
        train(cfg, d / f"{name}.safetensors", device="cpu", log=lambda *_: None)
        paths.append(str(d / f"{name}.safetensors"))
    return paths


def test_progress_pairs_checkpoints_on_the_same_batches(teachers, tmp_path, benchmark_script):
    mod = benchmark_script("teacher_progress")
    fresh, trained = teachers
    copy = str(tmp_path / "copy.safetensors")
    shutil.copy(trained, copy)  # loaded and scored again: the same figures only if batches and noise are paired
    res = mod.progress([fresh, trained, copy], ["fresh", "trained", "copy"], batches=2, batch=2, seed=3,
                       log=lambda *_: None)
    assert res["groups"] == ["first"] * 2 + ["context"] * 2 + ["revisit"] * 2
    assert res["kinds"][0] == "none" and all(k.startswith("revisit-") for k in res["kinds"][4:])
    fr, tr, cp = res["checkpoints"]
    assert np.isfinite(fr["loss"]).all() and np.isfinite(tr["object_loss"]).all()
    assert np.asarray(tr["loss"]).shape == (6, len(res["levels"])) and res["levels"][0] == 1.0
    assert (tr["steps_done"], fr["steps_done"]) == (40, 0)
    assert cp["loss"] == tr["loss"] and cp["object_loss"] == tr["object_loss"]
    summ = mod.summary(res)
    same = summ["rows"][2]["minus_previous"]
    assert same["vs"] == "trained" and all(same["loss"][g]["mean"] == 0.0 for g in ("first", "context", "all"))
    # 40 steps lower the held-out loss well below the initialisation's, in every batch
    assert summ["rows"][1]["loss"]["all"] < 0.8 * summ["rows"][0]["loss"]["all"]
    assert (np.mean(tr["loss"], 1) < np.mean(fr["loss"], 1)).all()
    assert summ["rows"][1]["minus_previous"]["loss"]["all"]["high"] < 0
    text = mod.report(res, summ)
    assert "copy - trained" in text and "copy - fresh" in text and "object pixels only" in text


def test_progress_cli_writes_json_and_txt(teachers, tmp_path, monkeypatch, capsys, benchmark_script):
    mod = benchmark_script("teacher_progress")
    out = tmp_path / "p.json"
    monkeypatch.setattr("sys.argv", ["teacher_progress", "--weights", *teachers, "--labels", "a,b", "--batches", "2",
                                     "--batch", "1", "--device", "cpu", "--out", str(out)])
    mod.main()
    got = json.loads(out.read_text())
    assert [c["label"] for c in got["results"]["checkpoints"]] == ["a", "b"]
    assert "b - a" in (tmp_path / "p.txt").read_text() and "b - a" in capsys.readouterr().out


def test_progress_refuses_bad_inputs(teachers, tmp_path, benchmark_script):
    from fademem import embedded
    from fademem.embedded.bundle import SamplingSchedule

    mod = benchmark_script("teacher_progress")
    with pytest.raises(SystemExit, match="not found"):
        mod.progress([teachers[0], str(tmp_path / "missing.safetensors")])
    with pytest.raises(SystemExit, match="--batches must be >= 2"):
        mod.progress(teachers, batches=1)
    with pytest.raises(SystemExit, match="2 labels for 1"):
        mod.progress(teachers[:1], ["a", "b"])
    cfg = embedded.EmbeddedConfig()
    student = tmp_path / "student.safetensors"
    embedded.save(embedded.build(cfg, cfg.dit_config(32, 1, 2, 64), schedule=SamplingSchedule.distilled()), student)
    with pytest.raises(SystemExit, match="flow-matching teacher"):
        mod.progress([str(student)], batches=2, batch=1)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit, match="error: "):
        mod.progress([str(tmp_path / "junk.safetensors")], batches=2, batch=1)
