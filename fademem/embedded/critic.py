"""The world critic: a small video classifier, trained on true renders, that reads a clip and tells
which prompt attributes it shows. A fidelity benchmark calls it on windows of generated video.

Clip: ``frames`` frames sampled every ``stride`` native frames (default 16 frames at stride 2: a
window of ``span`` = 31 native frames, 3.9 s at 8 fps), 64x64.

This module: the config, the network, its files and scoring (``score_clips`` / ``score_video``).
The attributes, their labels and the observability rules: ``fademem.embedded.critic_labels``
(re-exported here). Data, loss, training and held-out accuracy: ``fademem.embedded.critic_train``
(its names stay importable from here, loaded on first use).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fademem.embedded.critic_labels import (
    ATTRIBUTES,
    CAMERA_MOTIONS,
    DIRECTIONS,
    NO_PARALLAX,
    OBJECT_HEADS,
    SCENE_HEADS,
    SCENE_QUERY,
    CriticConfig,
    _camera_px,
    _displacements,
    camera_labels,
    camera_motion_class,
    camera_table,
    clip_labels,
    prompt_labels,
)
from fademem.embedded.world.grammar import COLOURS, parse_prompt
from fademem.embedded.world.render import World

__all__ = ["ATTRIBUTES", "CAMERA_MOTIONS", "DIRECTIONS", "FORMAT", "NO_PARALLAX", "OBJECT_HEADS", "SCENE_HEADS",
           "SCENE_QUERY", "CriticConfig", "WorldCritic", "camera_labels", "camera_motion_class", "camera_table",
           "clip_labels", "load_critic", "param_count", "prompt_labels", "save_critic", "score_clips",
           "score_video"]

FORMAT = "fademem.embedded.critic/1"


# ---------------------------------------------------------------- model
def _gn(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, c), c)


class _Res2d(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.n1, self.c1 = _gn(c, groups), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = _gn(c, groups), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class _Res21d(nn.Module):
    """(2+1)D residual block: spatial 3x3 then temporal 3 convolution."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.n1, self.c1 = _gn(c, groups), nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1))
        self.n2, self.c2 = _gn(c, groups), nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x):
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class WorldCritic(nn.Module):
    """clip [B, frames, H, W, 3] + query [B] (colour index, or SCENE_QUERY) -> logits per head."""

    def __init__(self, cfg: CriticConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CriticConfig()
        c0, c1, c2 = cfg.channels
        g = cfg.groups
        self.backbone = nn.Sequential(
            nn.Conv2d(6, c0, 3, stride=2, padding=1), _Res2d(c0, g),
            nn.Conv2d(c0, c1, 3, stride=2, padding=1), _Res2d(c1, g),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), _Res2d(c2, g))
        self.query = nn.Embedding(len(COLOURS) + 1, 2 * c2)
        nn.init.zeros_(self.query.weight)
        self.temporal = nn.Sequential(*[_Res21d(c2, g) for _ in range(cfg.temporal_blocks)])
        self.norm = _gn(c2, g)
        heads = {**SCENE_HEADS, **OBJECT_HEADS, "colours": COLOURS}
        self.heads = nn.ModuleDict({k: nn.Linear(2 * c2, len(v)) for k, v in heads.items()})

    @property
    def device(self) -> torch.device:
        return self.query.weight.device

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """clip float [B, T, H, W, 3] in [0, 1] -> backbone features [B, C, T, h, w]."""
        b, t = clip.shape[:2]
        x = clip.permute(0, 1, 4, 2, 3) * 2 - 1
        d = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)
        f = self.backbone(torch.cat([x, d], 2).flatten(0, 1))
        return f.reshape(b, t, *f.shape[1:]).transpose(1, 2)

    def head(self, feats: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
        gamma, beta = self.query(query)[:, :, None, None, None].chunk(2, 1)
        h = self.temporal(feats * (1 + gamma) + beta)
        h = F.silu(self.norm(h))
        pooled = torch.cat([h.mean((2, 3, 4)), h.amax((2, 3, 4))], 1)
        return {k: m(pooled).float() for k, m in self.heads.items()}

    def forward(self, clip: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scene heads from a scene-query pass, object heads from the `query` pass (both returned)."""
        feats = self.features(clip)
        b = clip.shape[0]
        q = torch.cat([torch.full((b,), SCENE_QUERY, device=query.device, dtype=torch.long), query.long()])
        out = self.head(torch.cat([feats, feats]), q)
        res = {k: out[k][:b] for k in (*SCENE_HEADS, "colours")}
        res.update({k: out[k][b:] for k in OBJECT_HEADS})
        return res


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- files
def save_critic(critic: WorldCritic, path: str | Path, info: dict | None = None, dtype=torch.float16) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in critic.state_dict().items()}
    meta = json.dumps({"format": FORMAT, "config": asdict(critic.cfg)})
    save_file(tensors, str(path), metadata={"critic": meta, "info": json.dumps(info or {})})


def load_critic(path: str | Path, device="cpu") -> WorldCritic:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "critic" not in meta:
            raise ValueError(f"{path} is not a fademem world-critic file (no 'critic' metadata)")
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    m = json.loads(meta["critic"])
    if m.get("format") != FORMAT:
        raise ValueError(f"{path}: critic format {m.get('format')!r}, want {FORMAT!r}")
    critic = WorldCritic(CriticConfig(**m["config"]))
    missing, unexpected = critic.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: critic weights do not match the config: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]}")
    critic.info = json.loads(meta.get("info", "{}"))
    return critic.eval().requires_grad_(False).to(device)


def _label_arrays(labs: list[dict]) -> dict[str, torch.Tensor]:
    out = {k: torch.tensor([lab[k] for lab in labs], dtype=torch.long)
           for k in ("query", "colour", *OBJECT_HEADS, *SCENE_HEADS)}
    out["colours"] = torch.from_numpy(np.stack([lab["colours"] for lab in labs]).astype(np.int64))
    return out


# ---------------------------------------------------------------- scoring
def _as_clip(frames, critic: WorldCritic) -> torch.Tensor:
    cfg = critic.cfg
    frames = torch.as_tensor(frames)
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [batch, time, height, width, 3], got {tuple(frames.shape)}")
    if frames.shape[2] != cfg.frame_size or frames.shape[3] != cfg.frame_size:
        raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[3]}, the critic reads "
                         f"{cfg.frame_size}x{cfg.frame_size}")
    if frames.shape[1] == cfg.span:
        frames = frames[:, ::cfg.stride]
    elif frames.shape[1] != cfg.frames:
        raise ValueError(f"the critic reads windows of {cfg.span} native frames (or {cfg.frames} frames "
                         f"already sampled every {cfg.stride}), got {frames.shape[1]}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    return x.to(critic.device)


@torch.no_grad()
def _predict(critic: WorldCritic, clip: torch.Tensor, query: torch.Tensor, batch: int = 64) -> dict:
    outs = [critic(clip[i:i + batch], query[i:i + batch].to(critic.device)) for i in range(0, len(clip), batch)]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def _summarise(out: dict, labels: dict) -> dict:
    """Per-attribute (correct [B] bool, prob of the true class [B], observable [B] bool)."""
    res = {}
    for k in (*SCENE_HEADS, *OBJECT_HEADS):
        y = labels[k].to(out[k].device)
        p = out[k].softmax(-1)
        res[k] = (p.argmax(-1) == y, p.gather(1, y.clamp_min(0)[:, None])[:, 0], y >= 0)
    pc = out["colours"].sigmoid()
    y = labels["colour"].to(pc.device)
    q = labels["query"].to(pc.device).clamp_max(len(COLOURS) - 1)
    prob = pc.gather(1, q[:, None])[:, 0]
    res["colour"] = (prob > 0.5, prob, y >= 0)
    yc = labels["colours"].to(pc.device)
    set_ok = (((pc > 0.5).long() == yc) | (yc < 0)).all(1)
    res["colours"] = (set_ok, set_ok.float(), torch.ones_like(set_ok))
    return res

@torch.no_grad()
def score_clips(critic: WorldCritic, frames, prompts: list[str], obj: int = 0, starts=None, seeds=None) -> dict:
    """Score windows of (generated) video against their prompts.

    frames: [B, span, H, W, 3] (native frames; sampled every `stride` here) or [B, frames, H, W, 3]
    (already sampled), uint8 or float in [0, 1]. Object attributes are about object `obj` of each
    prompt (queried by its colour). Returns {attr: {"prob": [B] probability of the prompt's value,
    "correct": [B] bool (argmax == prompt's value; colour: prob > 0.5), "observable": [B] bool or
    None}} for attr in ATTRIBUTES. With `starts` (window start frames) the camera_motion truth and
    camera observability follow; with `starts` and `seeds` (the worlds' seeds) every attribute's
    observability (what the true render of that window would show) is given. Without them
    camera_motion is left out, and 'direction' is observable only for drifting objects.
    """
    clip = _as_clip(frames, critic)
    if len(prompts) != len(clip):
        raise ValueError(f"{len(clip)} clips but {len(prompts)} prompts")
    if seeds is not None and starts is None:
        raise ValueError("seeds need starts")
    specs = [parse_prompt(p) for p in prompts]
    cfg = critic.cfg
    values, observable = [], []
    for i, spec in enumerate(specs):
        if obj >= len(spec.objects):
            raise ValueError(f"prompt {i} has {len(spec.objects)} objects, asked about object {obj}")
        val = prompt_labels(spec, obj)  # the prompt's values: what is scored
        val["query"] = val["colour"]
        val["colours"] = np.full(len(COLOURS), -1, np.int8)
        val["camera_motion"] = -1
        obs = {"direction": val["direction"] >= 0}
        if starts is not None:
            cam = camera_labels(spec, int(starts[i]), cfg)
            px = [_camera_px(spec.camera, int(starts[i]) + t * cfg.stride, cfg.frame_size, cfg.fps)
                  for t in range(cfg.frames)]
            val["camera_motion"] = camera_motion_class(_displacements(px, cfg.frame_size))
            obs.update(camera=cam["camera"] >= 0, camera_motion=cam["camera_motion"] >= 0)
        if seeds is not None:
            lab = clip_labels(World(spec, int(seeds[i]), cfg.frame_size, cfg.fps), int(starts[i]), cfg, obj)
            obs = {k: lab[k] >= 0 for k in ATTRIBUTES}
        values.append(val)
        observable.append(obs)
    labels = _label_arrays(values)
    res = _summarise(_predict(critic, clip, labels["query"]), labels)
    result = {}
    for k in ATTRIBUTES:
        if k == "camera_motion" and starts is None:
            continue
        ok, prob, _ = res[k]
        if k == "direction":
            ok = ok & (labels[k] >= 0).to(ok.device)  # labels live on the host, the critic's outputs maybe not
        obs = torch.tensor([o[k] for o in observable]) if k in observable[0] else None
        result[k] = {"prob": prob.cpu(), "correct": ok.cpu(), "observable": obs}
    return result


def score_video(critic: WorldCritic, video, prompt: str, hop: int | None = None, obj: int = 0,
                seed: int | None = None, start: int = 0) -> list[dict]:
    """Slide the critic over one video [T, H, W, 3] (native frames from frame `start`) with windows
    every `hop` frames (default: the span): one `score_clips` result per window, with "start"."""
    cfg = critic.cfg
    video = torch.as_tensor(video)
    hop = hop or cfg.span
    out = []
    for s in range(0, video.shape[0] - cfg.span + 1, hop):
        r = score_clips(critic, video[None, s:s + cfg.span], [prompt], obj, starts=[start + s],
                        seeds=None if seed is None else [seed])
        out.append({"start": start + s, **{k: {kk: (None if vv is None else vv[0].item()) for kk, vv in v.items()}
                                           for k, v in r.items()}})
    return out
