"""``fademem eval run``: generate and score prompt file x memory specs x seeds, on one process or
sharded over ranks with torchrun, into a resumable results store.

    torchrun --nproc_per_node 8 -m fademem eval run --prompts moviegen.txt --memory fademem:budget=12 ...

Every rank reads the pending jobs from the store (after rank 0 has folded in shards a killed run left),
takes its share (``fademem.eval.jobs.shard``: disjoint, exact), and for each job generates the video,
writes it (H.264, crf 18), scores the generated frames (the VBench-Long dimensions whose weights are
given; the world critic for the embedded model) and stores the row in its own shard. Rank 0 folds the
shards in at the end. Progress: a bar per rank and, after every video, the rank's own ETA and the
overall ETA from the rows all ranks have stored so far.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from fademem.eval.jobs import Job, expand_jobs, read_prompts, shard, spec_hashes
from fademem.eval.store import ResultStore
from fademem.eval.weights import DIMENSIONS, find_weights

__all__ = ["EvalRun", "dist_info", "run_eval", "validate"]


@dataclass
class EvalRun:
    prompts: str
    specs: list[str]
    seeds: list[int]
    store: str
    videos: str
    seconds: float = 60.0
    weights_dir: str | None = None
    dimensions: tuple = DIMENSIONS
    checkpoint: str | None = None   # a Wan checkpoint; None: the embedded model
    wan_dir: str | None = None
    lora: tuple = ()
    height: int = 480
    width: int = 832
    dtype: str = "bfloat16"
    embedded_weights: str | None = None
    critic: str | None = None
    device: str = "cpu"
    slow_fast: bool = False
    compile: str = "auto"  # fademem.pipeline.fast.COMPILE_MODES; auto: default on CUDA, none elsewhere (Wan only)
    compile_fallback: bool = True  # a region that fails to compile runs eagerly (compile not asked for)
    precision: str = "dtype"  # or "fp8" (Wan only, CUDA GPU of compute capability >= 8.9 and torchao)
    scene_split: bool = False  # VBench-Long's --use_semantic_splitting (fademem.eval.protocol 6)
    progress: bool = True
    extra: dict = field(default_factory=dict)


def validate(run: EvalRun) -> list[str]:
    """Everything that can be checked before loading a model; returns the prompts. Raises ValueError,
    FileNotFoundError, ``MissingWeights`` or ``EvalDependencyError`` naming the problem."""
    from fademem.memory import build_memory

    prompts = read_prompts(run.prompts)
    if not run.specs:
        raise ValueError("no memory spec given")
    for spec in run.specs:
        build_memory(spec)
    if not run.seeds:
        raise ValueError("no seed given")
    if not run.seconds > 0:
        raise ValueError(f"seconds must be positive, got {run.seconds}")
    if run.weights_dir is not None:
        find_weights(run.weights_dir, run.dimensions)
        if run.scene_split:
            from fademem.eval.scenes import require_scenedetect

            require_scenedetect()
    elif run.critic is None:
        raise ValueError("nothing to score: give --weights-dir (VBench-Long) and/or --critic (embedded model)")
    elif run.scene_split:
        raise ValueError("--scene-split splits videos for VBench-Long's dimensions: give --weights-dir")
    _check_fast(run)
    if run.critic is not None and not os.path.isfile(run.critic):
        raise FileNotFoundError(f"critic file not found: {run.critic}")
    if run.critic is not None and run.checkpoint is not None:
        raise ValueError("--critic scores the embedded model's world; it cannot read a Wan checkpoint's videos")
    if run.checkpoint is not None:
        for p in (run.checkpoint, *run.lora):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"checkpoint file not found: {p}")
        if not run.wan_dir or not os.path.isdir(run.wan_dir):
            raise FileNotFoundError(f"--wan-dir is not a directory: {run.wan_dir}")
    ResultStore(run.store)
    os.makedirs(run.videos, exist_ok=True)
    return prompts


def _check_fast(run: EvalRun) -> None:
    """The speed options (``fademem generate``'s --compile / --precision): known values; fp8 for a Wan
    checkpoint on a GPU that runs it."""
    from fademem.pipeline.fast import PRECISIONS, Fp8Unavailable, check_compile_mode, check_fp8

    check_compile_mode(run.compile)
    if run.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {run.precision!r}; choose from {', '.join(PRECISIONS)}")
    if run.precision == "fp8":
        if run.checkpoint is None:
            raise ValueError("--precision fp8 is for a real generator (--checkpoint / --wan-dir); the embedded "
                             "model runs eager in its dtype")
        try:
            check_fp8(run.device)
        except Fp8Unavailable as e:
            raise ValueError(str(e)) from None


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment ((0, 1, 0) without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _dist_setup(device: str):
    import torch
    import torch.distributed as dist

    rank, world, local = dist_info()
    if str(device).startswith("cuda") and torch.cuda.is_available() and ":" not in str(device):
        device = f"cuda:{local}"
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend)
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(value, world: int):
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _generator(run: EvalRun, device):
    import torch

    from fademem.eval.generators import EmbeddedGenerator, WanGenerator
    from fademem.pipeline.fast import fast_decode, resolve_compile

    if run.checkpoint is None:
        return EmbeddedGenerator(run.embedded_weights, device=device)
    mode = resolve_compile(run.compile, device)  # compiling changes the speed, never a job or its key
    return WanGenerator(run.checkpoint, run.wan_dir, run.lora, device=device, dtype=getattr(torch, run.dtype),
                        height=run.height, width=run.width, compile=mode, compile_fallback=run.compile_fallback,
                        fast_decode=fast_decode(mode, device), fp8=run.precision == "fp8")


def _score(job: Job, frames, fps: float, scorer, critic) -> tuple[dict, dict, int]:
    from fademem.eval.generators import critic_scores

    scores, details, clips = {}, {}, 0
    if scorer is not None:
        vs = scorer.score_frames(frames, fps, path=job.slug())
        scores.update(vs.scores)
        details["vbench"] = vs.to_dict()
        clips = len(vs.clip_ranges)
    if critic is not None:
        cs = critic_scores(critic, frames, job.prompt)
        scores["critic_fidelity"] = cs["critic_fidelity"]
        details["critic"] = cs
    return scores, details, clips


def _prepare(gen, mine: list[Job], log) -> dict | None:
    """A generator with speed options (``WanGenerator``): every spec of this rank's jobs built, converted and
    compiled before the first video; returns its options for the rows' details (None for the embedded one)."""
    if not hasattr(gen, "prepare"):
        return None
    gen.prepare([j.spec for j in mine])
    for note in gen.notes:
        log(note)
    return gen.options()


def run_eval(run: EvalRun, log=print) -> dict:
    """Run (this rank's share of) the pending jobs; returns {"rank", "world", "jobs", "pending", "done"}."""
    import fademem
    from fademem.eval.scorer import Scorer
    from fademem.pipeline import check_adapter_base
    from fademem.pipeline.video_io import VideoWriter

    prompts = validate(run)
    rank, world, device = _dist_setup(run.device)
    store = ResultStore(run.store)
    if rank == 0:
        store.merge_shards()
    _barrier(world)
    gen = _generator(run, device)
    try:
        gen.check_prompts(prompts)
        for spec in dict.fromkeys(run.specs):  # a policy's LoRA trained on another base: refused before any video
            check_adapter_base(gen.base_model, spec)
        small = [d for d in ("motion_smoothness", "dynamic_degree") if d in run.dimensions]
        if run.weights_dir is not None and small and min(int(x) for x in gen.size.split("x")) < 128:
            raise ValueError(f"{', '.join(small)} need frames of at least 128 x 128 pixels (RAFT, AMT-S); "
                             f"{gen.model_id} makes {gen.size}: leave them out of --dimensions")
        ckpt_hash = _broadcast(spec_hashes(run.specs, gen.checkpoint_hash()) if rank == 0 else None, world)
        jobs = expand_jobs(prompts, run.specs, run.seeds, seconds=run.seconds, model=gen.model_id,
                           checkpoint_hash=ckpt_hash, size=gen.size)
        done = store.done_keys()
        _barrier(world)  # every rank has read the store before any rank writes to it
        pending = [j for j in jobs if j.key not in done]
        mine = shard(pending, rank, world)
        log(f"[rank {rank}/{world}] {len(jobs)} jobs, {len(jobs) - len(pending)} already stored, "
            f"{len(pending)} to run, {len(mine)} on this rank ({device})")
        options = _prepare(gen, mine, lambda m: log(f"[rank {rank}] {m}"))
        scorer = Scorer(run.weights_dir, run.dimensions, device, slow_fast=run.slow_fast,
                        scene_split=run.scene_split).load() \
            if run.weights_dir is not None else None
        critic = None
        if run.critic is not None:
            from fademem.embedded.critic import load_critic

            critic = load_critic(run.critic, device=device)
        bar = None
        if run.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), position=rank, desc=f"rank {rank}", leave=True, dynamic_ncols=True)
        t_start, base_done = time.perf_counter(), len(jobs) - len(pending)
        for i, job in enumerate(mine):
            t0 = time.perf_counter()
            frames = gen.frames(job.prompt, job.spec, job.seed, job.seconds)
            t1 = time.perf_counter()
            path = os.path.join(run.videos, job.slug() + ".mp4")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".part.mp4"
            with VideoWriter(tmp, fps=gen.fps, crf=18) as w:
                w.write(frames)
            os.replace(tmp, path)
            scores, details, clips = _score(job, frames, gen.fps, scorer, critic)
            if options is not None:
                details["generation"] = options  # how it ran (compile, precision, decode); not part of the key
            t2 = time.perf_counter()
            store.write({"key": job.key, "prompt_index": job.prompt_index, "prompt": job.prompt, "spec": job.spec,
                         "seed": job.seed, "seconds": job.seconds, "model": job.model,
                         "checkpoint_hash": job.checkpoint_hash, "fademem_version": fademem.__version__, "video": path,
                         "frames": int(len(frames)), "fps": gen.fps, "clips": clips, "scores": scores,
                         "details": details, "rank": rank, "gen_seconds": t1 - t0, "score_seconds": t2 - t1},
                        rank=rank if world > 1 else None)
            elapsed = time.perf_counter() - t_start
            overall = store.count() - base_done
            rate = overall / elapsed if elapsed > 0 else 0.0
            mine_eta = elapsed / (i + 1) * (len(mine) - i - 1)
            all_eta = (len(pending) - overall) / rate if rate > 0 else 0.0
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"overall {overall}/{len(pending)}, ETA {_fmt(all_eta)}")
            else:
                log(f"[rank {rank}] {i + 1}/{len(mine)} {job.slug()}  gen {t1 - t0:.1f} s, score {t2 - t1:.1f} s; "
                    f"rank ETA {_fmt(mine_eta)}, overall {overall}/{len(pending)} ETA {_fmt(all_eta)}")
        if bar is not None:
            bar.close()
    finally:  # leave the compiled contexts (WanGenerator), also when a job fails
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    _barrier(world)
    if rank == 0:
        store.merge_shards()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"rank": rank, "world": world, "jobs": len(jobs), "pending": len(pending), "done": len(mine)}
