"""Load the published checkpoint layouts of causal Wan2.1 generators.

Users point fademem at the files they already have; this module works out what they are and
turns them into a :class:`fademem.model.CausalWanModel` with the original Wan parameter names.

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
    :func:`fademem.checkpoints_names.diffusers_to_original`.
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

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

log = logging.getLogger(__name__)

LAYOUTS = ("wan-original", "wan-diffusers", "self-forcing", "causvid", "longlive", "raw-state-dict", "lora")

PathLike = str | os.PathLike

_WRAPPER_COMPONENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"}
_LEADING_PREFIXES = ("model.", "diffusion_model.")
# Self-Forcing's GAN variant hangs a classifier branch on the generator wrapper; it is not part of
# the generator network and is dropped (with a log line) rather than reported as unexpected.
_IGNORED_EXTRA_PREFIXES = ("_cls_pred_branch.", "_register_tokens.", "_gan_ca_blocks.")

_WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
_WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_HEAD_DIM = 128
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A file that cannot be loaded as asked, with the reason and what would fit."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _model_module():
    from fademem import model as model_mod

    return model_mod


def _names_module():
    from fademem import checkpoints_names

    return checkpoints_names


def _preset(name: str, **kw):
    """``WanConfig.<name>()`` or module-level ``fademem.model.<name>()``."""
    mod = _model_module()
    fn = getattr(mod.WanConfig, name, None) or getattr(mod, name, None)
    if fn is None:
        raise AttributeError(f"fademem.model has no preset {name!r}")
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


def _listing(names: Sequence[str], what: str) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"  {len(names)} {what} (first {min(len(names), _MAX_LISTED)}): {shown}{more}"


def _clean_key(key: str) -> str:
    parts = [p for p in key.split(".") if p not in _WRAPPER_COMPONENTS]
    key = ".".join(parts)
    for prefix in _LEADING_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _clean_state_dict(sd: Mapping[str, Any], origin: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        ck = _clean_key(k)
        if ck.startswith(_IGNORED_EXTRA_PREFIXES):
            dropped.append(ck)
            continue
        if ck in out:
            raise CheckpointError(f"{origin}: key {k!r} and another one both map to {ck!r} once wrapper "
                                  f"prefixes are removed")
        out[ck] = v
    if dropped:
        log.info("%s: dropped %d tensors of a discriminator branch (%s...)", origin, len(dropped), dropped[0])
    return out


def _name_style(keys: Iterable[str]) -> str:
    """'original', 'diffusers', 'lora' or 'unknown' from parameter names."""
    keys = list(keys)
    if any(".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys):
        return "lora"
    if any(k.startswith("condition_embedder.") or ".attn1." in k or k.startswith("proj_out.") for k in keys):
        return "diffusers"
    if any(k.startswith(("patch_embedding.", "text_embedding.", "time_embedding.", "head.head"))
           or ".self_attn." in k or ".cross_attn." in k for k in keys):
        return "original"
    return "unknown"


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


# --------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    """'safetensors', 'torch-zip', 'torch-legacy', 'json' or 'unknown' from the first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e})") from e
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "torch-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


def _torch_load(path: Path):
    kind = _sniff(path)
    if kind not in ("torch-zip", "torch-legacy"):
        raise CheckpointError(f"{path}: not a checkpoint (not a torch.save / safetensors file; looks like {kind})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "torch-zip"))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: this torch file holds objects other than tensors and plain containers, so it cannot be "
            f"loaded with weights_only=True ({str(e).splitlines()[0]}). If you trust the file, load it yourself "
            f"with torch.load(..., weights_only=False) and re-save its state dict with torch.save(state_dict) or "
            f"fademem.checkpoints.save_generator."
        ) from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: {e})") from e


