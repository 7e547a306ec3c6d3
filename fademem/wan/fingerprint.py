"""A base model's fingerprint: a short digest of a DiT's weights, recorded with every LoRA fademem trains and
checked wherever one is merged, so a LoRA is never applied silently to a model it was not trained on.

:func:`weights_digest` hashes (sha256) each floating-point tensor's name and shape and a fixed strided sample
of its values (at most :data:`SAMPLES` per tensor, evenly spaced over the flattened tensor, its first element
always among them); the whole weights are never read, so it is cheap even for a 1.3B Wan model (on a GPU the
samples are gathered there and copied to the host once). The values are hashed at bfloat16 precision
(rounded to nearest even), which makes the digest:

* the same for the same weights, on any device, held in float32 or bfloat16 (a bfloat16 copy of float32
  weights rounds exactly as the digest does), and for float16 copies of weights stored in float16 (the
  shipped files are) or bfloat16; a float16 copy of float32 weights may differ (float16 rounds differently);
* different, with overwhelming probability, for weights that training changed: thousands of sampled values
  (a distilled student differs from its predecessor in nearly all of them) each a chance to differ. A change
  that only touches unsampled values, or stays below bfloat16 precision everywhere sampled, is not seen.

Names are taken as the plain model has them: torch.compile's ``_orig_mod.`` and an injected (unmerged) peft
LoRA's ``base_layer.`` are dropped and its ``lora_`` tensors skipped, so a model during LoRA training has its
base's digest. The dtype is not hashed (see above). Digests carry the scheme's version (``w1:``); a record of
another version is not compared.

Records: ``"base_digest"`` in the ``fademem`` record of a FadeMem-FT LoRA directory's ``adapter_config.json``,
and in the ``lora`` metadata (``LoRAInfo``) of a compressor file's generator LoRA. :func:`check_base` is what
the LoRA merge (``fademem.wan.lora.merge_lora_pairs``) runs: a LoRA without a record (third-party LoRAs) is not
checked. After a model's first LoRA merge, its pre-merge digest stays on it (``fademem_base_digest``), so a
second LoRA trained on the same base still fits the model the first one was merged into.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

VERSION = "w1"
SAMPLES = 256  # values sampled per tensor
RECORD_KEY = "base_digest"  # the key in a LoRA's record
MERGED_ATTR = "fademem_base_digest"  # the digest a model had before its first LoRA merge


def _plain_name(name: str) -> str:
    return ".".join(p for p in name.split(".") if p not in ("_orig_mod", "base_layer"))


def weights_digest(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """``"w1:<16 hex digits>"``: the digest of a model's (or a state dict's) floating-point weights; see the
    module docstring for what it guarantees."""
    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    items = sorted((_plain_name(k), v) for k, v in sd.items()
                   if isinstance(v, torch.Tensor) and v.is_floating_point() and "lora_" not in k)
    h = hashlib.sha256(VERSION.encode())
    samples = []
    for name, t in items:
        if t.is_meta:
            raise ValueError(f"weights_digest: {name} is on the meta device (no values to fingerprint)")
        h.update(f"{name}{list(t.shape)};".encode())
        flat = t.detach().reshape(-1)
        n = flat.numel()
        k = min(n, SAMPLES)
        if k:
            idx = torch.arange(k, device=flat.device) * n // k  # computed where the tensor is: no host sync
            samples.append(flat[idx].float())
    if samples:
        devices = {s.device for s in samples}
        vals = torch.cat(samples).cpu() if len(devices) == 1 else torch.cat([s.cpu() for s in samples])
        vals = (vals + 0.0).to(torch.bfloat16)  # + 0.0: -0.0 hashes as 0.0
        h.update(vals.view(torch.int16).numpy().astype("<i2").tobytes())
    return f"{VERSION}:{h.hexdigest()[:16]}"


def recorded_digest(adapter_config: Mapping | None) -> str | None:
    """The base digest a LoRA's ``adapter_config.json`` records (``fademem`` record), None when it has none."""
    rec = (adapter_config or {}).get("fademem")
    value = rec.get(RECORD_KEY) if isinstance(rec, Mapping) else None
    return value if isinstance(value, str) and value else None


FINETUNE_HINT = ("`fademem finetune --weights MODEL.safetensors --out DIR` (with the options its adapter_config.json's "
                 "fademem.finetune record lists)")


def check_base(model: nn.Module, recorded: str | None, source: str, retrain: str | None = None,
               current: str | None = None) -> str | None:
    """ValueError (naming ``source``) when ``recorded``, the digest of the base a LoRA was trained on, is
    neither ``model``'s nor the one ``model`` had before its first LoRA merge. ``recorded`` None (no record)
    or of another scheme version: not checked. ``retrain``: how to retrain this kind of LoRA (default: the
    FadeMem-FT command). Returns the model's digest (``current`` when given: already computed)."""
    if recorded is None or not recorded.startswith(VERSION + ":"):
        return current
    current = current or weights_digest(model)
    if recorded in (current, getattr(model, MERGED_ATTR, None)):
        return current
    raise ValueError(
        f"the LoRA in {source} was trained on a different base model (its record: base weights digest {recorded}; "
        f"this model's: {current}): merged into this model it would silently give wrong results. Retrain it on "
        f"this model: {retrain or FINETUNE_HINT}; or use a LoRA trained on this model.")


def note_merge(model: nn.Module, current: str) -> None:
    """Remember ``model``'s digest before its first LoRA merge (what a later LoRA of the same base matches)."""
    if getattr(model, MERGED_ATTR, None) is None:
        setattr(model, MERGED_ATTR, current)


__all__ = ["FINETUNE_HINT", "MERGED_ATTR", "RECORD_KEY", "SAMPLES", "VERSION", "check_base", "note_merge",
           "recorded_digest", "weights_digest"]
