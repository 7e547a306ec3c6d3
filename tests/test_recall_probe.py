"""benchmarks/recall_probe.py on a tiny random model: every context rule scored, at every noise level, paired."""

from __future__ import annotations

import json

import numpy as np


def test_recall_probe_scores_every_rule(tiny_weights, tmp_path, monkeypatch, capsys, benchmark_script):
    mod = benchmark_script("recall_probe")
    res = mod.probe(tiny_weights, sigmas=(0.9,), gaps=(2,), scenes=1, device="cpu")
    assert set(res) == {"panback sigma=0.9", "home sigma=0.9"}
    for rules in res.values():
        assert set(rules) == {r + h for r in ("full", "window12", "sink3+9", "fademem12") for h in ("", "/madeup")}
        n = len(rules["window12"])
        assert n >= 1 and all(len(r) == n and np.all(np.isfinite(r)) for r in rules.values())
    text = mod.report(res)
    assert "window12/madeup" in text and "paired difference vs window12" in text
    out = tmp_path / "probe.json"
    monkeypatch.setattr("sys.argv", ["recall_probe", "--weights", tiny_weights, "--scenes", "1", "--gaps", "2",
                                     "--sigmas", "0.6", "--device", "cpu", "--out", str(out)])
    mod.main()
    assert json.loads(out.read_text())["results"]["home sigma=0.6"]["full/madeup"]
    assert "paired difference vs window12" in capsys.readouterr().out
