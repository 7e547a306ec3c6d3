"""Assembling a pipeline: the real Wan2.1 stack from files, the embedded model from the package,
and the generator a memory policy asks for (``Memory.generator_adapter``)."""

from __future__ import annotations

import os

import torch

from fademem.pipeline.sampler import VideoPipeline


def load_wan_pipeline(checkpoint, wan_dir, *, lora=(), config=None, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, offload_text: bool = False,
                      **pipeline_kw) -> VideoPipeline:
    """A pipeline over a causal Wan checkpoint (any layout ``fademem.wan.checkpoints`` reads, plus
    LoRA files merged in order), the UMT5 text encoder and the Wan VAE of a Wan2.1 Diffusers
    directory (``<wan_dir>/text_encoder``, ``<wan_dir>/tokenizer``, ``<wan_dir>/vae``).

    ``offload_text`` (the low-memory mode): the text encoder is loaded into host memory and moves to
    ``device`` only while encoding (``fademem.pipeline.offload.OffloadedTextEncoder``).

    Raises FileNotFoundError for missing files and ValueError (``CheckpointError`` included) for
    parts that do not fit together.
    """
    from pathlib import Path

    from fademem.wan.checkpoints import load_generator
    from fademem.wan.text import UMT5TextEncoder
    from fademem.wan.vae import WanVAEDecoder

    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    loras = [lora] if isinstance(lora, (str, os.PathLike)) else list(lora or ())
    for p in loras:
        if not Path(p).exists():
            raise FileNotFoundError(f"LoRA file not found: {p}")
    wan = Path(wan_dir)
    if not wan.is_dir():
        raise FileNotFoundError(f"--wan-dir is not a directory: {wan} (expected the Wan2.1 Diffusers "
                                "layout with text_encoder/, tokenizer/ and vae/)")
    missing = [sub for sub in ("text_encoder", "tokenizer", "vae") if not (wan / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{wan} lacks {', '.join(s + '/' for s in missing)} (expected the Wan2.1 "
                                "Diffusers layout, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    model = load_generator(ckpt, lora=loras or None, config=config, device=device, dtype=dtype)
    cfg = getattr(model, "config", None)
    text_len = int(getattr(cfg, "text_len", 512))
    text = UMT5TextEncoder.from_pretrained(wan, device="cpu" if offload_text else device, dtype=dtype,
                                           max_length=text_len)
    if offload_text:
        from fademem.pipeline.offload import OffloadedTextEncoder

        text = OffloadedTextEncoder(text, device)
    if cfg is not None and text.text_dim != cfg.text_dim:
        raise ValueError(f"incompatible parts: the checkpoint expects text states of width {cfg.text_dim}, "
                         f"the text encoder in {wan} gives {text.text_dim}")
    vae = WanVAEDecoder.from_pretrained(wan, device=device, dtype=dtype)
    if cfg is not None and not (cfg.in_dim == cfg.out_dim == vae.z_dim):
        raise ValueError(f"incompatible parts: the checkpoint works on {cfg.in_dim}-channel latents "
                         f"(out {cfg.out_dim}), the VAE in {wan} on {vae.z_dim}")
    return VideoPipeline(model, text, vae, **pipeline_kw)




def embedded_pipeline(bundle=None, device="cpu", dtype=torch.float32, *, override_schedule: bool = False,
                      **kwargs) -> VideoPipeline:
    """A ``VideoPipeline`` over the embedded model (shipped weights unless a bundle is given).

    It samples with the schedule the model file records (``bundle.schedule``: the steps and shift the
    model was trained or distilled for; v1 files: the default four steps, shift 5). Passing ``steps``
    or ``shift`` that differ from it raises ValueError naming both, unless ``override_schedule=True``
    (for experiments that sample a model off its schedule on purpose).
    """
    from fademem.embedded import latent_shape, load

    bundle = bundle or load(device=device, dtype=dtype)
    schedule = getattr(bundle, "schedule", None)
    if schedule is not None:
        steps = tuple(float(s) for s in kwargs.get("steps", schedule.steps))
        shift = float(kwargs.get("shift", schedule.shift))
        if not override_schedule and not schedule.matches(steps, shift):
            asked = ", ".join(f"{s:g}" for s in steps) if len(steps) <= 8 else f"{len(steps)} steps"
            raise ValueError(f"the embedded model was trained for {schedule.describe()}, but the pipeline was "
                             f"asked to sample with steps ({asked}), shift {shift:g}: a model sampled off its "
                             "schedule gives wrong videos. Leave steps/shift out to use the file's schedule, or "
                             "pass override_schedule=True to sample off it on purpose.")
        kwargs["steps"], kwargs["shift"] = steps, shift
        kwargs.setdefault("update", schedule.update)
    pipe = VideoPipeline(bundle.model, bundle.text, bundle.codec, **kwargs)
    pipe.trained_frames = embedded_trained_frames(bundle, pipe.frames_per_chunk)
    pipe.latent_shape = latent_shape(bundle.cfg)  # generate()'s default
    return pipe


def embedded_trained_frames(bundle, frames_per_chunk: int = 3) -> int | None:
    """The temporal positions an embedded model file was trained on, from its training (or distillation) record: targets
    up to ``max_history`` frames into a video, one chunk long (the shipped file: 600 + 3 = 603 latent
    frames, 75 s). None when the file does not record it (the session then assumes Wan's 21)."""
    info = getattr(bundle, "info", None) or {}
    train = info.get("train") or info.get("distill") or {}  # a distilled student records its data config
    hist = train.get("max_history") if isinstance(train, dict) else None
    return int(hist) + frames_per_chunk if isinstance(hist, int) and hist > 0 else None


def generator_for_memory(model, memory):
    """The generator to run with ``memory`` (a spec or a built memory): ``model`` itself, or a copy
    with the changes the policy declares through ``Memory.generator_adapter()`` (e.g. a LoRA
    trained to read that memory) merged in. No policy is named here. A LoRA trained on another base
    model than ``model`` is a ValueError (``fademem.wan.fingerprint``), raised before the copy."""
    import copy

    from fademem.memory import build_memory
    from fademem.wan.lora import load_lora, merge_lora_pairs

    mem = build_memory(memory) if isinstance(memory, str) else memory
    adapter = mem.generator_adapter()
    if adapter is None:
        return model
    check_adapter_base(model, adapter)
    if adapter.lora is None:  # a LoRA file / adapter directory: the loader `generate --lora` uses
        return load_lora(copy.deepcopy(model), adapter.source)
    return merge_lora_pairs(copy.deepcopy(model), adapter.lora, _adapter_config(adapter), source=adapter.source,
                            retrain=adapter.retrain)


def _adapter_config(adapter) -> dict:
    """A ``GeneratorAdapter``'s LoRA as the loader reads an adapter config: alpha and the base-model record."""
    return {"lora_alpha": adapter.alpha, "fademem": {"base_digest": adapter.base_digest}}


def check_adapter_base(model, adapter) -> None:
    """ValueError when the LoRA of ``adapter`` (a ``GeneratorAdapter``, or a spec / memory declaring one) was
    trained on another base model than ``model`` (nothing merged; None or an adapter without a record: no
    check). Runs before long work (benchmarks check every policy up front); the merge checks again."""
    from fademem.memory import build_memory
    from fademem.wan.fingerprint import check_base, recorded_digest

    if isinstance(adapter, str) or hasattr(adapter, "generator_adapter"):
        adapter = (build_memory(adapter) if isinstance(adapter, str) else adapter).generator_adapter()
    if adapter is None:
        return
    if adapter.lora is None:  # a LoRA directory (or file): the adapter_config.json there records the base
        from fademem.wan.lora import read_adapter_config

        check_base(model, recorded_digest(read_adapter_config(adapter.source)), adapter.source)
    else:
        check_base(model, adapter.base_digest, adapter.source, adapter.retrain)
