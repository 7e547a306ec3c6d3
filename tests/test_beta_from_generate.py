"""``fademem generate --beta-from spectrum.json`` (and ``fademem serve``): ``beta=auto`` in ``--memory`` resolved
from a spectrum report the way ``fademem bench memory`` resolves its policies, bad input refused before any
generation starts (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fademem.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a large red circle bouncing over a striped blue background , camera is static"


def _report(tmp_path, name="spectrum.json", verdict="supported", beta=0.42, saturated=False, pooled=True):
    res = {"verdict": verdict, "reason": "planted", "b": 0.29, "name": "clip.mp4",
           "beta": {"beta": beta, "beta_ci": [0.3, 0.55] if beta else None, "saturated": saturated, "note": ""}}
    path = tmp_path / name
    path.write_text(json.dumps({"videos": [res], "pooled": {**res, "n_clips": 3}} if pooled else res))
    return str(path)


def _generate(tiny_weights, out, *args):
    return CliRunner().invoke(main, ["generate", "--prompt", PROMPT, "--seconds", "1", "--device", "cpu", "--crf",
                                     "0", "--weights", tiny_weights, "--out", str(out), *args])


def _frames(path):
    from fademem.pipeline.video_io import iter_video_frames

    return np.stack(list(iter_video_frames(path)))


def test_generate_runs_the_measured_beta_and_says_where_it_came_from(tiny_weights, tmp_path):
    report = _report(tmp_path)
    r = _generate(tiny_weights, tmp_path / "auto.mp4", "--memory", "fademem:budget=6,beta=auto", "--beta-from", report)
    assert r.exit_code == 0, r.output
    out = r.output.replace("\n", " ")
    assert f"beta = 0.42 measured: suggested by --beta-from {report} (pooled over 3 clips, b = 0.29" in out
    assert "verdict supported" in out and "memory fademem:budget=6,beta=0.42" in out
    # the resolved beta is what runs: the same video as writing the number by hand
    r = _generate(tiny_weights, tmp_path / "hand.mp4", "--memory", "fademem:budget=6,beta=0.42")
    assert r.exit_code == 0, r.output
    assert np.array_equal(_frames(tmp_path / "auto.mp4"), _frames(tmp_path / "hand.mp4"))
    # a one-clip result (not a full report) is read too, and named
    r = _generate(tiny_weights, tmp_path / "one.mp4", "--memory", "fademem:budget=6,beta=auto", "--beta-from",
                  _report(tmp_path, "one.json", pooled=False))
    assert r.exit_code == 0 and "(clip.mp4, b = 0.29" in r.output, r.output


@pytest.mark.parametrize("args, message", [
    (["--memory", "fademem:beta=auto"], "beta=auto has no measured value (pass --beta-from FILE)"),
    (["--memory", "fademem", "--beta-from", "GOOD"], "no memory spec asks for it"),
    (["--memory", "fademem:beta=auto", "--beta-from", "MISSING"], "does not exist"),
    (["--memory", "fademem:beta=auto", "--beta-from", "BAD"], "cannot read"),
    (["--memory", "fademem:beta=auto", "--beta-from", "NONE"], "verdict is 'none'"),
    (["--memory", "fademem:beta=auto", "--beta-from", "NOFIT"], "suggests no beta"),
    (["--memory", "fademem:beta=auto", "--beta-from", "SATURATED"], "saturated at the floor"),
    (["--memory", "fademem:beta=auto", "--beta-from", "NOTREPORT"], "has no 'verdict'"),
    (["--memory", "fademem:beta=auto,budget=-1", "--beta-from", "GOOD"], "--memory"),
    (["--resume", "STATE", "--beta-from", "GOOD"], "--beta-from is not used with --resume"),
])
def test_bad_beta_from_is_a_click_error_before_any_generation(tiny_weights, tmp_path, args, message):
    files = {"GOOD": _report(tmp_path), "NONE": _report(tmp_path, "n.json", verdict="none", beta=None),
             "NOFIT": _report(tmp_path, "f.json", verdict="weak", beta=None),
             "SATURATED": _report(tmp_path, "s.json", beta=0.05, saturated=True),
             "MISSING": str(tmp_path / "missing.json"), "BAD": str(tmp_path / "bad.json"),
             "NOTREPORT": str(tmp_path / "other.json"), "STATE": str(tmp_path / "state.safetensors")}
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    r = _generate(tiny_weights, tmp_path / "v.mp4", *[files.get(a, a) for a in args])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert message in r.output.replace("\n", " ")
    assert not (tmp_path / "v.mp4").exists()


def test_serve_resolves_beta_auto_the_same_way(tmp_path):
    pytest.importorskip("starlette")
    base = ["serve", "--port", "0", "--out-dir", str(tmp_path / "live"), "--device", "cpu"]
    r = CliRunner().invoke(main, base + ["--memory", "fademem:beta=auto"])
    assert r.exit_code == 2 and "beta=auto has no measured value" in r.output, r.output
    r = CliRunner().invoke(main, base + ["--memory", "fademem:beta=auto", "--beta-from",
                                         _report(tmp_path, verdict="none", beta=None)])
    assert r.exit_code == 2 and "verdict is 'none'" in r.output, r.output
