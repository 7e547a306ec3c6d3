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


def plot(report: dict, path: str) -> str:
    """Quality against lag bin, one line per policy: revisit-aligned PSNR, SSIM (and the critic's identity
    score) with 95% CI bands (solid), all generated frames (dashed); the legend sits right of the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    edges = [e if e is not None else math.inf for e in cfg["lag_edges_frames"]]
    labels = bin_labels(edges, cfg["fps"])
    ok = [r for r in report["policies"] if not r.get("error") and "summary" in r]
    if ok and "revisit" in ok[0]:  # episodes with revisit-aligned frames in each bin (the same for every policy)
        labels = [f"{lab}\nn={n}" for lab, n in zip(labels, ok[0]["revisit"]["psnr_by_lag"]["n_episodes"])]
    panels = [("psnr", "PSNR vs truth (dB)"), ("ssim", "SSIM vs truth")]
    if ok and "identity" in ok[0]:
        panels.append(("identity", "critic identity score\n(colour/shape/size)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.3 * len(panels) + 1), sharex=True, squeeze=False)
    axes = axes[:, 0]
    x = np.arange(len(labels))
    handles = []
    for res in ok:
        name = f"{res['spec']} (visible {res['visible_history_frames_max']})" if not res.get("unbounded") \
            else f"{res['label']} (unbounded)"
        for k, (ax, (key, _)) in enumerate(zip(axes, panels)):
            src = res["identity"] if key == "identity" else res.get("revisit", res["summary"])
            b = src[f"{key}_by_lag"]
            line, = ax.plot(x, _arr(b["mean"]), marker="o", lw=1.6, label=name)
            ax.fill_between(x, _arr(b["low"]), _arr(b["high"]), color=line.get_color(), alpha=0.15)
            if key != "identity" and "revisit" in res:
                ax.plot(x, _arr(res["summary"][f"{key}_by_lag"]["mean"]), ls="--", lw=1.0, color=line.get_color(),
                        alpha=0.7)
            if k == 0:
                handles.append(line)
    for ax, (key, ylabel) in zip(axes, panels):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if key in ("ssim", "identity"):
            ax.set_ylim(-0.05, 1.05)  # t intervals over few episodes can reach past the range
    axes[0].set_title(f"Memory benchmark: {len(report['episodes'])} episodes, {cfg['latent_frames'] / cfg['fps']:g} s, "
                      f"true opening {cfg['opening_frames'] / cfg['fps']:g} s, budget {cfg['budget']} frames.\nSolid: "
                      f"first {cfg['budget']} frames after each revisit (95% CI band over episodes); dashed: all "
                      "generated frames", fontsize=9)
    axes[-1].set_xticks(x, labels, fontsize=8)
    axes[-1].set_xlabel("lag: time since the revisited content was last seen (world.last_seen, mode revisit)")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.8, 0.95), fontsize=8, frameon=True)
    fig.tight_layout(rect=(0, 0, 0.79, 1))
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
