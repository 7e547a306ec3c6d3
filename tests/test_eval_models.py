"""Small random models in the published file formats, the videos the eval tests score, and the loaders'
own tests (formats accepted, missing and wrong files named).

The builders here are shared by the other ``test_eval*`` modules: each model is built with the library
that defines it (timm, open-clip, pyiqa, torchvision, fademem's AMT-S) at a small width where the real
one would be slow, and saved the way its publisher ships it: DINO and MUSIQ state dicts, OpenAI CLIP as
a TorchScript archive, the LAION head as an ``nn.Linear(768, 1)`` state dict, RAFT under the original
(princeton-vl, ``module.``-prefixed) key names, AMT-S as ``{'state_dict': ...}``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fademem.eval._deps import require, torchvision

pytestmark = pytest.mark.usefixtures("one_thread")

# -------------------------------------------------------------------------------- builders


def write_video(path, frames: np.ndarray, fps: int = 8) -> Path:
    """Lossless RGB H.264 (libx264rgb, qp 0): PyAV, decord and OpenCV all decode it to ``frames``."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        s.options = {"crf": "0", "qp": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def synthetic_frames(n: int, h: int = 128, w: int = 160, seed: int = 0) -> np.ndarray:
    """A textured background with two moving squares, a slow pan and a little noise: every dimension
    gets a non-trivial value."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        base = 120 + 60 * np.sin((xx + 3 * t) / 9.0)[..., None] * np.array([1.0, 0.6, 0.3])
        img = base + 30 * np.cos((yy - t) / 7.0)[..., None]
        for k, (sz, vx, vy, col) in enumerate([(28, 5, 2, (230, 40, 40)), (20, -4, 3, (40, 200, 60))]):
            x0, y0 = (20 + 50 * k + vx * t) % (w - sz), (30 + vy * t) % (h - sz)
            img[y0:y0 + sz, x0:x0 + sz] = col
        out[t] = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return out


def save_torchscript(state: dict, path) -> None:
    """A TorchScript archive whose state dict is ``state`` (how OpenAI publishes CLIP)."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if not hasattr(m, name):
                m.add_module(name, nn.Module())
            m = getattr(m, name)
        m.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


def tiny_clip_state(patch: int, embed: int, seed: int) -> dict:
    oc = require("open_clip")
    torch.manual_seed(seed)
    model = oc.model.CLIP(embed, vision_cfg=oc.model.CLIPVisionCfg(layers=2, width=64, patch_size=patch,
                                                                    image_size=224),
                          text_cfg=oc.model.CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1),
                          quick_gelu=True)
    return model.state_dict()


