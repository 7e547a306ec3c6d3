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


def _write_text(path: str, text: str) -> str:
    """Write through a temporary file and rename: an interrupted write never leaves a truncated file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def write_json(report: dict, path: str) -> str:
    return _write_text(path, json.dumps(_clean(report), indent=1, allow_nan=False))


def write_outputs(report: dict, out_dir: str) -> tuple[str, str]:
    """memory.json and memory.txt (the table) in ``out_dir``; (json path, table text)."""
    table = format_table(report)
    path = write_json(report, os.path.join(out_dir, "memory.json"))
    _write_text(os.path.join(out_dir, "memory.txt"), table + "\n")
    return path, table


def bin_labels(edges=LAG_EDGES, fps: float = 8) -> list[str]:
    def sec(x):
        return "inf" if not math.isfinite(x) else f"{x / fps:g}"

    def fr(x):
        return "inf" if not math.isfinite(x) else f"{x:g}"

    return [f"[{fr(a)},{fr(b)}) fr\n[{sec(a)},{sec(b)}) s" for a, b in zip(edges[:-1], edges[1:])]


def _arr(values) -> np.ndarray:
    return np.array([v if v is not None else np.nan for v in values], float)


MIN_BAND_EPISODES = 3  # a 95% t interval over fewer episodes is too wide to read (t=12.7 at n=2): no band drawn


def _valid_range(key: str, cfg: dict) -> tuple[float, float]:
    """The values a metric can take: identity is a fraction, SSIM at most 1, PSNR at most its cap."""
    if key == "identity":
        return 0.0, 1.0
    if key == "ssim":
        return -1.0, 1.0
    cap = cfg.get("psnr_cap_db")
    return 0.0, float(cap) if cap is not None else math.inf


def band(b: dict, key: str, cfg: dict, min_n: int = MIN_BAND_EPISODES) -> tuple[np.ndarray, np.ndarray]:
    """The CI band a bin draws: its (low, high) clipped to the metric's valid range; NaN (no band) where the
    bin has fewer than ``min_n`` episodes."""
    lo_v, hi_v = _valid_range(key, cfg)
    low, high = np.clip(_arr(b["low"]), lo_v, hi_v), np.clip(_arr(b["high"]), lo_v, hi_v)
    n = np.array(b.get("n_episodes") or [min_n] * len(low), float)
    few = n < min_n
    low[few], high[few] = np.nan, np.nan
    return low, high


def y_limits(key: str, cfg: dict, means: list[np.ndarray], bands: list[np.ndarray]) -> tuple[float, float]:
    """Axis limits from the data: every mean is shown; bands may widen the axis by at most half the means'
    span on each side (one wide interval cannot swamp the panel; beyond that it is cut at the frame). SSIM
    and identity show their whole [0, 1]."""
    m = np.concatenate([a[np.isfinite(a)] for a in means] + [np.zeros(0)])
    bv = np.concatenate([a[np.isfinite(a)] for a in bands] + [np.zeros(0)])
    if key in ("ssim", "identity"):
        lo = min(0.0, float(m.min())) if m.size else 0.0
        return lo - 0.04, 1.04
    if not m.size:
        return 0.0, 1.0
    span = max(float(m.max() - m.min()), 1.0)
    lo, hi = float(m.min()), float(m.max())
    if bv.size:
        lo, hi = max(min(lo, float(bv.min())), lo - span / 2), min(max(hi, float(bv.max())), hi + span / 2)
    lo_v, hi_v = _valid_range(key, cfg)
    lo, hi = max(lo, lo_v), min(hi, hi_v)
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def plot(report: dict, path: str) -> str:
    """Quality against lag bin, one line per policy: revisit-aligned PSNR, SSIM (and the critic's identity
    score) with 95% CI bands (solid), all generated frames (dashed). Bands are clipped to the metric's valid
    range and left out for bins of fewer than ``MIN_BAND_EPISODES`` episodes (hollow marker there); the
    legend sits below the axes, every label whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cfg = report["config"]
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    labels = bin_labels(edges, cfg["fps"])
    ok = [r for r in report["policies"] if not r.get("error") and "summary" in r]
    if ok and "revisit" in ok[0]:  # episodes with revisit-aligned frames in each bin (the same for every policy)
        labels = [f"{lab}\nn={n}" for lab, n in zip(labels, ok[0]["revisit"]["psnr_by_lag"]["n_episodes"])]
    panels = [("psnr", "PSNR vs truth (dB)"), ("ssim", "SSIM vs truth")]
    if ok and "identity" in ok[0]:
        panels.append(("identity", "critic identity score\n(colour/shape/size)"))
    names = [f"{r['spec']} (visible {r['visible_history_frames_max']})" if not r.get("unbounded")
             else f"{r['label']} (unbounded)" for r in ok]
    ncol = max(1, min(len(names), 3 if max(map(len, names), default=0) <= 60 else 2))
    legend_in = 0.2 * math.ceil((len(names) + 2) / ncol) + 0.15  # legend rows below the plots (+2 key entries)
    height = 3.3 * len(panels) + 1 + legend_in
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, height), sharex=True, squeeze=False)
    axes = axes[:, 0]
    x = np.arange(len(labels))
    handles = []
    seen = {key: ([], []) for key, _ in panels}
    # one colour per policy: the default cycle repeats after 10 (a merged run has more)
    colours = plt.get_cmap("tab10" if len(ok) <= 10 else "tab20").colors
    for i, (res, name) in enumerate(zip(ok, names)):
        for k, (ax, (key, _)) in enumerate(zip(axes, panels)):
            src = res["identity"] if key == "identity" else res.get("revisit", res["summary"])
            b = src[f"{key}_by_lag"]
            mean = _arr(b["mean"])
            line, = ax.plot(x, mean, marker="o", lw=1.6, label=name, color=colours[i % len(colours)])
            low, high = band(b, key, cfg)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12, lw=0)
            few = np.isfinite(mean) & ~np.isfinite(low)
            if few.any():  # a mean without a band: hollow marker
                ax.plot(x[few], mean[few], ls="none", marker="o", color=line.get_color(), mfc="white", mew=1.4)
            seen[key][0].append(mean)
            seen[key][1].extend([low, high])
            if key != "identity" and "revisit" in res:
                dashed = _arr(res["summary"][f"{key}_by_lag"]["mean"])
                ax.plot(x, dashed, ls="--", lw=1.0, color=line.get_color(), alpha=0.7)
                seen[key][0].append(dashed)
            if k == 0:
                handles.append(line)
    for ax, (key, ylabel) in zip(axes, panels):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(*y_limits(key, cfg, *seen[key]))
        if key == "identity":  # the critic scores one window per revisit: its own episode counts per bin
            for xi, n in enumerate(ok[0]["identity"]["identity_by_lag"].get("n_episodes") or []):
                ax.text(xi, 0.02, f"n={n}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=7, color="0.35")
    axes[0].set_title(f"Memory benchmark: {len(report['episodes'])} episodes, {cfg['latent_frames'] / cfg['fps']:g} s, "
                      f"true opening {cfg['opening_frames'] / cfg['fps']:g} s, budget {cfg['budget']} frames.\nSolid: "
                      f"first {cfg['budget']} frames after each revisit; dashed: all generated frames. Bands: 95% t CI "
                      f"over episodes, clipped to the metric's range;\nnone (hollow marker) where a bin has < "
                      f"{MIN_BAND_EPISODES} episodes. n under the axis: episodes per bin (PSNR/SSIM); identity panel: "
                      "its own n", fontsize=9)
    axes[-1].set_xticks(x, labels, fontsize=8)
    axes[-1].set_xlabel("lag: time since the revisited content was last seen (world.last_seen, mode revisit)")
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", label=f"no band (n < "
                          f"{MIN_BAND_EPISODES} episodes)"))
    handles.append(Line2D([], [], ls="--", color="0.3", label="all generated frames (dashed)"))
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    below = axes[-1].get_tightbbox(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted()).y0
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, below - 0.005), ncol=ncol, fontsize=8,
               frameon=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": nothing drawn is cut at the figure's edge
    plt.close(fig)
    return path


