"""The files and tensor names under the checkpoint layouts: recognising torch / safetensors / JSON files by
their first bytes and reading them, and cleaning tensor names (wrapper prefixes removed; original, diffusers
or LoRA names). :mod:`fademem.wan.checkpoints_read` builds the layouts on these and re-exports the names
other modules use.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("fademem.wan.checkpoints")  # one logger for the checkpoint modules, as before the split

PathLike = str | os.PathLike

_WRAPPER_COMPONENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"}
_LEADING_PREFIXES = ("model.", "diffusion_model.")
# Self-Forcing's GAN variant hangs a classifier branch on the generator wrapper; it is not part of
# the generator network and is dropped (with a log line) rather than reported as unexpected.
_IGNORED_EXTRA_PREFIXES = ("_cls_pred_branch.", "_register_tokens.", "_gan_ca_blocks.")

_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A file that cannot be loaded as asked, with the reason and what would fit."""


# --------------------------------------------------------------------------------------------
# tensor names
# --------------------------------------------------------------------------------------------
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
