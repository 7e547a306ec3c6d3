"""Exact resume (issue 16): a generation stopped at a chunk boundary, saved to a state file and
loaded into a fresh pipeline continues bit for bit as the uninterrupted run, under every policy,
for the embedded model and a tiny Wan config; the CLI round trip (``--state`` / ``--resume``); and
clear errors for states of another format, model, policy or settings."""

from __future__ import annotations

import pytest
import torch
from test_golden import EMBEDDED_PROMPT, EMBEDDED_SPECS, EMBEDDED_SWITCH, WAN_SPECS, ToyText

from fademem import embedded
from fademem.pipeline import VideoPipeline, generator_for_memory
from fademem.pipeline.state import StateError, load_state, save_state
from fademem.wan.model import CausalWanModel, WanConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES = 15  # 5 chunks


@pytest.fixture(scope="module")
def bundle():
    return embedded.load()


def _embedded_pipe(bundle, spec):
    return VideoPipeline(generator_for_memory(bundle.model, spec), bundle.text, bundle.codec)


def _wan_pipe(spec=None, seed=0):
    torch.manual_seed(seed)
    cfg = WanConfig.tiny()
    return VideoPipeline(CausalWanModel(cfg).eval(), ToyText(cfg.text_dim))


def _collect(chunks):
    chunks = list(chunks)
    lat = torch.cat([c.latents for c in chunks], dim=2)
    frames = torch.cat([c.frames for c in chunks], dim=1) if chunks[0].frames is not None else None
    return lat, frames


def _resumed(make_pipe, prompt, spec, shape, k, switches, tmp_path, frames=FRAMES, first_frames=None,
             first_switches=None):
    """k chunks, saved to a file, loaded into a fresh pipeline's session, then the rest."""
    pipe = make_pipe()
    s1 = pipe.session(prompt, first_frames or frames, memory=spec, seed=7, latent_shape=shape,
                      switches=switches if first_switches is None else first_switches)
    head = []
    for _ in range(k):
        head += s1.step()
    head += s1.drain()
    path = save_state(tmp_path / "run.state", s1.state_dict())
    s2 = make_pipe().session(prompt, frames, memory=spec, seed=7, latent_shape=shape, switches=switches)
    s2.load_state_dict(load_state(path))
    tail = []
    while not s2.done:
        tail += s2.step()
    tail += s2.drain()
    return _collect(head + tail)


@pytest.mark.parametrize("policy", sorted(EMBEDDED_SPECS))
def test_embedded_resume_is_exact(bundle, policy, tmp_path):
    spec = EMBEDDED_SPECS[policy]
    shape = embedded.latent_shape(bundle.cfg)
    switches = [(9, EMBEDDED_SWITCH)]  # after the resume point at frame 6
    want = _collect(_embedded_pipe(bundle, spec).generate(EMBEDDED_PROMPT, FRAMES, memory=spec, seed=7,
                                                         switches=switches, latent_shape=shape, progress=False))
    got = _resumed(lambda: _embedded_pipe(bundle, spec), EMBEDDED_PROMPT, spec, shape, 2, switches, tmp_path)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("policy", sorted(WAN_SPECS))
def test_wan_resume_is_exact(policy, tmp_path):
    spec = WAN_SPECS[policy]
    cfg = WanConfig.tiny()
    shape = (cfg.in_dim, 4, 6)
    switches = [(6, "a dog"), (12, "a bird")]  # one before the resume point (frame 9), one after
    want = _collect(_wan_pipe().generate("a cat", FRAMES, memory=spec, seed=7, switches=switches,
                                         latent_shape=shape, progress=False))
    got = _resumed(_wan_pipe, "a cat", spec, shape, 3, switches, tmp_path)
    assert torch.equal(got[0], want[0])


def test_resume_extends_the_video_with_a_new_switch(tmp_path):
    """Saved from a 9-frame run without switches, resumed to 15 frames with a new prompt at the resume
    point: the same as a 15-frame run with that switch from the start."""
    spec, shape = WAN_SPECS["fademem"], (WanConfig.tiny().in_dim, 4, 6)
    switches = [(9, "a dog")]
    want = _collect(_wan_pipe().generate("a cat", FRAMES, memory=spec, seed=7, switches=switches,
                                         latent_shape=shape, progress=False))
    got = _resumed(_wan_pipe, "a cat", spec, shape, 3, switches, tmp_path, first_frames=9, first_switches=[])
    assert torch.equal(got[0], want[0])


def _saved(tmp_path, spec="window:budget=6", seed=0):
    pipe = _wan_pipe(seed=seed)
    s = pipe.session("a cat", 9, memory=spec, seed=7, latent_shape=(WanConfig.tiny().in_dim, 4, 6),
                     switches=[(3, "a dog")])
    s.step(), s.step()
    return save_state(tmp_path / "run.state", s.state_dict())


