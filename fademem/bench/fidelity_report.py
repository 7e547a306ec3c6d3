"""The outputs of ``fademem bench fidelity``: JSON, a text table, a plot of accuracy over time."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["format_table", "plot", "write_json"]


def write_json(report: dict, path: str | Path) -> str:
    Path(path).write_text(json.dumps(report, indent=1, default=str))
    return str(path)


def _pct(row: dict) -> str:
    if row["acc"] is None:
        return "-"
    ci = row.get("ci")
    half = f"±{50 * (ci[1] - ci[0]):.0f}" if ci else ""
    return f"{100 * row['acc']:.0f}%{half}"


def format_table(report: dict) -> str:
    cfg = report["config"]
    attrs = [*report["attributes"], "mean"]
    bins = [r["bin"] for r in report["generated"]["mean"]]
    lines = [f"prompt fidelity: {len(report['episodes'])} held-out episodes x {cfg['latent_frames'] / cfg['fps']:g} s, "
             f"memory {cfg['memory']}, {cfg['weights']} ({cfg['schedule']})",
             f"critic {cfg['critic']}: accuracy of windows of {cfg['critic_span']} frames (every {cfg['hop_frames']}) "
             "where the true render shows the attribute; ± half the 95% t interval over episodes"]
    w = max(11, *(len(b) + 1 for b in bins))
    head = f"{'attribute':<14}" + "".join(f"{b:>{w}}" for b in bins)
    for name in ("generated", "true"):
        lines += ["", f"{'generated video' if name == 'generated' else 'true render (reference)'}", head]
        for a in attrs:
            lines.append(f"{a:<14}" + "".join(f"{_pct(r):>{w}}" for r in report[name][a]))
    c = report.get("continuation")
    if c:
        p = c["psnr_db"]

        def fmt(s, sign=""):
            ci = "" if math.isnan(s["low"]) else f" [{s['low']:{sign}.2f}, {s['high']:{sign}.2f}]"
            return f"{s['mean']:{sign}.2f} dB{ci}"

        fps = cfg["fps"]
        lines += ["", f"continuation after a {c['opening_frames'] / fps:g} s true opening ({len(c['episodes'])} "
                      f"visibly panning episodes): PSNR of the first {c['scored_frames'] / fps:g} s vs truth "
                      "(95% t over episodes)",
                  f"  generated            {fmt(p['generated'])}",
                  f"  freeze last frame    {fmt(p['freeze'])}",
                  f"  generated - freeze   {fmt(p['difference'], '+')}"]
        if "freeze_codec" in p:
            lines += [f"  freeze, codec frame  {fmt(p['freeze_codec'])}",
                      f"  generated - that     {fmt(p['difference_codec'], '+')}"]
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> str:
    """Accuracy per time bin: the mean over attributes (thick) and each attribute, generated (solid)
    against the true renders (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["generated"]["mean"] if not r["bin"].startswith("last")]
    x = [(r["lo"] + r["hi"]) / 2 for r in rows]
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, a in enumerate([*report["attributes"], "mean"]):
        mean = a == "mean"
        colour = "black" if mean else cmap(i % 10)
        for name, style in (("generated", "-"), ("true", "--")):
            y = [r["acc"] if r["acc"] is not None else float("nan") for r in report[name][a][:len(rows)]]
            ax.plot(x, y, style, color=colour, lw=2.5 if mean else 1, marker="o" if mean else None, ms=4,
                    label=(a if name == "generated" else None))
    ax.set_xlabel("time (s), window centre")
    ax.set_ylabel("critic accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("prompt fidelity over time: generated (solid) vs true render (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
