"""``fademem bench memory``: one policy over every episode (``run_policy``), and the time-budget forecast.

``run_policy`` is what ``memory.run_memory`` calls once per policy (tests replace it through this module);
``Setup`` carries what every policy shares (model, episodes, truth, critic windows)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fademem.bench import memory_critic, memory_cuts
from fademem.bench.memory_stats import frame_metrics, summarise

FRAMES_PER_CHUNK = 3


@dataclass
class Setup:
    bundle: Any
    pipe: Any  # the model file's pipeline, no decoder
    steps: Any
    shift: float
    episodes: list
    groups: list[list[int]]
    latents: list  # codec latents of the whole true video, per episode
    truth: list  # true frames [T, H, W, 3], per episode
    latent_shape: tuple
    num_frames: int
    opening: int
    lags: list  # per episode: lags of the scored (generated) frames
    masks: list  # per episode: revisit-aligned frames among the scored ones
    long_lag: int
    critic: Any = None
    windows: list | None = None
    progress: bool = True
    extra_masks: dict | None = None  # name -> masks: more summaries of the scored frames (cuts: after_return)


def watched_stack(spec: str, num_layers: int):
    """A MemoryStack whose first layer records the largest view it hands the model, in frames of
    tokens (``view.k`` tokens / tokens per frame; token-level policies can give fractions)."""
    from fademem.memory import MemoryStack

    stack = MemoryStack(spec, num_layers)
    layer, seen = stack.layers[0], [0]
    inner = layer.view

    def view(query):
        v = inner(query)
        if v is not None:
            frames = v.k.shape[1] / layer.tokens_per_frame
            seen[0] = max(seen[0], int(frames) if float(frames).is_integer() else round(frames, 2))
        return v

    layer.view = view  # an instance attribute: survives reset()
    return stack, seen


def run_policy(st: Setup, requested: str, spec: str, note: str | None, log=print) -> dict[str, Any]:
    """One policy over every episode batch: its result entry of ``report["policies"]``. An exception in the
    generation is recorded in ``error`` (the other policies still run); KeyboardInterrupt propagates."""
    from fademem.memory import parse_spec
    from fademem.pipeline import VideoPipeline, generator_for_memory, initial_noise

    bundle, pipe, episodes, opening, critic = st.bundle, st.pipe, st.episodes, st.opening, st.critic
    codec = bundle.codec
    t0 = time.perf_counter()
    per_ep: list[dict | None] = [None] * len(episodes)
    scored_id: list[dict | None] = [None] * len(episodes)
    visible, opening_err, error = 0, 0.0, None
    run_pipe = None  # built once per policy, inside the try below so its errors are reported
    for group in st.groups:
        prompts = [episodes[i].prompt for i in group]
        noise = torch.cat([initial_noise(episodes[i].noise_seed, (1, st.latent_shape[0], st.num_frames,
                                                                   *st.latent_shape[1:]), FRAMES_PER_CHUNK)
                           for i in group])
        prefix = torch.cat([st.latents[i][:, :, :opening] for i in group])
        outs = []
        try:
            stack, seen = watched_stack(spec, bundle.model.config.num_layers)
            if run_pipe is None:
                model = generator_for_memory(bundle.model, spec)  # what the policy declares (e.g. a LoRA)
                run_pipe = pipe if model is bundle.model else VideoPipeline(
                    model, bundle.text, None, frames_per_chunk=FRAMES_PER_CHUNK, steps=st.steps, shift=st.shift)
            gen = run_pipe.generate(prompts, st.num_frames, memory=stack, seed=episodes[group[0]].noise_seed,
                                    noise=noise, switches=memory_cuts.group_switches(episodes, group),
                                    latent_shape=st.latent_shape, progress=False, prefix=prefix)
            with torch.no_grad():
                for chunk in gen:
                    outs.append(codec.to_frames(chunk.latents.float()).cpu())
            visible = max(visible, seen[0])
        except Exception as exc:  # noqa: BLE001 - report, keep the other policies
            error = f"{type(exc).__name__}: {exc}"[:400]
            log(f"  [{spec}] failed: {error}")
            break
        video = torch.cat(outs, dim=1)  # [B, T, H, W, 3]
        ref_open = torch.cat([codec.to_frames(st.latents[i][:, :, :opening].float()).cpu() for i in group])
        opening_err = max(opening_err, float((video[:, :opening] - ref_open).abs().max()))
        for j, i in enumerate(group):
            p, s = frame_metrics(video[j, opening:], st.truth[i][opening:])
            per_ep[i] = {"index": i, "psnr": p.tolist(), "ssim": s.tolist()}
        if critic is not None:
            got = memory_critic.score_windows(critic, [video[j] for j in range(len(group))], prompts,
                                              [episodes[i].world_seed for i in group], [st.windows[i] for i in group])
            for j, i in enumerate(group):
                scored_id[i] = got[j]
                per_ep[i]["identity"] = got[j]
        if st.progress:
            log(f"  [{spec}] episodes {group[0]}..{group[-1]} done, {time.perf_counter() - t0:.1f} s")
    res: dict[str, Any] = {
        "label": spec.split(":")[0], "requested": requested, "spec": spec,
        "unbounded": not parse_spec(spec)[0].bounded,
        "spec_resolved": (run_pipe.memory.spec if run_pipe is not None and run_pipe.memory is not None
                          and error is None else None),  # run_pipe: a policy with a LoRA runs its own
        "note": note, "error": error, "seconds": time.perf_counter() - t0,
        "visible_history_frames_max": visible,
        "opening_max_abs_error": opening_err if error is None else None,
        "episodes": per_ep if error is None else [],
    }
    if error is None:
        res["summary"] = summarise(per_ep, st.lags, st.long_lag)
        res["revisit"] = summarise(per_ep, st.lags, st.long_lag, masks=st.masks)
        for name, m in (st.extra_masks or {}).items():
            res[name] = summarise(per_ep, st.lags, st.long_lag, masks=m)
        if critic is not None:
            res["identity"] = memory_critic.summarise_identity(scored_id, st.long_lag)
        s, r = res["summary"], res["revisit"]
        log(f"{spec}: PSNR {s['psnr'][0]:.2f} dB (revisit-aligned {r['psnr'][0]:.2f}), SSIM {s['ssim'][0]:.4f}"
            + (f", identity {res['identity']['identity'][0]:.3f}" if critic is not None else "")
            + f", visible history {visible}, {res['seconds']:.1f} s")
    return res


def forecast_seconds(results: list[dict], spec: str) -> float | None:
    """Forecast wall seconds of ``spec``: the largest measured time of the finished (error-free) policies of
    the same name, else of the same kind (unbounded like ``full`` / bounded), else of any; None: nothing
    measured yet (the policy runs)."""
    from fademem.memory import parse_spec

    ok = [r for r in results if r.get("error") is None and r.get("seconds") is not None]
    label, unbounded = spec.split(":")[0], not parse_spec(spec)[0].bounded
    for pool in ([r for r in ok if r["label"] == label], [r for r in ok if bool(r["unbounded"]) == unbounded], ok):
        if pool:
            return float(max(r["seconds"] for r in pool))
    return None


def budget_reason(results: list[dict], spec: str, left_s: float) -> str | None:
    """Why ``spec`` is skipped under the time budget (``left_s`` seconds left), or None when it runs."""
    f = forecast_seconds(results, spec)
    if f is None or f <= left_s:
        return None
    return f"time budget: forecast {f:.1f} s, {max(left_s, 0.0):.1f} s left"
