"""``fademem bench memory``: long-memory quality against the procedural world's ground truth.

Each *episode* is a scene of ``fademem.embedded.world`` with a seed: first the curated
``BENCHMARK_SCENES`` in order (or the indices given by ``scenes``), then random
``revisit_scene(seed + i)`` scenes (the camera pans away and comes back). For every episode and
every memory policy the embedded model (``fademem.embedded``, 64x64 frames, 8 fps, one latent frame
per video frame):

1. sees the TRUE opening: the first ``opening_seconds`` of the true video, encoded by the pixel
   codec, are teacher-forced through ``VideoPipeline.generate(prefix=...)``: chunk by chunk, the
   same t=0 cache-writing forward that writes a generated chunk into the memory;
2. generates the rest chunk by chunk exactly as the pipeline does (4 denoising forwards, one
   cache-writing forward per 3-frame chunk). The initial noise of an episode is drawn from its own
   seed (``initial_noise``) and the re-noising draws from the seed of its batch, so within an
   episode every policy gets the same noise: the differences come from the memory alone.

Every generated frame is scored against the true frame (PSNR capped at ``PSNR_CAP_DB``, SSIM) and
labelled with the ground-truth lag of ``world.last_seen(mode="revisit")``: the number of frames
between the last sighting of the content now on screen and its reappearance (0: never left the
view, or new). Statistics are over episodes (frames of one episode are correlated): per lag bin
(``metrics.binned_by_lag``), overall and at long lags (``>= long_lag`` frames), with 95% t
intervals (``metrics.mean_ci``), plus per-episode paired differences against ``full``.

Equal budgets. A bare policy name gets ``budget`` history frames (the current chunk is not
counted), as the policy itself says (``Memory.at_budget``): e.g. ``window:budget=B``,
``sink:budget=B,sink=3``, ``fademem:budget=B``, ``memrope:recent=B-5`` (its layout is sink 3 +
long EMA 1 + short EMA 1 + recent, so recent=7 gives 12 slots; the default recent=4 gives 9),
``full`` unbounded (the reference); by default a policy with a ``budget`` knob gets
``name:budget=B`` (plus ``cache=B`` if it has that knob, and ``sink=3`` if it needs it to
validate, e.g. deepforcing), otherwise its defaults (e.g. memflow, omnimem). Specs with knobs
are taken as given. The history each policy actually showed the model is measured (the largest
``view()`` of layer 0 over the run, in frames of tokens) and reported next to the request; the
table flags policies that are not at the budget.

Scores and statistics: ``bench.memory_stats``; the JSON, plot and table: ``bench.memory_report``
(both re-exported here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fademem.bench.memory_report import bin_labels, format_table, plot, write_json
from fademem.bench.memory_stats import LAG_EDGES, PSNR_CAP_DB, frame_metrics, lag_table, paired, summarise

# Scores and statistics, and the report's outputs, are in their own modules; re-exported here.
from fademem.memory import parse_spec

__all__ = ["DEFAULT_POLICIES", "FRAMES_PER_CHUNK", "LAG_EDGES", "PSNR_CAP_DB", "Episode", "MemoryRun", "bin_labels",
           "budget_spec", "format_table", "frame_metrics", "lag_table", "make_episodes", "paired", "parse_policies",
           "plot", "run_memory", "summarise", "validate", "watched_stack", "write_json"]

DEFAULT_POLICIES = ("full", "window", "sink", "memrope", "fademem")
FRAMES_PER_CHUNK = 3


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
# Episodes
# -------------------------------------------------------------------------------------------
@dataclass
class Episode:
    index: int
    prompt: str
    world_seed: int  # the world's seed (layout, textures)
    noise_seed: int  # the sampler's initial-noise seed
    source: str  # "benchmark[i]" or "revisit_scene(s)"


def make_episodes(n: int, seed: int = 0, scenes: Sequence[int] | None = None) -> list[Episode]:
    """``n`` episodes: the benchmark scenes (all of them in order, or the indices ``scenes``), then
    ``revisit_scene(seed + i)`` for the rest. Episode i's noise seed is ``seed + i``."""
    from fademem.embedded.world import BENCHMARK_SCENES, revisit_scene

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {n!r}")
    order = list(range(len(BENCHMARK_SCENES))) if scenes is None else [int(s) for s in scenes]
    for s in order:
        if not 0 <= s < len(BENCHMARK_SCENES):
            raise ValueError(f"scene index {s} is not in 0..{len(BENCHMARK_SCENES) - 1} (BENCHMARK_SCENES)")
    out = []
    for i in range(n):
        if i < len(order):
            prompt, wseed = BENCHMARK_SCENES[order[i]]
            out.append(Episode(i, prompt, int(wseed), seed + i, f"benchmark[{order[i]}]"))
        else:
            s = seed + i
            out.append(Episode(i, revisit_scene(s).to_prompt(), s, s, f"revisit_scene({s})"))
    return out


