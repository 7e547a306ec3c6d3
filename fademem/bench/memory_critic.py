"""``fademem bench memory --critic``: the world critic's identity score on revisits.

After content comes back (a revisit onset among the generated frames, ``world.revisit.revisit_onsets``)
the critic (``fademem.embedded.critic``) reads one window of ``span`` native frames (31 at 8 fps: 3.9 s)
starting at the onset (moved earlier if the video ends first, never into the true opening); windows of
one episode do not overlap (onsets inside a window are covered by it). The window's lag is the largest
per-frame lag in the ``budget`` frames after its onset: the gap the returning content bridged.

Identity score of a window: the mean correctness of the object's colour, shape and size (object 0 of
the prompt) over those the true render of that window shows (``observable``, from the world); windows
where none is observable drop out. An episode's score is the mean over its scored (window, attribute)
cells; statistics over episodes as for PSNR (``memory_stats.summarise`` with key "identity").
"""

from __future__ import annotations

import numpy as np
import torch

from fademem.bench.memory_stats import summarise

IDENTITY_ATTRIBUTES = ("colour", "shape", "size")


def critic_windows(lags, opening: int, num_frames: int, span: int, budget: int) -> list[dict]:
    """[{start, onset, lag}] (frame indices of the whole video) of one episode's revisit windows."""
    from fademem.embedded.world.revisit import revisit_onsets

    lg = np.asarray(lags)
    last_start = num_frames - span
    out: list[dict] = []
    if last_start < opening:
        return out
    for r in revisit_onsets(lg, start=opening):
        if out and r < out[-1]["start"] + span:
            continue
        start = min(r, last_start)
        if out and start < out[-1]["start"] + span:
            continue
        out.append({"start": int(start), "onset": int(r), "lag": int(lg[r:r + budget].max())})
    return out


def score_windows(critic, videos: list, prompts: list[str], seeds: list[int], windows: list[list[dict]]) -> list[dict]:
    """Per episode {"identity": [window scores], "lags": [window lags], "windows": [...]} for ``videos``
    (one [T, H, W, 3] float in [0, 1] or uint8 per episode) with its ``windows``."""
    from fademem.embedded.critic import score_clips

    span = critic.cfg.span
    clips, meta = [], []
    for e, (video, wins) in enumerate(zip(videos, windows)):
        v = torch.as_tensor(video)
        if v.dtype != torch.uint8:
            v = (v.float().clamp(0, 1) * 255).round().to(torch.uint8)
        for w in wins:
            clips.append(v[w["start"]:w["start"] + span])
            meta.append((e, w))
    out = [{"identity": [], "lags": [], "windows": []} for _ in videos]
    if not clips:
        return out
    res = score_clips(critic, torch.stack(clips), [prompts[e] for e, _ in meta], starts=[w["start"] for _, w in meta],
                      seeds=[seeds[e] for e, _ in meta])
    for j, (e, w) in enumerate(meta):
        cells = {a: bool(res[a]["correct"][j]) for a in IDENTITY_ATTRIBUTES if bool(res[a]["observable"][j])}
        out[e]["windows"].append({**w, **{a: cells.get(a) for a in IDENTITY_ATTRIBUTES}})
        if cells:
            out[e]["identity"].append(float(np.mean(list(cells.values()))))
            out[e]["lags"].append(w["lag"])
    return out


def summarise_identity(scored: list[dict], long_lag: int) -> dict:
    """Statistics over episodes of the window identity scores (``summarise`` with key "identity"),
    plus per-attribute correctness over all scored windows."""
    per_ep = [{"identity": s["identity"]} for s in scored]
    out = summarise(per_ep, [np.asarray(s["lags"], np.int64) for s in scored], long_lag, keys=("identity",))
    out["n_windows"] = out.pop("n_frames")
    for a in IDENTITY_ATTRIBUTES:
        cells = [w[a] for s in scored for w in s["windows"] if w[a] is not None]
        out[f"{a}_accuracy"] = float(np.mean(cells)) if cells else None
        out[f"{a}_observable_windows"] = len(cells)
    return out


def load(path: str | None, device) -> tuple[object | None, str]:
    """(critic or None, note)."""
    if not path:
        return None, "no --critic given: the identity score was skipped"
    from fademem.embedded.critic import load_critic

    critic = load_critic(path, device=device)
    return critic, (f"identity = mean correctness of the object's {'/'.join(IDENTITY_ATTRIBUTES)} on revisit windows "
                    f"of {critic.cfg.span} frames where the true render shows it (critic {path})")