_RAFT_TO_ORIGINAL = [
    (r"^(feature|context)_encoder\.convnormrelu\.0\.", r"\1_encoder.conv1."),
    (r"^(feature|context)_encoder\.convnormrelu\.1\.", r"\1_encoder.norm1."),
    (r"^(feature|context)_encoder\.conv\.", r"\1_encoder.conv2."),
    (r"(layer\d\.\d)\.convnormrelu1\.0\.", r"\1.conv1."), (r"(layer\d\.\d)\.convnormrelu1\.1\.", r"\1.norm1."),
    (r"(layer\d\.\d)\.convnormrelu2\.0\.", r"\1.conv2."), (r"(layer\d\.\d)\.convnormrelu2\.1\.", r"\1.norm2."),
    (r"motion_encoder\.convcorr(\d)\.0\.", r"encoder.convc\1."),
    (r"motion_encoder\.convflow(\d)\.0\.", r"encoder.convf\1."),
    (r"motion_encoder\.conv\.0\.", "encoder.conv."),
    (r"recurrent_block\.convgru(\d)\.conv([zrq])\.", r"gru.conv\2\1."),
    (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."), (r"^mask_predictor\.conv\.", "update_block.mask.2."),
    (r"^feature_encoder\.", "fnet."), (r"^context_encoder\.", "cnet."),
]


def raft_original_state(seed: int) -> dict:
    """torchvision's raft_large with random weights, under the original RAFT's names (module.-prefixed,
    each residual block's ``norm3`` aliasing ``downsample.1`` as the original module tree holds it)."""
    torchvision()
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(seed)
    out = {}
    for k, v in raft_large(weights=None).state_dict().items():
        for pat, rep in _RAFT_TO_ORIGINAL:
            k = re.sub(pat, rep, k)
        out["module." + k] = v
        m = re.match(r"(.*layer\d\.\d)\.downsample\.1\.(.*)", k)
        if m:
            out[f"module.{m.group(1)}.norm3.{m.group(2)}"] = v
    return out


def make_weights(root, seed: int = 0) -> dict[str, Path]:
    """Every file the six dimensions need, small and random, in the published formats, under ``root``
    in VBench's cache layout."""
    from fademem.eval.amt import AMTS
    from fademem.eval.weights import WEIGHTS

    root = Path(root)
    paths = {k: root / w.vbench_path for k, w in WEIGHTS.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    vt = require("timm.models.vision_transformer")
    torch.manual_seed(seed)
    dino = vt.VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=1, num_classes=0)
    torch.save(dino.state_dict(), paths["dino"])
    save_torchscript(tiny_clip_state(32, 64, seed + 1), paths["clip_b32"])
    save_torchscript(tiny_clip_state(14, 768, seed + 2), paths["clip_l14"])
    torch.manual_seed(seed + 3)
    torch.save(nn.Linear(768, 1).state_dict(), paths["aesthetic"])
    musiq = require("pyiqa.archs.musiq_arch").MUSIQ(pretrained=False, hidden_size=64, mlp_dim=128, num_heads=1,
                                                      num_layers=2)
    torch.save(musiq.state_dict(), paths["musiq"])
    torch.save(raft_original_state(seed + 4), paths["raft"])
    torch.manual_seed(seed + 5)
    torch.save({"state_dict": AMTS().state_dict()}, paths["amt"])
    return paths


def make_critic(path) -> Path:
    """A small random world critic (span 7 frames) saved as ``save_critic`` writes it."""
    from fademem.embedded.critic import CriticConfig, WorldCritic, save_critic

    torch.manual_seed(0)
    save_critic(WorldCritic(CriticConfig(frames=4, stride=2, channels=(8, 16, 16), temporal_blocks=1, groups=4)),
                path)
    return Path(path)


@pytest.fixture(scope="session")
def eval_weights(tmp_path_factory) -> Path:
    """One folder of small random weight files for the whole session (VBench's cache layout)."""
    root = tmp_path_factory.mktemp("eval_weights")
    make_weights(root)
    return root


# -------------------------------------------------------------------------------- the loaders' tests


def test_published_formats_load(eval_weights):
    """Every loader takes its file in the published format, flat or in VBench's layout."""
    from fademem.eval import extractors as ex
    from fademem.eval.amt import load_amt
    from fademem.eval.weights import WEIGHTS, find_weights

    paths = find_weights(eval_weights)
    assert paths == {k: eval_weights / w.vbench_path for k, w in WEIGHTS.items()}
    assert ex.load_dino(paths["dino"]).vit.patch_embed.proj.kernel_size == (16, 16)
    assert ex.load_clip(paths["clip_b32"]).visual.conv1.weight.dtype == torch.float32  # fp32 on the CPU
    assert ex.load_clip(paths["clip_l14"]).visual.proj.shape[-1] == 768
    assert ex.load_aesthetic_head(paths["aesthetic"]).weight.shape == (1, 768)
    assert len(ex.load_musiq(paths["musiq"]).transformer_encoder.transformer) == 2
    assert ex.load_raft(paths["raft"]).feature_encoder.conv.out_channels == 256
    assert load_amt(paths["amt"]).feat_encoder.conv2.out_channels == 84
    flat = eval_weights / "flat"
    flat.mkdir()
    (flat / WEIGHTS["dino"].name).write_bytes(paths["dino"].read_bytes())
    assert find_weights(flat, ["subject_consistency"]) == {"dino": flat / WEIGHTS["dino"].name}


def test_raft_names_match_the_original_raft(eval_weights):
    """raft-things.pth's key names (module.-prefixed, norm3 aliases) map onto torchvision's RAFT exactly:
    the original RAFT (as VBench vendors it) loads the same file strictly."""
    pytest.importorskip("vbench")
    from easydict import EasyDict
    from vbench.third_party.RAFT.core.raft import RAFT

    from fademem.eval.extractors import raft_state_dict, strip_prefix

    sd = torch.load(eval_weights / "raft_model/models/raft-things.pth")
    RAFT(EasyDict(small=False, mixed_precision=False, alternate_corr=False)).load_state_dict(strip_prefix(sd))
    assert len(raft_state_dict(sd)) == len(sd) - sum(".norm3." in k for k in sd)


def test_missing_files_are_named_with_where_they_are_published(tmp_path):
    from fademem.eval.weights import MissingWeights, find_weights

    with pytest.raises(MissingWeights) as e:
        find_weights(tmp_path, ["aesthetic_quality", "dynamic_degree"])
    msg = str(e.value)
    for name, where in (("ViT-L-14.pt", "openaipublic"), ("sa_0_4_vit_l_14_linear.pth", "LAION-AI"),
                        ("raft-things.pth", "princeton-vl/RAFT")):
        assert name in msg and where in msg
    assert "dino" not in msg and [w.key for w in e.value.missing] == ["clip_l14", "aesthetic", "raft"]


def test_wrong_files_are_refused(tmp_path, eval_weights):
    from fademem.eval import extractors as ex
    from fademem.eval.amt import load_amt

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    for loader in (ex.load_dino, ex.load_musiq, ex.load_raft, load_amt, ex.load_aesthetic_head):
        with pytest.raises(ValueError, match="junk.pth"):
            loader(junk)
        with pytest.raises(ValueError, match="other.pth"):
            loader(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="CLIP"):
        ex.load_clip(tmp_path / "other.pth")
