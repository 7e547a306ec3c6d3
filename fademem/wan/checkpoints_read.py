"""Reading checkpoint files: which layout a path holds, and its state dict with original Wan names.

A layout is what a path holds (:class:`_Source`: a Wan / diffusers directory, safetensors files, a
multi-generator torch file, a bare state dict, a LoRA); the state dict comes out with original Wan names.
The layouts, the wrapper prefixes removed and the ``use_ema`` choice are described in
:mod:`fademem.wan.checkpoints`, which re-exports the public names of this module. The file formats and
tensor-name cleaning underneath live in :mod:`fademem.wan.checkpoints_files`; their names are
re-exported here as before the split.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fademem.wan.checkpoints_files import (  # noqa: F401  (re-exported: these names lived here before the split)
    _IGNORED_EXTRA_PREFIXES,
    _LEADING_PREFIXES,
    _MAX_LISTED,
    _WRAPPER_COMPONENTS,
    CheckpointError,
    PathLike,
    _clean_key,
    _clean_state_dict,
    _is_tensor_dict,
    _listing,
    _name_style,
    _read_json,
    _read_safetensors,
    _safetensors_keys,
    _shards_from_index,
    _sniff,
    _torch_load,
    _wan_name_style,
    log,
)

LAYOUTS = ("wan-original", "wan-diffusers", "self-forcing", "causvid", "longlive", "raw-state-dict", "lora")

_WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
_WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"


# --------------------------------------------------------------------------------------------
# what a path holds
# --------------------------------------------------------------------------------------------
def _names_module():
    from fademem.wan import checkpoints_names

    return checkpoints_names


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
    style = _wan_name_style(keys, f"{origin}: a safetensors file whose tensor names are not Wan names (original "
                                  f"or diffusers)")
    if style == "lora":
        return _Source(origin, "lora", files=files)
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
    style = _wan_name_style(list(sd), f"{p}: a state dict whose tensor names are not Wan names")
    if style == "lora":
        return _Source(p, "lora", obj=sd)
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
            f"file as lora= (or call fademem.wan.checkpoints.load_lora)"
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
