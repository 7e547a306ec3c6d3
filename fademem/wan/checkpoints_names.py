"""Parameter names: the original Wan release (our model) <-> diffusers' ``WanTransformer3DModel``.

Only names change; tensors are passed through untouched (no copies). Wan's ``norm3`` (the affine
cross-attention norm) is diffusers' ``norm2``; Wan's affine-free ``norm1``/``norm2`` hold no
parameters. Text-to-video keys only: image-embedding (i2v) keys are refused unless
``strict=False``, which passes unknown keys through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}

# (original regex, diffusers template); block-level keys carry the block index as group 1.
_TOP = [
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
]
_BLOCK = [("self_attn." + a, "attn1." + b) for a, b in _ATTN.items()] + \
         [("cross_attn." + a, "attn2." + b) for a, b in _ATTN.items()] + \
         [("norm3", "norm2"), ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2")]
_PARAMS = ("weight", "bias")


def _table() -> tuple[dict[str, str], list[tuple[re.Pattern, str, re.Pattern, str]]]:
    """Exact-name map plus per-block (orig pattern, diffusers template, diffusers pattern, orig template)."""
    exact = {f"{o}.{p}": f"{d}.{p}" for o, d in _TOP for p in _PARAMS}
    exact["head.modulation"] = "scale_shift_table"
    block = []
    for o, d in _BLOCK + [("modulation", "scale_shift_table")]:
        suffixes = [""] if o == "modulation" else ["." + p for p in _PARAMS]
        for s in suffixes:
            block.append((re.compile(rf"blocks\.(\d+)\.{re.escape(o + s)}"), f"blocks.{{}}.{d}{s}",
                          re.compile(rf"blocks\.(\d+)\.{re.escape(d + s)}"), f"blocks.{{}}.{o}{s}"))
    return exact, block


_EXACT, _BLOCKS = _table()
_EXACT_REV = {v: k for k, v in _EXACT.items()}


def _rename(name: str, to_diffusers: bool) -> str | None:
    exact = _EXACT if to_diffusers else _EXACT_REV
    if name in exact:
        return exact[name]
    for o_pat, d_tpl, d_pat, o_tpl in _BLOCKS:
        pat, tpl = (o_pat, d_tpl) if to_diffusers else (d_pat, o_tpl)
        m = pat.fullmatch(name)
        if m:
            return tpl.format(m.group(1))
    return None


def _convert(state_dict: Mapping[str, torch.Tensor], to_diffusers: bool, strict: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state_dict.items():
        new = _rename(name, to_diffusers)
        if new is None:
            if strict:
                unknown.append(name)
                continue
            new = name
        if new in out:
            raise ValueError(f"two keys map to '{new}'")
        out[new] = tensor
    if unknown:
        side = "original Wan" if to_diffusers else "diffusers Wan"
        raise ValueError(f"not {side} transformer keys: {', '.join(unknown[:8])}"
                         + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return out


def original_to_diffusers(state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> dict[str, torch.Tensor]:
    """Original Wan / fademem names -> diffusers ``WanTransformer3DModel`` names."""
    return _convert(state_dict, True, strict)


def diffusers_to_original(state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> dict[str, torch.Tensor]:
    """diffusers ``WanTransformer3DModel`` names -> original Wan / fademem names."""
    return _convert(state_dict, False, strict)
