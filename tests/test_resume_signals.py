"""A real SIGINT / SIGTERM during ``fademem generate --state S`` (embedded model, CPU, in a
subprocess): the documented exit codes (130 / 143), a playable video of the frames done so far, and a
state that ``--resume`` continues to the same frames (lossless ``--crf 0``) and the same final state
(memory, RNG, decoder) as an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from safetensors.torch import load_file
from test_resume import PROMPT, _cli, _frames

from fademem.pipeline.state import load_state
from fademem.pipeline.video_io import count_frames

BASE = ["generate", "--prompt", PROMPT, "--memory", "window:budget=6", "--device", "cpu", "--crf", "0"]
PROGRESS = re.compile(rb"chunks:.*?\| *([1-9]\d*)/\d+ ")  # tqdm: at least one chunk done


def _start(tmp_path, name):
    """``fademem generate`` of a 20 s video (160 frames) in a subprocess, with its stderr read on."""
    cmd = [sys.executable, "-m", "fademem.cli", *BASE, "--seconds", "20", "--out", str(tmp_path / f"{name}.mp4"),
           "--state", str(tmp_path / f"{name}.state")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    err = bytearray()

    def read():
        while chunk := proc.stderr.read1(4096):
            err.extend(chunk)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return proc, err, t


def _wait_running(proc, err, timeout=60.0):
    """Until the run has finished a chunk (its signal handlers are installed and it is mid-video)."""
    end = time.monotonic() + timeout
    while not PROGRESS.search(bytes(err)):
        assert proc.poll() is None, f"exited early ({proc.returncode}): {bytes(err).decode(errors='replace')}"
        assert time.monotonic() < end, f"no progress after {timeout} s: {bytes(err).decode(errors='replace')}"
        time.sleep(0.02)


def test_real_signals_stop_save_and_resume_exactly(tmp_path):
    runs = {sig: (name, *_start(tmp_path, name)) for sig, name in ((signal.SIGINT, "int"), (signal.SIGTERM, "term"))}
    for sig, (_, proc, err, _) in runs.items():
        _wait_running(proc, err)
        proc.send_signal(sig)
    done = {}
    for sig, (name, proc, err, reader) in runs.items():
        try:
            rc = proc.wait(timeout=60)
        finally:
            proc.kill()
        reader.join(timeout=5)
        log = bytes(err).decode(errors="replace")
        assert rc == 128 + sig == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], log
        assert f"{sig.name}: finishing the current chunk" in log and "continue with: fademem generate --resume" in log
        video, state = tmp_path / f"{name}.mp4", tmp_path / f"{name}.state"
        saved = load_state(state)
        n = saved["start_frame"]
        assert 0 < n < 160 and n % 3 == 0, log
        assert saved["video"]["frames"] == n == count_frames(video)  # one video frame per latent frame
        assert _frames(video).shape == (n, 64, 64, 3)  # playable: decodes to the frames done so far
        assert not os.path.exists(tmp_path / f"{name}.part.mp4")
        done[name] = n

    total = max(done.values()) + 12  # resume to a shorter total than 20 s: enough to continue each run
    seconds = ["--seconds", f"{total / 8:g}"]  # 8 fps
    ref, ref_state = tmp_path / "ref.mp4", tmp_path / "ref.state"
    r = _cli(BASE + seconds + ["--out", str(ref), "--state", str(ref_state)])
    assert r.exit_code == 0, r.output
    want, want_state = _frames(ref), load_file(str(ref_state))
    assert want.shape[0] == total
    for name in done:
        r = _cli(["generate", "--resume", str(tmp_path / f"{name}.state"), *seconds])
        assert r.exit_code == 0, r.output
        got = _frames(tmp_path / f"{name}.mp4")
        assert got.shape == want.shape and np.array_equal(got, want), name
        got_state = load_file(str(tmp_path / f"{name}.state"))
        assert got_state.keys() == want_state.keys()
        assert all(np.array_equal(got_state[k].numpy(), want_state[k].numpy()) for k in want_state), name