def _fresh(spec="window:budget=6", seed=0, prompt="a cat", switches=((3, "a dog"),), **kw):
    return _wan_pipe(seed=seed).session(prompt, 9, memory=spec, seed=kw.pop("noise_seed", 7),
                                        latent_shape=(WanConfig.tiny().in_dim, 4, 6), switches=list(switches), **kw)


def test_mismatch_errors_name_the_difference(tmp_path):
    state = load_state(_saved(tmp_path))
    with pytest.raises(StateError, match="memory 'window:budget=6'.*'sink"):
        _fresh(spec="sink:budget=6,sink=2").load_state_dict(state)
    with pytest.raises(StateError, match="model weights differ"):
        _fresh(seed=1).load_state_dict(state)
    with pytest.raises(StateError, match="seed 7 .state. vs 8"):
        _fresh(noise_seed=8).load_state_dict(state)
    with pytest.raises(StateError, match="prompts"):
        _fresh(prompt="a cow").load_state_dict(state)
    with pytest.raises(StateError, match="prompt switches before latent frame 6"):
        _fresh(switches=[]).load_state_dict(state)
    other = dict(state, format="fademem.state/2")
    with pytest.raises(StateError, match="fademem.state/2"):
        _fresh().load_state_dict(other)


def test_model_config_mismatch(tmp_path):
    state = load_state(_saved(tmp_path))
    state["model"]["config"]["num_layers"] = 99
    with pytest.raises(StateError, match="model config differs: num_layers 99"):
        _fresh().load_state_dict(state)


def test_state_file_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="state file not found"):
        load_state(tmp_path / "nope.state")
    (tmp_path / "junk.state").write_bytes(b"not a state")
    with pytest.raises(StateError, match="not a fademem state file"):
        load_state(tmp_path / "junk.state")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "v2.state"), metadata={"fademem.state": "{}",
                                                                           "format": "fademem.state/2"})
    with pytest.raises(StateError, match="format 'fademem.state/2'; this fademem reads 'fademem.state/1'"):
        load_state(tmp_path / "v2.state")


# -- the CLI round trip -----------------------------------------------------------------------------
def _cli(args):
    from click.testing import CliRunner

    from fademem.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


PROMPT = "a large red circle bouncing over a striped blue background , camera is static"
CLI = ["generate", "--prompt", PROMPT, "--seconds", "1.5", "--memory", "window:budget=6", "--device", "cpu",
       "--crf", "0", "--switch", "9:" + EMBEDDED_SWITCH]


def _frames(path):
    import numpy as np

    from fademem.pipeline.video_io import iter_video_frames

    return np.stack(list(iter_video_frames(path)))


def test_cli_stop_and_resume_equals_uninterrupted(tmp_path):
    import numpy as np

    full, part, state = tmp_path / "full.mp4", tmp_path / "part.mp4", tmp_path / "run.state"
    r = _cli(CLI + ["--out", str(full)])
    assert r.exit_code == 0, r.output
    r = _cli(CLI + ["--out", str(part), "--state", str(state), "--stop-after-chunks", "2"])
    assert r.exit_code == 0, r.output
    assert _frames(part).shape[0] == 6  # a finished file at the stop: 2 chunks of 3 frames
    r = _cli(["generate", "--resume", str(state), "--stop-after-chunks", "1", "--state-every", "1"])
    assert r.exit_code == 0, r.output
    assert _frames(part).shape[0] == 9
    r = _cli(["generate", "--resume", str(state)])
    assert r.exit_code == 0, r.output
    want, got = _frames(full), _frames(part)
    assert want.shape == got.shape and np.array_equal(want, got)
    r = _cli(["generate", "--resume", str(state), "--memory", "sink"])
    assert r.exit_code == 2 and "--memory 'sink' differs from the state's 'window:budget=6'" in r.output


def test_cli_bad_state_paths_fail_before_work(tmp_path):
    r = _cli(["generate", "--resume", str(tmp_path / "missing.state")])
    assert r.exit_code == 2 and "state file not found" in r.output
    r = _cli(CLI + ["--out", str(tmp_path / "v.mp4"), "--state", str(tmp_path / "no" / "run.state")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = _cli(CLI + ["--out", str(tmp_path / "v.mp4"), "--state-every", "2"])
    assert r.exit_code == 2 and "need --state" in r.output


def test_cli_resume_with_more_seconds_and_a_new_prompt(tmp_path):
    import numpy as np

    base = CLI[:-2]  # no switch
    full, part, state = tmp_path / "full.mp4", tmp_path / "part.mp4", tmp_path / "run.state"
    assert _cli(base + ["--out", str(full), "--seconds", "2.25", "--switch", "12:" + EMBEDDED_SWITCH]).exit_code == 0
    assert _cli(base + ["--out", str(part), "--state", str(state)]).exit_code == 0  # 12 frames, finished
    r = _cli(["generate", "--resume", str(state), "--seconds", "2.25", "--prompt", EMBEDDED_SWITCH])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_frames(full), _frames(part))
