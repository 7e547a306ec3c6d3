"""Policy registry and spec strings such as ``fademem:budget=12,beta=0.3``."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from fademem.memory.base import Memory

REGISTRY: dict[str, type[Memory]] = {}
_PRIVATE = ("rope", "tokens_per_frame")


def register(cls: type[Memory]) -> type[Memory]:
    """Class decorator: make a policy buildable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"memory policy '{cls.name}' is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def knob_types(cls: type[Memory]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _PRIVATE}


AUTO = "auto"  # a knob value measured from data, resolved by ``resolve_auto`` before the spec is parsed


def _coerce(policy: str, key: str, raw: str, tp: Any) -> Any:
    if raw.lower() == AUTO and tp in (int, float):
        raise ValueError(f"{policy}: {key}=auto is a value measured from data and must be resolved first "
                         f"(the CLI: --{key.replace('_', '-')}-from FILE)")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(policy, key, raw, inner[0])
    if origin is typing.Literal:
        if raw not in args:
            raise ValueError(f"{policy}: {key} must be one of {', '.join(map(str, args))}; got '{raw}'")
        return raw
    try:
        if tp is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"{policy}: {key} must be {tp.__name__}, got '{raw}'") from None
    return raw


def parse_spec(spec: str) -> tuple[type[Memory], dict[str, Any]]:
    """``name[:key=value,...]`` -> (policy class, knob values). Raises ValueError naming the problem."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("memory spec must be a non-empty string such as 'fademem:budget=12'")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in REGISTRY:
        raise ValueError(f"unknown memory policy '{name}'; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    types_ = knob_types(cls)
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ValueError(f"{name}: expected key=value, got '{item}'")
        if key not in types_:
            raise ValueError(f"{name}: unknown knob '{key}'; knobs: {', '.join(types_) or '(none)'}")
        if key in kwargs:
            raise ValueError(f"{name}: knob '{key}' given twice")
        kwargs[key] = _coerce(name, key, raw.strip(), types_[key])
    return cls, kwargs


def resolve_auto(spec: str, values: dict[str, Any], source: str = "") -> str:
    """``spec`` with every ``knob=auto`` replaced by ``values[knob]`` (a measured value, e.g. FadeMem's beta
    from a spectrum report); specs without ``auto`` come back unchanged. ValueError when a knob is ``auto``
    and no value was measured for it (``source``: where values come from, for the message)."""
    if not isinstance(spec, str):
        return spec
    name, colon, rest = spec.strip().partition(":")
    items = [p.strip() for p in rest.split(",")] if colon else []
    out = []
    for item in items:
        key, eq, raw = item.partition("=")
        k = key.strip().replace("-", "_")
        if eq and raw.strip().lower() == AUTO:
            if k not in values:
                hint = f" (given: {source})" if source else f" (pass --{k.replace('_', '-')}-from FILE)"
                raise ValueError(f"{name}: {k}=auto has no measured value{hint}")
            item = f"{key.strip()}={values[k]:.6g}" if isinstance(values[k], float) else f"{key.strip()}={values[k]}"
        out.append(item)
    return f"{name}:{','.join(out)}" if colon else name


def build_memory(spec: str | Memory, **overrides: Any) -> Memory:
    """One policy instance (one layer) from a spec string, or a copy of a configured instance."""
    if isinstance(spec, Memory):
        return type(spec)(**{**spec.knobs(), **overrides})
    cls, kwargs = parse_spec(spec)
    return cls(**{**kwargs, **overrides})


def describe() -> str:
    """Every registered policy with its knobs and defaults (for --help texts)."""
    lines = []
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        knobs = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls)
                          if f.name not in _PRIVATE)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"{name}: {doc} [{knobs}]")
    return "\n".join(lines)
