"""One memory policy through ``fademem.pipeline.VideoPipeline``, chunk by chunk, timed
(``fademem bench speed``; the module doc of ``fademem.bench.speed`` says what is timed).

``run_policy`` is the per-policy runner every part of the benchmark uses (the sweep, the long
runs in the timed mode, end to end, the variants); ``SpeedSetup`` is the model, latent and device
configuration it runs at, ``build_model`` the random-weight model, ``RandomText`` the text context.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch

from fademem.bench.flops import chunk_flops
from fademem.bench.speed_device import ChunkTimer, _count_syncs, _sync, sdpa_context
from fademem.bench.speed_stats import _flatness, _windows, chunk_seconds, summarise

__all__ = ["UNBOUNDED_NOTE", "is_unbounded", "policy_note", "TIMED_MODE_NOTE", "DRAIN_NOTE", "RandomText", "SpeedSetup",
           "build_model", "run_policy", "rel_l2"]


UNBOUNDED_NOTE = "unbounded reference; capped at --full-max-frames (memory and quadratic attention)"


def policy_note(spec: str) -> str | None:
    """What a report should say about a policy's size: from the policy class (``Memory.bounded``,
    ``Memory.budget_note``), never from its name."""
    from fademem.memory import parse_spec

    cls, _ = parse_spec(spec)
    return UNBOUNDED_NOTE if not cls.bounded else cls.budget_note


def is_unbounded(spec: str) -> bool:
    from fademem.memory import parse_spec

    return not parse_spec(spec)[0].bounded
TIMED_MODE_NOTE = ("timed mode: only the chunks listed in 'timed_chunks' ran the four denoising forwards and were "
                   "timed; every other chunk ran only the cache-writing forward (t=0) on its initial noise, so the "
                   "memory received every chunk at the right frames and positions (shapes and bookkeeping of a real "
                   "run; K/V values differ). Untimed chunks appear in 'chunks' with timed=false and no latency.")


DRAIN_NOTE = ("; with the overlapped decode a chunk is yielded once the next chunk's DiT has run, so each yield "
              "holds one chunk's DiT and the previous chunk's decode, and the last chunk's yield is only the wait "
              "for its decode (drain=true in 'chunks'): it is left out of the steady-state statistics and "
              "reported as summary.drain_ms")


class RandomText:
    """Text 'encoder' returning one fixed random state [B, text_len, text_dim] (CPU, float32)."""

    def __init__(self, text_len: int, text_dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.states = torch.randn(1, text_len, text_dim, generator=g)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.states.expand(len(prompts), -1, -1).contiguous()


@dataclass
class SpeedSetup:
    config: str = "1.3b"  # "1.3b", "14b" or "tiny"
    latent: tuple[int, int, int] = (16, 60, 104)
    frames_per_chunk: int = 3
    device: str = "cuda"
    dtype: str = "bfloat16"
    seed: int = 0
    warmup: int = 3
    sdpa: str = "auto"
    compile: str = "none"  # regional torch.compile ("auto": "default" on CUDA, "none" elsewhere)
    precision: str = "dtype"  # "fp8": torchao float8 block linears (fademem.pipeline.fast)
    cuda_graph: bool = False  # replay the denoising forwards from a CUDA graph (fademem.pipeline.cuda_graph)

    def wan_config(self):
        from fademem.wan.model import WanConfig

        makers = {"1.3b": WanConfig.wan_1_3b, "14b": WanConfig.wan_14b, "tiny": WanConfig.tiny}
        if self.config not in makers:
            raise ValueError(f"unknown config {self.config!r}; choose from {', '.join(makers)}")
        return makers[self.config]()

    def torch_dtype(self) -> torch.dtype:
        table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if self.dtype not in table:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(table)}")
        return table[self.dtype]

    def tokens_per_frame(self, cfg) -> int:
        _, ph, pw = cfg.patch_size
        return (self.latent[1] // ph) * (self.latent[2] // pw)


def build_model(setup: SpeedSetup):
    """Random weights at the setup's config, built directly on the device, eval, no grad."""
    from fademem.wan.model import CausalWanModel

    cfg = setup.wan_config()
    torch.manual_seed(setup.seed)
    with torch.device(setup.device):
        model = CausalWanModel(cfg)
    return model.to(setup.torch_dtype()).eval().requires_grad_(False)


