"""omnimem with a host-resident history: correctness of the sync-free gather and what it costs.

1. Gather check: the Triton kernel reading selected blocks from pinned host chunks (UVA) against
   the same gather from a device-resident copy, on random data of several shapes and dtypes
   (exact equality), right after non-blocking writes (stream order), with the syncs it makes
   counted and its time against the torch fallback and the on-device gather.
2. View check: omnimem views at the real grid (30x52, 15x2 blocks) from the device store and the
   host store are bitwise equal over several chunks.
3. Real size: ``fademem.bench.speed.run_policy`` (1.3B config, random weights, bf16, 480x832) for
   ``--chunks`` chunks in each mode, recording per-chunk latency, GPU allocated bytes, the device
   bytes by part (history / block keys / window + gather buffer), host store bytes (capacity, used),
   process RSS, and the host syncs of one steady chunk (CUDA sync debugger; 1 = the sampler's NaN check).

    python3 benchmarks/omnimem_offload_check.py --out omnimem_offload.json

Each part reports its own exception and the rest still runs. ``--device cpu --tiny`` runs the
whole script on the tiny config on the CPU (torch fallback; a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fademem.bench.speed_device import _count_syncs  # noqa: E402
from fademem.memory import ChunkQuery, build_memory  # noqa: E402
from fademem.memory import host_store as hs  # noqa: E402
from fademem.rope import WanRoPE  # noqa: E402

GiB = 2 ** 30


def count_syncs(fn):
    """(fn(), synchronising CUDA calls it made) under the CUDA sync debugger; (fn(), None) on CPU."""
    if not torch.cuda.is_available():
        return fn(), None
    return _count_syncs(fn)


def timed_ms(fn, device, reps: int = 20) -> float:
    """Median device time of fn() in ms (host wall time on the CPU)."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


# -- 1. gather check ----------------------------------------------------------------------------------
def gather_case(device, b, t, h, d, tb, frames, k, dtype, chunk_frames, seed=0) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: the large case is 0.4 G values
    kv = torch.randn(frames, 2, b, t, h, d, generator=g, device=device).to(dtype)
    store = hs.HostFrames(chunk_frames=chunk_frames)
    for f in range(frames):  # non-blocking D2H writes; the gather below is enqueued right behind them
        store.write(f, kv[f, 0], kv[f, 1])
    nb = t // tb
    idx = torch.randint(0, frames * nb, (b, h, k), generator=g, device=device)
    ref = kv.permute(1, 2, 0, 3, 4, 5).reshape(2, b, frames * nb, tb, h, d)
    gi = idx.permute(0, 2, 1)[None, :, :, None, :, None].expand(2, b, k, tb, h, d)
    want = ref.gather(2, gi).reshape(2, b, k * tb, h, d)
    row = {"shape": dict(B=b, T=t, H=h, D=d, block=tb, frames=frames, K=k, chunk_frames=chunk_frames),
           "dtype": str(dtype).replace("torch.", ""), "pinned": store.pin}
    # Triton first: its first call runs right behind the non-blocking writes (the torch gather syncs)
    methods = (["triton"] if device.type == "cuda" and hs._triton_kernels() is not None else []) + ["torch"]
    for method in methods:
        out = torch.empty(2, b, k * tb, h, d, dtype=dtype, device=device)
        try:
            store.gather(idx, tb, out, method)  # first call compiles the kernel
            row[f"{method}_equal"] = bool(torch.equal(out, want))
            _, row[f"{method}_syncs"] = count_syncs(lambda: store.gather(idx, tb, out, method))
            row[f"{method}_ms"] = timed_ms(lambda: store.gather(idx, tb, out, method), device)
        except Exception as exc:  # noqa: BLE001 - report and go on
            row[f"{method}_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    row["device_gather_ms"] = timed_ms(lambda: ref.gather(2, gi), device)
    row["gathered_bytes"] = want.numel() * want.element_size()
    return row


def gather_check(device, tiny: bool) -> list[dict]:
    cases = [(2, 64, 4, 64, 8, 10, 5, torch.float32, 3), (1, 96, 3, 80, 6, 12, 7, torch.float16, 5)]
    if not tiny:
        cases += [(1, 1560, 12, 128, 30, 81, 16, torch.bfloat16, 26),  # omnimem at 480x832, 1.3B
                  (2, 1560, 12, 128, 30, 20, 16, torch.bfloat16, 7)]
    rows = []
    for i, c in enumerate(cases):
        try:
            rows.append(gather_case(device, *c, seed=i))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"case": repr(c), "error": f"{type(exc).__name__}: {exc}"})
    return rows


