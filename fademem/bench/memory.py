"""``fademem bench memory`` (v2): long-memory quality against the procedural world's ground truth.

Episodes (``bench.memory_episodes``): first the curated ``BENCHMARK_SCENES`` in order (or the indices
given by ``scenes``), then random revisit scenes (the camera pans away and comes back). Every episode
brings content back among its generated frames: benchmark scenes that do not (within ``seconds``) are
skipped and listed, random scenes are built to return in time, and both are checked. Default episode
count: 48 with ``device="cuda"`` (tight intervals), 4 on the CPU (a run of minutes). For every episode
and every memory policy the embedded model (``fademem.embedded``: the shipped file or another bundle
with its autoencoder codec, 64x64 frames, 8 fps, one latent frame per video frame):

1. sees the TRUE opening: the first ``opening_seconds`` of the true video, encoded by the bundle's
   codec, are teacher-forced through ``VideoPipeline.generate(prefix=...)`` (the same t=0
   cache-writing forward that writes a generated chunk into the memory);
2. generates the rest chunk by chunk with the sampling schedule the model file records
   (``bundle.schedule``, through ``pipeline.embedded_pipeline``; ``steps`` overrides it only when it
   agrees with the file, as ``embedded_pipeline`` checks). Initial noise per episode from its own
   seed, re-noising from the seed of its batch: within an episode every policy gets the same noise.

Scores (``bench.memory_stats``): every generated frame against the true frame (PSNR capped at
``PSNR_CAP_DB``, SSIM), labelled with the lag of ``world.last_seen(mode="revisit")``.

* ``summary``: all generated frames, binned by lag (as v1).
* ``revisit`` (revisit-aligned): only the first ``budget`` frames after each revisit onset (content
  coming back, ``world.revisit.revisit_onsets``), binned by their lag: later frames of a returned view
  can be copied from recent frames by any policy, so they would drown the long-lag bins.
* ``identity`` (with a critic file): the world critic's correctness of the object's colour/shape/size
  on one window per revisit (``bench.memory_critic``), also on the true frames as the critic's ceiling.
* ``pairwise``: every pair of policies, per-episode paired differences (same episodes, same noise),
  Holm-corrected 95% intervals per metric and lag range (``metrics.paired_holm``).

Equal budgets: a bare policy name gets ``budget`` history frames as the policy itself says
(``Memory.at_budget``); specs with knobs are taken as given. The history each policy actually showed
the model is measured (the largest ``view()`` of layer 0) and reported next to the request.

The JSON, plot and table: ``bench.memory_report`` (re-exported here, as are the statistics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fademem.bench import memory_critic
from fademem.bench.memory_assemble import assemble
from fademem.bench.memory_episodes import Episode, make_episodes, revisit_episodes
from fademem.bench.memory_report import bin_labels, format_table, plot, write_json
from fademem.bench.memory_stats import (
    LAG_EDGES,
    PAIRWISE_METHOD,
    PSNR_CAP_DB,
    excluding_zero,
    frame_metrics,
    lag_table,
    paired,
    pairwise,
    revisit_masks,
    summarise,
)
from fademem.memory import parse_spec

__all__ = ["CPU_EPISODES", "CUDA_EPISODES", "DEFAULT_POLICIES", "FRAMES_PER_CHUNK", "LAG_EDGES", "PSNR_CAP_DB",
           "Episode", "MemoryRun", "bin_labels", "budget_spec", "format_table", "frame_metrics", "lag_table",
           "make_episodes", "paired", "pairwise", "parse_policies", "plot", "revisit_episodes", "run_memory",
           "summarise", "validate", "watched_stack", "write_json"]

DEFAULT_POLICIES = ("full", "window", "sink", "memrope", "fademem")
FRAMES_PER_CHUNK = 3
CUDA_EPISODES, CPU_EPISODES = 48, 4  # default episode counts (episodes=None)


# -------------------------------------------------------------------------------------------
# Policies at equal budget
# -------------------------------------------------------------------------------------------
def budget_spec(policy: str, budget: int) -> tuple[str, str | None]:
    """(spec, note): the spec a policy runs with at ``budget`` history frames, and a note when it is
    not budget-matched or how the match was made (the policy's ``Memory.at_budget``). Specs with
    knobs are taken as given. Raises ValueError for unknown policies/knobs."""
    from fademem.memory import build_memory, parse_spec

    policy = policy.strip()
    cls, _ = parse_spec(policy)  # unknown policy or knob -> ValueError naming it
    if ":" in policy:
        build_memory(policy)
        return policy, "given spec (taken as is)"
    return cls.at_budget(budget)


def parse_policies(value: str | Sequence[str]) -> list[str]:
    """'full,window:budget=12,sink:budget=12,sink=3' -> specs (a key=value after a comma continues
    the previous spec), as ``bench speed`` reads them."""
    from fademem.bench.speed import parse_list

    out = parse_list(value)
    if not out:
        raise ValueError("no policies given")
    return out


# -------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------
@dataclass
class MemoryRun:
    policies: Sequence[str] = DEFAULT_POLICIES
    episodes: int | None = None  # None: CUDA_EPISODES (48) on cuda, CPU_EPISODES (4) elsewhere
    budget: int = 12
    seconds: float = 40.0
    opening_seconds: float = 6.0
    device: str = "cpu"
    dtype: str = "float32"
    weights: str | None = None  # default: the shipped fademem/assets/embedded.safetensors; or another bundle
    seed: int = 0
    steps: Sequence[float] | None = None  # None: the model file's schedule; given: must agree with it
    batch: int = 0  # episodes per batch (0: all at once; every policy uses the same grouping)
    scenes: Sequence[int] | None = None  # benchmark scene indices for the first episodes
    long_lag_seconds: float = 8.0
    critic: str | None = None  # a world-critic file: identity score on revisit windows
    alpha: float = 0.05  # family-wise level of the pairwise comparisons (Holm)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def num_episodes(self) -> int:
        if self.episodes is not None:
            return self.episodes
        return CUDA_EPISODES if str(self.device).startswith("cuda") else CPU_EPISODES


def _frames(seconds: float, fps: float, what: str) -> int:
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, got {seconds}")
    return FRAMES_PER_CHUNK * math.ceil(round(seconds * fps, 6) / FRAMES_PER_CHUNK)


def validate(run: MemoryRun) -> list[tuple[str, str, str | None]]:
    """Check the options and resolve the specs before loading anything: [(requested, spec, note)]."""
    n = run.num_episodes()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--episodes must be an integer >= 1, got {run.episodes!r}")
    if isinstance(run.budget, bool) or not isinstance(run.budget, int) or run.budget < 1:
        raise ValueError(f"--budget must be an integer >= 1, got {run.budget!r}")
    if run.batch < 0:
        raise ValueError(f"--batch must be >= 0 (0: all episodes in one batch), got {run.batch}")
    if not run.seconds > run.opening_seconds > 0:
        raise ValueError(f"need 0 < --opening-seconds ({run.opening_seconds}) < --seconds ({run.seconds})")
    if run.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {run.dtype!r}")
    if not 0 < run.alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {run.alpha}")
    if run.steps is not None and not list(run.steps):
        raise ValueError("--steps is empty (leave it out to use the model file's schedule)")
    if run.critic is not None:
        import os

        if not os.path.isfile(run.critic):
            raise FileNotFoundError(f"--critic file not found: {run.critic}")
    if not list(run.policies):
        raise ValueError("no policies given")
    resolved = [(p, *budget_spec(p, run.budget)) for p in run.policies]
    specs = [s for _, s, _ in resolved]
    dup = {s for s in specs if specs.count(s) > 1}
    if dup:
        raise ValueError(f"policy given twice: {', '.join(sorted(dup))}")
    return resolved


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


def _pipelines(bundle, steps):
    """(pipeline without a decoder, steps, shift, where the schedule came from): the model file's schedule
    (``embedded_pipeline`` raises ValueError if explicit ``steps`` contradict it)."""
    from fademem.pipeline import embedded_pipeline

    kw = {} if steps is None else {"steps": tuple(float(x) for x in steps)}
    pipe = embedded_pipeline(bundle, frames_per_chunk=FRAMES_PER_CHUNK, **kw)
    pipe.decoder = None  # the benchmark decodes chunks itself (float frames, no rounding)
    return pipe, pipe.schedule.steps, float(pipe.schedule.shift), \
        "the model file" if steps is None else "--steps (agrees with the file)"


def _truth(bundle, episodes, lags_all, num_frames, opening, budget):
    """True frames [T, H, W, 3] float, codec latents of the whole video, revisit masks, codec ceiling."""
    from fademem.embedded.world import World

    cfg, codec = bundle.cfg, bundle.codec
    truth, latents, ceiling = [], [], []
    with torch.no_grad():
        for ep in episodes:
            frames = torch.from_numpy(World(ep.prompt, ep.world_seed, cfg.frame_size, cfg.fps).render(num_frames))
            truth.append(frames)
            z = codec.encode(frames[None])
            latents.append(z)
            p, s = frame_metrics(codec.to_frames(z.float())[0, opening:].cpu(), frames[opening:])
            ceiling.append({"psnr": p.tolist(), "ssim": s.tolist()})
    return truth, latents, revisit_masks(lags_all, budget, opening), ceiling


def run_memory(run: MemoryRun, log=print) -> dict:
    """The whole benchmark; returns the JSON-able report (see ``write_json``)."""
    from fademem import embedded
    from fademem.bench.speed import environment
    from fademem.pipeline import VideoPipeline, generator_for_memory, initial_noise

    resolved = validate(run)
    device = torch.device(run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    t_start = time.perf_counter()
    dtype = getattr(torch, run.dtype)
    bundle = embedded.load(run.weights, device=device, dtype=dtype)
    cfg, codec = bundle.cfg, bundle.codec
    fps, size = cfg.fps, cfg.frame_size
    num_frames = _frames(run.seconds, fps, "--seconds")
    opening = _frames(run.opening_seconds, fps, "--opening-seconds")
    if opening >= num_frames:
        raise ValueError(f"the opening ({opening} frames) must be shorter than the video ({num_frames} frames)")
    pipe, steps, shift, steps_from = _pipelines(bundle, run.steps)
    long_lag = int(math.ceil(run.long_lag_seconds * fps))
    latent_shape = embedded.latent_shape(cfg)
    episodes, lags_all, skipped = revisit_episodes(run.num_episodes(), run.seed, run.scenes, num_frames, opening,
                                                   fps, size)
    for sk in skipped:
        log(f"skipped benchmark scene {sk['scene']}: {sk['reason']}")
    truth, latents, masks, ceiling = _truth(bundle, episodes, lags_all, num_frames, opening, run.budget)
    lags = [lg[opening:] for lg in lags_all]  # scored frames: the generated ones
    critic, critic_note = memory_critic.load(run.critic, device)
    span = critic.cfg.span if critic is not None else 0
    windows = [memory_critic.critic_windows(lg, opening, num_frames, span, run.budget) if critic else []
               for lg in lags_all]
    if critic is not None and not any(windows):
        critic_note += f"; no revisit window of {span} frames fits after the opening: nothing scored"
    log(f"{len(episodes)} episodes x {num_frames} frames ({num_frames / fps:g} s at {fps} fps), true opening "
        f"{opening} frames ({opening / fps:g} s), {num_frames - opening} generated frames scored each "
        f"({sum(int(m.sum()) for m in masks)} revisit-aligned in all); {bundle.model.num_parameters() / 1e6:.2f} "
        f"M-parameter model ({cfg.codec} codec, {bundle.schedule.describe()}) on {device}")

    bs = run.batch or len(episodes)
    groups = [list(range(i, min(i + bs, len(episodes)))) for i in range(0, len(episodes), bs)]
    results: list[dict] = []
    for requested, spec, note in resolved:
        t0 = time.perf_counter()
        per_ep: list[dict | None] = [None] * len(episodes)
        scored_id: list[dict | None] = [None] * len(episodes)
        visible, opening_err, error = 0, 0.0, None
        run_pipe = None  # built once per policy, inside the try below so its errors are reported
        for group in groups:
            prompts = [episodes[i].prompt for i in group]
            noise = torch.cat([initial_noise(episodes[i].noise_seed, (1, latent_shape[0], num_frames,
                                                                       *latent_shape[1:]), FRAMES_PER_CHUNK)
                               for i in group])
            prefix = torch.cat([latents[i][:, :, :opening] for i in group])
            outs = []
            try:
                stack, seen = watched_stack(spec, bundle.model.config.num_layers)
                if run_pipe is None:
                    model = generator_for_memory(bundle.model, spec)  # what the policy declares (e.g. a LoRA)
                    run_pipe = pipe if model is bundle.model else VideoPipeline(
                        model, bundle.text, None, frames_per_chunk=FRAMES_PER_CHUNK, steps=steps, shift=shift)
                gen = run_pipe.generate(prompts, num_frames, memory=stack, seed=episodes[group[0]].noise_seed,
                                        noise=noise, latent_shape=latent_shape, progress=False, prefix=prefix)
                with torch.no_grad():
                    for chunk in gen:
                        outs.append(codec.to_frames(chunk.latents.float()).cpu())
                visible = max(visible, seen[0])
            except Exception as exc:  # noqa: BLE001 - report, keep the other policies
                error = f"{type(exc).__name__}: {exc}"[:400]
                log(f"  [{spec}] failed: {error}")
                break
            video = torch.cat(outs, dim=1)  # [B, T, H, W, 3]
            ref_open = torch.cat([codec.to_frames(latents[i][:, :, :opening].float()).cpu() for i in group])
            opening_err = max(opening_err, float((video[:, :opening] - ref_open).abs().max()))
            for j, i in enumerate(group):
                p, s = frame_metrics(video[j, opening:], truth[i][opening:])
                per_ep[i] = {"index": i, "psnr": p.tolist(), "ssim": s.tolist()}
            if critic is not None:
                got = memory_critic.score_windows(critic, [video[j] for j in range(len(group))], prompts,
                                                  [episodes[i].world_seed for i in group], [windows[i] for i in group])
                for j, i in enumerate(group):
                    scored_id[i] = got[j]
                    per_ep[i]["identity"] = got[j]
            if run.progress:
                log(f"  [{spec}] episodes {group[0]}..{group[-1]} done, {time.perf_counter() - t0:.1f} s")
        res: dict[str, Any] = {
            "label": spec.split(":")[0], "requested": requested, "spec": spec,
            "unbounded": not parse_spec(spec)[0].bounded,
            "spec_resolved": pipe.memory.spec if pipe.memory is not None and error is None else None,
            "note": note, "error": error, "seconds": time.perf_counter() - t0,
            "visible_history_frames_max": visible,
            "opening_max_abs_error": opening_err if error is None else None,
            "episodes": per_ep if error is None else [],
        }
        if error is None:
            res["summary"] = summarise(per_ep, lags, long_lag)
            res["revisit"] = summarise(per_ep, lags, long_lag, masks=masks)
            if critic is not None:
                res["identity"] = memory_critic.summarise_identity(scored_id, long_lag)
            s, r = res["summary"], res["revisit"]
            log(f"{spec}: PSNR {s['psnr'][0]:.2f} dB (revisit-aligned {r['psnr'][0]:.2f}), SSIM {s['ssim'][0]:.4f}"
                + (f", identity {res['identity']['identity'][0]:.3f}" if critic is not None else "")
                + f", visible history {visible}, {res['seconds']:.1f} s")
        results.append(res)
        pipe.memory = None

    ok = [r for r in results if r["error"] is None]
    ref = next((r for r in ok if r["unbounded"]), None)  # the reference of paired_vs_full
    for r in ok:
        if ref is not None and r is not ref:
            r["paired_vs_full"] = paired(r["episodes"], ref["episodes"], lags, long_lag)
    named = [(r["spec"], r["episodes"]) for r in ok]
    pw: dict[str, Any] = {"alpha": run.alpha, "method": PAIRWISE_METHOD, "scoring": "revisit-aligned frames "
                          "(identity: revisit windows)", "long_lag_frames": long_lag,
                          "pairs": [[a, b] for i, (a, _) in enumerate(named) for b, _ in named[i + 1:]]}
    for key in ("psnr", "ssim"):
        pw[key] = pairwise(named, key, lags, long_lag, masks=masks, alpha=run.alpha)
    if critic is not None:
        id_named = [(r["spec"], [e["identity"] for e in r["episodes"]]) for r in ok]
        id_lags = [np.asarray(e["identity"]["lags"], np.int64) for e in ok[0]["episodes"]] if ok else []
        pw["identity"] = pairwise(id_named, "identity", id_lags, long_lag, alpha=run.alpha)
    pw["excluding_zero"] = {f"{k}_{rng}": excluding_zero(pw[k][rng]) for k in ("psnr", "ssim", "identity")
                            if k in pw for rng in ("overall", "long")}
    critic_truth = None
    if critic is not None:
        critic_truth = memory_critic.summarise_identity(memory_critic.score_windows(
            critic, truth, [e.prompt for e in episodes], [e.world_seed for e in episodes], windows), long_lag)
    return assemble(run, bundle, episodes, lags_all, masks, results, skipped, pw, ceiling, lags, long_lag,
                    dict(num_frames=num_frames, opening=opening, groups=groups, steps=steps, shift=shift,
                         steps_from=steps_from, environment=environment(device), t_start=t_start,
                         critic=run.critic, critic_note=critic_note, critic_truth=critic_truth, windows=windows))