def _host_bytes(stack) -> int | None:
    vals = [m.host_nbytes() for m in stack if callable(getattr(m, "host_nbytes", None))]
    return sum(vals) if vals else None


def run_policy(model, spec: str, num_frames: int, setup: SpeedSetup, *, text: RandomText | None = None,
               max_frames: int | None = None, peak_tflops: float | None = None, label: str | None = None,
               progress: bool = False, timed: Collection[int] | None = None, decoder=None,
               overlap_decode: bool = False, deadline: float | None = None,
               on_chunk: Callable[[Any], None] | None = None) -> dict:
    """Generate ``num_frames`` latent frames with memory ``spec`` through VideoPipeline, timing
    every chunk (or only the chunk indices in ``timed``: the timed mode, see the module doc).

    ``max_frames`` caps the run; ``deadline`` (a ``time.perf_counter()`` value) stops it early; the
    result says where and why it stopped. ``decoder`` (e.g. ``WanVAEDecoder``) makes it end to end:
    latency is then the host wall time per yielded chunk, decoded frames on the host
    (``overlap_decode`` decodes on a side stream beside the next chunk). ``setup.cuda_graph``
    replays the denoising forwards from a CUDA graph. ``on_chunk(chunk)`` sees every chunk.
    """
    from fademem.memory import MemoryStack
    from fademem.pipeline import VideoPipeline

    cfg = model.config
    device = torch.device(setup.device)
    fpc = setup.frames_per_chunk
    tpf = setup.tokens_per_frame(cfg)
    text = text or RandomText(cfg.text_len, cfg.text_dim, setup.seed)
    stack = MemoryStack(spec, cfg.num_layers)
    frames = num_frames
    stop_reason = None
    if max_frames is not None and max_frames < num_frames:
        frames = max(fpc, fpc * (max_frames // fpc))
        stop_reason = f"capped at {frames} latent frames (--full-max-frames)"
    n_chunks = frames // fpc
    timed_set = None if timed is None else frozenset(int(i) for i in timed)
    if timed_set is not None and decoder is not None:
        raise ValueError("the timed mode is DiT only: cache-only chunks have no real frames to decode")
    pipe = VideoPipeline(model, text, decoder, frames_per_chunk=fpc, overlap_decode=overlap_decode,
                         cuda_graph=setup.cuda_graph)
    if pipe.graphed is not None:
        pipe.graphed.check = True  # max relative difference of the first replay against the eager forward
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    timer = ChunkTimer(device)
    chunks: list[dict] = []
    error = None
    host_syncs = None
    cache_segments: list[tuple[int, float]] = []  # (untimed chunks, wall seconds) per segment
    seg_start, seg_count = None, 0
    cache_only = None if timed_set is None else (lambda i: i not in timed_set)
    with sdpa_context(setup.sdpa):
        gen = pipe.generate("speed bench", frames, memory=stack, seed=setup.seed, latent_shape=setup.latent,
                            progress=False, cache_only=cache_only)
        for index in range(n_chunks):
            if deadline is not None and time.perf_counter() > deadline:
                stop_reason = (f"time budget: stopped before chunk {index} "
                               f"({chunk_seconds(index, fpc):.1f} s of video)")
                break
            is_timed = timed_set is None or index in timed_set
            held = len(stack.entries())  # memory slots the coming chunk attends to
            if is_timed and seg_count:  # close an untimed segment: the cache-only chunks' wall time
                _sync(device)
                cache_segments.append((seg_count, time.perf_counter() - seg_start))
                seg_count = 0
            if not is_timed and seg_count == 0:
                _sync(device)
                seg_start = time.perf_counter()
            # The last warm-up chunk runs under the CUDA sync debugger (not in the statistics): the
            # sampler's only host sync per chunk is its NaN check, so anything above 1 is a sync
            # in the hot path.
            audit = (device.type == "cuda" and is_timed and decoder is None
                     and index == max(0, min(setup.warmup, n_chunks) - 1))
            if is_timed:
                timer.start()
            try:
                if audit:
                    chunk, syncs = _count_syncs(lambda: next(gen))
                else:
                    chunk = next(gen)
            except StopIteration:
                break
            except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
                stop_reason = f"out of GPU memory at chunk {index} (latent frame {index * fpc}): {str(exc)[:120]}"
                break
            except Exception as exc:  # noqa: BLE001 - report, do not lose the other policies
                error = f"{type(exc).__name__}: {exc}"[:400]
                break
            rec: dict[str, Any] = {"index": index, "start": chunk.start, "timed": is_timed, "memory_frames": held,
                                   "kv_bytes": stack.nbytes()}
            if is_timed:
                ms, wall = timer.stop()
                # end to end: the host has the frames when the chunk is yielded; with overlap the
                # decode runs on a side stream the device events do not cover
                rec.update(latency_ms=wall if decoder is not None else ms, wall_ms=wall, device_ms=ms,
                           flops=chunk_flops(cfg, tpf, fpc, held))
                if pipe.overlap_decode and decoder is not None and 0 < chunk.index == n_chunks - 1:
                    rec["drain"] = True  # only the wait for its decode: its DiT ran in the previous yield
            else:
                seg_count += 1
            if device.type == "cuda":
                rec["allocated_bytes"] = torch.cuda.memory_allocated(device)
            hb = _host_bytes(stack)
            if hb is not None:
                rec["host_bytes"] = hb
            if audit:
                rec["host_syncs"] = syncs
                host_syncs = syncs
            chunks.append(rec)
            if on_chunk is not None:
                on_chunk(chunk)
            if progress and (index % 10 == 0 or index == n_chunks - 1):
                lat = f"{rec['latency_ms']:.1f} ms" if is_timed else "cache pass only"
                print(f"  [{label or spec}] chunk {index}: {lat}, memory {held} frames, "
                      f"kv {stack.nbytes() / 2**30:.2f} GiB", flush=True)
        gen.close()
    if seg_count:
        _sync(device)
        cache_segments.append((seg_count, time.perf_counter() - seg_start))
    ran = (chunks[-1]["start"] + fpc) if chunks else 0
    res: dict[str, Any] = {
        "label": label or spec.split(":")[0],
        "spec": stack.spec,
        "requested_frames": num_frames,
        "frames_run": ran,
        "stopped": stop_reason if (stop_reason and ran < num_frames) else None,
        "error": error,
        "note": policy_note(spec),
        "visible_frames_steady": (chunks[-1]["memory_frames"] + fpc) if chunks else None,
        "kv_bytes_final": stack.nbytes(),
        "kv_bytes_max": max((c["kv_bytes"] for c in chunks), default=0),
        "host_bytes_final": _host_bytes(stack),
        "host_syncs_per_chunk": host_syncs,  # CUDA sync debugger, one steady chunk (1 = the NaN check)
        "resident_bytes_before": resident,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "summary": summarise(chunks, setup.warmup, fpc, peak_tflops),
        "chunks": chunks,
    }
    if decoder is not None:
        res["end_to_end"] = {"overlap_decode": overlap_decode,
                             "timing": "host wall time per yielded chunk, decoded uint8 frames on the host"
                                       + (DRAIN_NOTE if overlap_decode else "")}
    if pipe.graphed is not None:
        res["cuda_graph"] = pipe.graphed.summary()
    if timed_set is not None:
        done = [c for c in chunks if c["timed"]]
        res["timed_mode"] = {
            "note": TIMED_MODE_NOTE,
            "timed_chunks": [c["index"] for c in done],
            "timed_chunks_count": len(done),
            "cache_only_chunks_count": len(chunks) - len(done),
            "cache_pass_ms_mean": (1e3 * sum(s for _, s in cache_segments) / sum(n for n, _ in cache_segments)
                                   if cache_segments else None),
        }
        res["windows"] = _windows(chunks, setup.warmup, fpc)
        res["flatness"] = _flatness(res["windows"])
        first_minute = [c for c in chunks if chunk_seconds(c["index"], fpc) < 60.0]
        res["summary_first_minute"] = summarise(first_minute, setup.warmup, fpc, peak_tflops)
    del pipe, stack
    gc.collect()
    return res


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
