"""`fademem bench memory --merge`: reports of the same benchmark run with different policies merged into the
report one run of all of them gives (pairwise Holm comparisons, paired_vs_full, equal budgets), bad inputs
refused before any work."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from click.testing import CliRunner

from fademem.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = ["full", "window:budget=6", "sink:budget=6,sink=1"]
# derived from the set of policies (recomputed by --merge); every other field must come out as one run's
RECOMPUTED = ("pairwise", "equal_budget", "policies", "config", "policies_finished", "merged_from", "elapsed_s")


def _run(weights, out, policies, *extra):
    r = CliRunner().invoke(main, ["bench", "memory", "--weights", weights, "--episodes", "2", "--seconds", "7.5",
                                  "--opening-seconds", "1.5", "--scenes", "0,1", "--budget", "6", "--policies",
                                  ",".join(policies), "--out", str(out), "--no-progress", "--no-plot", *extra])
    assert r.exit_code == 0, r.output
    return out / "memory.json"


def _merge(out, *paths, extra=()):
    args = ["bench", "memory", "--out", str(out), *extra]
    for p in paths:
        args += ["--merge", str(p)]
    return CliRunner().invoke(main, args)


def _load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tiny_weights, tmp_path_factory):
    """One run of every policy, and the same benchmark split in two runs sharing 'window:budget=6'."""
    d = tmp_path_factory.mktemp("merge")
    whole = _run(tiny_weights, d / "all", ALL)
    a = _run(tiny_weights, d / "a", ALL[:2])
    b = _run(tiny_weights, d / "b", ALL[1:])
    return {"dir": d, "all": whole, "a": a, "b": b}


def _without_timing(policies):
    return [{k: v for k, v in p.items() if k != "seconds"} for p in policies]


def test_a_split_run_merges_into_the_whole_run(runs, tmp_path):
    gz = tmp_path / "b.json.gz"  # a gzip report is read as well
    gz.write_bytes(gzip.compress(runs["b"].read_bytes(), 9))
    r = _merge(tmp_path / "m", runs["a"], gz)
    assert r.exit_code == 0, r.output
    got, want = _load(tmp_path / "m" / "memory.json"), _load(runs["all"])
    assert got["pairwise"] == want["pairwise"]  # every pair, Holm over the 3 pairs, identical to one run
    assert got["pairwise"]["pairs"] == [[ALL[0], ALL[1]], [ALL[0], ALL[2]], [ALL[1], ALL[2]]]
    assert got["equal_budget"] == want["equal_budget"]
    assert _without_timing(got["policies"]) == _without_timing(want["policies"])  # incl. paired_vs_full vs 'full'
    assert "paired_vs_full" in got["policies"][2] and "paired_vs_full" not in _load(runs["b"])["policies"][1]
    assert got["policies_finished"] == ALL and got["config"]["policies"] == ALL and got["partial"] is False
    for key in want:
        if key not in RECOMPUTED:
            assert got[key] == want[key], key
    assert [m["path"] for m in got["merged_from"]] == [str(runs["a"]), str(gz)]
    assert got["merged_from"][1]["finished"] == ALL[1:]
    table = (tmp_path / "m" / "memory.txt").read_text()
    assert table.startswith("Merged (no model run) from: ")
    assert "Holm-corrected 95% intervals over the 3 pairs" in table and "window:budget=6 - sink:budget=6,sink=" in table
    assert (tmp_path / "m" / "memory.png").is_file()


def test_a_report_merged_with_itself_is_itself(runs, tmp_path):
    r = _merge(tmp_path / "m", runs["all"], runs["all"], extra=["--no-plot"])
    assert r.exit_code == 0, r.output
    got, want = _load(tmp_path / "m" / "memory.json"), _load(runs["all"])
    assert {k: v for k, v in got.items() if k not in ("merged_from", "elapsed_s")} == \
        {k: v for k, v in want.items() if k != "elapsed_s"}
    assert not (tmp_path / "m" / "memory.png").exists()


def _edited(runs, tmp_path, name, edit):
    rep = _load(runs["b"])
    edit(rep)
    path = tmp_path / name
    path.write_text(json.dumps(rep))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["config"].update(seed=1), "config.seed is 0 in"),
    (lambda r: r["config"].update(budget=7), "config.budget is 6 in"),
    (lambda r: r["config"].update(critic="c.safetensors"), "config.critic is null in"),
    (lambda r: r["config"].update(schedule="other"), "config.schedule is "),
    (lambda r: r["episodes"][1].update(prompt="another scene"), "episodes[1].prompt is "),
    (lambda r: r["episodes"][0]["lags"].__setitem__(20, 99), "episodes[0].lags[20] is "),
])
def test_a_different_benchmark_is_refused_naming_the_field(runs, tmp_path, edit, message):
    bad = _edited(runs, tmp_path, "bad.json", edit)
    r = _merge(tmp_path / "m", runs["a"], bad)
    assert r.exit_code != 0 and "not the same benchmark: " + message in r.output, r.output
    assert str(bad) in r.output and not (tmp_path / "m").exists()


def test_a_shared_policy_must_score_identically(runs, tmp_path):
    def edit(rep):
        rep["policies"][0]["episodes"][1]["ssim"][5] += 0.25

    bad = _edited(runs, tmp_path, "bad.json", edit)
    r = _merge(tmp_path / "m", runs["a"], bad)
    assert r.exit_code != 0 and "policy 'window:budget=6'" in r.output and "different per-episode scores" in r.output
    assert "largest difference 0.25 (episode 1 ssim)" in r.output, r.output


def test_bad_inputs_are_refused_before_any_work(runs, tmp_path):
    cases = [(tmp_path / "missing.json", "no such file"),
             (_edited(runs, tmp_path, "speed.json", lambda r: r.update(benchmark="speed")),
              "not a `fademem bench memory` report"),
             (_edited(runs, tmp_path, "v1.json", lambda r: r.update(version=1)), "report version 1, this merges "
                                                                                  "version 2"),
             (_edited(runs, tmp_path, "failed.json", lambda r: [p.update(error="RuntimeError: x")
                                                                 for p in r["policies"]]),
              "no finished policy in the report (0 of 2)")]
    text = tmp_path / "text.json"
    text.write_text("not json")
    cases.append((text, "not a JSON report"))
    for path, message in cases:
        r = _merge(tmp_path / "m", runs["a"], path)
        assert r.exit_code != 0 and message in r.output and str(path) in r.output, (path, r.output)
        assert not (tmp_path / "m").exists()
    r = _merge(tmp_path / "m", runs["a"], runs["b"], extra=["--policies", "full", "--seed", "3"])
    assert r.exit_code != 0 and "--merge runs no model: --policies, --seed does not apply" in r.output, r.output


def test_cut_episodes_merge_with_their_after_return_comparisons(tiny_weights, tmp_path):
    cut = ["--episodes-kind", "cuts", "--cuts", "1.5,3.75"]

    def run(out, policies):
        r = CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, *cut, "--episodes", "2",
                                      "--seconds", "6", "--opening-seconds", "2.25", "--budget", "6", "--policies",
                                      ",".join(policies), "--out", str(out), "--no-progress", "--no-plot"])
        assert r.exit_code == 0, r.output
        return out / "memory.json"

    whole, a, b = run(tmp_path / "all", ALL[:2]), run(tmp_path / "a", ALL[:1]), run(tmp_path / "b", ALL[1:2])
    shutil.rmtree(tmp_path / "m", ignore_errors=True)
    r = _merge(tmp_path / "m", a, b, extra=["--no-plot"])
    assert r.exit_code == 0, r.output
    got, want = _load(tmp_path / "m" / "memory.json"), _load(whole)
    assert got["pairwise"] == want["pairwise"] and "after_return" in got["pairwise"]
    assert _without_timing(got["policies"]) == _without_timing(want["policies"])
