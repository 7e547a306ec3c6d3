"""fademem's VBench-Long scores against the ``vbench`` package's own functions (0.1.5, installed
without its dependency pins): the same video, the same random-weight models saved in the published
formats, every dimension within 1e-4.

VBench's side runs as VBench-Long runs: ``vbench2_beta_long.utils.split_video_into_clips`` writes the
clips, ``create_video_from_first_frames`` the clip-to-clip video, VBench's per-dimension functions score
the clip files, ``reorganize_clips_results`` and ``fuse_inclip_clip2clip`` aggregate. Two substitutions,
both forced by the environment and neither touching a computation:

* the clip files are written losslessly (VBench-Long's ``torchvision.io.write_video`` no longer exists
  in torchvision 0.28, and its libx264 default is lossy; decord, OpenCV and PyAV decode the lossless
  files to identical frames, checked here);
* the DINO model handed to VBench's ``subject_consistency`` is ``RefDino`` below, DINO's
  ``VisionTransformer`` forward written out from facebookresearch/dino in plain torch (VBench gets it
  from ``torch.hub``, which needs the network); VBench's function itself runs unchanged.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fademem.eval._deps import torchvision

try:
    from tests.test_eval_models import make_weights, synthetic_frames, write_video
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import make_weights, synthetic_frames, write_video

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4


def _vbench():
    """Import vbench's modules (skips when the test extra's vbench is absent). ``clip`` (openai-clip)
    still imports ``pkg_resources``, gone from current setuptools: give it the ``packaging`` it reads."""
    torchvision()
    pytest.importorskip("vbench", reason="the vbench package (pip install --no-deps vbench==0.1.5)")
    if "pkg_resources" not in sys.modules:
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging
        sys.modules["pkg_resources"] = shim
    import vbench

    return vbench


def _vbench_long_utils(tmp: Path):
    """``vbench2_beta_long/utils.py`` loaded on its own, its missing imports stubbed (scene detection
    and moviepy are not used by the functions called here) and its ``write_video`` lossless."""
    vb = _vbench()
    for name in ("scenedetect", "scenedetect.detectors", "scenedetect.video_splitter", "moviepy", "moviepy.editor"):
        mod = sys.modules.setdefault(name, types.ModuleType(name))
        for attr in ("open_video", "SceneManager", "split_video_ffmpeg", "ContentDetector", "VideoFileClip"):
            setattr(mod, attr, getattr(mod, attr, None))
    import torchvision.io

    torchvision.io.write_video = lambda path, frames, fps: write_video(path, np.asarray(frames).astype(np.uint8),
                                                                        int(fps))
    path = Path(vb.__file__).parent.parent / "vbench2_beta_long" / "utils.py"
    spec = importlib.util.spec_from_file_location("vbl_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class RefDino(nn.Module):
    """DINO's VisionTransformer (facebookresearch/dino vision_transformer.py) forward in plain torch."""

    def __init__(self, sd: dict):
        super().__init__()
        self.sd, self.heads = sd, sd["cls_token"].shape[-1] // 64 or 1
        self.depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        self.patch = sd["patch_embed.proj.weight"].shape[-1]

    def _ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.sd[name + ".weight"], self.sd[name + ".bias"], eps=1e-6)

    def _lin(self, x, name):
        return F.linear(x, self.sd[name + ".weight"], self.sd[name + ".bias"])

    def forward(self, x):
        sd = self.sd
        b, nc, w, h = x.shape
        x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=self.patch)
        x = torch.cat((sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)), dim=1)
        n, dim = sd["pos_embed"].shape[1] - 1, x.shape[-1]
        w0, h0 = w // self.patch + 0.1, h // self.patch + 0.1
        pp = nn.functional.interpolate(
            sd["pos_embed"][:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
        pos = torch.cat((sd["pos_embed"][:, 0].unsqueeze(0), pp.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)
        x = x + pos
        for i in range(self.depth):
            p = f"blocks.{i}"
            y = self._ln(x, p + ".norm1")
            bn, nt, c = y.shape
            qkv = self._lin(y, p + ".attn.qkv").reshape(bn, nt, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
            x = x + self._lin((attn @ qkv[2]).transpose(1, 2).reshape(bn, nt, c), p + ".attn.proj")
            y = self._lin(F.gelu(self._lin(self._ln(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")
            x = x + y
        return self._ln(x, "norm")[:, 0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vbench_agree")
    weights = make_weights(tmp / "weights")
    videos = tmp / "videos"
    videos.mkdir()
    video = write_video(videos / "vid-0.mp4", synthetic_frames(12, 128, 128), fps=4)
    utils = _vbench_long_utils(tmp)
    split = tmp / "split_clip"
    utils.split_video_into_clips(str(video), str(split), duration=2, fps=8)
    clips = sorted(str(p) for p in (split / "vid-0").glob("*.mp4"))
    from fademem.eval.scorer import Scorer
    from fademem.eval.weights import DIMENSIONS

    five = [d for d in DIMENSIONS if d != "dynamic_degree"]  # dynamic degree: its own test, one clip (RAFT is slow)
    ours = Scorer(tmp / "weights", five).score_file(video)
    return types.SimpleNamespace(tmp=tmp, weights=weights, video=video, utils=utils, split=split, clips=clips,
                                 ours=ours)


def test_lossless_clips_decode_identically(setup):
    """decord (VBench's reader), OpenCV (its motion readers) and PyAV (ours) see the same pixels, and
    VBench-Long cut the clips fademem cuts."""
    import cv2
    import decord

    from fademem.eval.scorer import read_frames

    ours, _ = read_frames(setup.video)
    assert [Path(c).name for c in setup.clips] == ["vid-0_000.mp4", "vid-0_001.mp4"]
    assert setup.ours.clip_ranges == [(0, 8), (4, 12)]
    for clip, (a, b) in zip(setup.clips, setup.ours.clip_ranges):
        d = decord.VideoReader(clip, num_threads=1)
        assert np.array_equal(d.get_batch(range(len(d))).asnumpy(), ours[a:b])
        cap, frames = cv2.VideoCapture(clip), []
        ok, f = cap.read()
        while ok:
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
            ok, f = cap.read()
        assert np.array_equal(np.stack(frames), ours[a:b])


def _method(utils, detailed, ours, dimension):
    """VBench-Long's number for the method (``reorganize_clips_results``) and fademem's (``aggregate``)."""
    from fademem.eval.protocol import aggregate

    all_results, _, _ = utils.reorganize_clips_results(detailed, dimension)
    return all_results, aggregate([(ours.scores, len(ours.clip_ranges))])[dimension]


def _fusion_yaml(tmp: Path) -> dict:
    import yaml

    from fademem.eval.vbench_long_tables import MAPPING

    cfg = {"w_inclip_sb": 0.5, "w_clip2clip_sb": 0.5, "w_inclip_bg": 0.5, "w_clip2clip_bg": 0.5}
    for k in ("inclip_mean", "inclip_std", "clip2clip_mean", "clip2clip_std"):
        cfg[f"{k}_sb"] = cfg[f"{k}_bg"] = 0.5
    (tmp / "slow_fast.yaml").write_text(yaml.safe_dump(cfg))
    for short, dim in (("sb", "subject_consistency"), ("bg", "background_consistency")):
        (tmp / f"{short}_map.yaml").write_text(yaml.safe_dump(dict(MAPPING[dim])))
    return {"slow_fast_eval_config": str(tmp / "slow_fast.yaml"), "sb_mapping_file_path": str(tmp / "sb_map.yaml"),
            "bg_mapping_file_path": str(tmp / "bg_map.yaml")}


@pytest.mark.parametrize("dimension", ["subject_consistency", "background_consistency"])
def test_consistency_matches_vbench(setup, dimension):
    import clip

    from fademem.eval.protocol import fuse

    if dimension == "subject_consistency":
        from vbench.subject_consistency import subject_consistency as fn

        model = RefDino(torch.load(setup.weights["dino"]))
        run = lambda videos: fn(model, videos, "cpu", False)
    else:
        from vbench.background_consistency import background_consistency as fn

        model, preprocess = clip.load(str(setup.weights["clip_b32"]), device="cpu")
        run = lambda videos: fn(model, preprocess, videos, "cpu", False)
    all_in, detailed = run(setup.clips)
    np.testing.assert_allclose([d["video_results"] for d in detailed], setup.ours.clips[dimension], atol=TOL)
    theirs, mine = _method(setup.utils, detailed, setup.ours, dimension)
    assert abs(theirs - mine) < TOL  # VBench-Long's default: in-clip alone
    cat = setup.tmp / f"{dimension}_cat"
    cat.mkdir()
    setup.utils.create_video_from_first_frames(str(setup.split), str(cat), detailed)
    c2c_all, c2c_detailed = run([str(p) for p in cat.glob("*.mp4")])
    assert abs(c2c_detailed[0]["video_results"] - setup.ours.clip2clip[dimension]) < TOL
    kwargs = _fusion_yaml(setup.tmp)
    _, _, per_video = setup.utils.reorganize_clips_results(detailed)
    for dev in (False, True):
        fused, _ = setup.utils.fuse_inclip_clip2clip(all_in, c2c_all, per_video, c2c_detailed, dimension,
                                                     dev_flag=dev, w_inclip=1.0, w_clip2clip=0.0, **kwargs)
        ours = fuse(dimension, setup.ours.inclip[dimension], setup.ours.clip2clip[dimension], slow_fast=dev)[0]
        assert abs(fused - ours) < TOL, (dev, fused, ours)


def test_aesthetic_and_imaging_match_vbench(setup):
    import clip
    from pyiqa.archs.musiq_arch import MUSIQ
    from vbench.aesthetic_quality import get_aesthetic_model, laion_aesthetic
    from vbench.imaging_quality import technical_quality

    head = get_aesthetic_model(str(setup.weights["aesthetic"].parent))
    clip_l, _ = clip.load(str(setup.weights["clip_l14"]), device="cpu")
    _, detailed = laion_aesthetic(head, clip_l, setup.clips, "cpu")
    np.testing.assert_allclose([d["video_results"] for d in detailed], setup.ours.clips["aesthetic_quality"], atol=TOL)
    theirs, mine = _method(setup.utils, detailed, setup.ours, "aesthetic_quality")
    assert abs(theirs - mine) < TOL
    musiq = MUSIQ(pretrained_model_path=str(setup.weights["musiq"]), hidden_size=64, mlp_dim=128, num_heads=1,
                  num_layers=2)
    musiq.training = False  # as VBench's compute_imaging_quality
    _, detailed = technical_quality(musiq, setup.clips, "cpu")
    np.testing.assert_allclose([d["video_results"] for d in detailed], setup.ours.clips["imaging_quality"],
                               atol=TOL * 100)
    theirs, mine = _method(setup.utils, detailed, setup.ours, "imaging_quality")
    assert abs(theirs - mine) < TOL


def test_motion_smoothness_matches_vbench(setup):
    import vbench
    from vbench.motion_smoothness import MotionSmoothness, motion_smoothness

    cfg = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
    ms = MotionSmoothness(str(cfg), str(setup.weights["amt"]), "cpu")
    _, detailed = motion_smoothness(ms, setup.clips)
    np.testing.assert_allclose([d["video_results"] for d in detailed], setup.ours.clips["motion_smoothness"], atol=TOL)
    theirs, mine = _method(setup.utils, detailed, setup.ours, "motion_smoothness")
    assert abs(theirs - mine) < TOL


def test_dynamic_degree_matches_vbench(setup, monkeypatch):
    """The per-pair flow scores (VBench's ``get_score``) and the verdicts, on one clip of 6 frames."""
    from easydict import EasyDict
    from vbench.dynamic_degree import DynamicDegree, dynamic_degree

    from fademem.eval import dimensions
    from fademem.eval.scorer import Scorer

    frames = synthetic_frames(6, 128, 128, seed=3)
    clip_path = str(write_video(setup.tmp / "dd-0.mp4", frames, fps=8))
    dd = DynamicDegree(EasyDict(model=str(setup.weights["raft"]), small=False, mixed_precision=False,
                                alternate_corr=False), "cpu")
    theirs, ours = [], []
    orig_get, orig_top = dd.get_score, dimensions._top_flow
    monkeypatch.setattr(dd, "get_score", lambda img, flo: theirs.append(orig_get(img, flo)) or theirs[-1])
    monkeypatch.setattr(dimensions, "_top_flow", lambda flow: ours.append(orig_top(flow)) or ours[-1])
    _, detailed = dynamic_degree(dd, [clip_path])
    mine = Scorer(setup.tmp / "weights", ["dynamic_degree"]).score_file(clip_path)
    assert len(ours) == len(theirs) == 5
    np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL)
    assert float(detailed[0]["video_results"]) == mine.scores["dynamic_degree"]
