"""benchmarks/guidance_probe.py on a tiny random flow-matching teacher: every guidance scored on the same episodes,
paired against freezing and against the last guidance; a distilled model is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from fademem import embedded
    from fademem.embedded.bundle import SamplingSchedule

    torch.manual_seed(0)
    cfg = embedded.EmbeddedConfig()
    bundle = embedded.build(cfg, cfg.dit_config(32, 1, 2, 64), schedule=SamplingSchedule.uniform(4, 5.0))
    path = tmp_path_factory.mktemp("t") / "teacher.safetensors"
    embedded.save(bundle, path)
    return str(path)


def test_guidance_probe_scores_each_guidance_on_the_same_episodes(tiny_teacher, tmp_path, monkeypatch, capsys,
                                                                  benchmark_script):
    mod = benchmark_script("guidance_probe")
    res = mod.probe(tiny_teacher, guidances=(1.0, 3.0), episodes=2, context=3)
    assert set(res) == {"prompts", "freeze", "guidance 1", "guidance 3"}
    assert len(res["prompts"]) == 2 and all(len(res[k]) == 2 for k in ("freeze", "guidance 1", "guidance 3"))
    assert all(np.isfinite(res[k]).all() for k in ("freeze", "guidance 1", "guidance 3"))
    assert res["guidance 1"] != res["guidance 3"]  # the guidance changes the continuation
    text = mod.report(res)
    assert "- freeze:" in text and "- guidance 3:" in text
    out = tmp_path / "g.json"
    monkeypatch.setattr("sys.argv", ["guidance_probe", "--weights", tiny_teacher, "--episodes", "2", "--context", "3",
                                     "--guidances", "1,2", "--device", "cpu", "--out", str(out)])
    mod.main()
    assert set(json.loads(out.read_text())["results"]) == {"prompts", "freeze", "guidance 1", "guidance 2"}
    assert "guidance 2" in capsys.readouterr().out


def test_guidance_probe_refuses_a_distilled_model_and_a_bad_context(tiny_teacher, tmp_path, benchmark_script):
    from fademem import embedded
    from fademem.embedded.bundle import SamplingSchedule

    mod = benchmark_script("guidance_probe")
    cfg = embedded.EmbeddedConfig()
    student = tmp_path / "student.safetensors"
    embedded.save(embedded.build(cfg, cfg.dit_config(32, 1, 2, 64), schedule=SamplingSchedule.distilled()), student)
    with pytest.raises(SystemExit, match="flow-matching teacher"):
        mod.probe(str(student), episodes=1)
    with pytest.raises(SystemExit, match="--context"):
        mod.probe(tiny_teacher, episodes=1, context=4)
