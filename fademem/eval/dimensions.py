"""VBench's per-clip computations for the six dimensions of FadeMem's Table 1, step for step as in
VBench's ``vbench/<dimension>.py`` (the functions VBench-Long calls on every clip).

Every function takes one clip, ``frames``: uint8 ``[T, H, W, 3]`` RGB (what VBench's readers give),
and returns that clip's score as VBench computes it:

* ``subject_consistency``: DINO features of each frame (shorter side resized to 224, bilinear, no
  antialias, ImageNet normalisation); mean over frames i >= 1 of (max(0, cos(f[i-1], f[i])) +
  max(0, cos(f[0], f[i]))) / 2.
* ``background_consistency``: the same over CLIP ViT-B/32 image features (shorter side to 224, bicubic,
  no antialias, centre crop 224, CLIP normalisation).
* ``aesthetic_quality``: LAION's linear head on the L2-normalised CLIP ViT-L/14 features, / 10, mean
  over frames (batches of 32).
* ``imaging_quality``: MUSIQ-SPAQ on every frame (longer side to 512 when longer, bilinear, no
  antialias; VBench's default 'longer' mode), mean over frames (0-100: VBench-Long divides by 100 when
  it averages; ``fademem.eval.protocol`` does too).
* ``dynamic_degree``: every round(fps / 8)-th frame; RAFT (20 iterations) between consecutive ones;
  a pair's score is the mean of its top 5% flow magnitudes (padded to a multiple of 8, as VBench);
  the clip moves (1.0) when at least round(4 * n / 16) pairs exceed 6 * min(H, W) / 256, else 0.0.
* ``motion_smoothness``: AMT-S interpolates between frames 0, 2, 4, ... (padded to a multiple of 16);
  the predictions (x 255, clipped, truncated to uint8) are compared with the true odd frames:
  (255 - mean |difference|) / 255. VBench's VRAM-based downscaling never applies (its CLIs pass a
  ``torch.device``, which its ``== 'cuda'`` test never equals), so frames run at full size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fademem.eval._deps import torchvision

__all__ = ["aesthetic_quality", "background_consistency", "consistency", "dynamic_degree", "imaging_quality",
           "motion_smoothness", "subject_consistency"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _tf():
    torchvision()
    import torchvision.transforms.functional as tf
    from torchvision.transforms import InterpolationMode

    return tf, InterpolationMode


def _float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in 0..255 (VBench's ``torch.Tensor(frames)``)."""
    return torch.as_tensor(frames).permute(0, 3, 1, 2).float()


def _check(frames, least: int, what: str) -> None:
    if len(frames) < least:
        raise ValueError(f"{what} needs at least {least} frames in a clip, got {len(frames)}")


def consistency(features: torch.Tensor) -> float:
    """VBench's consistency of per-frame features [T, D] (its loop, its float accumulation)."""
    f = F.normalize(features, dim=-1, p=2)
    total = 0.0
    for i in range(1, len(f)):
        pre = max(0.0, F.cosine_similarity(f[i - 1:i], f[i:i + 1]).item())
        fir = max(0.0, F.cosine_similarity(f[0:1], f[i:i + 1]).item())
        total += (pre + fir) / 2
    return total / (len(f) - 1)


@torch.no_grad()
def subject_consistency(frames, dino, device="cpu", batch: int = 16) -> float:
    _check(frames, 2, "subject consistency")
    tf, _ = _tf()
    feats = []
    for s in range(0, len(frames), batch):
        x = tf.resize(_float(frames[s:s + batch]), 224, antialias=False).div(255.0)
        feats.append(dino(tf.normalize(x, *IMAGENET).to(device)))
    return consistency(torch.cat(feats))


def _clip_input(frames, dtype, device):
    tf, mode = _tf()
    x = tf.resize(_float(frames), 224, interpolation=mode.BICUBIC, antialias=False)
    x = tf.normalize(tf.center_crop(x, 224).div(255.0), *CLIP_NORM)
    return x.to(device=device, dtype=dtype)


@torch.no_grad()
def background_consistency(frames, clip_model, device="cpu", batch: int = 32) -> float:
    _check(frames, 2, "background consistency")
    dtype = clip_model.visual.conv1.weight.dtype
    feats = [clip_model.encode_image(_clip_input(frames[s:s + batch], dtype, device))
             for s in range(0, len(frames), batch)]
    return consistency(torch.cat(feats))


@torch.no_grad()
def aesthetic_quality(frames, clip_model, head, device="cpu", batch: int = 32) -> float:
    _check(frames, 1, "aesthetic quality")
    dtype = clip_model.visual.conv1.weight.dtype
    scores = []
    for s in range(0, len(frames), batch):
        feats = clip_model.encode_image(_clip_input(frames[s:s + batch], dtype, device)).to(torch.float32)
        scores.append(head(F.normalize(feats, dim=-1, p=2)).squeeze(dim=-1))
    return torch.mean(torch.cat(scores) / 10, dim=0, keepdim=True).item()


