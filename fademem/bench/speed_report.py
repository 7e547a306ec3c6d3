"""Output of ``fademem bench speed``: JSON, the plot against video length, the text tables."""

from __future__ import annotations

import json
import os
from typing import Any

VIDEO_FPS = 16
VIDEO_FRAMES_PER_LATENT = 4
GiB = 2**30


def write_json(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)


def compare_policies(results: list[dict]) -> dict:
    """FadeMem's overhead over sink at the same visible frames, and each policy's fps."""
    by_label = {r["label"]: r for r in results if r.get("summary")}
    out: dict[str, Any] = {"video_fps": {k: v["summary"]["video_fps"] for k, v in by_label.items()}}
    fm, sk = by_label.get("fademem"), by_label.get("sink")
    if fm and sk:
        out["fademem_overhead_over_sink"] = fm["summary"]["latency_ms_median"] / sk["summary"]["latency_ms_median"] - 1
        out["fademem_vs_sink_visible_frames"] = [fm["visible_frames_steady"], sk["visible_frames_steady"]]
        out["target_overhead_le_3pct"] = out["fademem_overhead_over_sink"] <= 0.03
    return out


def _seconds(chunk: dict, fpc: int) -> float:
    return (chunk["start"] + fpc) * VIDEO_FRAMES_PER_LATENT / VIDEO_FPS


def _draw(ax_lat, ax_mem, results: list[dict], fpc: int) -> None:
    for res in results:
        ch = res["chunks"]
        if not ch:
            continue
        timed = [c for c in ch if c.get("latency_ms") is not None]
        x_t = [_seconds(c, fpc) for c in timed]
        style = dict(lw=0, marker=".", ms=3) if res.get("timed_mode") else dict(lw=1.2)
        line, = ax_lat.plot(x_t, [c["latency_ms"] for c in timed], label=res["spec"], **style)
        x = [_seconds(c, fpc) for c in ch]
        color = line.get_color()
        if "allocated_bytes" in ch[0]:
            ax_mem.plot(x, [c["allocated_bytes"] / GiB for c in ch], color=color, lw=1.2,
                        label=f"{res['label']} allocated")
        ax_mem.plot(x, [c["kv_bytes"] / GiB for c in ch], color=color, lw=1.0, ls="--", label=f"{res['label']} KV")
        if "host_bytes" in ch[0]:
            ax_mem.plot(x, [c["host_bytes"] / GiB for c in ch], color=color, lw=1.0, ls=":",
                        label=f"{res['label']} host")
        if res.get("stopped") and timed:
            ax_lat.annotate("stop", (x_t[-1], timed[-1]["latency_ms"]), fontsize=8)


