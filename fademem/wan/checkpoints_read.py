"""Reading checkpoint files: which layout a path holds, and its state dict with original Wan names.

The layouts, the wrapper prefixes removed and the ``use_ema`` choice are described in
:mod:`fademem.wan.checkpoints`, which re-exports the public names of this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

log = logging.getLogger("fademem.wan.checkpoints")  # one logger for the checkpoint modules, as before the split

LAYOUTS = ("wan-original", "wan-diffusers", "self-forcing", "causvid", "longlive", "raw-state-dict", "lora")

PathLike = str | os.PathLike

_WRAPPER_COMPONENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"}
_LEADING_PREFIXES = ("model.", "diffusion_model.")
# Self-Forcing's GAN variant hangs a classifier branch on the generator wrapper; it is not part of
# the generator network and is dropped (with a log line) rather than reported as unexpected.
_IGNORED_EXTRA_PREFIXES = ("_cls_pred_branch.", "_register_tokens.", "_gan_ca_blocks.")

_WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
_WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A file that cannot be loaded as asked, with the reason and what would fit."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _names_module():
    from fademem.wan import checkpoints_names

    return checkpoints_names


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


def _wan_name_style(keys: Sequence[str], not_wan: str) -> str:
    """:func:`_name_style` of the cleaned ``keys``; ``not_wan`` + the first names as the error when unknown."""
    style = _name_style(_clean_key(k) for k in keys)
    if style == "unknown":
        raise CheckpointError(f"{not_wan}; first names: {', '.join(keys[:8])}")
    return style


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
            f"fademem.wan.checkpoints.save_generator."
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
