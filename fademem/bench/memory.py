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

Never lost output: after every finished policy the report so far goes to ``on_report`` (the CLI writes
memory.json/txt, ``"partial": true``); SIGINT during a policy ends the run with the finished policies
reported (``"interrupted"``); ``time_budget_s`` skips policies forecast not to fit (``policies_not_run``).
Cut episodes (``episodes_kind="cuts"``, ``bench.memory_cuts``): scene A, a hard cut to B inside the true
opening, generation of B, a cut (prompt switch) back to A: A's return is scored (first ``budget`` frames, and
every frame after it: ``after_return``). One policy: ``bench.memory_policy.run_policy``; the report:
``bench.memory_assemble.finish``.

The JSON, plot and table: ``bench.memory_report`` (re-exported here, as are the statistics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fademem.bench import memory_assemble, memory_critic, memory_cuts, memory_policy
from fademem.bench.memory_episodes import Episode, make_episodes, revisit_episodes
from fademem.bench.memory_policy import FRAMES_PER_CHUNK, watched_stack
from fademem.bench.memory_report import bin_labels, format_table, plot, write_json, write_outputs
from fademem.bench.memory_stats import (
    LAG_EDGES,
    PSNR_CAP_DB,
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
           "summarise", "validate", "watched_stack", "write_json", "write_outputs"]

DEFAULT_POLICIES = ("full", "window", "sink", "memrope", "fademem")
CUDA_EPISODES, CPU_EPISODES = 48, 4  # default episode counts (episodes=None)


# -------------------------------------------------------------------------------------------
# Policies at equal budget
# -------------------------------------------------------------------------------------------
def budget_spec(policy: str, budget: int) -> tuple[str, str | None]:
    """(spec, note): the spec a policy runs with at ``budget`` history frames, and a note when it is
    not budget-matched or how the match was made (the policy's ``Memory.at_budget``). Specs with
    knobs are taken as given. Raises ValueError for unknown policies/knobs."""
    from fademem.memory import build_memory

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
    time_budget_s: float | None = None  # seconds from the start: a policy starts only if forecast to fit
    episodes_kind: str = "revisit"  # "cuts": scene A, cut to B, cut back to A (bench.memory_cuts)
    cut_seconds: Sequence[float] = memory_cuts.CUT_SECONDS  # cuts only: the two cut times (whole chunks)
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
    if run.time_budget_s is not None and not (isinstance(run.time_budget_s, (int, float))
                                              and math.isfinite(run.time_budget_s) and run.time_budget_s > 0):
        raise ValueError(f"--time-budget must be a positive number of seconds, got {run.time_budget_s!r}")
    if run.steps is not None and not list(run.steps):
        raise ValueError("--steps is empty (leave it out to use the model file's schedule)")
    if run.critic is not None:
        import os

        if not os.path.isfile(run.critic):
            raise FileNotFoundError(f"--critic file not found: {run.critic}")
    if run.episodes_kind not in ("revisit", "cuts"):
        raise ValueError(f"--episodes-kind must be 'revisit' or 'cuts', got {run.episodes_kind!r}")
    if run.episodes_kind == "cuts" and (run.critic is not None or run.scenes is not None):
        raise ValueError("--episodes-kind cuts takes neither --critic nor --scenes")
    if not list(run.policies):
        raise ValueError("no policies given")
    resolved = [(p, *budget_spec(p, run.budget)) for p in run.policies]
    specs = [s for _, s, _ in resolved]
    dup = {s for s in specs if specs.count(s) > 1}
    if dup:
        raise ValueError(f"policy given twice: {', '.join(sorted(dup))}")
    return resolved


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
            frames = torch.from_numpy(ep.render(num_frames, cfg.frame_size, cfg.fps) if hasattr(ep, "render") else
                                      World(ep.prompt, ep.world_seed, cfg.frame_size, cfg.fps).render(num_frames))
            truth.append(frames)
            z = codec.encode(frames[None])
            latents.append(z)
            p, s = frame_metrics(codec.to_frames(z.float())[0, opening:].cpu(), frames[opening:])
            ceiling.append({"psnr": p.tolist(), "ssim": s.tolist()})
    return truth, latents, revisit_masks(lags_all, budget, opening), ceiling


def run_memory(run: MemoryRun, log=print, on_report=None) -> dict:
    """The whole benchmark; returns the JSON-able report (see ``write_json``).

    ``on_report(report)``: called after every finished policy with the report so far (``partial`` true,
    ``policies_finished``, ``policies_not_run``), through the same assembly as the final report.
    ``run.time_budget_s``: a policy starts only if forecast to fit (``memory_policy.budget_reason``; the first
    always runs); skipped ones are listed in ``policies_not_run`` with the reason. SIGINT (KeyboardInterrupt)
    during a policy ends the loop: ``interrupted`` says when, and the report covers the finished policies."""
    from fademem import embedded
    from fademem.bench.speed import environment
    from fademem.pipeline import check_adapter_base

    resolved = validate(run)
    device = torch.device(run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no GPU")
    t_start = time.perf_counter()
    dtype = getattr(torch, run.dtype)
    bundle = embedded.load(run.weights, device=device, dtype=dtype)
    for _, spec, _ in resolved:  # a policy's LoRA trained on another base model: refused before any episode
        check_adapter_base(bundle.model, spec)
    cfg = bundle.cfg
    fps, size = cfg.fps, cfg.frame_size
    num_frames = _frames(run.seconds, fps, "--seconds")
    opening = _frames(run.opening_seconds, fps, "--opening-seconds")
    if opening >= num_frames:
        raise ValueError(f"the opening ({opening} frames) must be shorter than the video ({num_frames} frames)")
    pipe, steps, shift, steps_from = _pipelines(bundle, run.steps)
    long_lag = int(math.ceil(run.long_lag_seconds * fps))
    cuts = run.episodes_kind == "cuts"
    if cuts:
        c1, c2 = (_frames(c, fps, "--cuts") for c in run.cut_seconds)
        episodes, lags_all, skipped = memory_cuts.cut_episodes(run.num_episodes(), run.seed, num_frames, opening,
                                                               (c1, c2), fps, size)
        run.extra["cut_frames"] = [c1, c2]
    else:
        episodes, lags_all, skipped = revisit_episodes(run.num_episodes(), run.seed, run.scenes, num_frames, opening,
                                                       fps, size)
    for sk in skipped:
        log(f"skipped benchmark scene {sk['scene']}: {sk['reason']}")
    truth, latents, masks, ceiling = _truth(bundle, episodes, lags_all, num_frames, opening, run.budget)
    extra_masks = None
    if cuts:  # score A's return only: its first budget frames (revisit), and every frame after it
        masks, after = memory_cuts.return_masks(episodes, lags_all, run.budget, opening, num_frames)
        extra_masks = {"after_return": after}
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
    st = memory_policy.Setup(bundle=bundle, pipe=pipe, steps=steps, shift=shift, episodes=episodes, groups=groups,
                             latents=latents, truth=truth, latent_shape=embedded.latent_shape(cfg),
                             num_frames=num_frames, opening=opening, lags=[lg[opening:] for lg in lags_all],
                             masks=masks, long_lag=long_lag, critic=critic, windows=windows, progress=run.progress,
                             extra_masks=extra_masks)
    x = dict(num_frames=num_frames, opening=opening, groups=groups, steps=steps, shift=shift, steps_from=steps_from,
             environment=environment(device), t_start=t_start, critic=run.critic, critic_note=critic_note,
             critic_truth=None, windows=windows, lags_all=lags_all, skipped=skipped, ceiling=ceiling)

    results: list[dict] = []
    not_run: list[dict] = []  # {"requested", "spec", "reason"}
    interrupted = None

    def progress(partial: bool, upcoming=()) -> dict:
        return {"partial": partial, "policies_finished": [r["spec"] for r in results],
                "policies_not_run": not_run + [{"requested": q, "spec": s, "reason": "not reached yet (partial report)"}
                                               for q, s, _ in upcoming],
                "interrupted": interrupted}

    for k, (requested, spec, note) in enumerate(resolved):
        t0, phase = time.perf_counter(), spec
        try:
            left = math.inf if run.time_budget_s is None else t_start + run.time_budget_s - time.perf_counter()
            why = memory_policy.budget_reason(results, spec, left)
            if why is not None:
                log(f"{spec}: skipped ({why})")
                not_run.append({"requested": requested, "spec": spec, "reason": why})
                continue
            try:
                results.append(memory_policy.run_policy(st, requested, spec, note, log))
            finally:
                pipe.memory = None
            if on_report is not None:
                phase = f"the partial report after {spec}"
                on_report(memory_assemble.finish(run, st, results, x, progress(True, resolved[k + 1:])))
        except KeyboardInterrupt:
            interrupted = f"SIGINT after {time.perf_counter() - t0:.1f} s during {phase}"
            log(f"interrupted: {interrupted}; reporting the {len(results)} finished policies")
            done = {r["spec"] for r in results} | {n["spec"] for n in not_run}
            not_run += [{"requested": q, "spec": s, "reason": "interrupted (SIGINT)" if s == spec else
                         "not reached (interrupted)"} for q, s, _ in resolved if s not in done]
            break
    return memory_assemble.finish(run, st, results, x, progress(interrupted is not None))
