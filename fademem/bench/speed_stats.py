"""Chunk statistics of ``fademem bench speed``: video time of chunks, the timed mode's chunk plan,
steady-state summaries, the timed windows and their flatness."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

VIDEO_FPS = 16
VIDEO_FRAMES_PER_LATENT = 4


def frames_for_seconds(seconds: float, frames_per_chunk: int = 3) -> int:
    """Latent frames for ``seconds`` of 16 fps video at 4 video frames per latent frame, whole chunks
    (60 s -> 240 latent frames = 80 chunks)."""
    latent = math.ceil(seconds * VIDEO_FPS / VIDEO_FRAMES_PER_LATENT - 1e-9)
    return frames_per_chunk * max(1, math.ceil(latent / frames_per_chunk))


def chunk_seconds(index: int, frames_per_chunk: int = 3) -> float:
    """Video time (s) at which chunk ``index`` starts."""
    return index * frames_per_chunk * VIDEO_FRAMES_PER_LATENT / VIDEO_FPS


def timed_chunks(num_chunks: int, frames_per_chunk: int, every_s: float, window: int,
                 first: int | None = None) -> list[int]:
    """Chunks the timed mode times: the first ``first`` (default ``window``), then ``window``
    chunks from every multiple of ``every_s`` seconds of video, and the last ``window`` chunks."""
    if num_chunks <= 0:
        return []
    if not every_s > 0 or window <= 0:
        raise ValueError(f"timed mode needs every_s > 0 and window > 0, got {every_s} and {window}")
    first = window if first is None else first
    chosen = set(range(min(max(first, 0), num_chunks)))
    j = 1
    while True:
        c = round(j * every_s * VIDEO_FPS / VIDEO_FRAMES_PER_LATENT / frames_per_chunk)
        if c >= num_chunks:
            break
        chosen.update(range(c, min(c + window, num_chunks)))
        j += 1
    chosen.update(range(max(0, num_chunks - window), num_chunks))
    return sorted(chosen)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarise(chunks: list[dict], warmup: int, frames_per_chunk: int, peak_tflops: float | None) -> dict:
    """Steady-state statistics over the timed chunks after chunk index ``warmup``. A chunk marked ``drain``
    (end to end with the overlapped decode: the last chunk's yield is only the wait for its decode, its
    DiT ran in the previous yield) is left out and reported alone as ``drain_ms``."""
    timed = [c for c in chunks if c.get("latency_ms") is not None]
    drained = [c for c in timed if c.get("drain")]
    timed = [c for c in timed if not c.get("drain")]
    steady = [c for c in timed if c["index"] >= warmup] or timed[1:] or timed
    if not steady:
        return {}
    lat = [c["latency_ms"] for c in steady]
    med = statistics.median(lat)
    secs = sum(lat) / 1e3
    flops = sum(c["flops"] for c in steady)
    out = {
        "steady_chunks": len(steady),
        "latency_ms_median": med,
        "latency_ms_mean": statistics.fmean(lat),
        "latency_ms_p10": _quantile(lat, 0.1),
        "latency_ms_p90": _quantile(lat, 0.9),
        "wall_ms_median": statistics.median(c["wall_ms"] for c in steady),
        "video_fps": VIDEO_FRAMES_PER_LATENT * frames_per_chunk * 1e3 / med,
        "latent_fps": frames_per_chunk * 1e3 / med,
        "flops_per_chunk_median": statistics.median(c["flops"] for c in steady),
        "achieved_tflops": flops / secs / 1e12 if secs > 0 else None,
    }
    out["fraction_of_peak"] = (out["achieved_tflops"] / peak_tflops
                               if peak_tflops and out["achieved_tflops"] else None)
    if drained:
        out["drain_ms"] = drained[-1]["latency_ms"]
    # flatness: last quarter against the first steady quarter (bounded policies: ~1.0)
    q = max(1, len(steady) // 4)
    out["latency_ratio_last_vs_first_quarter"] = statistics.median(lat[-q:]) / statistics.median(lat[:q])
    return out


def _windows(chunks: list[dict], warmup: int, fpc: int) -> list[dict]:
    """Runs of consecutive timed chunks (the timed mode's windows) with their medians and memory."""
    out: list[dict] = []
    run: list[dict] = []
    for c in chunks + [None]:
        if c is not None and c.get("latency_ms") is not None and (not run or c["index"] == run[-1]["index"] + 1):
            run.append(c)
            continue
        if run:
            steady = [r for r in run if r["index"] >= warmup] or run
            lat = [r["latency_ms"] for r in steady]
            w = {"first_chunk": run[0]["index"], "last_chunk": run[-1]["index"],
                 "start_s": chunk_seconds(run[0]["index"], fpc), "end_s": chunk_seconds(run[-1]["index"] + 1, fpc),
                 "latency_ms_median": statistics.median(lat), "kv_bytes": run[-1]["kv_bytes"],
                 "memory_frames": run[-1]["memory_frames"]}
            for key in ("allocated_bytes", "host_bytes"):
                if key in run[-1]:
                    w[key] = max(r[key] for r in run)
            out.append(w)
        run = [c] if c is not None and c.get("latency_ms") is not None else []
    return out


def _flatness(windows: list[dict]) -> dict | None:
    """Last window against the first (steady) one: ~1.0 everywhere for a bounded policy."""
    if len(windows) < 2:
        return None
    a, b = windows[0], windows[-1]
    out = {"first_window_s": [a["start_s"], a["end_s"]], "last_window_s": [b["start_s"], b["end_s"]],
           "latency_ratio_last_vs_first": b["latency_ms_median"] / a["latency_ms_median"],
           "kv_bytes_first_last": [a["kv_bytes"], b["kv_bytes"]]}
    for key in ("allocated_bytes", "host_bytes"):
        if key in a and key in b:
            out[f"{key}_first_last"] = [a[key], b[key]]
    return out
