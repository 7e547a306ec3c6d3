"""Figures (in the style of the paper's Figure 2), the JSON report and the CLI summary lines."""

from __future__ import annotations

import json
import math
import os

import numpy as np


def plot_spectrum(res: dict, path, title: str | None = None) -> None:
    """Two panels: (a) C_r(lag) per band, coloured by band, horizons marked;
    (b) r*(t) on log-log axes with the band boundary points and the fitted power law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    curves = np.asarray(res["curves"], float)
    lags = np.asarray(res["lags"])
    centres = np.asarray(res["band_centres"])
    horizons = np.asarray([np.nan if h is None else h for h in res["horizons"]], float)
    status = res["horizon_status"]
    cmap = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0, 0.9, 256)))

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r, curve in enumerate(curves):
        colour = cmap(centres[r])
        ax_a.plot(lags, curve, color=colour, lw=1.5)
        if np.isfinite(horizons[r]) and status[r] != "static":
            y = np.interp(horizons[r], lags, curve)
            filled = status[r] == "resolved"
            ax_a.plot(horizons[r], y, "o", ms=5, mec=colour, mfc=colour if filled else "white")
    ax_a.set_xlabel("temporal lag $\\Delta$ (frames)")
    ax_a.set_ylabel("correlation $C_r(\\Delta)$")
    ax_a.set_title("(a) correlation vs lag per band")
    ax_a.grid(alpha=0.3)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=cmap), ax=ax_a, pad=0.01)
    bar.set_label("radial frequency $r$ / Nyquist")

    r_star = np.asarray([np.nan if v is None else v for v in res["r_star"]], float)
    t = np.arange(1, len(r_star) + 1)
    ok = np.isfinite(r_star)
    if ok.any():
        ax_b.step(t[ok], r_star[ok], where="post", color="0.4", lw=1.2, label="$r^*(t)$")
    resolved = np.array([s == "resolved" for s in status])
    ax_b.scatter(horizons[resolved], centres[resolved], c=[cmap(c) for c in centres[resolved]],
                 zorder=3, label="$(t^*(r), r)$ resolved")
    other = np.isfinite(horizons) & ~resolved
    if other.any():
        ax_b.scatter(horizons[other], centres[other], facecolors="none", edgecolors="0.5", zorder=3,
                     label="censored horizon")
    if res["b"] is not None:
        tt = np.geomspace(max(1.0, np.nanmin(horizons[resolved])), np.nanmax(horizons[resolved]), 50)
        label = f"fit $r^* \\propto t^{{-b}}$, b = {res['b']:.2f}"
        if res.get("ci"):
            label += f" [{res['ci'][0]:.2f}, {res['ci'][1]:.2f}]"
        ax_b.plot(tt, np.exp(res["fit"]["log_a"]) * tt ** (-res["b"]), "k--", lw=1.2, label=label)
    ax_b.set_xscale("log")
    ax_b.set_yscale("log")
    ax_b.set_xlabel("temporal distance $t$ (frames)")
    ax_b.set_ylabel("stable frequency radius $r^*(t)$")
    ax_b.set_title("(b) stable radius vs distance")
    ax_b.grid(alpha=0.3, which="both")
    ax_b.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: dict, out_dir) -> dict:
    """Write spectrum.json and one Figure-2-style PNG per video (plus pooled.png). Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "spectrum.json"), "figures": []}
    report = _jsonable(report)
    for i, res in enumerate(report["videos"]):
        png = os.path.join(out_dir, f"{i:02d}_{os.path.splitext(res['name'])[0]}.png")
        plot_spectrum(res, png, title=res["name"])
        paths["figures"].append(png)
    if report["pooled"] is not None and len(report["videos"]) > 1:
        png = os.path.join(out_dir, "pooled.png")
        plot_spectrum(report["pooled"], png, title=f"pooled over {len(report['videos'])} videos")
        paths["figures"].append(png)
    with open(paths["json"], "w") as fh:
        json.dump(report, fh, indent=1)
    return paths


def format_summary(res: dict, label: str, with_beta: bool, level: float = 0.95) -> str:
    """One line: b with its interval (and the suggested beta), for the CLI."""
    n_res = sum(s == "resolved" for s in res["horizon_status"])
    if res["b"] is None:
        line = f"{label}: no power-law fit ({n_res}/{len(res['horizons'])} bands with a resolved horizon)"
    else:
        ci = res["ci"]
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}] ({res['ci_method']} {level:.0%})" if ci else "(no interval)"
        line = f"{label}: b = {res['b']:.3f} {ci_s}, {n_res}/{len(res['horizons'])} bands resolved"
    if with_beta:
        beta = res["beta"]
        if beta["beta"] is None:
            line += "; suggested beta: n/a"
        else:
            bci = beta["beta_ci"]
            line += f"; suggested beta = {beta['beta']:.3f}" + (f" [{bci[0]:.3f}, {bci[1]:.3f}]" if bci else "")
            if beta["note"]:
                line += f" ({beta['note']})"
    return line
