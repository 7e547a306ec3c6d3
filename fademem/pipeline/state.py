"""Resume files: a generation's state (``GenerationSession.state_dict()``) in one safetensors file.

Layout (``format: fademem.state/1``): every tensor of the state is a safetensors tensor named
``t/<n>``; everything else is JSON in the header metadata under the key ``fademem.state`` (the
same tree as the state dict, a tensor replaced by ``{"__tensor__": "t/<n>", "device": ...}``).
Python values JSON cannot hold are tagged: tuples ``{"__tuple__": [...]}``, dicts with keys
other than strings ``{"__items__": [[k, v], ...]}``, dataclasses of fademem modules (e.g. a
policy's host-side schedule) ``{"__dataclass__": "module:QualName", "fields": {...}}``. Floats
round-trip exactly (Python's ``repr``), NaN and inf included.

Tensors are stored on the CPU with the device type they had; ``load_state(path, device=...)``
puts those that lived on an accelerator onto ``device`` and keeps host tensors on the host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from typing import Any

import torch

FORMAT = "fademem.state/1"
META_KEY = "fademem.state"


class StateError(ValueError):
    """A state file that cannot be used here (wrong format, version, model, policy or settings)."""


# -- the tree <-> JSON + tensors --------------------------------------------------------------------
def _encode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        key = f"t/{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key, "device": obj.device.type}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        if not cls.__module__.startswith("fademem."):
            raise TypeError(f"cannot store a {cls.__module__}.{cls.__qualname__} in a state file")
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(obj, f.name), tensors) for f in dataclasses.fields(obj)}}
    raise TypeError(f"cannot store a {type(obj).__name__} in a state file")


def _decode(obj, tensors, device):
    if isinstance(obj, list):
        return [_decode(v, tensors, device) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        t = tensors[obj["__tensor__"]]
        return t if obj.get("device", "cpu") == "cpu" or device is None else t.to(device)
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, device) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors, device): _decode(v, tensors, device) for k, v in obj["__items__"]}
    if "__dataclass__" in obj:
        module, _, qual = obj["__dataclass__"].partition(":")
        if not module.startswith("fademem."):
            raise StateError(f"state file names a class outside fademem: {obj['__dataclass__']}")
        cls: Any = importlib.import_module(module)
        for part in qual.split("."):
            cls = getattr(cls, part)
        fields = {k: _decode(v, tensors, device) for k, v in obj["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        out = cls(**{k: v for k, v in fields.items() if k in init})
        for k, v in fields.items():
            if k not in init:
                setattr(out, k, v)
        return out
    return {k: _decode(v, tensors, device) for k, v in obj.items()}


def save_state(path, state: dict[str, Any]) -> str:
    """Write ``state`` (a session's ``state_dict()``, plus any JSON-able extras) atomically."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode({**state, "format": FORMAT}, tensors)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={META_KEY: json.dumps(tree), "format": FORMAT})
    os.replace(tmp, path)
    return path


def check_state_path(path) -> str:
    """``path`` names a readable fademem state file of this format (cheap: the header only)."""
    read_header(path)
    return os.fspath(path)


def read_header(path) -> dict[str, str]:
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"state file not found: {path}")
    if not os.path.isfile(path):
        raise StateError(f"state file must be a file: {path}")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a foreign file
        raise StateError(f"{path} is not a fademem state file (not safetensors: {e})") from None
    if META_KEY not in meta:
        raise StateError(f"{path} is a safetensors file but not a fademem state file (no '{META_KEY}' metadata)")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise StateError(f"{path} is a state file of format '{fmt}'; this fademem reads '{FORMAT}'")
    return meta


def load_state(path, device: str | torch.device | None = None) -> dict[str, Any]:
    """The state tree saved by ``save_state`` (tensors back in place; see the module doc for devices)."""
    from safetensors import safe_open

    meta = read_header(path)
    with safe_open(os.fspath(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _decode(json.loads(meta[META_KEY]), tensors, device)


# -- model identity ------------------------------------------------------------------------------
def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif not isinstance(obj, dict):
        obj = {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def model_identity(model, files=()) -> dict[str, Any]:
    """What a state must have been saved from: the model's class and config, a digest of its
    parameters (names, shapes, dtypes and leading values) and the identity of its weights files
    (name, size, digest of the first and last MiB)."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    h = hashlib.sha256()
    named = getattr(model, "state_dict", None)
    for name, t in (named().items() if callable(named) else ()):
        if isinstance(t, torch.Tensor):
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return {"class": type(model).__name__, "config": _jsonable(cfg) if cfg is not None else {},
            "params": h.hexdigest()[:32], "files": [file_identity(p) for p in files]}


def file_identity(path) -> dict[str, Any]:
    """Name, size and digest of a weights file; of a directory (a peft adapter: weights + config), of the files
    directly in it together."""
    path = os.fspath(path)
    if os.path.isdir(path):
        parts = [file_identity(os.path.join(path, n)) for n in sorted(os.listdir(path))
                 if os.path.isfile(os.path.join(path, n))]
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        return {"name": os.path.basename(os.path.normpath(path)), "size": sum(p["size"] for p in parts),
                "digest": digest}
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return {"name": os.path.basename(path), "size": size, "digest": h.hexdigest()[:32]}


def identity_difference(saved: dict[str, Any], here: dict[str, Any]) -> str | None:
    """A sentence naming how two model identities differ; None when they are the same."""
    if saved.get("class") != here.get("class"):
        return f"the state is from a {saved.get('class')}, this model is a {here.get('class')}"
    a, b = saved.get("config", {}), here.get("config", {})
    diff = [f"{k} {a.get(k)!r} (state) vs {b.get(k)!r} (here)" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        return "the model config differs: " + "; ".join(diff[:6])
    fa, fb = saved.get("files", []), here.get("files", [])
    if fa != fb:
        show = lambda fs: ", ".join(f"{f['name']} ({f['size']} bytes, {f['digest'][:12]})" for f in fs) or "none"  # noqa: E731
        return f"the weights files differ: state {show(fa)} vs here {show(fb)}"
    if saved.get("params") != here.get("params"):
        return (f"the model weights differ (parameter digest {saved.get('params', '')[:12]} in the state, "
                f"{here.get('params', '')[:12]} here)")
    return None
