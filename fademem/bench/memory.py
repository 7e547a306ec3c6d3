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
counted): ``window:budget=B``, ``sink:budget=B,sink=3``, ``fademem:budget=B``,
``memrope:recent=B-5`` (its layout is sink 3 + long EMA 1 + short EMA 1 + recent, so recent=7
gives 12 slots; the default recent=4 gives 9), ``full`` unbounded (the reference); any other bare
name with a ``budget`` knob gets ``name:budget=B`` (plus ``cache=B`` if it has that knob, and
``sink=3`` if it needs it to validate, e.g. deepforcing), otherwise its defaults (e.g. memflow,
omnimem). Specs with knobs are taken as given. The history each policy actually showed the model
is measured (the largest ``view()`` of layer 0 over the run, in frames of tokens) and reported
next to the request; the table flags policies that are not at the budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

DEFAULT_POLICIES = ("full", "window", "sink", "memrope", "fademem")
LAG_EDGES = (0, 1, 8, 16, 32, 64, 128, 256, math.inf)  # latent (= video) frames
PSNR_CAP_DB = 100.0
FRAMES_PER_CHUNK = 3
MEMROPE_FIXED = 5  # memrope's non-recent slots at the default sink=3: sink 3 + long EMA 1 + short EMA 1


# -------------------------------------------------------------------------------------------
# Policies at equal budget
# -------------------------------------------------------------------------------------------
def budget_spec(policy: str, budget: int) -> tuple[str, str | None]:
    """(spec, note): the spec a policy runs with at ``budget`` history frames, and a note when it is
    not budget-matched or how the match was made. Raises ValueError for unknown policies/knobs."""
    from fademem.memory import build_memory, parse_spec

    policy = policy.strip()
    cls, _ = parse_spec(policy)  # unknown policy or knob -> ValueError naming it
    name = cls.name
    if ":" in policy:
        build_memory(policy)
        return policy, "given spec (taken as is)"
    if name == "full":
        return "full", "unbounded reference (every past frame)"
    if name in ("window", "fademem"):
        spec = f"{name}:budget={budget}"
    elif name == "sink":
        spec = f"sink:budget={budget},sink={min(3, budget - 1)}"
    elif name == "memrope":
        if budget < MEMROPE_FIXED:
            raise ValueError(f"memrope needs budget >= {MEMROPE_FIXED} (sink 3 + 2 EMA slots), got {budget}")
        spec = f"memrope:recent={budget - MEMROPE_FIXED}"
        build_memory(spec)
        return spec, (f"fixed layout sink 3 + long EMA 1 + short EMA 1 + recent {budget - MEMROPE_FIXED} "
                      f"= {budget} history slots (default recent=4 gives 9)")
    elif name == "compressor":  # equal visible tokens: raw window (+ up to t-1 waiting) + compressed groups
        t, fh, fw = build_memory("compressor").factors
        window = max(1, budget // 3)
        groups = (budget - window - (t - 1)) * fh * fw
        if groups < 1:
            raise ValueError(f"compressor needs budget > {window + t - 1} frames at rate {t}x{fh}x{fw}, got {budget}")
        spec = f"compressor:window={window},budget={groups}"
        build_memory(spec)
        return spec, (f"window {window} raw frames (+ up to {t - 1} waiting for a group) + {groups} groups of "
                      f"1/{fh * fw} frame of tokens each = at most {budget} frames of tokens")
    elif "budget" in {f.name for f in dataclasses.fields(cls)}:  # e.g. policies registered later
        knobs = {f.name for f in dataclasses.fields(cls)}
        base = f"{name}:budget={budget}" + (f",cache={budget}" if "cache" in knobs else "")  # deepforcing
        tries = [base] + ([f"{base},sink={min(3, budget - 1)}"] if "sink" in knobs else [])
        last = None
        for spec in tries:
            try:
                build_memory(spec)
                return spec, "budget knob set; check the measured visible history"
            except ValueError as exc:
                last = exc
        build_memory(name)
        return name, f"budget={budget} not accepted ({last}); run with its defaults (not budget-matched)"
    else:
        build_memory(name)
        return name, "no budget knob: run with its defaults (not budget-matched)"
    build_memory(spec)
    return spec, None


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
# Metrics
# -------------------------------------------------------------------------------------------
def frame_metrics(generated, truth, max_db: float = PSNR_CAP_DB) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (PSNR capped at ``max_db``, SSIM) of frames [T, H, W, 3] in [0, 1]."""
    from fademem.metrics import psnr, ssim

    g = torch.as_tensor(np.asarray(generated) if not isinstance(generated, torch.Tensor) else generated)
    t = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth)
    g, t = g.detach().cpu().double(), t.detach().cpu().double()
    return psnr(g, t, max_db=max_db).numpy(), ssim(g, t).numpy()


def _ci(values) -> list[float]:
    from fademem.metrics import mean_ci

    return list(mean_ci(values))


def lag_table(values: list[np.ndarray], lags: list[np.ndarray], edges=LAG_EDGES) -> dict[str, list]:
    """Per lag bin: mean over episodes of the per-episode mean, 95% CI, episode and frame counts."""
    from fademem.metrics import binned_by_lag

    b = binned_by_lag(list(values), list(lags), edges)
    return {"mean": b.mean.tolist(), "low": b.low.tolist(), "high": b.high.tolist(),
            "n_episodes": b.n_episodes.tolist(), "n_frames": b.n_frames.tolist()}


def summarise(per_episode: list[dict], lags: list[np.ndarray], long_lag: int,
              edges=LAG_EDGES) -> dict[str, Any]:
    """Overall and long-lag means with CIs over episodes, and the lag-binned tables."""
    out: dict[str, Any] = {}
    for key in ("psnr", "ssim"):
        vals = [np.asarray(ep[key], np.float64) for ep in per_episode]
        out[key] = _ci([v.mean() for v in vals if v.size])
        longs = [v[lg >= long_lag].mean() for v, lg in zip(vals, lags) if (lg >= long_lag).any()]
        out[f"{key}_long"] = _ci(longs)
        out["n_long_episodes"] = len(longs)
        out[f"{key}_by_lag"] = lag_table(vals, lags, edges)
    return out


def paired(per_episode: list[dict], reference: list[dict], lags: list[np.ndarray], long_lag: int) -> dict:
    """Per-episode differences policy - reference (same noise, same episodes): mean and 95% CI."""
    out = {}
    for key in ("psnr", "ssim"):
        a = [np.asarray(e[key]) for e in per_episode]
        b = [np.asarray(e[key]) for e in reference]
        out[key] = _ci([x.mean() - y.mean() for x, y in zip(a, b)])
        out[f"{key}_long"] = _ci([x[lg >= long_lag].mean() - y[lg >= long_lag].mean()
                                  for x, y, lg in zip(a, b, lags) if (lg >= long_lag).any()])
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
    from fademem.pipeline import generator_for_memory
    from fademem.pipeline import VideoPipeline, initial_noise
    from fademem.embedded.world import World, last_seen

    from fademem.bench.speed import environment

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
                    model = generator_for_memory(bundle.model, spec)  # what the policy declares (e.g. a LoRA), if anything
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

    ref = next((r for r in results if r["label"] == "full" and r["error"] is None), None)
    for r in results:
        if r["error"] is None and ref is not None and r is not ref:
            r["paired_vs_full"] = paired(r["episodes"], ref["episodes"], lags, long_lag)

    bounded = {r["spec"]: r["visible_history_frames_max"] for r in results if r["label"] != "full" and not r["error"]}
    matched = sorted(s for s, v in bounded.items() if v == run.budget)
    unmatched = {s: v for s, v in bounded.items() if v != run.budget}
    statement = (f"Equal memory budgets: every bounded policy was asked for {run.budget} history latent frames "
                 f"({run.budget / fps:g} s at {fps} fps; the current 3-frame chunk is not counted); measured "
                 f"maximum history slots visible to a chunk: "
                 + ", ".join(f"{s} {v}" for s, v in bounded.items())
                 + (f". Not at the budget: {', '.join(f'{s} ({v})' for s, v in unmatched.items())}" if unmatched else "")
                 + ". 'full' is the unbounded reference (every past frame).")
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


# -------------------------------------------------------------------------------------------
# Output
# -------------------------------------------------------------------------------------------
def _clean(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_clean(report), fh, indent=1, allow_nan=False)
    return path


def bin_labels(edges=LAG_EDGES, fps: float = 8) -> list[str]:
    def sec(x):
        return "inf" if not math.isfinite(x) else f"{x / fps:g}"

    def fr(x):
        return "inf" if not math.isfinite(x) else f"{x:g}"

    return [f"[{fr(a)},{fr(b)}) fr\n[{sec(a)},{sec(b)}) s" for a, b in zip(edges[:-1], edges[1:])]


def plot(report: dict, path: str) -> str:
    """PSNR (top) and SSIM (bottom) against lag bin, one line per policy with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    labels = bin_labels(edges, cfg["fps"])
    ok = [r for r in report["policies"] if not r.get("error") and "summary" in r]
    if ok:  # episodes with frames in each bin (the same for every policy)
        labels = [f"{lab}\nn={n}" for lab, n in zip(labels, ok[0]["summary"]["psnr_by_lag"]["n_episodes"])]
    fig, axes = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    x = np.arange(len(labels))
    for res in report["policies"]:
        if res.get("error") or "summary" not in res:
            continue
        for ax, key in zip(axes, ("psnr", "ssim")):
            b = res["summary"][f"{key}_by_lag"]
            m = np.array([v if v is not None else np.nan for v in b["mean"]], float)
            lo = np.array([v if v is not None else np.nan for v in b["low"]], float)
            hi = np.array([v if v is not None else np.nan for v in b["high"]], float)
            line, = ax.plot(x, m, marker="o", lw=1.4, label=f"{res['spec']} ({res['visible_history_frames_max']})"
                            if res["label"] != "full" else "full (unbounded)")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("PSNR vs truth (dB)")
    axes[1].set_ylabel("SSIM vs truth")
    axes[1].set_ylim(-0.05, 1.05)  # t intervals over few episodes can reach past SSIM's range
    axes[0].set_title(f"Memory benchmark: {len(report['episodes'])} episodes, {cfg['latent_frames'] / cfg['fps']:g} s, "
                      f"true opening {cfg['opening_frames'] / cfg['fps']:g} s, budget {cfg['budget']} frames "
                      f"(legend: visible history); bands: 95% CI over episodes", fontsize=9)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].set_xlabel("lag: time since the revisited content was last seen (world.last_seen, mode revisit)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_ci(ci, digits: int = 2) -> str:
    m, lo, hi = (float("nan") if v is None else v for v in ci)
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f},{hi:.{digits}f}]"


