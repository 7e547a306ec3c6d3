"""LoRA adapters: read peft LoRA files (:func:`read_lora`), check them against a model and merge them
with peft (:func:`load_lora`). The merge rule is described in :mod:`fademem.wan.checkpoints`, which
re-exports both functions. A LoRA whose record names the base model it was trained on (its weights digest,
:mod:`fademem.wan.fingerprint`) merges only into that model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fademem.wan.checkpoints_files import (
    _MAX_LISTED,
    _WRAPPER_COMPONENTS,
    CheckpointError,
    PathLike,
    _listing,
    _read_json,
    _read_safetensors,
)
from fademem.wan.checkpoints_read import _open
from fademem.wan.fingerprint import check_base, note_merge, recorded_digest, weights_digest

log = logging.getLogger("fademem.wan.checkpoints")  # one logger for the checkpoint modules, as before the split

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "base_model.", "model.", "diffusion_model.")


def read_adapter_config(path: PathLike) -> dict:
    """The ``adapter_config.json`` beside a LoRA file (or in its directory); ``{}`` when there is none."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "adapter_config.json"
    return _read_json(cfg) if cfg.is_file() else {}


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
    acfg = read_adapter_config(p)
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


def load_lora(model: nn.Module, path: PathLike, alpha: float | None = None, check_base_model: bool = True
              ) -> nn.Module:
    """Merge the LoRA at ``path`` into ``model`` with peft; returns the model (same object).

    Every LoRA module must exist in the model as an ``nn.Linear`` with matching in/out features,
    else :class:`CheckpointError` (the adapter belongs to another model). Rank per module comes
    from ``lora_A``; alpha from ``alpha``, else ``adapter_config.json`` (``lora_alpha``,
    ``alpha_pattern``), else alpha = rank (scale 1). A LoRA whose ``adapter_config.json`` records the
    digest of the base it was trained on (``fademem finetune``'s) is refused (ValueError) for another
    base, before anything is merged; ``check_base_model=False`` (experts) merges it anyway.
    """
    pairs, acfg = read_lora(path)
    return merge_lora_pairs(model, pairs, acfg, alpha=alpha, source=str(path), check_base_model=check_base_model)


def merge_lora_pairs(model: nn.Module, pairs: dict[str, dict[str, torch.Tensor]], acfg: dict,
                     alpha: float | None = None, source: str = "LoRA", *, check_base_model: bool = True,
                     retrain: str | None = None) -> nn.Module:
    """Merge ``{module: {"A": lora_A, "B": lora_B}}`` into ``model`` with peft (see :func:`load_lora`).
    ``acfg["fademem"]["base_digest"]``: the base the LoRA was trained on (checked unless
    ``check_base_model`` is False; ``retrain`` says how to retrain it, for the error)."""
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    path = source
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
    current = weights_digest(model)  # the base's, before anything is merged
    if check_base_model:
        check_base(model, recorded_digest(acfg), source, retrain, current=current)

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
    note_merge(merged, current)
    log.info("%s: merged LoRA into %d modules (rank %d, alpha %g)", path, len(targets), rank, base_alpha)
    return merged