# -- 2. view check --------------------------------------------------------------------------------------
def view_check(device, tiny: bool) -> dict:
    grid, knobs, h, d = ("2x3", "grid=2x3,block_h=1,block_w=3,topk=2", 2, 16) if tiny else \
        ("30x52", "topk=16", 12, 128)
    tok = int(grid.split("x")[0]) * int(grid.split("x")[1])
    rope = WanRoPE(d)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    two = f"{knobs},candidates=2,index_segments=4"  # two-level from chunk 4 on (spans reach 8)
    specs = {"device": f"omnimem:{knobs}", "host": f"omnimem:{knobs},offload=true,host_chunk=5,candidates=0",
             "device2": f"omnimem:{two}", "host2": f"omnimem:{two},offload=true,host_chunk=5"}
    mems = {name: build_memory(s).bind(rope, tok) for name, s in specs.items()}
    g = torch.Generator(device="cpu").manual_seed(0)
    equal, compared, two_level = True, 0, 0
    for c in range(8):
        q, k, v = (torch.randn(1, 3 * tok, h, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
        views = {n: m.view(ChunkQuery(3 * c, 3, q)) for n, m in mems.items()}
        for x, y in (("device", "host"), ("device2", "host2")):
            a, b = views[x], views[y]
            if a is not None:
                equal &= bool(torch.equal(a.k, b.k) and torch.equal(a.v, b.v))
                compared += 1
        cand = mems["host2"].window_frames(3).start
        two_level += int(cand > 0 and not mems["host2"].scores_every_block(cand))
        for m in mems.values():
            m.insert(k, v, 3 * c)
    return {"specs": specs, "views_compared": compared, "equal": equal, "two_level_views": two_level,
            "host_gather": "triton" if device.type == "cuda" and hs.triton_available() else "torch",
            "triton_failure": hs.triton_failure}


# -- 3. real size -----------------------------------------------------------------------------------------
class _Recorder:
    """Patches MemoryStack so every ``nbytes()`` call (run_policy makes one per chunk) also logs the
    host store and the device bytes by part."""

    def __init__(self):
        import fademem.memory as pkg

        self.log: list[dict] = []
        recorder = self
        base = pkg.MemoryStack

        class RecordingStack(base):
            def nbytes(self):
                n = super().nbytes()
                row = {"frames_seen": self.frames_seen, "device_kv_bytes": n, "rss_bytes": _rss()}
                for part in ("history", "block_keys", "index", "window", "gather_buffer"):
                    row[f"device_{part}_bytes"] = sum(m.device_nbytes()[part] for m in self.layers)
                row["host_capacity_bytes"] = sum(m.host_usage()["capacity_bytes"] for m in self.layers)
                row["host_used_bytes"] = sum(m.host_usage()["used_bytes"] for m in self.layers)
                recorder.log.append(row)
                return n

        self.patches = [(pkg, "MemoryStack", base, RecordingStack)]
        import fademem.bench.speed as sp

        if getattr(sp, "MemoryStack", None) is base:  # in case speed imports it at module level
            self.patches.append((sp, "MemoryStack", base, RecordingStack))

    def __enter__(self):
        for mod, name, _, new in self.patches:
            setattr(mod, name, new)
        return self

    def __exit__(self, *exc):
        for mod, name, old, _ in self.patches:
            setattr(mod, name, old)


def _rss() -> int | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return None


def real_size(args, device) -> dict:
    from fademem.bench import speed as sp

    if args.tiny:
        setup = sp.SpeedSetup(config="tiny", latent=(16, 4, 6), device=str(device), dtype="float32",
                              warmup=min(args.warmup, 1))
        knobs = "grid=2x3,block_h=1,block_w=3,topk=2,"
    else:
        setup = sp.SpeedSetup(config="1.3b", latent=(16, 60, 104), device=str(device), dtype="bfloat16",
                              warmup=args.warmup)
        knobs = ""
    modes = {"device": f"omnimem:{knobs}offload=false", "host": f"omnimem:{knobs}offload=true",
             "host-flat": f"omnimem:{knobs}offload=true,candidates=0",
             "device-2l": f"omnimem:{knobs}candidates=16",
             "host-torch": f"omnimem:{knobs}offload=true,gather=torch"}
    t0 = time.time()
    model = sp.build_model(setup)
    out = {"setup": {"config": setup.config, "latent": list(setup.latent), "dtype": setup.dtype,
                     "chunks": args.chunks, "warmup": setup.warmup}, "runs": {}}
    frames = args.chunks * setup.frames_per_chunk
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in modes:
            raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(modes)}")
        if time.time() - t0 > args.budget_s:
            out["runs"][mode] = {"skipped": f"time budget {args.budget_s:.0f} s spent"}
            continue
        try:
            with _Recorder() as rec:
                t = time.time()
                res = sp.run_policy(model, modes[mode], frames, setup, label=mode)
                res["wall_s"] = time.time() - t
            for c, row in zip(res["chunks"], rec.log):
                c.update(row)
            res["host_log_final"] = rec.log[-1] if rec.log else None
            out["runs"][mode] = res
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            out["runs"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def table(report: dict) -> str:
    rows = ["gather check (exact equality against a device-resident gather):",
            f"  {'shape':44s} {'dtype':9s} {'torch':>6s} {'triton':>7s} {'syncs':>5s} {'triton ms':>9s} "
            f"{'torch ms':>9s} {'device ms':>9s}"]
    for r in report.get("gather_check") or []:
        if "error" in r:
            rows.append(f"  {r.get('case', '?')}: {r['error']}")
            continue
        s = r["shape"]
        shape = f"B{s['B']} T{s['T']} H{s['H']} D{s['D']} blk{s['block']} F{s['frames']} K{s['K']}"
        tri = r.get("triton_equal", r.get("triton_error", "n/a"))
        rows.append(f"  {shape:44s} {r['dtype']:9s} {str(r.get('torch_equal')):>6s} {str(tri)[:40]:>7s} "
                    f"{str(r.get('triton_syncs')):>5s} {r.get('triton_ms', float('nan')):9.3f} "
                    f"{r.get('torch_ms', float('nan')):9.3f} {r['device_gather_ms']:9.3f}")
    v = report.get("view_check") or {}
    rows.append(f"view check: {v}")
    runs = (report.get("real_size") or {}).get("runs", {})
    if runs:
        rows.append(f"{'mode':11s} {'ms/chunk':>9s} {'p90':>8s} {'last/first':>10s} {'syncs':>6s} {'peak GPU':>9s} "
                    f"{'alloc 1st':>9s} {'alloc end':>9s} {'dev hist':>9s} {'blk keys':>9s} {'fixed':>7s} "
                    f"{'host cap':>9s} {'host used':>9s} {'RSS':>7s}")
        for mode, r in runs.items():
            if "summary" not in r:
                rows.append(f"{mode:11s} {r.get('skipped') or r.get('error')}")
                continue
            s, last = r["summary"], (r.get("host_log_final") or {})
            g = lambda key: (last.get(key) or 0) / GiB  # noqa: E731
            nan = float("nan")
            rows.append(f"{mode:11s} {s.get('latency_ms_median', nan):9.1f} {s.get('latency_ms_p90', nan):8.1f} "
                        f"{s.get('latency_ratio_last_vs_first_quarter', float('nan')):10.2f} "
                        f"{str(r.get('host_syncs_per_chunk')):>6s} {(r.get('peak_allocated_bytes') or 0) / GiB:9.2f} "
                        f"{_alloc(r, 0):9.3f} {_alloc(r, -1):9.3f} "
                        f"{g('device_history_bytes'):9.2f} {g('device_block_keys_bytes'):9.3f} "
                        f"{g('device_index_bytes') + g('device_window_bytes') + g('device_gather_buffer_bytes'):7.2f} "
                        f"{g('host_capacity_bytes'):9.2f} {g('host_used_bytes'):9.2f} {g('rss_bytes'):7.1f}"
                        + (f"  error: {r['error']}" if r.get("error") else ""))
        rows.append("GiB; device bytes and host bytes summed over layers at the last chunk; alloc 1st/end = GPU "
                    "allocated after the first/last chunk; fixed = index + window + gather buffer; syncs: one "
                    "steady chunk (1 = the sampler's NaN check)")
    return "\n".join(rows)


def _alloc(run: dict, i: int) -> float:
    """GPU allocated bytes (GiB) after a chunk (first chunk: i=0, last: i=-1) where recorded."""
    rows = [c for c in run.get("chunks", []) if c.get("allocated_bytes") is not None]
    return rows[i]["allocated_bytes"] / GiB if rows else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config and shapes (CPU smoke test)")
    ap.add_argument("--chunks", type=int, default=27, help="chunks per real-size run (27 = 20 s of video)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--modes", default="device,host,host-flat",
                    help="device (history on the GPU), host (pinned + Triton gather, two-level retrieval: the "
                         "default with offload), host-flat (pinned, every block key scored on the GPU), device-2l "
                         "(history on the GPU, two-level), host-torch (pinned + torch gather, one sync per view)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="start no real-size run after this many seconds")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--out", default="omnimem_offload_check.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    report: dict = {"env": {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                            "triton": _triton_version(), "gpu": torch.cuda.get_device_name(device)
                            if device.type == "cuda" else None}}
    t0 = time.time()
    for name, fn in (("gather_check", lambda: gather_check(device, args.tiny)),
                     ("view_check", lambda: view_check(device, args.tiny))):
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{name}] done at {time.time() - t0:.1f} s", flush=True)
    if not args.skip_real:
        try:
            report["real_size"] = real_size(args, device)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            report["real_size"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["triton_failure"] = hs.triton_failure  # set when gather=auto had to fall back to torch
    report["wall_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    print(table(report))
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return report


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