def format_table(report: dict) -> str:
    cfg = report["config"]
    ll = cfg["long_lag_seconds"]
    ok = [r for r in report["policies"] if not r.get("error")]
    n_long = ok[0]["summary"]["n_long_episodes"] if ok else 0
    head = (f"{'policy':26s} {'visible':>7s} {'PSNR dB (95% CI)':>22s} {'SSIM (95% CI)':>24s} "
            f"{f'PSNR lag>={ll:g}s n={n_long}':>22s} {'dPSNR vs full':>20s} {f'dPSNR lag>={ll:g}s vs full':>26s}")
    rows = [head]
    for res in report["policies"]:
        if res.get("error"):
            rows.append(f"{res['spec'][:26]:26s} failed: {res['error']}")
            continue
        s = res["summary"]
        vis = "all" if res["label"] == "full" else str(res["visible_history_frames_max"])
        pv = res.get("paired_vs_full", {})
        rows.append(f"{res['spec'][:26]:26s} {vis:>7s} {_fmt_ci(s['psnr']):>22s} {_fmt_ci(s['ssim'], 4):>24s} "
                    f"{_fmt_ci(s['psnr_long']):>22s} {_fmt_ci(pv['psnr']) if pv else '-':>20s} "
                    f"{_fmt_ci(pv['psnr_long']) if pv else '-':>26s}")
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    rows.append("")
    rows.append("PSNR (dB) by lag bin, mean over episodes [n episodes]:")
    labels = [lab.replace("\n", " ") for lab in bin_labels(edges, cfg["fps"])]
    if ok:
        n_ep = ok[0]["summary"]["psnr_by_lag"]["n_episodes"]
        keep = [i for i, n in enumerate(n_ep) if n]
        rows.append(f"{'lag':34s} " + " ".join(f"{r['spec'][:14]:>14s}" for r in ok))
        for i in keep:
            rows.append(f"{labels[i] + f' [{n_ep[i]}]':34s} "
                        + " ".join(f"{(r['summary']['psnr_by_lag']['mean'][i] or float('nan')):14.2f}" for r in ok))
    rows.append("")
    rows.append(report["equal_budget"]["statement"])
    rows.append(f"Scored: {cfg['generated_frames']} generated frames per episode after a true opening of "
                f"{cfg['opening_frames']} frames; PSNR capped at {cfg['psnr_cap_db']:g} dB; CIs are 95% t intervals "
                f"over episodes (n/a or no interval with < 2 episodes).")
    return "\n".join(rows)