# -------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------
@dataclass
class MemoryRun:
    policies: Sequence[str] = DEFAULT_POLICIES
    episodes: int = 4
    budget: int = 12
    seconds: float = 40.0
    opening_seconds: float = 6.0
    device: str = "cpu"
    dtype: str = "float32"
    weights: str | None = None  # default: the shipped fademem/assets/embedded.safetensors
    seed: int = 0
    steps: Sequence[float] = (1000, 750, 500, 250)
    batch: int = 0  # episodes per batch (0: all at once; every policy uses the same grouping)
    scenes: Sequence[int] | None = None  # benchmark scene indices for the first episodes
    long_lag_seconds: float = 8.0
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _frames(seconds: float, fps: float, what: str) -> int:
    if not seconds > 0:
        raise ValueError(f"{what} must be positive, got {seconds}")
    return FRAMES_PER_CHUNK * math.ceil(round(seconds * fps, 6) / FRAMES_PER_CHUNK)


def validate(run: MemoryRun) -> list[tuple[str, str, str | None]]:
    """Check the options and resolve the specs before loading anything: [(requested, spec, note)]."""
    if isinstance(run.episodes, bool) or not isinstance(run.episodes, int) or run.episodes < 1:
        raise ValueError(f"--episodes must be an integer >= 1, got {run.episodes!r}")
    if isinstance(run.budget, bool) or not isinstance(run.budget, int) or run.budget < 1:
        raise ValueError(f"--budget must be an integer >= 1, got {run.budget!r}")
    if run.batch < 0:
        raise ValueError(f"--batch must be >= 0 (0: all episodes in one batch), got {run.batch}")
    if not run.seconds > run.opening_seconds > 0:
        raise ValueError(f"need 0 < --opening-seconds ({run.opening_seconds}) < --seconds ({run.seconds})")
    if run.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {run.dtype!r}")
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