def _fmt_ci(ci, digits: int = 2) -> str:
    m, lo, hi = (float("nan") if v is None else v for v in ci)
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f},{hi:.{digits}f}]"


def _by_lag_rows(ok: list[dict], labels: list[str], part: str, title: str) -> list[str]:
    rows = ["", title]
    n_ep = ok[0][part]["psnr_by_lag"]["n_episodes"]
    rows.append(f"{'lag':34s} " + " ".join(f"{r['spec'][:14]:>14s}" for r in ok))
    for i in (i for i, n in enumerate(n_ep) if n):
        rows.append(f"{labels[i] + f' [{n_ep[i]}]':34s} "
                    + " ".join(f"{(r[part]['psnr_by_lag']['mean'][i] or float('nan')):14.2f}" for r in ok))
    return rows


def _pair_rows(report: dict) -> list[str]:
    pw, cfg = report.get("pairwise") or {}, report["config"]
    if not pw.get("pairs"):
        return []
    ll = cfg["long_lag_seconds"]
    keys = [k for k in ("psnr", "ssim", "identity") if k in pw]
    heads = {"psnr": "dPSNR dB", "ssim": "dSSIM", "identity": "dIdentity"}
    digits = {"psnr": 2, "ssim": 4, "identity": 3}
    rows = ["", f"Pairwise a - b at lag >= {ll:g} s (revisit-aligned; identity: revisit windows): per-episode paired "
                f"differences, Holm-corrected {1 - pw['alpha']:.0%} intervals over the {len(pw['pairs'])} pairs "
                "(per metric); * = interval excludes 0; p = Holm-adjusted p-value; n = episodes"]
    rows.append(f"{'a - b':44s} " + " ".join(f"{heads[k] + ' [Holm CI]':>30s} {'p':>6s}" for k in keys) + f" {'n':>3s}")
    for j, (a, b) in enumerate(pw["pairs"]):
        cells = []
        for k in keys:
            e = pw[k]["long"][j]
            star = "*" if e["excludes_zero"] else " "
            ci = _fmt_ci((e["mean"], e["low"], e["high"]), digits[k])
            p = e["p_holm"]
            cells.append(f"{ci + star:>30s} {p if p is not None and math.isfinite(p) else float('nan'):6.3f}")
        n = pw[keys[0]]["long"][j]["n"]
        rows.append(f"{(a[:21] + ' - ' + b[:20]):44s} " + " ".join(cells) + f" {n:3d}")
    for k in keys:
        ex = pw["excluding_zero"].get(f"{k}_long", [])
        rows.append(f"  {k} lag >= {ll:g} s, intervals excluding 0: {', '.join(ex) if ex else 'none'}")
    return rows