def plot(report: dict, path: str) -> str:
    """Latency and memory per chunk against video length: the sweep, and the long runs (timed
    chunks as dots; memory for every chunk) in a second column when there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpc = report["setup"]["frames_per_chunk"]
    longs = (report.get("long_runs") or {}).get("policies") or []
    cols = [("policy sweep", report["policies"])] + ([("long runs, timed mode", longs)] if longs else [])
    fig, axes = plt.subplots(2, len(cols), figsize=(9 * len(cols), 8), squeeze=False)
    env = report["environment"]
    for j, (title, results) in enumerate(cols):
        ax1, ax2 = axes[0][j], axes[1][j]
        _draw(ax1, ax2, results, fpc)
        ax1.set_ylabel("chunk latency (ms)")
        ax1.set_title(f"{title}: DiT chunk latency ({fpc} latent frames, 5 forwards) on "
                      f"{env.get('gpu', env['device'])}", fontsize=9)
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3)
        ax2.set_ylabel("GiB")
        ax2.set_xlabel("video length (s, 16 fps)")
        ax2.set_title("GPU memory allocated (solid), KV memory (dashed), host memory (dotted)", fontsize=9)
        ax2.legend(fontsize=7, ncol=2)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row(name: str, res: dict, s: dict | None = None) -> str:
    s = s if s is not None else (res.get("summary") or {})
    if not s:
        return f"{name[:40]:40s} failed: {res.get('error') or res.get('stopped')}"
    frac = s.get("fraction_of_peak")
    return (f"{name[:40]:40s} {s['latency_ms_median']:9.1f} {s['video_fps']:8.2f} "
            f"{(s['achieved_tflops'] or 0):8.1f} {(100 * frac if frac else float('nan')):6.1f} "
            f"{((res.get('peak_allocated_bytes') or 0) / GiB):9.2f} {res.get('kv_bytes_final', 0) / GiB:7.2f} "
            f"{res.get('frames_run', 0):7d}" + (" *" if res.get("stopped") else ""))


def format_table(report: dict) -> str:
    peak = report.get("peak_bf16_tflops")
    rows = [f"{'run (DiT only)':40s} {'ms/chunk':>9s} {'vid fps':>8s} {'TFLOP/s':>8s} {'%peak':>6s} "
            f"{'peak GiB':>9s} {'KV GiB':>7s} {'frames':>7s}"]
    for res in report["policies"]:
        rows.append(_row(res["spec"], res))
    longs = (report.get("long_runs") or {}).get("policies") or []
    for res in longs:
        mins = res.get("seconds", 0) / 60
        rows.append(_row(f"{res['spec']} first min", res, res.get("summary_first_minute")))
        rows.append(_row(f"{res['spec']} {mins:g} min (timed)", res))
    for res in report.get("variants", []):
        row = _row(f"variant {res['variant']}", res)
        agree = res.get("agreement_vs_first_variant")
        if agree:
            row += "  rel.diff " + ", ".join(f"{v:.1e}" for v in agree.values())
        cold, fwd = res.get("cold_start") or {}, res.get("forward_check")
        if cold.get("first_chunk_s") is not None:
            row += f"  first chunk {cold['first_chunk_s']:.1f} s"
            row += f" ({cold['caches']})" if cold.get("caches") else ""
        if fwd:
            row += f"  fwd diff {fwd['rel_l2_vs_eager']:.1e} {'ok' if fwd['ok'] else 'OVER'} (tol {fwd['tolerance']:g})"
        graph = res.get("cuda_graph")
        if graph:
            row += (f"  graph: {graph['replayed']} replays, eager diff {graph['max_rel_diff_vs_eager']:.1e}"
                    if graph.get("max_rel_diff_vs_eager") is not None else
                    f"  graph: not captured ({graph.get('failure') or graph.get('why_not') or 'memory never stable'})")
        rows.append(row)
    cmp_ = report.get("comparisons", {})
    if "fademem_overhead_over_sink" in cmp_:
        rows.append(f"fademem overhead over sink (same visible frames {cmp_['fademem_vs_sink_visible_frames']}): "
                    f"{100 * cmp_['fademem_overhead_over_sink']:+.2f}% (target <= 3%)")
    if peak:
        rows.append(f"measured bf16 peak {peak:.0f} TFLOP/s; * = stopped early (see JSON 'stopped')")
    if longs:
        rows += ["", f"long runs: timed windows, other chunks cache pass only "
                     f"({report['long_runs']['timed_window']} chunks every {report['long_runs']['timed_every_s']:g} s, "
                     f"first {report['long_runs']['timed_first']} chunks)",
                 f"{'policy':28s} {'video s':>7s} {'ms first':>9s} {'ms last':>8s} {'ratio':>6s} {'alloc GiB':>15s} "
                 f"{'KV GiB':>11s} {'host GiB':>11s} {'cache ms':>8s}"]
        for res in longs:
            fl = res.get("flatness") or {}
            w = res.get("windows") or []
            if not fl or not w:
                rows.append(f"{res['spec'][:28]:28s} no flatness figure: {res.get('error') or res.get('stopped')}")
                continue
            pair = lambda k: ("{:.2f}->{:.2f}".format(*(b / GiB for b in fl[k])) if k in fl else "-")  # noqa: E731
            cache = (res.get("timed_mode") or {}).get("cache_pass_ms_mean")
            rows.append(f"{res['spec'][:28]:28s} {res['frames_run'] * VIDEO_FRAMES_PER_LATENT / VIDEO_FPS:7.0f} "
                        f"{w[0]['latency_ms_median']:9.1f} {w[-1]['latency_ms_median']:8.1f} "
                        f"{fl['latency_ratio_last_vs_first']:6.3f} {pair('allocated_bytes_first_last'):>15s} "
                        f"{pair('kv_bytes_first_last'):>11s} {pair('host_bytes_first_last'):>11s} "
                        f"{(cache or float('nan')):8.1f}")
    e2e = report.get("end_to_end")
    if e2e:
        rows.append("")
        if e2e.get("skipped"):
            rows.append(f"end to end: skipped ({e2e['skipped']})")
        else:
            rows.append(f"end to end with streaming VAE decode (random-weight {e2e['vae']['which']} VAE, "
                        f"{e2e['vae']['dtype']}); "
                        f"decode alone {e2e.get('decode_ms_per_chunk') or float('nan'):.1f} ms per 3-frame chunk")
            rows.append(f"{'policy':28s} {'DiT fps':>8s} {'e2e fps':>8s} {'overlap fps':>11s} {'overlap gain':>12s}")
            for r in e2e.get("side_by_side", []):
                f = lambda v: f"{v:.2f}" if v else "-"  # noqa: E731
                gain = f"{100 * (r['e2e_overlap_fps'] / r['e2e_fps'] - 1):+.1f}%" if r.get("e2e_overlap_fps") and \
                    r.get("e2e_fps") else "-"
                rows.append(f"{r['spec'][:28]:28s} {f(r.get('dit_fps')):>8s} {f(r.get('e2e_fps')):>8s} "
                            f"{f(r.get('e2e_overlap_fps')):>11s} {gain:>12s}")
            if e2e.get("overlap_agreement"):
                a = e2e["overlap_agreement"]
                rows.append(f"overlap vs sequential decode: frames max |diff| {a.get('frames_max_abs_diff')}, "
                            f"latents equal {a.get('latents_equal')}")
    low = report.get("low_memory")
    if low and not low.get("skipped"):
        gib = lambda b: f"{b / GiB:.2f}" if b is not None else "-"  # noqa: E731
        fps = low.get("e2e_fps")
        rows += ["", f"low memory (24 GB mode): {low['policy']} end to end, {low['text_encoder']['which']} encoder "
                     f"on the host ({low['text_encoder']['encode_seconds_including_moves']:.1f} s to encode, moves "
                     f"included): {fps if fps is not None else float('nan'):.2f} video fps, peak GPU "
                     f"{gib(low.get('peak_including_encode_bytes'))} GiB with the encode, "
                     f"{gib(low.get('peak_allocated_bytes'))} GiB generating (target <= {low['target_gib']:g} GiB)"]
    if report.get("skipped"):
        rows.append("skipped: " + "; ".join(f"{next(iter(s.values()))} ({s['reason']})" for s in report["skipped"]))
    return "\n".join(rows)