def imaging_transform(x: torch.Tensor, mode: str = "longer") -> torch.Tensor:
    """VBench's imaging-quality preprocessing of float frames [T, 3, H, W] in 0..255 -> [0, 1]."""
    tf, _ = _tf()
    _, _, h, w = x.shape
    if mode.startswith("shorter") and min(h, w) > 512:
        scale = 512.0 / min(h, w)
        x = tf.resize(x, [int(scale * h), int(scale * w)], antialias=False)
        if mode == "shorter_centercrop":
            x = tf.center_crop(x, 512)
    elif mode == "longer" and max(h, w) > 512:
        scale = 512.0 / max(h, w)
        x = tf.resize(x, [int(scale * h), int(scale * w)], antialias=False)
    elif mode not in ("longer", "shorter", "shorter_centercrop", "None"):
        raise ValueError(f"imaging quality mode {mode!r}: one of longer, shorter, shorter_centercrop, None")
    return x / 255.0


@torch.no_grad()
def imaging_quality(frames, musiq, device="cpu", mode: str = "longer", batch: int = 8) -> float:
    _check(frames, 1, "imaging quality")
    total = 0.0
    for s in range(0, len(frames), batch):
        x = imaging_transform(_float(frames[s:s + batch]), mode).to(device)
        for v in musiq(x).reshape(-1).tolist():
            total += float(v)
    return total / len(frames)


def _pad(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, list[int]]:
    h, w = x.shape[-2:]
    ph, pw = (((h // divisor) + 1) * divisor - h) % divisor, (((w // divisor) + 1) * divisor - w) % divisor
    pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
    return F.pad(x, pad, mode="replicate"), pad


def _top_flow(flow: torch.Tensor) -> float:
    """VBench's per-pair score: the mean of the largest 5% flow magnitudes (numpy, as VBench)."""
    f = flow.permute(1, 2, 0).cpu().numpy()
    rad = np.sqrt(np.square(f[:, :, 0]) + np.square(f[:, :, 1]))
    h, w = rad.shape
    cut = int(h * w * 0.05)
    return np.mean(abs(np.sort(-rad.flatten()))[:cut]).item()


@torch.no_grad()
def dynamic_degree(frames, raft, fps: float, device="cpu", batch: int = 4) -> float:
    """1.0 when the clip moves, else 0.0 (VBench's ``DynamicDegree.infer``)."""
    _check(frames, 1, "dynamic degree")
    x = _float(frames[::max(1, round(fps / 8))])
    if min(x.shape[-2:]) < 128:
        raise ValueError(f"dynamic degree: RAFT needs frames of at least 128 x 128 pixels, got {tuple(x.shape[-2:])}")
    thres, count_num = 6.0 * (min(x.shape[-2:]) / 256.0), round(4 * (len(x) / 16.0))
    scores: list[float] = []
    for s in range(0, len(x) - 1, batch):
        a, _ = _pad(x[s:min(s + batch, len(x) - 1)], 8)
        b, _ = _pad(x[s + 1:min(s + batch, len(x) - 1) + 1], 8)
        a, b = a.to(device), b.to(device)
        flows = raft(2 * (a / 255.0) - 1.0, 2 * (b / 255.0) - 1.0, num_flow_updates=20)[-1]
        scores += [_top_flow(f) for f in flows]
    count = 0
    for sc in scores:
        if sc > thres:
            count += 1
        if count >= count_num:
            return 1.0
    return 0.0


@torch.no_grad()
def motion_smoothness(frames, amt, device="cpu", batch: int = 4) -> float:
    frames = np.asarray(frames)
    _check(frames, 3, "motion smoothness (AMT-S interpolates between frames 0, 2, 4, ...)")
    inputs = torch.from_numpy(frames[0::2]).permute(0, 3, 1, 2).float() / 255.0
    padded, pad = _pad(inputs, 16)
    h, w = padded.shape[-2:]
    preds = []
    for s in range(0, len(padded) - 1, batch):
        a = padded[s:min(s + batch, len(padded) - 1)].to(device)
        b = padded[s + 1:min(s + batch, len(padded) - 1) + 1].to(device)
        embt = torch.full((len(a), 1, 1, 1), 0.5, device=device)
        p = amt(a, b, embt)[..., pad[2]:h - pad[3], pad[0]:w - pad[1]]
        preds += [(q * 255.0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8) for q in p]
    truth = frames[1::2]
    diffs = [np.mean(np.abs(truth[i].astype(np.int16) - preds[i].astype(np.int16)).astype(np.uint8))
             for i in range(len(preds))]
    return (255.0 - np.mean(np.array(diffs))) / 255.0
