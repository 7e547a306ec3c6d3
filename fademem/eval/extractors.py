"""The feature extractors VBench uses, built with the libraries made for them from local files in the
formats they are published in (``fademem.eval.weights`` says which files and where they come from).

* DINO ViT-B/16 (subject consistency): timm's ``VisionTransformer`` holding DINO's backbone state dict
  (same key names); tokens and positions as facebookresearch/dino's ``VisionTransformer.prepare_tokens``
  does for non-square inputs (its ``interpolate_pos_encoding``: bicubic, scale factors (n + 0.1) / sqrt(N)).
* CLIP ViT-B/32 and ViT-L/14 (background consistency, aesthetic quality): open-clip's loader for
  OpenAI's files (a TorchScript archive or a state dict), fp32 on the CPU and fp16 on a GPU as
  OpenAI's ``clip.load`` (what VBench calls) gives.
* LAION's aesthetic head: ``nn.Linear(768, 1)`` from ``sa_0_4_vit_l_14_linear.pth``.
* MUSIQ (imaging quality): pyiqa's ``MUSIQ`` from the SPAQ checkpoint.
* RAFT (dynamic degree): torchvision's ``raft_large`` holding the original ``raft-things.pth``
  (``raft_state_dict`` maps its key names).
* AMT-S (motion smoothness): ``fademem.eval.amt``.

Architectures are read off the state dicts where the files allow (layers, widths, patch and grid
sizes), so the same loaders take the published models and small random ones saved in their formats.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from fademem.eval._deps import require

__all__ = ["DinoViT", "load_aesthetic_head", "load_clip", "load_dino", "load_file", "load_musiq", "load_raft",
           "raft_state_dict", "strip_prefix"]


def load_file(path, what: str):
    """``torch.load`` of a published file: tensors only first; a file that pickles other objects is read
    as its publisher's own loader reads it (``weights_only=False``: pyiqa, VBench's AMT). Any failure
    becomes one ValueError naming the file."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one clear error
        raise ValueError(f"{path}: cannot read it as {what}: {e}") from e


def strip_prefix(sd, prefix: str = "module."):
    if not isinstance(sd, dict):
        return sd
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _check_keys(path, model: nn.Module, sd: dict, what: str) -> None:
    missing, unexpected = sorted(set(model.state_dict()) - set(sd)), sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{path}: not {what}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


# ---------------------------------------------------------------- DINO


