"""Figures (in the style of the paper's Figure 2), the JSON report and the CLI summary lines."""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _arr(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], float)


def _fit_panel(ax, clips, fit_k, cmap, title):
    """log-log t* (s) vs band centre: resolved points filled, censored bands as arrows at their
    bound (^ too slow: a lower bound, v too fast: an upper bound), the fitted line per clip."""
    for j, res in enumerate(clips):
        centres, h = _arr(res["band_centres"]), _arr(res["horizons_s"])
        bounds = res["horizon_bounds_s"]
        colour = cmap(j / max(1, len(clips) - 1)) if len(clips) > 1 else "k"
        ok = np.isfinite(h)
        ax.plot(centres[ok], h[ok], "o", color=colour, ms=6, label=res.get("name", "resolved") if len(clips) > 1
                else f"resolved ({ok.sum()})")
        for c, bd in zip(centres, bounds, strict=True):
            if bd is not None:
                ax.plot(c, bd[1], "^" if bd[0] == ">" else "v", mfc="white", mec=colour, ms=7)
        if fit_k is not None and ok.sum() >= 2:
            x = np.log(centres[ok])
            c0 = np.mean(np.log(h[ok]) + fit_k * x)
            ff = np.geomspace(centres.min(), centres.max(), 30)
            ax.plot(ff, np.exp(c0) * ff ** (-fit_k), "--", color=colour, lw=1)
    ax.plot([], [], "^", mfc="white", mec="0.4", label="too slow (lower bound)")
    ax.plot([], [], "v", mfc="white", mec="0.4", label="too fast (upper bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("band centre $f$ (energy-weighted, / Nyquist)")
    ax.set_ylabel("decorrelation horizon $t^*$ (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")


def _fit_title(res) -> str:
    if res.get("b") is None:
        return f"(b) fit of log t* on log f: {res.get('verdict', 'none')}"
    ci = res.get("ci")
    ci_s = "" if not ci else f" [{ci[0]:.2f}, {'inf' if ci[1] is None else f'{ci[1]:.2f}'}]"
    r2 = res["fit"]["r2"]
    return f"(b) $t^* \\propto f^{{-1/b}}$, b = {res['b']:.2f}{ci_s}, r$^2$ = {r2:.2f}: {res['verdict']}"


def plot_spectrum(res: dict, path, title: str | None = None) -> None:
    """Two panels: (a) C_r(lag) per band against lag in seconds, resolved horizons marked;
    (b) exactly what is fitted: t*(f) on log-log axes, censored bands as bound arrows, the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = np.asarray(res["curves"], float)
    lags = _arr(res["lags_s"])
    centres = _arr(res["band_centres"])
    horizons = _arr(res["horizons_s"])
    cmap = matplotlib.colormaps["viridis"]
    unit = res.get("time_unit", "s")

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.6))
    for r, curve in enumerate(curves):
        colour = cmap(r / max(1, len(curves) - 1))
        ax_a.plot(lags, curve, color=colour, lw=1.5, label=f"f = {centres[r]:.3f} ({res['horizon_status'][r]})")
        if np.isfinite(horizons[r]):
            ax_a.plot(horizons[r], np.interp(horizons[r], lags, curve), "o", ms=6, color=colour, mec="k")
    ax_a.set_xlabel(f"temporal lag $\\Delta$ ({unit})")
    ax_a.set_ylabel("correlation $C_r(\\Delta)$")
    ax_a.set_title("(a) correlation vs lag per band (o: resolved horizon)", fontsize=9)
    ax_a.grid(alpha=0.3)
    ax_a.legend(fontsize=7, loc="upper right")
    _fit_panel(ax_b, [res], res.get("k"), cmap, _fit_title(res))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pooled(pooled: dict, clips: list[dict], path) -> None:
    """All clips' points and censored bounds, with the common (pooled) slope through each clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    _fit_panel(ax, clips, pooled.get("k"), matplotlib.colormaps["tab10"],
               _fit_title(pooled).replace("(b) ", f"pooled by clip ({len(clips)} clips): "))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
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
        plot_pooled(report["pooled"], report["videos"], png)
        paths["figures"].append(png)
    with open(paths["json"], "w") as fh:
        json.dump(report, fh, indent=1)
    return paths


def _ci_str(ci) -> str:
    if not ci:
        return "(no interval)"
    return f"[{ci[0]:.3f}, {'inf' if ci[1] is None or not math.isfinite(ci[1]) else f'{ci[1]:.3f}'}]"


def _censored_str(fc) -> str:
    """The censored-regression (Tobit) fit, for the summary line."""
    if not fc:
        return ""
    counts = f"{fc['n_resolved']} resolved + {fc['n_too_fast']} too fast + {fc['n_too_slow']} too slow"
    if fc["k"] is None:
        return f"; censored fit ({counts}): none ({fc['note']})"
    b = "no shrinking horizon" if fc["b"] is None else f"b = {fc['b']:.3f} {_ci_str(fc['b_ci'])}"
    return f"; censored fit (Tobit, {counts}): {b}"


def format_summary(res: dict, label: str, with_beta: bool, level: float = 0.95) -> str:
    """One line: b with its interval and verdict, the sensitivity range (and the suggested beta)."""
    status = res.get("horizon_status")
    bands = "" if status is None else (
        f", bands: {status.count('resolved')} resolved / {status.count('too_fast')} too fast / "
        f"{status.count('too_slow')} too slow")
    if res["b"] is None:
        line = f"{label}: no power-law fit{bands}; verdict: {res.get('verdict', 'none')} ({res.get('reason', '')})"
    else:
        line = (f"{label}: b = {res['b']:.3f} {_ci_str(res['ci'])} ({res['ci_method']}, {level:.0%}){bands}; "
                f"verdict: {res['verdict']} ({res['reason']})")
    line += _censored_str(res.get("fit_censored"))
    grid = res.get("sensitivity") or []
    bs = [row["b"] for row in grid if row["b"] is not None]
    if grid:
        sup = sum(row["verdict"] == "supported" for row in grid)
        rng = f"b in [{min(bs):.2f}, {max(bs):.2f}]" if bs else "no fit"
        line += f"; rule x eps grid: {rng}, {sup}/{len(grid)} cells supported"
    if with_beta:
        beta = res["beta"]
        if beta["beta"] is None:
            line += f"; suggested beta: n/a ({beta['note']})"
        else:
            bci = beta["beta_ci"]
            line += f"; suggested beta = {beta['beta']:.3f}" + (f" [{bci[0]:.3f}, {bci[1]:.3f}]" if bci else "")
            if beta["note"]:
                line += f" ({beta['note']})"
    return line
