"""beta=auto: FadeMem's exponent measured from data (a `fademem spectrum` report) instead of the paper's 0.3,
resolved in memory specs before anything runs (issue 18)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fademem.cli import main
from fademem.memory import build_memory, parse_spec, resolve_auto


def _report(tmp_path, verdict="supported", beta=0.42, saturated=False, name="spectrum.json"):
    pooled = {"verdict": verdict, "reason": "planted", "b": 0.29,
              "beta": {"beta": beta, "saturated": saturated, "note": ""}}
    path = tmp_path / name
    path.write_text(json.dumps({"videos": [pooled], "pooled": pooled}))
    return str(path)


def test_resolve_auto_replaces_only_auto_knobs():
    assert resolve_auto("fademem:budget=12,beta=auto", {"beta": 0.42}) == "fademem:budget=12,beta=0.42"
    assert build_memory(resolve_auto("fademem:beta=auto", {"beta": 0.42})).beta == 0.42
    for spec in ("full", "sink:budget=12,sink=3", "fademem:beta=0.3"):
        assert resolve_auto(spec, {"beta": 0.42}) == spec
    with pytest.raises(ValueError, match=r"beta=auto has no measured value \(pass --beta-from FILE\)"):
        resolve_auto("fademem:beta=auto", {})
    with pytest.raises(ValueError, match="beta=auto is a value measured from data"):
        parse_spec("fademem:beta=auto")


def _bench(tiny_weights, out, *args):
    return CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, "--episodes", "1", "--seconds",
                                     "7.5", "--opening-seconds", "1.5", "--out", str(out), "--no-progress",
                                     "--no-plot", "--scenes", "0", *args])


def test_bench_memory_runs_the_measured_beta_beside_the_papers(tiny_weights, tmp_path):
    r = _bench(tiny_weights, tmp_path / "b", "--policies", "fademem:budget=6,fademem:budget=6,beta=auto",
               "--beta-from", _report(tmp_path))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "b" / "memory.json").read_text())
    assert [p["spec"] for p in report["policies"]] == ["fademem:budget=6", "fademem:budget=6,beta=0.42"]


@pytest.mark.parametrize("args, message", [
    (["--policies", "fademem:beta=auto"], "beta=auto has no measured value (pass --beta-from FILE)"),
    (["--policies", "fademem", "--beta-from", "GOOD"], "no memory spec asks for it"),
    (["--policies", "fademem:beta=auto", "--beta-from", "NONE"], "verdict is 'none'"),
    (["--policies", "fademem:beta=auto", "--beta-from", "SATURATED"], "saturated at the floor"),
    (["--policies", "fademem:beta=auto", "--beta-from", "BAD"], "cannot read"),
])
def test_beta_auto_errors_name_the_problem_before_any_work(tiny_weights, tmp_path, args, message):
    files = {"GOOD": _report(tmp_path), "NONE": _report(tmp_path, verdict="none", beta=None, name="n.json"),
             "SATURATED": _report(tmp_path, beta=0.05, saturated=True, name="s.json")}
    (tmp_path / "bad.json").write_text("{not json")
    files["BAD"] = str(tmp_path / "bad.json")
    args = [files.get(a, a) for a in args]
    r = _bench(tiny_weights, tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", " ") and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
