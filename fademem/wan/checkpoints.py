"""Load the published checkpoint layouts of causal Wan2.1 generators.

Users point fademem at the files they already have; this module works out what they are and
turns them into a :class:`fademem.wan.model.CausalWanModel` with the original Wan parameter names.

Layouts (what :func:`detect_layout` returns)
--------------------------------------------
``"wan-original"``
    Wan2.1 base weights with the original names: a directory holding ``config.json`` (``dim``,
    ``ffn_dim``, ``num_heads``, ``num_layers``, ...) and ``diffusion_pytorch_model.safetensors``
    (or shards listed in ``diffusion_pytorch_model.safetensors.index.json``), one such file, or a
    ``.safetensors`` written by :func:`save_generator`.
``"wan-diffusers"``
    diffusers ``WanTransformer3DModel`` weights: a pipeline directory with ``transformer/``, a
    transformer directory whose ``config.json`` has ``_class_name: WanTransformer3DModel``, or a
    ``.safetensors`` file with diffusers names. Names are converted with
    :func:`fademem.wan.checkpoints_names.diffusers_to_original`.
``"self-forcing"``
    ``torch.save`` dict with ``generator``, ``critic`` and ``generator_ema`` (Self-Forcing DMD).
``"causvid"``
    ``torch.save`` dict with only ``generator`` (CausVid, Self-Forcing's ``ode_init.pt``).
``"longlive"``
    ``torch.save`` dict with ``generator`` and ``generator_ema`` and no ``critic`` (LongLive).
``"raw-state-dict"``
    a bare state dict saved with ``torch.save`` (or wrapped in ``{"model": ...}`` /
    ``{"state_dict": ...}``), original or diffusers names.
``"lora"``
    a LoRA adapter (``{"generator_lora": peft_state}``, a bare peft state, or a peft
    ``adapter_model.safetensors`` + ``adapter_config.json``): load it with ``lora=`` /
    :func:`load_lora`, not as a generator.

In every layout the wrapper prefixes are removed: ``model.`` (the training wrapper's attribute,
leading), and the path components ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module``,
``_orig_mod`` (torch.compile) and ``module`` (DDP) wherever they appear.

Which weights of a multi-generator file (``use_ema``)
----------------------------------------------------
``use_ema=None`` picks what the official inference of that release uses:

* Self-Forcing: ``generator_ema`` (its README runs ``inference.py ... --use_ema``; the flag
  itself defaults to off, the documented command turns it on).
* LongLive (and FadeMem, which loads the LongLive base): ``generator`` -- every LongLive v1.0
  and FadeMem inference config sets ``use_ema: false``, and the LoRA (``lora.pt``, FadeMem-FT)
  is applied on top of that.
* CausVid: ``generator`` (the only one).

``use_ema=True`` / ``False`` forces ``generator_ema`` / ``generator``.

Config inference (:func:`infer_config`)
---------------------------------------
When no config is given, the shapes decide: ``dim``/``in_dim``/``patch_size`` from
``patch_embedding.weight``, ``num_layers`` from the number of ``blocks.N``, ``ffn_dim`` from
``blocks.0.ffn.0``, ``text_dim`` from ``text_embedding.0``, ``freq_dim`` from
``time_embedding.0``, ``out_dim`` from ``head.head``, ``qk_norm`` / ``cross_attn_norm`` from the
presence of ``norm_q`` / ``norm3`` weights. The head count is not visible in the weights: it comes
from the checkpoint's ``config.json`` (original or diffusers) or the metadata that
:func:`save_generator` writes, else from the preset with that width (1536 -> 12 heads for 1.3B,
5120 -> 40 for 14B, the tiny preset's width -> its heads), else ``dim // 128`` (Wan's head width),
else an error asking for ``config=``. Everything not visible in the weights (eps, text_len, ...)
comes from the config file when there is one, else from the preset of the same width, else Wan's
defaults (text_len 512, eps 1e-6: the 1.3B preset's).

LoRA
----
LoRA adapters are merged at load with peft (``LoraConfig`` + ``get_peft_model``,
``set_peft_model_state_dict``, ``merge_and_unload``): W' = W + (alpha / r) * B @ A per targeted
nn.Linear. Rank comes from the ``lora_A`` tensors, alpha from the ``alpha`` argument, else an
``adapter_config.json`` next to the file, else alpha = rank (scale 1: LongLive and FadeMem-FT use
rank 256, alpha 256).

Modules
-------
Reading files and detecting layouts lives in :mod:`fademem.wan.checkpoints_read`, the LoRA merge in
:mod:`fademem.wan.lora`; this module builds and saves the model and re-exports their public names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fademem.wan.checkpoints_read import _MAX_LISTED, _WAN_WEIGHTS, LAYOUTS, CheckpointError, PathLike, _listing, _load, detect_layout, load_state_dict_any
from fademem.wan.lora import load_lora, read_lora

__all__ = [
    "LAYOUTS",
    "CheckpointError",
    "detect_layout",
    "load_state_dict_any",
    "infer_config",
    "load_generator",
    "load_lora",
    "read_lora",
    "save_generator",
]

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


# --------------------------------------------------------------------------------------------
# building the model
# --------------------------------------------------------------------------------------------
def _check_against_model(model: nn.Module, sd: Mapping[str, torch.Tensor], origin: str, layout: str,
                         strict: bool) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [(k, tuple(sd[k].shape), shape) for k, shape in expected.items()
                  if k in sd and tuple(sd[k].shape) != shape]
    cfg = _model_config(model)
    desc = (f"CausalWanModel(dim={cfg.dim}, num_layers={cfg.num_layers}, ffn_dim={cfg.ffn_dim})"
            if cfg is not None else type(model).__name__)
    if mismatched:
        lines = [f"  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:_MAX_LISTED]]
        if len(mismatched) > _MAX_LISTED:
            lines.append(f"  ... ({len(mismatched) - _MAX_LISTED} more)")
        raise CheckpointError(
            f"{origin} (layout '{layout}'): {len(mismatched)} tensors do not fit {desc}:\n" + "\n".join(lines)
            + "\n" + _preset_hint(_shape_values(sd))
        )
    if missing or unexpected:
        parts = [f"{origin} (layout '{layout}'): state dict does not match {desc}:"]
        if missing:
            parts.append(_listing(missing, "missing keys"))
        if unexpected:
            parts.append(_listing(unexpected, "unexpected keys"))
        if strict:
            parts.append("Pass strict=False to load anyway (missing weights keep their initialisation).")
            raise CheckpointError("\n".join(parts))
        warnings.warn("\n".join(parts) + "\nLoading anyway (strict=False).", stacklevel=3)


@contextlib.contextmanager
def _parameters_on_meta():
    """Build modules whose parameters live on the meta device (no memory, no random init).

    Only parameters move: plain tensors a module keeps (RoPE tables, ...) and buffers are created
    as usual, so the model works once its parameters are assigned from a state dict.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _build_and_fill(cfg, sd: dict[str, torch.Tensor], origin: str, layout: str, strict: bool) -> nn.Module:
    model_cls = _model_module().CausalWanModel
    with _parameters_on_meta():
        model = model_cls(cfg)
    _check_against_model(model, sd, origin, layout, strict)
    names = set(model.state_dict())
    complete = names.issubset(sd)
    if complete:
        # Parameters take the loaded tensors themselves: no second copy of the weights.
        model.load_state_dict({k: v for k, v in sd.items() if k in names}, strict=True, assign=True)
        if not any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            return model
    # Missing weights (strict=False) or state the state dict does not hold: build for real.
    model = model_cls(cfg)
    model.load_state_dict({k: v for k, v in sd.items() if k in names}, strict=False)
    return model