def format_table(report: dict) -> str:
    cfg = report["config"]
    ll = cfg["long_lag_seconds"]
    ok = [r for r in report["policies"] if not r.get("error")]
    n_long = ok[0]["summary"]["n_long_episodes"] if ok else 0
    head = (f"{'policy':26s} {'visible':>7s} {'PSNR dB (95% CI)':>22s} {'SSIM (95% CI)':>24s} "
            f"{f'PSNR lag>={ll:g}s n={n_long}':>22s} {'dPSNR vs full':>20s} {f'dPSNR lag>={ll:g}s vs full':>26s}")
    rows = [head]
    if report.get("partial") or report.get("interrupted"):
        why = f"interrupted: {report['interrupted']}" if report.get("interrupted") else "run still going"
        done = ", ".join(report.get("policies_finished") or []) or "none"
        rows.insert(0, f"PARTIAL REPORT ({why}); finished: {done}")
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
    labels = [lab.replace("\n", " ") for lab in bin_labels(edges, cfg["fps"])]
    if ok and "revisit" in ok[0]:
        rows += ["", f"Revisit-aligned: the first {cfg['budget']} generated frames after each revisit onset, "
                     "mean over episodes [95% CI]" + ("; identity: the critic on one window per revisit" if
                                                      "identity" in ok[0] else "")]
        rows.append(f"{'policy':26s} {'visible':>7s} {'frames':>6s} {'PSNR dB':>22s} {'SSIM':>24s} "
                    f"{f'PSNR lag>={ll:g}s':>22s} {f'SSIM lag>={ll:g}s':>24s}"
                    + (f" {'identity':>21s} {f'identity lag>={ll:g}s':>21s}" if "identity" in ok[0] else ""))
        for res in ok:
            r = res["revisit"]
            vis = "all" if res.get("unbounded") else str(res["visible_history_frames_max"])
            idt = res.get("identity")
            rows.append(f"{res['spec'][:26]:26s} {vis:>7s} {r['n_frames']:6d} {_fmt_ci(r['psnr']):>22s} "
                        f"{_fmt_ci(r['ssim'], 4):>24s} {_fmt_ci(r['psnr_long']):>22s} {_fmt_ci(r['ssim_long'], 4):>24s}"
                        + (f" {_fmt_ci(idt['identity'], 3):>21s} {_fmt_ci(idt['identity_long'], 3):>21s}"
                           if idt else ""))
        truth = (report.get("critic") or {}).get("truth")
        if truth:
            rows.append(f"{'(true frames, critic ceiling)':26s} {'':>7s} {'':>6s} {'':>22s} {'':>24s} {'':>22s} "
                        f"{'':>24s} {_fmt_ci(truth['identity'], 3):>21s} {_fmt_ci(truth['identity_long'], 3):>21s}")
    for nr in report.get("policies_not_run") or []:
        rows.append(f"{nr['spec'][:26]:26s} not run: {nr['reason']}")
    rows += _pair_rows(report)
    if ok and "after_return" in ok[0]:
        from fademem.bench.memory_cuts import table_rows

        rows += table_rows(report)
    if ok:
        rows += _by_lag_rows(ok, labels, "summary", "PSNR (dB) by lag bin, all generated frames, mean over episodes "
                                                     "[n episodes]:")
        if "revisit" in ok[0]:
            rows += _by_lag_rows(ok, labels, "revisit", "PSNR (dB) by lag bin, revisit-aligned frames [n episodes]:")
    rows.append("")
    rows.append(report["equal_budget"]["statement"])
    rows.append(f"Scored: {cfg['generated_frames']} generated frames per episode after a true opening of "
                f"{cfg['opening_frames']} frames; PSNR capped at {cfg['psnr_cap_db']:g} dB; CIs are 95% t intervals "
                f"over episodes (n/a or no interval with < 2 episodes).")
    if report.get("skipped_scenes"):
        rows.append("Skipped benchmark scenes (no return within the video): "
                    + ", ".join(str(sk["scene"]) for sk in report["skipped_scenes"]))
    if report.get("critic"):
        rows.append(f"Critic: {report['critic']['note']}")
    rows.append(f"Sampling: {cfg.get('schedule')} (from {cfg.get('schedule_from')}); codec {cfg.get('codec')}")
    return "\n".join(rows)
