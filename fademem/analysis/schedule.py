"""``fademem schedule``: FadeMem's memory layout without tensors, as a table or a plot.

:func:`simulate` (in the memory layer, :mod:`fademem.memory.fademem`, re-exported here) runs the
very :class:`~fademem.memory.fademem_schedule.Schedule` the ``fademem`` policy runs (built by the
policy itself, so knob validation and preset defaults are shared), frame by frame; this module
reports the final memory or plots its layout over time. Frames are 0-based latent-frame indices:
``mu`` is a frame index (the paper's unit t is frame t - 1). With ``preset=release`` frames arrive
in chunks of ``chunk`` frames and are measured from the next chunk's first frame, as the policy's
``insert()`` does.
"""

from __future__ import annotations

from fademem.memory.fademem import ScheduleRun, simulate
from fademem.memory.fademem_schedule import Meta

__all__ = ["ScheduleRun", "format_table", "plot_layout", "simulate"]  # ScheduleRun, simulate: fademem.memory.fademem


def format_table(run: ScheduleRun) -> str:
    mem = run.memory
    head = (f"fademem {mem.preset}: budget={mem.budget} beta={mem.beta} anchor={mem.anchor} "
            f"merge={mem.merge} span_gamma={mem.gamma} positions={mem.position_mode}; "
            f"{mem.frames_seen} frames -> {len(mem.schedule.entries)} entries")
    rows = [f"{'#':>3}  {'frames':>11}  {'span':>5}  {'mu':>9}  {'position':>8}  kind"]
    for i, e in enumerate(run.entries()):
        frames = f"{e.first}-{e.first + e.span - 1}" if e.span > 1 else f"{e.first}"
        rows.append(f"{i:>3}  {frames:>11}  {e.span:>5}  {e.mu:>9.3f}  {e.position:>8.2f}  {e.kind}")
    return "\n".join([head, *rows, "(position: temporal RoPE position for a chunk starting now)"])


def plot_layout(run: ScheduleRun, path: str) -> None:
    """Memory layout over time: x = frames generated, y = frames covered, shade = span."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import LogNorm

    if not run.history:
        raise ValueError("plot needs a recorded run with at least one frame (simulate(record=True))")
    mem = run.memory
    # one block per entry lifetime: the steps over which an entry keeps the same frames
    alive: dict[tuple, tuple[int, Meta]] = {}  # (first, span, anchor) -> (first step, entry)
    blocks: list[tuple[int, int, Meta]] = []  # (first step, last step, entry)
    for step, ents in enumerate(run.history, start=1):
        now = {(e.first, e.span, e.anchor): e for e in ents}
        for key in [k for k in alive if k not in now]:
            s0, e = alive.pop(key)
            blocks.append((s0, step - 1, e))
        for key, e in now.items():
            alive.setdefault(key, (step, e))
    n = len(run.history)
    blocks += [(s0, n, e) for s0, e in alive.values()]
    polys, spans, anchors, ticks = [], [], [], []
    for s0, s1, e in blocks:
        x0, x1, y0, y1 = s0 - 0.5, s1 + 0.5, e.first - 0.5, e.first + e.span - 0.5
        (anchors if e.anchor else polys).append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        if not e.anchor:
            spans.append(e.span)
        if e.span > 1:
            ticks.append([(x0, e.mu), (x1, e.mu)])
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    norm = LogNorm(vmin=1, vmax=max(2, max(spans, default=2)))
    coll = PolyCollection(polys, array=spans, cmap="viridis_r", norm=norm, edgecolors="white", linewidths=0.5)
    ax.add_collection(coll)
    if anchors:
        ax.add_collection(PolyCollection(anchors, facecolors="#d62728", edgecolors="white", linewidths=0.3))
    ax.add_collection(LineCollection(ticks, colors="black", linewidths=0.6, label="entry centre mu"))
    ax.plot([0.5, n + 0.5], [-0.5, n - 0.5], color="grey", lw=0.8, ls="--", label="present")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlabel("step (latent frames generated)")
    ax.set_ylabel("latent frame index covered")
    anchor_txt = ", anchor in red" if anchors else ""
    ax.set_title(f"FadeMem memory layout ({mem.preset}): budget {mem.budget}, beta {mem.beta}, "
                 f"merge {mem.merge}{anchor_txt}", fontsize=10)
    cb = fig.colorbar(coll, ax=ax)
    cb.set_label("entry span (frames)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
