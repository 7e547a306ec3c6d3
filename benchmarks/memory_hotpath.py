"""Hot path of one layer's memory at Wan2.1-1.3B sizes: insert() per frame and view() per chunk.

    python benchmarks/memory_hotpath.py [--spec fademem:budget=12] [--frames 200] [--out hot.json]

For every chunk of 3 latent frames (1560 tokens x 12 heads x 128 dims each) the model asks the
memory for its view (keys re-encoded at the policy's positions) and then hands over the finished
frames. bf16 on CUDA, float32 on CPU. On CUDA each call is bracketed by CUDA events (recording
an event does not synchronise); the device is synchronised only before and after the timed loop,
and the loop runs under ``torch.cuda.set_sync_debug_mode("error")`` so any host-device sync in
insert()/view() raises. Steady state = chunks that start once the memory holds ``budget`` entries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fademem.memory import ChunkQuery, build_memory
from fademem.rope import WanRoPE


def run(spec: str, frames: int, chunk: int, tokens: int, heads: int, head_dim: int,
        device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    mem = build_memory(spec).bind(WanRoPE(head_dim), tokens)
    g = torch.Generator(device=dev).manual_seed(seed)
    pool = 4  # distinct random chunks, reused (no RNG inside the timed loop)
    ks = [torch.randn(1, chunk * tokens, heads, head_dim, generator=g, device=dev, dtype=dtype) for _ in range(pool)]
    vs = [torch.randn(1, chunk * tokens, heads, head_dim, generator=g, device=dev, dtype=dtype) for _ in range(pool)]
    budget = getattr(mem, "budget", None)

    # warm-up on a throw-away copy (allocations, RoPE caches, kernels)
    warm = build_memory(spec).bind(mem.rope, tokens)
    for s in range(0, 2 * chunk, chunk):
        warm.view(ChunkQuery(s, chunk))
        warm.insert(ks[0], vs[0], s)
    del warm

    starts = list(range(0, frames - frames % chunk, chunk))
    marks: list[tuple[int, object, object, object]] = []  # (start, t0, t_after_view, t_after_insert)
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i, s in enumerate(starts):
            if cuda:
                e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
                e0.record()
                mem.view(ChunkQuery(s, chunk))
                e1.record()
                mem.insert(ks[i % pool], vs[i % pool], s)
                e2.record()
                marks.append((s, e0, e1, e2))
            else:
                t0 = time.perf_counter()
                mem.view(ChunkQuery(s, chunk))
                t1 = time.perf_counter()
                mem.insert(ks[i % pool], vs[i % pool], s)
                t2 = time.perf_counter()
                marks.append((s, t0, t1, t2))
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    if cuda:
        torch.cuda.synchronize(dev)
        times = [(s, e0.elapsed_time(e1), e1.elapsed_time(e2)) for s, e0, e1, e2 in marks]
    else:
        times = [(s, 1e3 * (t1 - t0), 1e3 * (t2 - t1)) for s, t0, t1, t2 in marks]

    steady = [t for t in times if budget is None or t[0] >= budget] or times
    view_ms = [t[1] for t in steady if t[0] > 0]  # the first chunk has an empty memory
    ins_ms = [t[2] / chunk for t in steady]
    return {
        "spec": mem.spec(), "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "tokens_per_frame": tokens, "heads": heads,
        "head_dim": head_dim, "frames": len(starts) * chunk, "chunk": chunk,
        "steady_chunks": len(steady), "sync_checked": cuda,
        "insert_ms_per_frame": statistics.mean(ins_ms), "insert_ms_per_frame_median": statistics.median(ins_ms),
        "view_ms": statistics.mean(view_ms) if view_ms else None,
        "view_ms_median": statistics.median(view_ms) if view_ms else None,
        "all_chunks": {"insert_ms_per_frame": statistics.mean(t[2] / chunk for t in times),
                       "view_ms": statistics.mean(t[1] for t in times[1:]) if len(times) > 1 else None},
        "memory_mib": mem.nbytes() / 2 ** 20, "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="fademem:budget=12")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1560)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args()
    if a.frames < 2 * a.chunk or a.chunk <= 0:
        ap.error("need --chunk > 0 and --frames >= 2 chunks")
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if a.device.startswith("cuda") else torch.float32)
    res = run(a.spec, a.frames, a.chunk, a.tokens, a.heads, a.head_dim, a.device, dtype)
    print(f"{res['spec']} on {res['device_name']} ({res['dtype']}), {res['tokens_per_frame']} tok x "
          f"{res['heads']} heads x {res['head_dim']}, {res['frames']} frames in chunks of {res['chunk']}")
    print(f"  insert: {res['insert_ms_per_frame']:.3f} ms/frame (median {res['insert_ms_per_frame_median']:.3f})")
    if res["view_ms"] is not None:
        print(f"  view:   {res['view_ms']:.3f} ms/view  (median {res['view_ms_median']:.3f})")
    print(f"  memory: {res['memory_mib']:.1f} MiB K/V; host syncs checked: {res['sync_checked']}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=2)
        print(f"  wrote {a.out}")


if __name__ == "__main__":
    main()
