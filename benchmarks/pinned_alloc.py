"""How fast host memory gets pinned, and whether pinning on a worker thread stalls GPU work.

omnimem:offload=true pins about 1.1 GiB of host memory per second of 480x832 video (the 1.3B
model's history, all layers). This measures, in one process per setting:

1. ``alloc``: seconds to allocate ``--chunks`` pinned chunks of ``--chunk-mib`` MiB (fresh pages),
   with torch's default pinned allocator, with ``pinned_use_cuda_host_register`` and N register
   threads (applied through ``torch.cuda.memory._set_allocator_settings``), or ``prefault``: plain
   pages first touched by torch's intra-op threads, then ``cudaHostRegister`` (``--settings``).
2. ``overlap``: a fixed loop of bf16 matmuls timed alone and while a worker thread pins the same
   amount: the slowdown of the GPU loop is what pinning off the critical path still costs.

    python3 benchmarks/pinned_alloc.py --out pinned_alloc.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def one(settings: str, chunks: int, mib: int) -> dict:
    import torch

    if settings and settings != "prefault":
        torch.cuda.memory._set_allocator_settings(settings)
    torch.cuda.init()
    n = mib * 2**20
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def gpu_loop(reps=60):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            y = x @ x  # noqa: F841
        torch.cuda.synchronize()
        return time.perf_counter() - t

    gpu_loop(5)
    alone = gpu_loop()
    def pinned():
        if settings != "prefault":
            return torch.empty(n, dtype=torch.uint8, pin_memory=True)
        buf = torch.empty(n, dtype=torch.uint8)
        buf.zero_()  # first touch on torch's intra-op threads, then page-lock the populated pages
        err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), n, 0)
        assert int(err) == 0, err
        return buf

    keep = []
    t = time.perf_counter()
    for _ in range(chunks):
        keep.append(pinned())
    alloc_s = time.perf_counter() - t
    worker_s = {}

    def work():
        t0 = time.perf_counter()
        for _ in range(chunks):
            keep.append(pinned())
        worker_s["s"] = time.perf_counter() - t0

    th = threading.Thread(target=work)
    th.start()
    loops, t = [], time.perf_counter()
    while th.is_alive():
        loops.append(gpu_loop())
    th.join()
    return {"settings": settings or "default", "threads": torch.get_num_threads(), "chunks": chunks, "chunk_mib": mib,
            "alloc_s": alloc_s, "alloc_GBps": chunks * n / alloc_s / 1e9,
            "worker_alloc_s": worker_s.get("s"), "gpu_loop_alone_s": alone,
            "gpu_loop_during_pinning_s": loops, "slowdown": (sum(loops) / len(loops)) / alone if loops else None}


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--chunk-mib", type=int, default=256)
    ap.add_argument("--settings", default="default|pinned_use_cuda_host_register:True,pinned_num_register_threads:8",
                    help="'|'-separated runs, each 'default' or an allocator settings string")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # run one setting in this process
    ap.add_argument("--out", default="pinned_alloc.json")
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.chunks, args.chunk_mib)))
        return []
    rows = []
    for s in (x.strip() for x in args.settings.split("|")):
        s = "" if s == "default" else s
        res = subprocess.run([sys.executable, __file__, "--one", s, "--chunks", str(args.chunks),
                              "--chunk-mib", str(args.chunk_mib)], capture_output=True, text=True)
        row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else \
            {"settings": s, "error": res.stderr[-1500:]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "gpu_loop_during_pinning_s"}), flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
