"""Config inference for checkpoints: the ``WanConfig`` that fits a state dict's shapes, with what the
weights cannot show (heads, eps, text_len, ...) taken from a config file, a preset of the same width or
Wan's defaults. The rules are described in :mod:`fademem.wan.checkpoints` ("Config inference"), which
re-exports :func:`infer_config`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fademem.wan.checkpoints_read import CheckpointError

_HEAD_DIM = 128


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _model_module():
    from fademem.wan import model as model_mod

    return model_mod


def _preset(name: str, **kw):
    """``WanConfig.<name>()`` or module-level ``fademem.wan.model.<name>()``."""
    mod = _model_module()
    fn = getattr(mod.WanConfig, name, None) or getattr(mod, name, None)
    if fn is None:
        raise AttributeError(f"fademem.wan.model has no preset {name!r}")
    return fn(**kw)


def _config_fields() -> set[str]:
    cls = _model_module().WanConfig
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(vars(_preset("tiny")))


def _replace_config(base, **values):
    fields = _config_fields()
    kept = {k: v for k, v in values.items() if k in fields and v is not None}
    if dataclasses.is_dataclass(base):
        return dataclasses.replace(base, **kept)
    d = dict(vars(base))
    d.update(kept)
    return type(base)(**d)


def _config_dict(cfg) -> dict:
    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(vars(cfg))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _model_config(model: nn.Module):
    for attr in ("cfg", "config", "wan_config"):
        cfg = getattr(model, attr, None)
        if cfg is not None and (dataclasses.is_dataclass(cfg) or hasattr(cfg, "dim")):
            return cfg
    return None


# --------------------------------------------------------------------------------------------
# config inference
# --------------------------------------------------------------------------------------------
def _bool(v):
    if isinstance(v, str):
        return v.lower() not in ("", "none", "false", "0")
    return bool(v)


def _values_from_json(cfg: dict, style: str) -> dict:
    if style == "diffusers":
        v: dict[str, Any] = {}
        heads, hd = cfg.get("num_attention_heads"), cfg.get("attention_head_dim")
        if heads is not None:
            v["num_heads"] = int(heads)
            if hd is not None:
                v["dim"] = int(heads) * int(hd)
        for src_key, dst in (("ffn_dim", "ffn_dim"), ("num_layers", "num_layers"), ("in_channels", "in_dim"),
                             ("out_channels", "out_dim"), ("text_dim", "text_dim"), ("freq_dim", "freq_dim"),
                             ("eps", "eps")):
            if cfg.get(src_key) is not None:
                v[dst] = cfg[src_key]
        if cfg.get("patch_size") is not None:
            v["patch_size"] = tuple(cfg["patch_size"])
        if "qk_norm" in cfg:
            v["qk_norm"] = _bool(cfg["qk_norm"])
        if "cross_attn_norm" in cfg:
            v["cross_attn_norm"] = _bool(cfg["cross_attn_norm"])
        return v
    v = {k: cfg[k] for k in cfg if not k.startswith("_")}
    if "patch_size" in v and v["patch_size"] is not None:
        v["patch_size"] = tuple(v["patch_size"])
    if "window_size" in v and isinstance(v["window_size"], list):
        v["window_size"] = tuple(v["window_size"])
    return v


def _shape_values(sd: Mapping[str, torch.Tensor]) -> dict:
    v: dict[str, Any] = {}
    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.ndim == 5:
        v["dim"], v["in_dim"] = int(pe.shape[0]), int(pe.shape[1])
        v["patch_size"] = tuple(int(s) for s in pe.shape[2:])
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if layers:
        v["num_layers"] = max(layers) + 1
    f0 = sd.get("blocks.0.ffn.0.weight")
    if f0 is not None:
        v["ffn_dim"] = int(f0.shape[0])
    te = sd.get("text_embedding.0.weight")
    if te is not None:
        v["text_dim"] = int(te.shape[1])
    tm = sd.get("time_embedding.0.weight")
    if tm is not None:
        v["freq_dim"] = int(tm.shape[1])
    hh = sd.get("head.head.weight")
    if hh is not None and "patch_size" in v:
        v["out_dim"] = int(hh.shape[0]) // math.prod(v["patch_size"])
    if layers:
        v["qk_norm"] = "blocks.0.self_attn.norm_q.weight" in sd
        v["cross_attn_norm"] = "blocks.0.norm3.weight" in sd
    if "dim" not in v and "head.modulation" in sd:
        v["dim"] = int(sd["head.modulation"].shape[-1])
    return v


def _presets_by_dim() -> dict[int, Any]:
    out = {}
    for name in ("tiny", "wan_1_3b", "wan_14b"):
        try:
            cfg = _preset(name)
        except Exception:
            continue
        out[int(cfg.dim)] = cfg
    return out


def infer_config(state_dict: Mapping[str, torch.Tensor], base=None, *, hints: Mapping | None = None):
    """A ``WanConfig`` whose shapes fit ``state_dict`` (original names).

    ``base`` supplies what the weights cannot show (heads, eps, text_len, ...); without it the
    preset with the same width is used, else Wan's defaults (those of the 1.3B preset). ``hints``
    (values read from a config file) win over ``base`` but not over the shapes. Heads: hints,
    else ``base`` when its width matches, else the same-width preset, else ``dim // 128``.
    """
    shapes = _shape_values(state_dict)
    hints = dict(hints or {})
    dim = shapes.get("dim", hints.get("dim"))
    if dim is None:
        raise CheckpointError("cannot infer the model width: no 'patch_embedding.weight' in the state dict")
    presets = _presets_by_dim()
    if base is None:
        base = presets.get(int(dim))
        if base is None:  # Wan's own defaults (text_len 512, eps 1e-6, ...) for other widths
            base = _preset("wan_1_3b")
    heads = hints.get("num_heads")
    if heads is None:
        if int(base.dim) == int(dim):
            heads = base.num_heads
        elif int(dim) in presets:
            heads = presets[int(dim)].num_heads
        elif dim % _HEAD_DIM == 0:
            heads = dim // _HEAD_DIM
        else:
            raise CheckpointError(
                f"cannot infer the number of attention heads for width {dim} (no config file, no preset of that "
                f"width, not a multiple of {_HEAD_DIM}); pass config= with num_heads"
            )
    values = {**hints, **shapes, "num_heads": int(heads)}
    return _replace_config(base, **values)


def _preset_hint(shapes: Mapping) -> str:
    dim, layers, ffn = shapes.get("dim"), shapes.get("num_layers"), shapes.get("ffn_dim")
    desc = (f"checkpoint has dim {dim}" + (f", ffn_dim {ffn}" if ffn else "")
            + (f", {layers} layers" if layers else ""))
    for name, label in (("wan_1_3b", "1.3B"), ("wan_14b", "14B")):
        try:
            p = _preset(name)
        except Exception:
            continue
        if int(p.dim) == dim:
            return (f"{desc}: use the {label} config (WanConfig.{name}()), or pass config=None to infer it "
                    f"from the weights")
    return f"{desc}: pass config=None to infer the config from the weights"
