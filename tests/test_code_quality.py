"""The code's own shape, checked by the ecosystem's tools as part of the test command.

* import-linter: the layer contracts in ``pyproject.toml`` (cli -> bench | analysis | compressor ->
  pipeline -> embedded -> wan -> memory -> rope | metrics; policies import no generator, pipeline or
  training code; generic paths import no policy module);
* ruff: the lint rules in ``pyproject.toml``;
* no Python file of the package over ~400 lines (each file one idea a reader can hold).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 420  # "~400": a file may run a little over rather than be cut mid-idea


def _tool(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return exe


def test_import_layers_hold():
    res = subprocess.run([_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and " 0 broken" in res.stdout


def test_ruff_clean():
    res = subprocess.run([_tool("ruff"), "check", "fademem", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "fademem").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by idea: {long}"
