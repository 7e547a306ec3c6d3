"""The world critic (fademem.embedded.critic): labels and observability, model, files, training, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fademem.embedded.critic import CriticConfig, WorldCritic, load_critic, save_critic, score_clips, score_video
from fademem.embedded.critic_labels import ATTRIBUTES, CAMERA_MOTIONS, camera_labels, clip_labels, prompt_labels
from fademem.embedded.critic_train import critic_accuracy, critic_loss, random_clips, train_critic
from fademem.embedded.world import COLOURS, SHAPES, SIZES, TEXTURES, World

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = CriticConfig()
TINY = CriticConfig(frames=8, stride=2, channels=(8, 8, 16), temporal_blocks=1)
STILL = "a large red circle standing still over a dotted green background, camera is static"


def test_prompt_labels():
    lab = prompt_labels("a small blue ring drifting up and a large red star bouncing over a wavy pink background, "
                        "camera quickly sweeps back and forth")
    assert lab == {"colour": COLOURS.index("blue"), "shape": SHAPES.index("ring"), "size": SIZES.index("small"),
                   "motion": 1, "direction": 2, "texture": TEXTURES.index("wavy"),
                   "background": COLOURS.index("pink"), "camera": 2}
    assert prompt_labels("a small blue ring drifting up and a large red star bouncing over a wavy pink background, "
                         "camera is static", obj=1)["direction"] == -1


def test_clip_labels_of_a_still_scene():
    lab = clip_labels(World(STILL, 0), 0, CFG)
    assert lab["colour"] == COLOURS.index("red") and lab["shape"] == SHAPES.index("circle")
    assert lab["size"] == SIZES.index("large") and lab["motion"] == 0 and lab["direction"] == -1
    assert lab["texture"] == TEXTURES.index("dotted") and lab["background"] == COLOURS.index("green")
    assert lab["colours"].tolist() == [int(c == "red") for c in COLOURS]
    assert lab["camera"] == -1  # a still view is also the hold of 'pans and returns': never identifiable
    assert CAMERA_MOTIONS[lab["camera_motion"]] == "still"
    scene_only = clip_labels(World(STILL, 0), 0, CFG, obj=None)
    assert scene_only["shape"] == -1 and scene_only["query"] == len(COLOURS)


def test_camera_labels():
    loop = "a large red circle standing still over a dotted green background, camera quickly keeps panning right"
    lab = camera_labels(loop, 40, CFG)  # 3.75 s of steady fast pan: longer than a quick sweep's leg (3 s)
    assert lab["camera"] == 3 and CAMERA_MOTIONS[lab["camera_motion"]] == "right"
    ret = ("a large red circle standing still over a dotted green background, "
           "camera pans left and returns after 8 seconds")
    lab = camera_labels(ret, 8, CFG)  # hold, then the pan starts: only 'pans and returns' stops and starts
    assert lab["camera"] == 1 and CAMERA_MOTIONS[lab["camera_motion"]] == "changes"
    assert camera_labels(ret, 0 + 16 + 16 + 8, CFG)["camera"] == -1  # away and holding: looks static
    plain = ret.replace("dotted", "plain")
    assert camera_labels(plain, 8, CFG)["camera"] == -1 and camera_labels(plain, 8, CFG)["camera_motion"] == -1


def test_hidden_objects_are_masked():
    leave = "a large green star leaving and returning after 32 seconds over a striped gray background, camera is static"
    world = World(leave, 6)
    track = world.layout.objects[0]
    rise = (track.y0 + track.radius) / 0.5
    away = int((track.hold + rise + 8) * 8)  # well inside the 32 s away
    lab = clip_labels(world, away, CFG)
    assert all(lab[k] == -1 for k in ("colour", "shape", "size", "motion", "direction"))
    assert lab["colours"][COLOURS.index("green")] == 0 and lab["texture"] == TEXTURES.index("striped")
    hold = clip_labels(world, 0, CriticConfig(frames=4, stride=1))  # holding at its anchor: looks still
    assert hold["shape"] == SHAPES.index("star") and hold["motion"] == -1
    same = "a large red circle standing still and a small red square standing still over a dotted green " \
           "background, camera is static"
    lab = clip_labels(World(same, 0), 0, CFG, obj=1)
    assert lab["shape"] == -1 and lab["colours"][COLOURS.index("red")] == 1


def test_random_clips_and_loss():
    video, labels = random_clips(np.random.default_rng(0), 4, TINY)
    assert video.shape == (4, 8, 64, 64, 3) and video.dtype == torch.uint8
    assert labels["colours"].shape == (4, 10) and labels["query"].shape == (4,)
    critic = WorldCritic(TINY)
    out = critic(video.float() / 255, labels["query"])
    assert out["texture"].shape == (4, len(TEXTURES)) and out["shape"].shape == (4, len(SHAPES))
    loss, parts = critic_loss(out, labels)
    assert torch.isfinite(loss) and "texture" in parts


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    video, labels = random_clips(np.random.default_rng(1), 8, TINY)
    x = video.float() / 255
    critic = WorldCritic(TINY)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = critic_loss(critic(x, labels["query"]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    critic = WorldCritic(TINY).eval()
    with torch.no_grad():
        for p in critic.parameters():
            p.copy_(p.half().float())
    path = tmp_path / "critic.safetensors"
    save_critic(critic, path, {"note": 1})
    back = load_critic(path)
    assert back.cfg == TINY and back.info == {"note": 1}
    for k, v in critic.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(ValueError, match="not a fademem world-critic"):
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        load_critic(tmp_path / "bad.safetensors")


def test_train_smoke_and_accuracy(tmp_path):
    out = tmp_path / "critic.safetensors"
    info = train_critic(TINY, out, device="cpu", steps=3, batch=4, workers=0, log=lambda *a: None, log_every=1,
                        eval_clips=0)
    assert info["steps_done"] == 3 and len(info["history"]) == 3
    acc = critic_accuracy(load_critic(out), n_clips=8, batch=8)
    assert set(acc) == {*ATTRIBUTES, "colours"} and all(0 <= v["acc"] <= 1 for v in acc.values())


def test_score_clips():
    critic = WorldCritic(TINY).eval()
    world = World(STILL, 0)
    video = torch.from_numpy(world.render(TINY.span))[None]
    res = score_clips(critic, video, [STILL])
    assert set(res) == set(ATTRIBUTES) - {"camera_motion"}
    assert res["shape"]["prob"].shape == (1,) and res["shape"]["observable"] is None
    res = score_clips(critic, video, [STILL], starts=[0], seeds=[0])
    assert res["shape"]["observable"].tolist() == [True] and res["camera"]["observable"].tolist() == [False]
    assert res["camera_motion"]["observable"].tolist() == [True]
    assert torch.equal(score_clips(critic, video[:, ::TINY.stride], [STILL])["shape"]["prob"], res["shape"]["prob"])
    with pytest.raises(ValueError, match="windows of"):
        score_clips(critic, video[:, :5], [STILL])
    with pytest.raises(ValueError, match="prompts"):
        score_clips(critic, video, [STILL, STILL])
    windows = score_video(critic, torch.from_numpy(world.render(2 * TINY.span)), STILL, seed=0)
    assert [w["start"] for w in windows] == [0, TINY.span] and isinstance(windows[0]["shape"]["prob"], float)
