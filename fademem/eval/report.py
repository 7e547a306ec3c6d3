"""``fademem eval report``: the paper's table and plots from a results store.

The table is FadeMem Table 1's layout: one row per method (memory spec, per model), one column per
VBench-Long dimension in its order, then "Avg." (dynamic degree weighted 1/2,
``fademem.eval.protocol.paper_average``), the best value of each column in bold; with the embedded
model's critic, a "Critic fidelity" column. A method's dimension score is VBench-Long's pooled mean over
its clips (``fademem.eval.protocol.aggregate``). Plots: per-dimension bars per method, and each
dimension against ``beta`` for the specs that set it (Table 3's beta sweep).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fademem.eval.protocol import aggregate
from fademem.eval.weights import DIMENSIONS

__all__ = ["NAMES", "method_scores", "markdown_table", "plot_report", "write_report"]

NAMES = {"subject_consistency": "Subject", "background_consistency": "Background",
         "motion_smoothness": "Motion smooth.", "dynamic_degree": "Dynamic", "aesthetic_quality": "Aesthetic",
         "imaging_quality": "Imaging", "avg": "Avg.", "critic_fidelity": "Critic fidelity"}


def method_scores(rows: list[dict]) -> dict[str, dict]:
    """{method: {dimension: score, ..., "avg", "critic_fidelity", "videos"}}; method = spec (with the
    model when the store holds more than one)."""
    models = {r["model"] for r in rows}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        name = r["spec"] if len(models) == 1 else f"{r['spec']} [{r['model']}]"
        groups.setdefault(name, []).append(r)
    out = {}
    for name, rs in groups.items():
        m = aggregate([(r["scores"] or {}, max(1, r["clips"] or 0)) for r in rs])
        crit = [r["scores"].get("critic_fidelity") for r in rs if r["scores"]]
        crit = [c for c in crit if c is not None]
        if crit:
            m["critic_fidelity"] = float(np.mean(crit))
        m["videos"] = len(rs)
        out[name] = m
    return out


def markdown_table(methods: dict[str, dict], digits: int = 4) -> str:
    cols = [d for d in (*DIMENSIONS, "avg", "critic_fidelity") if any(d in m for m in methods.values())]
    best = {c: max((m[c] for m in methods.values() if m.get(c) is not None), default=None) for c in cols}
    lines = ["| Method | " + " | ".join(NAMES[c] for c in cols) + " | Videos |",
             "|---|" + "---:|" * len(cols) + "---:|"]
    for name, m in methods.items():
        cells = []
        for c in cols:
            v = m.get(c)
            if v is None:
                cells.append("–")
                continue
            s = f"{100 * v:.2f}" if c in DIMENSIONS or c == "avg" else f"{v:.{digits}f}"
            cells.append(f"**{s}**" if best[c] is not None and v == best[c] and len(methods) > 1 else s)
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {m['videos']} |")
    lines.append("")
    lines.append("VBench-Long dimensions in %, pooled over each method's 2 s clips; Avg. weights dynamic degree 1/2 "
                 "(FadeMem Table 1); best of each column in bold.")
    return "\n".join(lines)


def _beta(spec: str) -> float | None:
    m = re.search(r"(?:^|[:,])\s*beta\s*=\s*([0-9.eE+-]+)", spec)
    return float(m.group(1)) if m else None


def plot_report(methods: dict[str, dict], out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    dims = [d for d in DIMENSIONS if any(d in m for m in methods.values())]
    if dims:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(dims)), 4))
        width = 0.8 / max(1, len(methods))
        for i, (name, m) in enumerate(methods.items()):
            ax.bar(np.arange(len(dims)) + i * width, [100 * m.get(d, np.nan) for d in dims], width, label=name)
        ax.set_xticks(np.arange(len(dims)) + width * (len(methods) - 1) / 2, [NAMES[d] for d in dims])
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "dimensions.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    sweep = sorted((b, name) for name in methods if (b := _beta(name.split(" [")[0])) is not None)
    if len(sweep) > 1 and dims:
        fig, ax = plt.subplots(figsize=(6, 4))
        for d in (*dims, "avg"):
            ys = [100 * methods[n].get(d, np.nan) for _, n in sweep]
            ax.plot([b for b, _ in sweep], ys, marker="o", label=NAMES[d])
        ax.set_xlabel("beta")
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "score_vs_beta.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def write_report(rows: list[dict], out_dir) -> dict:
    """report.md, report.json and the plots into ``out_dir``; returns {"methods", "files"}."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = method_scores(rows)
    versions = sorted({r["fademem_version"] for r in rows})
    hashes = sorted({f"{r['model']} {r['checkpoint_hash'][:12]}" for r in rows})
    md = "\n".join([markdown_table(methods), "", f"Models: {'; '.join(hashes)}. fademem {', '.join(versions)}. "
                    f"{len(rows)} videos.", ""])
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.json").write_text(json.dumps({"methods": methods}, indent=1, sort_keys=True))
    files = [out_dir / "report.md", out_dir / "report.json", *plot_report(methods, out_dir)]
    return {"methods": methods, "files": files, "markdown": md}
