"""Hour-long generation at constant memory: the embedded model on the CPU, minute by minute.

    python benchmarks/long_run.py [--minutes 60] [--policies fademem,sink,memrope] [--threads 1]
                                  [--out long_run.json] [--parallel] [--collect]

Each policy's process writes its report so far after every minute of video (``<out>.<policy>.part.json``),
so a run stopped early can still be assembled (``--collect``); the report says which runs finished.

Each policy runs in its own process (so resident memory is that policy's alone) through the
generation session ``fademem generate`` uses: every chunk is denoised (4 forwards), written to the
memory (the t=0 pass), decoded and appended to an mp4 that is committed in segments, as
``fademem generate --state`` does. Per minute of video it records the per-chunk wall time
(median, mean, 90th percentile), the resident set size at the minute's end (VmRSS; VmHWM, the peak,
at the end), the memory's K/V bytes, the largest temporal RoPE position the memory has given so
far, and the latents' mean / std / largest magnitude (every chunk is checked finite).

Midway (at the minute closest to half the run) the run is stopped the way ``fademem generate``
stops: the mp4 is committed and the session's state is saved to a file (safetensors). The check
then steps the old session ``--check-chunks`` chunks further, drops it, loads the state file into a
fresh session and steps it the same chunks: their latents and frames must be equal bit for bit.
The fresh session then finishes the video. Times of the check's throw-away chunks are not counted.

The memory spec is given as for ``fademem generate``; the session picks what the policy states for
a run this long (``Memory.for_run``: FadeMem runs with compact positions past the model's trained
window of 603 latent frames), and the JSON records both specs. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = ("a large red circle bouncing over a striped blue background , "
          "camera pans right and returns after 8 seconds")


def _status(key: str) -> float:
    """A /proc/self/status size (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _step(session, video):
    """One chunk: ((wall seconds, CPU seconds of this thread), the chunks decoded by now). With one torch
    thread the model runs on this thread, so its CPU time hardly moves when other processes load the
    machine; the wall time does. The mp4 encode (x264's own threads) is not counted in either."""
    t0, c0 = time.perf_counter(), time.thread_time()
    chunks = session.step()
    dt = (time.perf_counter() - t0, time.thread_time() - c0)
    for c in chunks:
        video.write(c.frames[0].numpy())
    return dt, chunks


def worker(policy: str, minutes: float, threads: int, seed: int, check_chunks: int, workdir: str,
           progress=None) -> dict:
    """One policy's run; ``progress(report)`` gets the report so far after every minute of video."""
    import torch

    from fademem.pipeline import embedded_pipeline
    from fademem.pipeline.segments import SegmentedVideo
    from fademem.pipeline.state import load_state, save_state
    from fademem.pipeline.video_io import count_frames

    torch.set_num_threads(threads)
    from fademem import embedded

    pipe = embedded_pipeline()
    shape = embedded.latent_shape(embedded.load().cfg)
    fps, fpc = int(pipe.fps), pipe.frames_per_chunk
    per_minute = 60 * fps // fpc  # chunks per minute of video (one latent frame per video frame)
    n_minutes = max(1, round(minutes))
    total = int(round(minutes * per_minute))
    num_frames = total * fpc
    mid = max(1, min(n_minutes - 1, n_minutes // 2)) * per_minute if n_minutes > 1 else total // 2

    def new_session():
        return pipe.session(PROMPT, num_frames, memory=policy, seed=seed, latent_shape=shape)

    session = new_session()
    video_path = os.path.join(workdir, f"{policy.split(':')[0]}.mp4")
    state_path = os.path.join(workdir, f"{policy.split(':')[0]}.state")
    video = SegmentedVideo(video_path, pipe.fps, crf=18)
    rows, times, lat = [], [], []
    resume: dict = {}
    t_run = time.perf_counter()

    def report(done: bool) -> dict:
        return {"policy": policy, "spec_run": session.stack.spec, "trained_frames": session.trained_frames,
                "stated_position_range": list(session.stack.position_range(num_frames, fpc)),
                "positions_bounded": session.stack.policy.positions_bounded(fpc), "minutes": rows,
                "resume": {k: v for k, v in resume.items() if k != "session"}, "peak_rss_mib": _status("VmHWM"),
                "wall_s": time.perf_counter() - t_run, "chunks": total, "latent_frames": num_frames, "fps": fps,
                "finished": done, "threads": threads}

    with torch.no_grad():
        while not session.done:
            dt, chunks = _step(session, video)
            times.append(dt)
            for c in chunks:
                x = c.latents.float()
                if not bool(torch.isfinite(x).all()):
                    raise RuntimeError(f"{policy}: chunk {c.index} is not finite")
                lat.append((float(x.mean()), float(x.std()), float(x.abs().max())))
            if session.index % per_minute == 0 or session.done:
                minute = -(-session.index // per_minute)
                wall, cpu = [w for w, _ in times], [c for _, c in times]
                rows.append({
                    "minute": minute, "chunks": len(times),
                    "chunk_ms_median": 1000 * statistics.median(wall),
                    "chunk_ms_mean": 1000 * statistics.fmean(wall),
                    "chunk_ms_p90": 1000 * sorted(wall)[int(0.9 * (len(wall) - 1))],
                    "chunk_cpu_ms_median": 1000 * statistics.median(cpu),
                    "chunk_cpu_ms_mean": 1000 * statistics.fmean(cpu),
                    "load_avg_1min": os.getloadavg()[0],
                    "rss_mib": _status("VmRSS"), "kv_bytes": session.stack.nbytes(),
                    "max_position": session.positions_used()[1],
                    "latent_mean": statistics.fmean(a for a, _, _ in lat),
                    "latent_std": statistics.fmean(s for _, s, _ in lat),
                    "latent_absmax": max(m for _, _, m in lat),
                    "elapsed_s": time.perf_counter() - t_run})
                r = rows[-1]
                print(f"[{policy}] minute {minute}/{n_minutes}: {r['chunk_ms_median']:.1f} ms/chunk "
                      f"({r['chunk_cpu_ms_median']:.1f} ms CPU), "
                      f"RSS {r['rss_mib']:.0f} MiB, max position {r['max_position']:g}, "
                      f"{r['elapsed_s']:.0f} s", file=sys.stderr, flush=True)
                times, lat = [], []
                if progress is not None:
                    progress(report(False))
            if session.index == mid and not session.done:
                resume = _resume_midway(session, video, new_session, state_path, check_chunks, torch, save_state,
                                        load_state)
                session = resume.pop("session")
    session.close()
    frames = video.commit()
    assert frames == count_frames(video_path) == num_frames, (frames, num_frames)
    return {**report(True), "video_frames": frames, "video_bytes": os.path.getsize(video_path)}


def _resume_midway(session, video, new_session, state_path, k, torch, save_state, load_state) -> dict:
    """Stop as ``fademem generate`` does (commit the mp4, save the state), check a fresh session loaded
    from the file gives the next ``k`` chunks bit for bit, and hand that session back."""
    t0 = time.perf_counter()
    for c in session.drain():
        video.write(c.frames[0].numpy())
    committed = video.commit()
    save_state(state_path, session.state_dict())
    save_s = time.perf_counter() - t0
    at = session.start
    want = []
    for _ in range(k):  # the uninterrupted continuation (not written, not timed)
        want += session.step()
    want += session.drain()
    session.close()
    del session
    gc.collect()
    t0 = time.perf_counter()
    fresh = new_session()
    fresh.load_state_dict(load_state(state_path))
    load_s = time.perf_counter() - t0
    got = []
    for _ in range(k):  # written to the video like any chunk
        got += _step(fresh, video)[1]
    for c in fresh.drain():
        video.write(c.frames[0].numpy())
        got.append(c)
    equal = (len(got) == len(want) and all(torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
                                          for a, b in zip(got, want)))
    if not equal:
        raise RuntimeError(f"the resumed session differs from the uninterrupted one after latent frame {at}")
    return {"session": fresh, "at_latent_frame": at, "at_minute": at / (60 * fresh.pipe.fps),
            "video_frames_committed": committed, "state_bytes": os.path.getsize(state_path),
            "save_s": save_s, "load_s": load_s, "checked_chunks": k, "bit_exact": equal}


# -- the driver: one process per policy ------------------------------------------------------------
def _table(report: dict) -> str:
    lines = []
    for r in report["runs"]:
        lines.append(f"\n{r['policy']} (runs as {r['spec_run']}; positions stated {r['stated_position_range'][0]:g}.."
                     f"{r['stated_position_range'][1]:g}, bounded: {r['positions_bounded']})")
        lines.append(f"{'minute':>6} {'wall ms/chunk med':>17} {'p90':>7} {'CPU ms med':>10} {'load':>5} "
                     f"{'RSS MiB':>8} {'KV KiB':>7} {'max pos':>8} {'|lat| max':>9} {'lat std':>8}")
        for m in r["minutes"]:
            lines.append(f"{m['minute']:>6} {m['chunk_ms_median']:>17.1f} {m['chunk_ms_p90']:>7.1f} "
                         f"{m['chunk_cpu_ms_median']:>10.1f} {m['load_avg_1min']:>5.1f} {m['rss_mib']:>8.1f} "
                         f"{m['kv_bytes'] / 1024:>7.0f} {m['max_position']:>8g} {m['latent_absmax']:>9.3f} "
                         f"{m['latent_std']:>8.3f}")
        s = _summary(r)
        res = r["resume"]
        done = (f"{r['video_frames']} frames in the mp4" if r.get("finished") else
                f"STOPPED at minute {s['last_minute']} of {r['chunks'] * 3 // (60 * r['fps'])} (partial)")
        lines.append(f"  minute {s['last_minute']} / minute 1: median chunk time x{s['time_ratio']:.3f} wall, "
                     f"x{s['cpu_time_ratio']:.3f} CPU, "
                     f"RSS {s['rss_first_mib']:.1f} -> {s['rss_last_mib']:.1f} MiB ({s['rss_growth_mib']:+.1f}), "
                     f"peak RSS {r['peak_rss_mib']:.1f} MiB; {done}; wall {r['wall_s']:.0f} s")
        if res:
            lines.append(f"  resumed at minute {res['at_minute']:g} (latent frame {res['at_latent_frame']}) from a "
                         f"{res['state_bytes'] / 1e6:.2f} MB state file (save {res['save_s']:.2f} s, load "
                         f"{res['load_s']:.2f} s): next {res['checked_chunks']} chunks bit-exact: {res['bit_exact']}")
    return "\n".join(lines)


def _summary(run: dict) -> dict:
    first, last = run["minutes"][0], run["minutes"][-1]
    return {"last_minute": last["minute"], "time_ratio": last["chunk_ms_median"] / first["chunk_ms_median"],
            "cpu_time_ratio": last["chunk_cpu_ms_median"] / first["chunk_cpu_ms_median"],
            "rss_first_mib": first["rss_mib"], "rss_last_mib": last["rss_mib"],
            "rss_growth_mib": last["rss_mib"] - first["rss_mib"],
            "max_rss_mib": max(m["rss_mib"] for m in run["minutes"]),
            "finite": True}  # every chunk was checked; a non-finite one stops the run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of video per policy")
    ap.add_argument("--policies", default="fademem,sink,memrope", help="comma-separated memory specs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (this machine: 2 cores, shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-chunks", type=int, default=3, help="chunks compared bit for bit after the resume")
    ap.add_argument("--out", default="long_run.json", help="JSON report")
    ap.add_argument("--parallel", action="store_true", help="run the policies' processes at once, not one by one")
    ap.add_argument("--collect", action="store_true",
                    help="only assemble the report from the per-policy files of a run (finished or not)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one policy, in this process
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.threads < 1 or args.check_chunks < 1:
        ap.error("--minutes must be > 0, --threads and --check-chunks >= 1")
    if args.worker is not None:
        def save(run):
            with open(args.worker_out + ".tmp", "w") as fh:
                json.dump({**run, "summary": _summary(run)}, fh, indent=1)
            os.replace(args.worker_out + ".tmp", args.worker_out)

        with tempfile.TemporaryDirectory(prefix="fademem-long-") as work:
            save(worker(args.worker, args.minutes, args.threads, args.seed, args.check_chunks, work, save))
        return
    import torch

    report = {"what": "embedded model, CPU, per minute of video; one process per policy",
              "minutes": args.minutes, "threads": args.threads, "seed": args.seed, "prompt": PROMPT,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parallel": args.parallel, "runs": []}
    specs = [p.strip() for p in args.policies.split(",") if p.strip()]
    parts = [f"{args.out}.{spec.split(':')[0]}.part.json" for spec in specs]  # kept: a stopped run can be collected
    if not args.collect:
        cmds = [[sys.executable, os.path.abspath(__file__), "--worker", spec, "--worker-out", part, "--minutes",
                 str(args.minutes), "--threads", str(args.threads), "--seed", str(args.seed), "--check-chunks",
                 str(args.check_chunks)] for spec, part in zip(specs, parts)]
        if args.parallel:
            procs = [subprocess.Popen(c) for c in cmds]
            if any(p.wait() for p in procs):
                sys.exit("a policy's run failed")
        else:
            for c in cmds:
                subprocess.run(c, check=True)
    report["runs"] = [json.load(open(p)) for p in parts if os.path.isfile(p)]
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(_table(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
