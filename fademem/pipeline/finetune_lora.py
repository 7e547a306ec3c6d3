"""The LoRA of ``fademem finetune`` (``fademem.pipeline.finetune``): which Linears of the generator's blocks
it adapts (presets), adding it with peft, and saving it in peft's adapter layout, which
``fademem.wan.lora.load_lora`` (``fademem generate --lora DIR``) reads and merges.

Presets (``LORA_PRESETS``): ``official`` is the FadeMem-FT release's, rank 256 on every ``nn.Linear`` inside
every transformer block (self- and cross-attention q/k/v/o, both FFN layers); ``attn-ffn`` (the embedded
model's default) is rank 16 on the self-attention projections and the FFN. The output is a directory:
``adapter_model.safetensors`` (``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``, as peft's
``save_pretrained`` writes) and ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``, plus the
fine-tune's record under ``fademem``, whose ``base_digest`` fingerprints the model it was trained on: the LoRA
merges into that model only, see ``fademem.wan.fingerprint``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fademem.memory.base import GeneratorAdapter

ADAPTER_CONFIG, ADAPTER_WEIGHTS = GeneratorAdapter.PEFT_FILES  # the files a LoRA directory holds
# preset -> (default rank, module names inside a block; None = every nn.Linear of the block)
LORA_PRESETS: dict[str, tuple[int, tuple[str, ...] | None]] = {
    "attn-ffn": (16, ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2")),
    "official": (256, None),
}


def block_linears(model: nn.Module) -> list[str]:
    """The names (inside one block) of the ``nn.Linear`` modules of the model's first transformer block."""
    return [n for n, m in model.blocks[0].named_modules() if isinstance(m, nn.Linear)]


def lora_targets(model: nn.Module, names: tuple[str, ...] | list[str] | None) -> list[str]:
    """Full module names ``blocks.<i>.<name>`` of every block for the in-block ``names`` (None: every
    ``nn.Linear`` of every block). ValueError for a name that is no Linear of a block."""
    have = block_linears(model)
    if names is not None:
        wrong = [n for n in names if n not in have]
        if wrong or not names:
            raise ValueError(f"LoRA targets {wrong or '(none)'} are not Linear layers of a transformer block; "
                             f"the block's Linears: {', '.join(have)}")
    keep = have if names is None else [n for n in have if n in set(names)]
    return [f"blocks.{i}.{n}" for i in range(len(model.blocks)) for n in keep]


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """Inject a peft LoRA (``W + alpha / rank * B @ A``, B zero-initialised: the model starts unchanged) into
    ``model`` in place; freezes everything else. Returns the LoRA parameters (the only trainable ones)."""
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets)),
                            model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_pairs(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": lora_A, "B": lora_B}}`` of the LoRA injected by ``add_lora`` (the layout
    ``fademem.wan.lora.merge_lora_pairs`` merges)."""
    from fademem._compat import hf_ready

    hf_ready()
    from peft import get_peft_model_state_dict

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in get_peft_model_state_dict(model).items():
        module, ab = key.rsplit(".lora_", 1)
        pairs.setdefault(module, {})[ab.split(".")[0]] = t.detach().float().cpu().contiguous()
    return pairs


def save_lora(model: nn.Module, out: str | Path, rank: int, alpha: float, targets: list[str],
              record: dict | None = None) -> Path:
    """Write the injected LoRA to the directory ``out`` in peft's adapter layout; returns ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory: the LoRA is saved as a peft adapter directory")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"base_model.model.{m}.lora_{ab}.weight": t for m, d in lora_pairs(model).items() for ab, t in d.items()}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": int(rank), "lora_alpha": float(alpha), "lora_dropout": 0.0, "bias": "none",
              "target_modules": list(targets), "use_rslora": False, "use_dora": False,
              "base_model_name_or_path": None, "fademem": record or {}}
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
    return out


def check_adapter_dir(path: str | Path, what: str | None = None) -> Path:
    """``path`` when it holds a LoRA directory's two files (nothing read); ValueError naming ``what`` (default:
    the path) otherwise: the memory layer's check, which ``lora=DIR`` policy knobs use too."""
    GeneratorAdapter.check_peft_dir(str(path), what or str(path))
    return Path(path)


def read_adapter(path: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(adapter_config.json, ``{module: {"A", "B"}}``) of a LoRA directory ``save_lora`` wrote, read by the
    generators' LoRA reader (``fademem.wan.lora.read_lora``)."""
    from fademem.wan.lora import read_lora

    pairs, config = read_lora(check_adapter_dir(path))
    return config, pairs


def load_into(model: nn.Module, pairs: dict[str, dict[str, torch.Tensor]]) -> None:
    """Copy a saved LoRA's A/B pairs into the LoRA ``add_lora`` injected into ``model`` (same targets and
    rank); ValueError when they do not match exactly."""
    own = {n: p for n, p in model.named_parameters() if "lora_" in n}
    want = {f"{module}.lora_{ab}.default.weight": t for module, d in pairs.items() for ab, t in d.items()}
    if set(want) != set(own):
        missing, extra = sorted(set(own) - set(want))[:3], sorted(set(want) - set(own))[:3]
        raise ValueError(f"the saved LoRA does not match the one being trained (missing {missing}, extra {extra})")
    with torch.no_grad():
        for name, p in own.items():
            if want[name].shape != p.shape:
                raise ValueError(f"the saved LoRA's {name} is {tuple(want[name].shape)}, here {tuple(p.shape)}")
            p.copy_(want[name].to(p.device, p.dtype))


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LORA_PRESETS", "add_lora", "block_linears", "check_adapter_dir",
           "load_into", "lora_pairs", "lora_targets", "read_adapter", "save_lora"]
