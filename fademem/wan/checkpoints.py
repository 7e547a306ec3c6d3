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
rank 256, alpha 256). A LoRA whose ``adapter_config.json`` records the weights digest of the base it
was trained on (``fademem.base_digest``, :mod:`fademem.wan.fingerprint`) is refused for another base.

Modules
-------
:mod:`fademem.wan.checkpoints_read` reads files and detects layouts (on the file formats and tensor
names of :mod:`fademem.wan.checkpoints_files`), :mod:`fademem.wan.checkpoints_config` infers the config
and :mod:`fademem.wan.lora` merges LoRA adapters; this module builds and saves the model and re-exports
their public names.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fademem.wan.checkpoints_config import (  # noqa: F401  (the private helpers stay reachable as before)
    _HEAD_DIM,
    _bool,
    _config_dict,
    _config_fields,
    _model_config,
    _model_module,
    _preset,
    _preset_hint,
    _presets_by_dim,
    _replace_config,
    _shape_values,
    _values_from_json,
    infer_config,
)
from fademem.wan.checkpoints_read import (
    _MAX_LISTED,
    _WAN_WEIGHTS,
    LAYOUTS,
    CheckpointError,
    PathLike,
    _listing,
    _load,
    detect_layout,
    load_state_dict_any,
)
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
        raise CheckpointError("save_generator: not a plain CausalWanModel state dict (a peft wrapper?):\n"
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
