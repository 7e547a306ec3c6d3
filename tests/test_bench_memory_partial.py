"""`fademem bench memory`: partial reports after every policy, SIGINT keeps the finished policies,
--time-budget skips policies forecast not to fit."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from fademem.bench import memory_policy
from fademem.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
POLICIES = ["full", "window:budget=6", "sink:budget=6,sink=1"]


def _args(weights, out, *extra):
    return ["bench", "memory", "--weights", weights, "--episodes", "2", "--seconds", "7.5", "--opening-seconds",
            "1.5", "--scenes", "0,1", "--budget", "6", "--policies", ",".join(POLICIES), "--out", str(out),
            "--no-progress", *extra]


def _wrap(monkeypatch, hook):
    """Replace the per-policy runner: ``hook(call_index, spec)`` runs before the real one (may raise);
    returns the list of results the real runner gave."""
    real, calls, got = memory_policy.run_policy, [0], []

    def fake(st, requested, spec, note, log=print):
        hook(calls[0], spec)
        calls[0] += 1
        got.append(real(st, requested, spec, note, log))
        return got[-1]

    monkeypatch.setattr(memory_policy, "run_policy", fake)
    return got


def test_sigint_in_the_second_policy_keeps_the_first(tiny_weights, tmp_path, monkeypatch):
    def hook(i, spec):
        if i == 1:
            assert spec == "window:budget=6"
            raise KeyboardInterrupt

    got = _wrap(monkeypatch, hook)
    out = tmp_path / "int"
    r = CliRunner().invoke(main, _args(tiny_weights, out))
    assert r.exit_code == 130, r.output
    rep = json.loads((out / "memory.json").read_text())
    assert re.fullmatch(r"SIGINT after \d+\.\d s during window:budget=6", rep["interrupted"])
    assert rep["partial"] is True and rep["policies_finished"] == ["full"]
    assert [p["spec"] for p in rep["policies"]] == ["full"]
    full = rep["policies"][0]
    assert full["error"] is None and len(full["episodes"]) == 2 and len(full["episodes"][0]["psnr"]) == 48
    assert full["episodes"][0]["psnr"] == pytest.approx(got[0]["episodes"][0]["psnr"])
    assert rep["policies_not_run"] == [
        {"requested": "window:budget=6", "spec": "window:budget=6", "reason": "interrupted (SIGINT)"},
        {"requested": "sink:budget=6,sink=1", "spec": "sink:budget=6,sink=1", "reason": "not reached (interrupted)"}]
    assert rep["pairwise"]["pairs"] == [] and rep["config"]["latent_frames"] == 60  # existing fields still there
    table = (out / "memory.txt").read_text()
    assert table.startswith("PARTIAL REPORT (interrupted: SIGINT after")
    assert "window:budget=6            not run: interrupted (SIGINT)" in table
    assert (out / "memory.png").stat().st_size > 1000
    assert "interrupted: SIGINT after" in r.output


def test_time_budget_skips_policies_forecast_not_to_fit(tiny_weights, tmp_path, monkeypatch):
    real = memory_policy.run_policy

    def slow_first(st, requested, spec, note, log=print):
        res = real(st, requested, spec, note, log)
        res["seconds"] = 1000.0  # as if the first policy had taken 1000 s
        return res

    monkeypatch.setattr(memory_policy, "run_policy", slow_first)
    out = tmp_path / "tb"
    r = CliRunner().invoke(main, _args(tiny_weights, out, "--time-budget", "600"))
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "memory.json").read_text())
    assert rep["config"]["time_budget_s"] == 600.0
    assert rep["partial"] is False and rep["interrupted"] is None
    assert [p["spec"] for p in rep["policies"]] == ["full"] == rep["policies_finished"]
    assert [n["spec"] for n in rep["policies_not_run"]] == POLICIES[1:]
    for n in rep["policies_not_run"]:  # no bounded policy measured yet: the forecast is full's 1000 s
        m = re.fullmatch(r"time budget: forecast 1000\.0 s, (\d+\.\d) s left", n["reason"])
        assert m and 500 < float(m.group(1)) < 600, n["reason"]
    assert "sink:budget=6,sink=1       not run: time budget: forecast 1000.0 s" in (out / "memory.txt").read_text()
    # a bad budget is refused before anything runs
    bad = CliRunner().invoke(main, _args(tiny_weights, tmp_path / "bad", "--time-budget", "0"))
    assert bad.exit_code != 0 and "--time-budget must be a positive number of seconds" in bad.output
    assert not (tmp_path / "bad").exists()


def test_forecast_uses_the_same_name_then_the_same_kind():
    res = [{"label": "full", "unbounded": True, "error": None, "seconds": 10.0},
           {"label": "window", "unbounded": False, "error": None, "seconds": 2.0},
           {"label": "sink", "unbounded": False, "error": "RuntimeError: x", "seconds": 50.0}]
    f = memory_policy.forecast_seconds
    assert f(res, "full") == 10.0 and f(res, "window:budget=6") == 2.0
    assert f(res, "fademem:budget=12") == 2.0  # bounded: the bounded ones only (the failed sink does not count)
    assert f(res[1:], "full") == 2.0 and f([], "full") is None and f(res[2:], "window") is None
    assert memory_policy.budget_reason(res, "full", 9.0) == "time budget: forecast 10.0 s, 9.0 s left"
    assert memory_policy.budget_reason(res, "full", 10.0) is None
    assert memory_policy.budget_reason([], "full", -5.0) is None  # nothing measured: the first always runs


def test_partial_report_after_the_first_policy(tiny_weights, tmp_path, monkeypatch):
    out = tmp_path / "part"
    seen = {}

    def hook(i, spec):
        if i == 1:  # the second policy starts: the file on disk is the report after the first
            seen["json"] = json.loads((out / "memory.json").read_text())
            seen["txt"] = (out / "memory.txt").read_text()

    _wrap(monkeypatch, hook)
    r = CliRunner().invoke(main, _args(tiny_weights, out, "--no-plot"))
    assert r.exit_code == 0, r.output
    snap, final = seen["json"], json.loads((out / "memory.json").read_text())
    assert snap["partial"] is True and snap["interrupted"] is None and snap["policies_finished"] == ["full"]
    assert [p["spec"] for p in snap["policies"]] == ["full"]
    assert [(n["spec"], n["reason"]) for n in snap["policies_not_run"]] == [
        (s, "not reached yet (partial report)") for s in POLICIES[1:]]
    assert snap["policies"][0]["summary"] == final["policies"][0]["summary"]  # the same assembly
    assert seen["txt"].startswith("PARTIAL REPORT (run still going); finished: full")
    assert final["partial"] is False and final["policies_finished"] == POLICIES and final["policies_not_run"] == []
    assert final["pairwise"]["pairs"] == [[a, b] for i, a in enumerate(POLICIES) for b in POLICIES[i + 1:]]
    assert not (out / "memory.txt").read_text().startswith("PARTIAL") and not (out / "memory.png").exists()
    assert r.output.count("partial report (") == 3  # after each policy