def load_generator(
    path: PathLike,
    *,
    lora: PathLike | Sequence[PathLike] | None = None,
    config=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    use_ema: bool | None = None,
    lora_alpha: float | None = None,
) -> nn.Module:
    """Build a :class:`~fademem.wan.model.CausalWanModel` from any supported checkpoint.

    ``config``: a ``WanConfig``; ``None`` infers it (see :func:`infer_config`; a ``config.json``
    next to the weights supplies heads and the rest). ``lora``: one adapter file or several,
    merged in order with peft (``lora_alpha`` overrides alpha for all of them). ``strict``: missing
    / unexpected keys raise :class:`CheckpointError`; ``False`` warns and goes on. Shape mismatches
    always raise. Weights are read on the CPU and cast to ``dtype`` tensor by tensor, then the
    model moves to ``device``; the model is returned in eval mode without gradients.
    """
    sd, src, origin = _load(path, use_ema, dtype=dtype)
    if config is None:
        hints = _values_from_json(src.config_json, src.config_style) if src.config_json else None
        try:
            config = infer_config(sd, hints=hints)
        except ValueError as e:  # CheckpointError, or WanConfig rejecting the values
            raise CheckpointError(f"{origin} (layout '{src.layout}'): {e}") from None
    model = _build_and_fill(config, sd, origin, src.layout, strict)
    del sd
    model.to(dtype=dtype)
    if lora is not None:
        for item in ([lora] if isinstance(lora, (str, os.PathLike)) else list(lora)):
            model = load_lora(model, item, alpha=lora_alpha)
    model.to(device=device)
    model.eval().requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------
def save_generator(model: nn.Module, path: PathLike) -> Path:
    """Save ``model``'s weights as safetensors with original Wan names.

    ``path`` ending in ``.safetensors``: one file, with the model config in its metadata
    (``fademem_config``) so :func:`load_generator` needs no ``config=``. Any other path is a
    directory in the original Wan layout: ``diffusion_pytorch_model.safetensors`` + ``config.json``.
    Returns the weights file written.
    """
    from safetensors.torch import save_file

    p = Path(path)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    bad = [k for k in sd if not (k.startswith(("patch_embedding.", "text_embedding.", "time_embedding.",
                                                 "time_projection.", "blocks.", "head.")))]
    if bad:
        raise CheckpointError(f"save_generator: not a plain CausalWanModel state dict (a peft wrapper?):\n"
                              + _listing(bad, "keys"))
    cfg = _model_config(model)
    cfg_d = _config_dict(cfg) if cfg is not None else None
    if p.suffix == ".safetensors":
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "pt", "fademem_layout": "wan-original"}
        if cfg_d is not None:
            meta["fademem_config"] = json.dumps(cfg_d)
        save_file(sd, str(p), metadata=meta)
        return p
    p.mkdir(parents=True, exist_ok=True)
    out = p / _WAN_WEIGHTS
    save_file(sd, str(out), metadata={"format": "pt"})
    if cfg_d is not None:
        (p / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "t2v", **cfg_d}, indent=2))
    return out