def _safetensors_keys(path: Path) -> tuple[list[str], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def _read_safetensors(files: Sequence[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for k in f.keys():
                    t = f.get_tensor(k)
                    out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e


def _shards_from_index(index: Path) -> list[Path]:
    data = _read_json(index)
    wm = data.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: not a safetensors index (no 'weight_map')")
    files = []
    for name in dict.fromkeys(wm.values()):
        p = index.parent / name
        if not p.is_file():
            raise CheckpointError(f"{index}: shard {name} listed in the index is missing")
        files.append(p)
    return files


@dataclasses.dataclass
class _Source:
    """What a path holds, before the tensors are read."""

    path: Path
    layout: str
    files: list[Path] = dataclasses.field(default_factory=list)  # safetensors files
    obj: Any = None  # the torch.load result
    config_json: dict | None = None
    config_style: str | None = None  # 'original' | 'diffusers' | 'fademem'
    names: str = "original"  # 'original' | 'diffusers'


def _open(path: PathLike) -> _Source:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_dir():
        return _open_dir(p)
    kind = _sniff(p)
    if kind == "safetensors":
        return _open_safetensors([p], p)
    if kind == "json":
        if p.name.endswith(".index.json"):
            return _open_safetensors(_shards_from_index(p), p)
        if p.name == "config.json" or p.name == "adapter_config.json":
            return _open_dir(p.parent)
        raise CheckpointError(f"{p}: a JSON file that is neither a safetensors index nor a model config")
    if kind in ("torch-zip", "torch-legacy"):
        return _open_torch(p)
    raise CheckpointError(
        f"{p}: not a checkpoint (expected a torch.save file, a .safetensors file, a safetensors index, or a "
        f"Wan / diffusers model directory)"
    )


def _open_dir(d: Path) -> _Source:
    if (d / "transformer").is_dir() and not (d / _WAN_WEIGHTS).exists():
        return _open_dir(d / "transformer")
    if (d / "adapter_config.json").is_file():
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (d / name).is_file():
                src = _open(d / name)
                src.layout = "lora"
                return src
    cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else None
    if (d / _WAN_INDEX).is_file():
        files = _shards_from_index(d / _WAN_INDEX)
    elif (d / _WAN_WEIGHTS).is_file():
        files = [d / _WAN_WEIGHTS]
    elif (d / "diffusion_pytorch_model.bin").is_file():
        src = _open_torch(d / "diffusion_pytorch_model.bin")
        _attach_config(src, cfg, d)
        return src
    else:
        candidates = sorted(d.glob("*.safetensors"))
        if len(candidates) != 1:
            listing = ", ".join(sorted(x.name for x in d.iterdir())[:20])
            raise CheckpointError(
                f"{d}: no Wan weights found (expected {_WAN_WEIGHTS}, its .index.json, a diffusers "
                f"'transformer/' folder, or a single .safetensors file; the folder holds: {listing or 'nothing'})"
            )
        files = candidates
    src = _open_safetensors(files, d, config=cfg)
    return src


def _attach_config(src: _Source, cfg: dict | None, where: Path) -> None:
    if cfg is None:
        return
    if cfg.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in cfg:
        src.config_json, src.config_style = cfg, "diffusers"
        if src.layout in ("wan-original", "raw-state-dict") and src.names == "diffusers":
            src.layout = "wan-diffusers"
    elif "dim" in cfg or cfg.get("_class_name") in ("WanModel", "CausalWanModel"):
        src.config_json, src.config_style = cfg, "original"
    else:
        log.info("%s: config.json is neither a Wan nor a diffusers Wan config; ignored", where)


def _open_safetensors(files: list[Path], origin: Path, config: dict | None = None) -> _Source:
    keys: list[str] = []
    meta: dict[str, str] = {}
    for f in files:
        k, m = _safetensors_keys(f)
        keys += k
        meta.update(m)
    style = _name_style(_clean_key(k) for k in keys)
    if style == "lora":
        return _Source(origin, "lora", files=files)
    if style == "unknown":
        raise CheckpointError(
            f"{origin}: a safetensors file whose tensor names are not Wan names (original or diffusers); "
            f"first names: {', '.join(keys[:8])}"
        )
    src = _Source(origin, "wan-diffusers" if style == "diffusers" else "wan-original", files=files, names=style)
    if config is None and origin.is_file():
        sib = files[0].parent / "config.json"
        if sib.is_file():
            config = _read_json(sib)
    if "fademem_config" in meta and config is None:
        try:
            src.config_json, src.config_style = json.loads(meta["fademem_config"]), "fademem"
        except ValueError:
            pass
    _attach_config(src, config, origin)
    return src


def _open_torch(p: Path) -> _Source:
    obj = _torch_load(p)
    if isinstance(obj, Mapping):
        keys = set(obj.keys())
        if "generator_lora" in keys:
            return _Source(p, "lora", obj=obj)
        if "generator" in keys or "generator_ema" in keys:
            if "critic" in keys:
                layout = "self-forcing"
            elif "generator_ema" in keys:
                layout = "longlive"
            else:
                layout = "causvid"
            return _Source(p, layout, obj=obj)
        for wrapper in ("model", "state_dict"):
            if wrapper in keys and _is_tensor_dict(obj[wrapper]):
                inner = obj[wrapper]
                return _raw_source(p, inner)
        if _is_tensor_dict(obj):
            return _raw_source(p, obj)
        top = ", ".join(sorted(map(str, keys))[:12])
        raise CheckpointError(
            f"{p}: a torch checkpoint of an unknown layout (top-level keys: {top}); expected Self-Forcing / "
            f"CausVid / LongLive ('generator', 'generator_ema', 'critic'), a LoRA ('generator_lora') or a bare "
            f"state dict"
        )
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{p}: holds a single tensor, not a state dict")
    raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a state dict")


def _raw_source(p: Path, sd: Mapping) -> _Source:
    style = _name_style(_clean_key(k) for k in sd)
    if style == "lora":
        return _Source(p, "lora", obj=sd)
    if style == "unknown":
        raise CheckpointError(
            f"{p}: a state dict whose tensor names are not Wan names; first names: {', '.join(list(sd)[:8])}"
        )
    return _Source(p, "raw-state-dict", obj=sd, names=style)


def _select_generator(src: _Source, use_ema: bool | None) -> tuple[Mapping, str]:
    obj = src.obj
    if src.layout not in ("self-forcing", "causvid", "longlive"):
        return obj, ""
    if use_ema is None:
        use_ema = src.layout == "self-forcing"
        if ("generator_ema" if use_ema else "generator") not in obj:  # take the one that is there
            use_ema = not use_ema
    key = "generator_ema" if use_ema else "generator"
    if key not in obj:
        other = "generator" if use_ema else "generator_ema"
        raise CheckpointError(
            f"{src.path}: layout '{src.layout}' has no {key!r} (it holds {sorted(obj)}); "
            f"pass use_ema={not use_ema} to load {other!r}"
        )
    sd = obj[key]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{src.path}: {key!r} is a {type(sd).__name__}, not a state dict")
    return sd, key


# --------------------------------------------------------------------------------------------
# public: layout and state dict
# --------------------------------------------------------------------------------------------
def detect_layout(path: PathLike) -> str:
    """Name the layout of ``path`` (one of :data:`LAYOUTS`); :class:`CheckpointError` if none fits."""
    return _open(path).layout


def _load(path: PathLike, use_ema: bool | None, dtype: torch.dtype | None = None):
    src = _open(path)
    if src.layout == "lora":
        raise CheckpointError(
            f"{src.path}: this is a LoRA adapter, not generator weights; load the base generator and pass this "
            f"file as lora= (or call fademem.checkpoints.load_lora)"
        )
    if src.files:
        raw = _read_safetensors(src.files, dtype)
        which = ""
    else:
        raw, which = _select_generator(src, use_ema)
    origin = f"{src.path}" + (f" [{which}]" if which else "")
    sd = _clean_state_dict(raw, origin)
    if dtype is not None and not src.files:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    if _name_style(sd) == "diffusers":
        sd = dict(_names_module().diffusers_to_original(sd, strict=False))
        if src.layout == "wan-original":
            src.layout = "wan-diffusers"
    return sd, src, origin


def load_state_dict_any(path: PathLike, use_ema: bool | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read any supported layout into a state dict with original Wan names.

    Returns ``(state_dict, layout)``. ``use_ema`` chooses between ``generator`` and
    ``generator_ema`` in multi-generator files (``None``: the release's own inference choice, see
    the module docstring). Tensors of ``.pt`` files are memory-mapped where torch allows it.
    """
    sd, src, _ = _load(path, use_ema)
    return sd, src.layout


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
    """Build a :class:`~fademem.model.CausalWanModel` from any supported checkpoint.

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
# LoRA
# --------------------------------------------------------------------------------------------
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "base_model.", "model.", "diffusion_model.")


def read_lora(path: PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a LoRA file: ``({module_name: {"A": tensor, "B": tensor}}, adapter_config)``.

    Accepts ``{'generator_lora': state}`` / bare peft state (``.pt``) and peft's
    ``adapter_model.safetensors`` (+ ``adapter_config.json``, returned as the second item, ``{}``
    when absent). Module names are cleaned of ``base_model.model.``, ``model.`` and wrapper
    prefixes.
    """
    p = Path(path)
    src = _open(p)
    if src.layout != "lora":
        raise CheckpointError(
            f"{p}: not a LoRA adapter (detected layout '{src.layout}': generator weights); pass it as the base "
            f"checkpoint instead"
        )
    if src.files:
        raw: Mapping = _read_safetensors(src.files)
    else:
        raw = src.obj["generator_lora"] if "generator_lora" in src.obj else src.obj
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{p}: 'generator_lora' is a {type(raw).__name__}, not a state dict")
    base_dir = p if p.is_dir() else p.parent
    acfg = _read_json(base_dir / "adapter_config.json") if (base_dir / "adapter_config.json").is_file() else {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for k, v in raw.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = ".".join(part for part in k.split(".") if part not in _WRAPPER_COMPONENTS)
        m = _LORA_KEY.match(k)
        if not m or m.group("adapter") not in (None, "default"):
            other.append(k)
            continue
        mod = m.group("module")
        for prefix in _LORA_PREFIXES:
            if mod.startswith(prefix):
                mod = mod[len(prefix):]
                break
        pairs.setdefault(mod, {})[m.group("ab")] = v
    if other:
        raise CheckpointError(
            f"{p}: LoRA holds tensors that are not plain lora_A / lora_B weights (DoRA, biases, embeddings or other "
            f"adapters are not supported):\n" + _listing(other, "tensors")
        )
    incomplete = [m for m, d in pairs.items() if set(d) != {"A", "B"}]
    if incomplete:
        raise CheckpointError(f"{p}: LoRA modules without both lora_A and lora_B:\n" + _listing(incomplete, "modules"))
    if not pairs:
        raise CheckpointError(f"{p}: LoRA file holds no lora_A / lora_B tensors")
    return pairs, acfg


def load_lora(model: nn.Module, path: PathLike, alpha: float | None = None) -> nn.Module:
    """Merge the LoRA at ``path`` into ``model`` with peft; returns the model (same object).

    Every LoRA module must exist in the model as an ``nn.Linear`` with matching in/out features,
    else :class:`CheckpointError` (the adapter belongs to another model). Rank per module comes
    from ``lora_A``; alpha from ``alpha``, else ``adapter_config.json`` (``lora_alpha``,
    ``alpha_pattern``), else alpha = rank (scale 1).
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    pairs, acfg = read_lora(path)
    modules = dict(model.named_modules())
    absent = [m for m in pairs if m not in modules]
    if absent:
        raise CheckpointError(
            f"{path}: LoRA targets modules this model does not have (an adapter for another model?):\n"
            + _listing(absent, "modules")
        )
    bad = []
    ranks: dict[str, int] = {}
    for name, ab in pairs.items():
        mod = modules[name]
        a, b = ab["A"], ab["B"]
        if not isinstance(mod, nn.Linear):
            bad.append(f"  {name}: is a {type(mod).__name__}, not nn.Linear")
            continue
        r = int(a.shape[0])
        want_a, want_b = (r, mod.in_features), (mod.out_features, r)
        if a.ndim != 2 or b.ndim != 2 or tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            bad.append(f"  {name}: lora_A {list(a.shape)}, lora_B {list(b.shape)} vs layer "
                       f"in {mod.in_features} / out {mod.out_features} (expected A {list(want_a)}, B {list(want_b)})")
        ranks[name] = r
    if bad:
        raise CheckpointError(
            f"{path}: LoRA shapes do not fit this model (an adapter for another model size?):\n"
            + "\n".join(bad[:_MAX_LISTED])
            + (f"\n  ... ({len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else "")
        )

    targets = sorted(pairs)
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    rank_pattern = {f"^{re.escape(n)}$": r for n, r in ranks.items() if r != rank}
    if alpha is not None:
        base_alpha, alpha_pattern = float(alpha), {}
    elif acfg.get("lora_alpha") is not None:
        base_alpha = float(acfg["lora_alpha"])
        alpha_pattern = {}
        for pat, val in (acfg.get("alpha_pattern") or {}).items():
            for n in targets:
                if re.search(pat, n):
                    alpha_pattern[f"^{re.escape(n)}$"] = float(val)
    else:  # scale 1 per module, as LongLive (alpha = rank)
        base_alpha = float(rank)
        alpha_pattern = {f"^{re.escape(n)}$": float(r) for n, r in ranks.items() if r != rank}
    if acfg.get("use_rslora") or acfg.get("use_dora"):
        raise CheckpointError(f"{path}: adapter_config.json asks for rsLoRA / DoRA, which this loader does not merge")

    peft_cfg = LoraConfig(
        r=rank,
        lora_alpha=base_alpha,
        lora_dropout=0.0,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        init_lora_weights=False,
    )
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    peft_model = get_peft_model(model, peft_cfg)
    state = {}
    for name, ab in pairs.items():
        state[f"base_model.model.{name}.lora_A.weight"] = ab["A"]
        state[f"base_model.model.{name}.lora_B.weight"] = ab["B"]
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"{path}: peft did not place these LoRA tensors:\n" + _listing(unexpected, "tensors"))
    merged = peft_model.merge_and_unload()
    for n, p in merged.named_parameters():
        p.requires_grad_(grad.get(n, p.requires_grad))
    log.info("%s: merged LoRA into %d modules (rank %d, alpha %g)", path, len(targets), rank, base_alpha)
    return merged


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
