"""``fademem bench memory``: its episodes, each checked to bring content back within its length.

An episode is a scene of ``fademem.embedded.world`` with a seed: first the curated ``BENCHMARK_SCENES``
in order (or the indices given by ``scenes``), then random revisit scenes (the camera pans away and
comes back). ``revisit_episodes`` (what the benchmark runs) computes every episode's ground-truth lag
(``last_seen(mode="revisit")``) and keeps only episodes with a revisit onset (content coming back,
``revisit_onsets``) among the generated frames:

* a benchmark scene that does not return within the video (a 64 s gap in a 40 s video, an object
  leaving while the background stays, no revisit at all) is skipped and listed, unless it was asked
  for by index (``scenes``): then it is an error;
* the random scenes are built to return in time: ``revisit_scene(s, within_seconds=video length)``
  draws the gap from the gaps whose first return home comes within the video (the same scene as
  ``revisit_scene(s)`` whenever that one already returns in time). Each is checked (asserted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Episode:
    index: int
    prompt: str
    world_seed: int  # the world's seed (layout, textures)
    noise_seed: int  # the sampler's initial-noise seed
    source: str  # "benchmark[i]" or "revisit_scene(s)" (", within_seconds=..." when the gap was restricted)
    return_frame: int | None = None  # first revisit onset among the scored frames (revisit_episodes)


def make_episodes(n: int, seed: int = 0, scenes: Sequence[int] | None = None) -> list[Episode]:
    """``n`` episodes, unchecked: the benchmark scenes (all of them in order, or the indices ``scenes``),
    then ``revisit_scene(seed + i)`` for the rest. Episode i's noise seed is ``seed + i``."""
    from fademem.embedded.world import BENCHMARK_SCENES, revisit_scene

    _check_n(n)
    order = _order(scenes)
    out = []
    for i in range(n):
        if i < len(order):
            prompt, wseed = BENCHMARK_SCENES[order[i]]
            out.append(Episode(i, prompt, int(wseed), seed + i, f"benchmark[{order[i]}]"))
        else:
            s = seed + i
            out.append(Episode(i, revisit_scene(s).to_prompt(), s, s, f"revisit_scene({s})"))
    return out


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {n!r}")


def _order(scenes: Sequence[int] | None) -> list[int]:
    from fademem.embedded.world import BENCHMARK_SCENES

    order = list(range(len(BENCHMARK_SCENES))) if scenes is None else [int(s) for s in scenes]
    for s in order:
        if not 0 <= s < len(BENCHMARK_SCENES):
            raise ValueError(f"scene index {s} is not in 0..{len(BENCHMARK_SCENES) - 1} (BENCHMARK_SCENES)")
    return order


def first_return(lags, opening: int) -> int | None:
    """The first revisit onset at or after frame ``opening`` (None: nothing comes back in the video)."""
    from fademem.embedded.world.revisit import revisit_onsets

    on = revisit_onsets(lags, start=opening)
    return on[0] if on else None


def revisit_episodes(n: int, seed: int, scenes: Sequence[int] | None, num_frames: int, opening: int,
                     fps: float = 8, size: int = 64) -> tuple[list[Episode], list[np.ndarray], list[dict]]:
    """(episodes, lags [T] per episode, skipped benchmark scenes [{scene, prompt, reason}]): ``n``
    episodes whose content comes back among the generated frames (frames ``opening`` .. ``num_frames-1``).
    Episode i's noise seed is ``seed + i``; a random scene of episode i has world seed ``seed + i``."""
    from fademem.embedded.world import BENCHMARK_SCENES, last_seen, revisit_scene

    _check_n(n)
    order = _order(scenes)
    episodes: list[Episode] = []
    lags: list[np.ndarray] = []
    skipped: list[dict] = []

    def lag_of(prompt: str, wseed: int) -> np.ndarray:
        return np.asarray(last_seen(prompt, wseed, num_frames, size, fps, mode="revisit"))

    for k in order:
        if len(episodes) == n:
            break
        prompt, wseed = BENCHMARK_SCENES[k]
        lg = lag_of(prompt, int(wseed))
        ret = first_return(lg, opening)
        if ret is None:
            reason = (f"no revisit onset between frame {opening} (end of the true opening) and the end of the "
                      f"video (frame {num_frames - 1}, {num_frames / fps:g} s)")
            if scenes is not None:
                raise ValueError(f"benchmark scene {k} ({prompt!r}): {reason}; choose other --scenes or a longer "
                                 "--seconds")
            skipped.append({"scene": k, "prompt": prompt, "reason": reason})
            continue
        i = len(episodes)
        episodes.append(Episode(i, prompt, int(wseed), seed + i, f"benchmark[{k}]", ret))
        lags.append(lg)
    while len(episodes) < n:
        i = len(episodes)
        s = seed + i
        spec = revisit_scene(s, within_seconds=num_frames / fps)
        source = f"revisit_scene({s})" if spec == revisit_scene(s) else \
            f"revisit_scene({s}, within_seconds={num_frames / fps:g})"
        lg = lag_of(spec.to_prompt(), s)
        ret = first_return(lg, opening)
        if ret is None:  # the construction guarantees a return home within the video: a broken world otherwise
            raise AssertionError(f"{source}: {spec.to_prompt()!r} has no revisit onset in frames "
                                 f"{opening}..{num_frames - 1}")
        episodes.append(Episode(i, spec.to_prompt(), s, s, source, ret))
        lags.append(lg)
    assert all(ep.return_frame is not None and opening <= ep.return_frame < num_frames for ep in episodes)
    return episodes, lags, skipped
