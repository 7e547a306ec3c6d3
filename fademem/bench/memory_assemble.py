"""``fademem bench memory``: the JSON-able report of a run (config, episodes, policies, statistics)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict

from fademem.bench.memory_stats import LAG_EDGES, PSNR_CAP_DB, compare_policies, summarise


def equal_budget(results: list[dict], budget: int, fps: float) -> dict:
    """The equal-budget statement: requested budget and measured visible history of every bounded policy."""
    ref = next((r for r in results if r["unbounded"] and r["error"] is None), None)
    bounded = {r["spec"]: r["visible_history_frames_max"] for r in results if not r["unbounded"] and not r["error"]}
    matched = sorted(s for s, v in bounded.items() if v == budget)
    unmatched = {s: v for s, v in bounded.items() if v != budget}
    statement = (f"Equal memory budgets: every bounded policy was asked for {budget} history latent frames "
                 f"({budget / fps:g} s at {fps} fps; the current 3-frame chunk is not counted); measured "
                 f"maximum history slots visible to a chunk: "
                 + ", ".join(f"{s} {v}" for s, v in bounded.items())
                 + (f". Not at the budget: {', '.join(f'{s} ({v})' for s, v in unmatched.items())}"
                    if unmatched else "")
                 + (f". '{ref['label']}' is the unbounded reference (every past frame)." if ref else "."))
    return {"budget": budget, "statement": statement, "visible_history_frames": bounded, "matched": matched,
            "unmatched": unmatched}


def assemble(run, bundle, episodes, lags_all, masks, results, skipped, pw, ceiling, lags, long_lag, x: dict) -> dict:
    """The report. ``x``: num_frames, opening, groups, steps, shift, steps_from, environment, t_start, critic,
    critic_note, critic_truth, windows."""
    from fademem import embedded

    cfg = bundle.cfg
    fps, num_frames, opening = cfg.fps, x["num_frames"], x["opening"]
    edges = list(LAG_EDGES)
    config = {
        **{k: v for k, v in asdict(run).items() if k not in ("extra", "steps")}, **run.extra,
        "episodes": len(episodes), "episodes_requested": run.episodes,
        "weights": run.weights or str(embedded.default_path()),
        "weights_info": {k: bundle.info.get(k) for k in ("steps_done", "seconds", "device")},
        "codec": cfg.codec, "latent_shape": list(embedded.latent_shape(cfg)),
        "steps": list(x["steps"]), "shift": x["shift"], "steps_requested": None if run.steps is None else
        list(run.steps), "schedule": bundle.schedule.describe(), "schedule_from": x["steps_from"],
        "model": asdict(bundle.model.config), "model_parameters": bundle.model.num_parameters(),
        "fps": fps, "frame_size": cfg.frame_size, "latent_frames": num_frames, "opening_frames": opening,
        "generated_frames": num_frames - opening, "frames_per_chunk": 3,
        "batches": x["groups"], "psnr_cap_db": PSNR_CAP_DB, "long_lag_frames": long_lag,
        "long_lag_seconds": long_lag / fps,
        "lag_edges_frames": [e if math.isfinite(e) else None for e in edges],
        "lag_edges_seconds": [e / fps if math.isfinite(e) else None for e in edges],
        "lag_mode": "world.last_seen(mode='revisit', reduce='median'): frames between the last "
                    "sighting of the content on screen and its reappearance (0: never left / new)",
        "scored_frames": "generated frames only (frame index opening_frames + i); the opening is "
                         "teacher-forced truth (through the codec)",
        "noise": "episode i: initial noise from initial_noise(seed + i); re-noising draws from the "
                 "seed of its batch's first episode; identical for every policy",
    }
    revisit = {
        "window_frames": run.budget,
        "definition": "revisit-aligned frames: the first window_frames generated frames from each revisit onset "
                      "(a frame whose revisit lag is positive and differs from the previous frame's: content "
                      "coming back; world.revisit.revisit_onsets / revisit_aligned), binned by their own lag",
        "aligned_frames": [int(m.sum()) for m in masks],
        "return_frames": [ep.return_frame for ep in episodes],
    }
    critic = {"path": x["critic"], "note": x["critic_note"]}
    if x["critic"]:
        critic.update({"windows": x["windows"], "truth": x["critic_truth"],
                       "attributes": ["colour", "shape", "size"]})
    return {
        "benchmark": "memory",
        "version": 2,
        "environment": x["environment"],
        "config": config,
        "equal_budget": equal_budget(results, run.budget, fps),
        "episodes": [{**asdict(ep), "lags": lags_all[i].tolist()} for i, ep in enumerate(episodes)],
        "skipped_scenes": skipped,
        "revisit": revisit,
        "codec_ceiling": {"note": "the true video through the codec (encode, decode) against the truth: the best a "
                                  "generation can score",
                          "summary": summarise(ceiling, lags, long_lag),
                          "revisit": summarise(ceiling, lags, long_lag, masks=masks)},
        "critic": critic,
        "policies": results,
        "pairwise": pw,
        "elapsed_s": time.perf_counter() - x["t_start"],
    }


def finish(run, st, results: list[dict], x: dict, progress: dict) -> dict:
    """The report of the policies in ``results`` (all of a run, or those finished so far): paired differences
    against the unbounded reference, every pair Holm-corrected, the critic's ceiling on the true frames
    (scored once, kept in ``x``), then ``assemble``; ``progress`` (partial, policies_finished,
    policies_not_run, interrupted) is added as top-level fields. ``st``: ``memory_policy.Setup``."""
    from fademem.bench import memory_critic

    lags, long_lag, masks, critic = st.lags, st.long_lag, st.masks, st.critic
    pw = compare_policies(results, lags, long_lag, masks, run.alpha, st.extra_masks, critic is not None)
    if critic is not None and x.get("critic_truth") is None:
        eps = st.episodes
        x["critic_truth"] = memory_critic.summarise_identity(memory_critic.score_windows(
            critic, st.truth, [e.prompt for e in eps], [e.world_seed for e in eps], st.windows), long_lag)
    rep = assemble(run, st.bundle, st.episodes, x["lags_all"], masks, results, x["skipped"], pw, x["ceiling"],
                   lags, long_lag, x)
    rep.update(progress)
    return rep