class DinoViT(nn.Module):
    """DINO's ViT forward (cls token after the final norm) over timm's blocks."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit
        self.patch = vit.patch_embed.proj.kernel_size[0]

    def _pos(self, npatch: int, h: int, w: int) -> torch.Tensor:
        pos = self.vit.pos_embed
        n = pos.shape[1] - 1
        if npatch == n and h == w:
            return pos
        dim = pos.shape[-1]
        h0, w0 = h // self.patch + 0.1, w // self.patch + 0.1
        side = int(math.sqrt(n))
        grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)), mode="bicubic")
        if grid.shape[-2:] != (int(h0), int(w0)):
            raise ValueError(f"position grid {tuple(grid.shape[-2:])} != {(int(h0), int(w0))}")
        return torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        t = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.vit.cls_token.expand(len(t), -1, -1), t), dim=1)
        t = t + self._pos(t.shape[1] - 1, h, w)
        for blk in self.vit.blocks:
            t = blk(t)
        return self.vit.norm(t)[:, 0]


def load_dino(path, device="cpu") -> DinoViT:
    """DINO ViT from ``dino_vitbase16_pretrain.pth`` (heads = width / 64, as DINO's ViT-S/B)."""
    vt = require("timm.models.vision_transformer", "timm")
    sd = load_file(path, "a DINO ViT state dict")
    sd = strip_prefix(strip_prefix(sd.get("teacher", sd) if isinstance(sd, dict) else sd), "backbone.")
    if not isinstance(sd, dict) or "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
        raise ValueError(f"{path}: not a DINO ViT state dict (no pos_embed / patch_embed.proj.weight)")
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    dim, patch = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = int(math.sqrt(sd["pos_embed"].shape[1] - 1))
    mlp = sd["blocks.0.mlp.fc1.weight"].shape[0] / dim
    vit = vt.VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth,
                               num_heads=max(1, dim // 64), mlp_ratio=mlp, qkv_bias=True, num_classes=0)
    _check_keys(path, vit, sd, "a DINO ViT state dict")
    vit.load_state_dict(sd)
    return DinoViT(vit).to(device).eval()


# ---------------------------------------------------------------- CLIP and the aesthetic head


def load_clip(path, device="cpu"):
    """OpenAI CLIP (TorchScript archive or state dict) through open-clip; fp16 on a GPU as ``clip.load``."""
    oc = require("open_clip", "open-clip-torch")
    device = torch.device(device)
    try:
        model = oc.load_openai_model(str(path), precision="fp32" if device.type == "cpu" else "fp16",
                                     device=device)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as an OpenAI CLIP model: {e}") from e
    return model.eval()


def clip_dtype(model) -> torch.dtype:
    return model.visual.conv1.weight.dtype


def load_aesthetic_head(path, device="cpu") -> nn.Linear:
    sd = load_file(path, "the LAION aesthetic head")
    if not isinstance(sd, dict) or set(sd) != {"weight", "bias"} or tuple(sd["weight"].shape) != (1, 768):
        raise ValueError(f"{path}: not the LAION aesthetic head (a state dict of nn.Linear(768, 1))")
    head = nn.Linear(768, 1)
    head.load_state_dict(sd)
    return head.to(device).eval()


# ---------------------------------------------------------------- MUSIQ


def load_musiq(path, device="cpu"):
    """pyiqa's MUSIQ from a state dict (the SPAQ checkpoint: one output, 14 layers, width 384)."""
    arch = require("pyiqa.archs.musiq_arch", "pyiqa")
    sd = load_file(path, "a MUSIQ state dict")
    sd = strip_prefix(sd["params"] if isinstance(sd, dict) and "params" in sd else sd)
    if not isinstance(sd, dict) or "embedding.weight" not in sd or "head.weight" not in sd:
        raise ValueError(f"{path}: not a pyiqa MUSIQ state dict (no embedding.weight / head.weight)")
    hidden = sd["embedding.weight"].shape[0]
    blocks = "transformer_encoder.transformer.encoderblock_"
    layers = len({k[len(blocks):].split(".")[0] for k in sd if k.startswith(blocks)})
    mlp = sd[f"{blocks}0.mlp.fc1.weight"].shape[0]
    num_class = sd["head.weight"].shape[0]
    model = arch.MUSIQ(num_class=num_class, hidden_size=hidden, mlp_dim=mlp, num_heads=max(1, hidden // 64),
                       num_layers=layers, pretrained=False)
    _check_keys(path, model, sd, "a pyiqa MUSIQ state dict")
    model.load_state_dict(sd)
    return model.to(device).eval()


# ---------------------------------------------------------------- RAFT

_RAFT_RULES = [  # original RAFT (princeton-vl) -> torchvision names
    (r"^fnet\.", "feature_encoder."), (r"^cnet\.", "context_encoder."),
    (r"_encoder\.conv1\.", "_encoder.convnormrelu.0."), (r"_encoder\.norm1\.", "_encoder.convnormrelu.1."),
    (r"_encoder\.conv2\.", "_encoder.conv."),
    (r"(layer\d\.\d)\.conv1\.", r"\1.convnormrelu1.0."), (r"(layer\d\.\d)\.norm1\.", r"\1.convnormrelu1.1."),
    (r"(layer\d\.\d)\.conv2\.", r"\1.convnormrelu2.0."), (r"(layer\d\.\d)\.norm2\.", r"\1.convnormrelu2.1."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convc2\.", "update_block.motion_encoder.convcorr2.0."),
    (r"^update_block\.encoder\.convf1\.", "update_block.motion_encoder.convflow1.0."),
    (r"^update_block\.encoder\.convf2\.", "update_block.motion_encoder.convflow2.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])1\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"^update_block\.gru\.conv([zrq])2\.", r"update_block.recurrent_block.convgru2.conv\1."),
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."), (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
]


def raft_state_dict(sd: dict) -> dict:
    """The original RAFT state dict (``raft-things.pth``) under torchvision's ``raft_large`` names. A
    residual block's ``norm3`` is the same module as its ``downsample.1`` (kept once)."""
    out = {}
    for k, v in strip_prefix(sd).items():
        if re.search(r"layer\d\.\d\.norm3\.", k):
            continue
        for pat, rep in _RAFT_RULES:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def load_raft(path, device="cpu"):
    require("torchvision.models.optical_flow", "torchvision")
    from torchvision.models.optical_flow import raft_large

    sd = load_file(path, "a RAFT state dict")
    if not isinstance(sd, dict) or not any(k.endswith("fnet.conv1.weight") for k in sd):
        raise ValueError(f"{path}: not an original RAFT state dict (no fnet.conv1.weight)")
    if "fnet.conv1.weight" not in strip_prefix(sd) or strip_prefix(sd)["fnet.conv1.weight"].shape[0] != 64:
        raise ValueError(f"{path}: a RAFT-small state dict; VBench's dynamic degree uses RAFT (large), raft-things")
    model = raft_large(weights=None)
    sd = raft_state_dict(sd)
    _check_keys(path, model, sd, "an original RAFT (large) state dict")
    model.load_state_dict(sd)
    return model.to(device).eval()