def run_memory(run: MemoryRun, log=print) -> dict:
    """The whole benchmark; returns the JSON-able report (see ``write_json``)."""
    from fademem import embedded
    from fademem.bench.speed import environment
    from fademem.embedded.world import World, last_seen
    from fademem.pipeline import VideoPipeline, generator_for_memory, initial_noise

    resolved = validate(run)
    episodes = make_episodes(run.episodes, run.seed, run.scenes)
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
    long_lag = int(math.ceil(run.long_lag_seconds * fps))
    latent_shape = (cfg.channels, cfg.latent_hw, cfg.latent_hw)

    # ground truth: frames, lags, codec latents of every episode
    truth, lags_all, latents = [], [], []
    for ep in episodes:
        frames = torch.from_numpy(World(ep.prompt, ep.world_seed, size, fps).render(num_frames))
        truth.append(frames)
        lags_all.append(np.asarray(last_seen(ep.prompt, ep.world_seed, num_frames, size, fps, mode="revisit")))
        latents.append(codec.encode(frames[None]))
    lags = [lg[opening:] for lg in lags_all]  # scored frames: the generated ones
    log(f"{len(episodes)} episodes x {num_frames} frames ({num_frames / fps:g} s at {fps} fps), true opening "
        f"{opening} frames ({opening / fps:g} s), {num_frames - opening} generated frames scored each; "
        f"{bundle.model.num_parameters() / 1e6:.2f} M-parameter model on {device}")

    bs = run.batch or len(episodes)
    groups = [list(range(i, min(i + bs, len(episodes)))) for i in range(0, len(episodes), bs)]
    pipe = VideoPipeline(bundle.model, bundle.text, None, frames_per_chunk=FRAMES_PER_CHUNK, steps=tuple(run.steps))
    results: list[dict] = []
    for requested, spec, note in resolved:
        t0 = time.perf_counter()
        per_ep: list[dict | None] = [None] * len(episodes)
        visible, opening_err, error = 0, 0.0, None
        run_pipe = None  # built once per policy, inside the try below so its errors are reported
        for group in groups:
            prompts = [episodes[i].prompt for i in group]
            noise = torch.cat([initial_noise(episodes[i].noise_seed, (1, *latent_shape[:1], num_frames,
                                                                       *latent_shape[1:]), FRAMES_PER_CHUNK)
                               for i in group])
            prefix = torch.cat([latents[i][:, :, :opening] for i in group])
            outs = []
            try:
                stack, seen = watched_stack(spec, bundle.model.config.num_layers)
                if run_pipe is None:
                    # what the policy declares (e.g. a LoRA), if anything
                    model = generator_for_memory(bundle.model, spec)
                    run_pipe = pipe if model is bundle.model else VideoPipeline(
                        model, bundle.text, None, frames_per_chunk=FRAMES_PER_CHUNK, steps=tuple(run.steps))
                gen = run_pipe.generate(prompts, num_frames, memory=stack, seed=episodes[group[0]].noise_seed,
                                    noise=noise, latent_shape=latent_shape, progress=False, prefix=prefix)
                for chunk in gen:
                    outs.append(codec.to_frames(chunk.latents.float()).cpu())
                visible = max(visible, seen[0])
            except Exception as exc:  # noqa: BLE001 - report, keep the other policies
                error = f"{type(exc).__name__}: {exc}"[:400]
                log(f"  [{spec}] failed: {error}")
                break
            video = torch.cat(outs, dim=1)  # [B, T, H, W, 3]
            for j, i in enumerate(group):
                opening_err = max(opening_err, float((video[j, :opening] - truth[i][:opening]).abs().max()))
                p, s = frame_metrics(video[j, opening:], truth[i][opening:])
                per_ep[i] = {"index": i, "psnr": p.tolist(), "ssim": s.tolist()}
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
            s = res["summary"]
            log(f"{spec}: PSNR {s['psnr'][0]:.2f} dB, SSIM {s['ssim'][0]:.4f}, visible history {visible}, "
                f"{res['seconds']:.1f} s")
        results.append(res)
        pipe.memory = None

    ref = next((r for r in results if r["unbounded"] and r["error"] is None), None)  # the reference
    for r in results:
        if r["error"] is None and ref is not None and r is not ref:
            r["paired_vs_full"] = paired(r["episodes"], ref["episodes"], lags, long_lag)

    bounded = {r["spec"]: r["visible_history_frames_max"] for r in results if not r["unbounded"] and not r["error"]}
    matched = sorted(s for s, v in bounded.items() if v == run.budget)
    unmatched = {s: v for s, v in bounded.items() if v != run.budget}
    statement = (f"Equal memory budgets: every bounded policy was asked for {run.budget} history latent frames "
                 f"({run.budget / fps:g} s at {fps} fps; the current 3-frame chunk is not counted); measured "
                 f"maximum history slots visible to a chunk: "
                 + ", ".join(f"{s} {v}" for s, v in bounded.items())
                 + (f". Not at the budget: {', '.join(f'{s} ({v})' for s, v in unmatched.items())}"
                    if unmatched else "")
                 + (f". '{ref['label']}' is the unbounded reference (every past frame)." if ref else "."))
    edges = list(LAG_EDGES)
    report = {
        "benchmark": "memory",
        "environment": environment(device),
        "config": {**{k: v for k, v in asdict(run).items() if k != "extra"}, **run.extra,
                   "weights": run.weights or str(embedded.default_path()),
                   "weights_info": {k: bundle.info.get(k) for k in ("steps_done", "seconds", "device")},
                   "model": asdict(bundle.model.config), "model_parameters": bundle.model.num_parameters(),
                   "fps": fps, "frame_size": size, "latent_frames": num_frames, "opening_frames": opening,
                   "generated_frames": num_frames - opening, "frames_per_chunk": FRAMES_PER_CHUNK,
                   "batches": groups, "psnr_cap_db": PSNR_CAP_DB, "long_lag_frames": long_lag,
                   "long_lag_seconds": long_lag / fps,
                   "lag_edges_frames": [e if math.isfinite(e) else None for e in edges],
                   "lag_edges_seconds": [e / fps if math.isfinite(e) else None for e in edges],
                   "lag_mode": "world.last_seen(mode='revisit', reduce='median'): frames between the last "
                               "sighting of the content on screen and its reappearance (0: never left / new)",
                   "scored_frames": "generated frames only (frame index opening_frames + i); the opening is "
                                    "teacher-forced truth",
                   "noise": "episode i: initial noise from initial_noise(seed + i); re-noising draws from the "
                            "seed of its batch's first episode; identical for every policy"},
        "equal_budget": {"budget": run.budget, "statement": statement, "visible_history_frames": bounded,
                         "matched": matched, "unmatched": unmatched},
        "episodes": [{**asdict(ep), "lags": lags_all[i].tolist()} for i, ep in enumerate(episodes)],
        "policies": results,
        "elapsed_s": time.perf_counter() - t_start,
    }
    return report
