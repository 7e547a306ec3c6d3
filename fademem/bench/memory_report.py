"""``fademem bench memory``: its report as JSON, a plot of quality against lag, and a table."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from fademem.bench.memory_stats import LAG_EDGES


# -------------------------------------------------------------------------------------------
# Output
# -------------------------------------------------------------------------------------------
def _clean(obj):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_clean(report), fh, indent=1, allow_nan=False)
    return path


def bin_labels(edges=LAG_EDGES, fps: float = 8) -> list[str]:
    def sec(x):
        return "inf" if not math.isfinite(x) else f"{x / fps:g}"

    def fr(x):
        return "inf" if not math.isfinite(x) else f"{x:g}"

    return [f"[{fr(a)},{fr(b)}) fr\n[{sec(a)},{sec(b)}) s" for a, b in zip(edges[:-1], edges[1:])]


def plot(report: dict, path: str) -> str:
    """PSNR (top) and SSIM (bottom) against lag bin, one line per policy with 95% CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    labels = bin_labels(edges, cfg["fps"])
    ok = [r for r in report["policies"] if not r.get("error") and "summary" in r]
    if ok:  # episodes with frames in each bin (the same for every policy)
        labels = [f"{lab}\nn={n}" for lab, n in zip(labels, ok[0]["summary"]["psnr_by_lag"]["n_episodes"])]
    fig, axes = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    x = np.arange(len(labels))
    for res in report["policies"]:
        if res.get("error") or "summary" not in res:
            continue
        for ax, key in zip(axes, ("psnr", "ssim")):
            b = res["summary"][f"{key}_by_lag"]
            m = np.array([v if v is not None else np.nan for v in b["mean"]], float)
            lo = np.array([v if v is not None else np.nan for v in b["low"]], float)
            hi = np.array([v if v is not None else np.nan for v in b["high"]], float)
            line, = ax.plot(x, m, marker="o", lw=1.4, label=f"{res['spec']} ({res['visible_history_frames_max']})"
                            if not res.get("unbounded") else f"{res['label']} (unbounded)")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("PSNR vs truth (dB)")
    axes[1].set_ylabel("SSIM vs truth")
    axes[1].set_ylim(-0.05, 1.05)  # t intervals over few episodes can reach past SSIM's range
    axes[0].set_title(f"Memory benchmark: {len(report['episodes'])} episodes, {cfg['latent_frames'] / cfg['fps']:g} s, "
                      f"true opening {cfg['opening_frames'] / cfg['fps']:g} s, budget {cfg['budget']} frames "
                      f"(legend: visible history); bands: 95% CI over episodes", fontsize=9)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].set_xlabel("lag: time since the revisited content was last seen (world.last_seen, mode revisit)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt_ci(ci, digits: int = 2) -> str:
    m, lo, hi = (float("nan") if v is None else v for v in ci)
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f},{hi:.{digits}f}]"


def format_table(report: dict) -> str:
    cfg = report["config"]
    ll = cfg["long_lag_seconds"]
    ok = [r for r in report["policies"] if not r.get("error")]
    n_long = ok[0]["summary"]["n_long_episodes"] if ok else 0
    head = (f"{'policy':26s} {'visible':>7s} {'PSNR dB (95% CI)':>22s} {'SSIM (95% CI)':>24s} "
            f"{f'PSNR lag>={ll:g}s n={n_long}':>22s} {'dPSNR vs full':>20s} {f'dPSNR lag>={ll:g}s vs full':>26s}")
    rows = [head]
    for res in report["policies"]:
        if res.get("error"):
            rows.append(f"{res['spec'][:26]:26s} failed: {res['error']}")
            continue
        s = res["summary"]
        vis = "all" if res.get("unbounded") else str(res["visible_history_frames_max"])
        pv = res.get("paired_vs_full", {})
        rows.append(f"{res['spec'][:26]:26s} {vis:>7s} {_fmt_ci(s['psnr']):>22s} {_fmt_ci(s['ssim'], 4):>24s} "
                    f"{_fmt_ci(s['psnr_long']):>22s} {_fmt_ci(pv['psnr']) if pv else '-':>20s} "
                    f"{_fmt_ci(pv['psnr_long']) if pv else '-':>26s}")
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    rows.append("")
    rows.append("PSNR (dB) by lag bin, mean over episodes [n episodes]:")
    labels = [lab.replace("\n", " ") for lab in bin_labels(edges, cfg["fps"])]
    if ok:
        n_ep = ok[0]["summary"]["psnr_by_lag"]["n_episodes"]
        keep = [i for i, n in enumerate(n_ep) if n]
        rows.append(f"{'lag':34s} " + " ".join(f"{r['spec'][:14]:>14s}" for r in ok))
        for i in keep:
            rows.append(f"{labels[i] + f' [{n_ep[i]}]':34s} "
                        + " ".join(f"{(r['summary']['psnr_by_lag']['mean'][i] or float('nan')):14.2f}" for r in ok))
    rows.append("")
    rows.append(report["equal_budget"]["statement"])
    rows.append(f"Scored: {cfg['generated_frames']} generated frames per episode after a true opening of "
                f"{cfg['opening_frames']} frames; PSNR capped at {cfg['psnr_cap_db']:g} dB; CIs are 95% t intervals "
                f"over episodes (n/a or no interval with < 2 episodes).")
    return "\n".join(rows)
