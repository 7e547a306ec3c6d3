"""Ground truth for memory: when was the content now on screen last seen, and benchmark scenes.

Content identities: a background location is a world pixel (row, world column) of the
cylindrical world; an object or the occluder is one identity as a whole (visible at frame t when
it is the top layer, coverage > 0.5, at one pixel or more). A background location is visible when
it is in the viewport and no object or occluder covers it.

For a pixel p at frame t showing content c, with `prev` = the last frame before t at which c was
visible:

* mode="since":   t - prev; 1 for content also visible at t-1; 0 if c was never visible before.
* mode="revisit": the gap bridged when c's current uninterrupted run of visibility began: if the
  run started at s (c visible at s..t, not at s-1), the value is s - prev(s), the number of frames
  between c's previous sighting and its reappearance; 0 if c had never been seen before s (new
  content, or content visible since frame 0). It stays constant through the run, so every frame
  whose content came back from a gap of g frames is labelled g: the memory reach that content
  needed (after its reappearance the model can copy it from recent frames, so nothing longer).

The per-frame scalar is the lower median over the frame's pixels (reduce="median"): robust to
small objects and thin strips, and equal to the planted gap once most of the view has come back.
Small things returning (an object that left and came back) barely move the median: use
reduce="max", or better the per-pixel map as a mask, to score those.
"""

from __future__ import annotations

import math

import numpy as np

from fademem.embedded.world.grammar import (
    COLOURS,
    SECONDS,
    SHAPES,
    SIZES,
    TEXTURES,
    CameraSpec,
    ObjectSpec,
    SceneSpec,
    _rng,
)
from fademem.embedded.world.render import Scene, World, as_spec
from fademem.embedded.world.scene import return_cycle

MODES = ("revisit", "since")


def _step(last: np.ndarray, run: np.ndarray, vis: np.ndarray, t: int, mode: str):
    """Advance (last-visible frame, gap at run start) by one frame; return (value, last, run)."""
    since = np.where(last >= 0, t - last, 0)
    run = np.where(vis & (last != t - 1), since, run)
    last = np.where(vis, t, last)
    return (since if mode == "since" else run), last, run


class SeenTracker:
    """What of one world has been on screen, and since when: ``step(u, t)`` shows the world's frame ``u`` at
    timeline frame ``t`` (``u == t`` for a plain video; a timeline that cuts between worlds keeps one
    tracker per world) and returns that frame's per-pixel lag [H, W] (see the module doc)."""

    def __init__(self, world: World, mode: str = "revisit"):
        self.world, self.mode, n = world, mode, world.num_entities
        self.last_bg = np.full((world.size, world.world_px), -1, np.int64)
        self.run_bg = np.zeros_like(self.last_bg)
        self.last_ent, self.run_ent = np.full(n, -1, np.int64), np.zeros(n, np.int64)

    def step(self, u: int, t: int) -> np.ndarray:
        w = self.world
        _, top, cam = w.layers_at(u)
        cols = (cam + np.arange(w.size)) % w.world_px
        value_bg, self.last_bg[:, cols], self.run_bg[:, cols] = _step(self.last_bg[:, cols], self.run_bg[:, cols],
                                                                      top == -1, t, self.mode)
        ent_vis = np.array([(top == k).any() for k in range(w.num_entities)], bool)
        value_ent, self.last_ent, self.run_ent = _step(self.last_ent, self.run_ent, ent_vis, t, self.mode)
        return np.where(top == -1, value_bg, np.append(value_ent, 0)[top])  # top=-1 picks the pad


def last_seen(scene: Scene, seed: int, num_frames: int, size: int = 64, fps: float = 8,
              per_pixel: bool = False, mode: str = "revisit", reduce: str = "median"):
    """Per-frame lag [T] int64 (lower median, or max, over pixels of the per-pixel lag; see module doc).

    With per_pixel=True returns (per_frame [T], per_pixel [T, H, W] int32). Frames are rendered on
    the way (about as fast as `render`), never held all at once.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if reduce not in ("median", "max"):
        raise ValueError(f"reduce must be 'median' or 'max', got {reduce!r}")
    world = World(scene, seed, size, fps)
    S = world.size
    seen = SeenTracker(world, mode)
    per_frame = np.empty(num_frames, np.int64)
    maps = np.empty((num_frames, S, S), np.int32) if per_pixel else None
    mid = (S * S - 1) // 2
    for t in range(num_frames):
        value = seen.step(t, t)
        per_frame[t] = np.partition(value.ravel(), mid)[mid] if reduce == "median" else value.max()
        if per_pixel:
            maps[t] = value
    return (per_frame, maps) if per_pixel else per_frame


def home_return_frames(scene: Scene, num_frames: int, fps: float = 8) -> list[int]:
    """Frames at which a 'pans ... and returns' camera is back home (view identical to frame 0's
    background) for the k-th time, k = 1, 2, ...; [] for other cameras."""
    cam = as_spec(scene).camera
    if cam.move != "return":
        return []
    cycle = return_cycle(cam)
    return [math.ceil(k * cycle * fps - 1e-9) for k in range(1, int(num_frames / (cycle * fps)) + 1)
            if math.ceil(k * cycle * fps - 1e-9) < num_frames]


def revisit_onsets(lags, start: int = 0) -> list[int]:
    """Frames t >= ``start`` at which content comes back: the per-frame revisit lag (``last_seen``,
    mode="revisit") is positive and differs from frame t-1's. A camera panning back gives a short ramp
    of onsets (columns return one after another) ending where the view is home."""
    lg = np.asarray(lags).ravel()
    return [t for t in range(max(int(start), 0), lg.size) if lg[t] > 0 and (t == 0 or lg[t] != lg[t - 1])]


def revisit_aligned(lags, window: int, start: int = 0) -> np.ndarray:
    """[T] bool: the frames within ``window`` frames of a revisit onset at or after ``start``
    (t with onset <= t < onset + window) whose lag is positive: the frames on which only memory can
    reproduce the returning content (later ones can copy it from recent frames)."""
    lg = np.asarray(lags).ravel()
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    mask = np.zeros(lg.size, bool)
    for t in revisit_onsets(lg, start):
        mask[t:t + window] = True
    return mask & (lg > 0)


def revisit_scene(seed: int, gap_seconds: int | None = None, direction: str | None = None,
                  within_seconds: float | None = None) -> SceneSpec:
    """A random scene whose camera pans away and returns after `gap_seconds` (random from SECONDS if
    None): 1-2 objects that stay near home (still, orbiting or bouncing) over a textured background,
    so the returning view can only be reproduced from memory of the first visit. With
    ``within_seconds`` the random gap is drawn from the gaps whose first return home
    (``return_cycle``: gap + 4 s) comes within that many seconds (ValueError if none does)."""
    rng = _rng(seed)
    bg = str(rng.choice(COLOURS))
    others = [c for c in COLOURS if c != bg]
    objects = tuple(ObjectSpec(str(rng.choice(SIZES)), str(rng.choice(others)), str(rng.choice(SHAPES)),
                               str(rng.choice(["still", "orbit", "bounce"])))
                    for _ in range(int(rng.integers(1, 3))))
    gaps = SECONDS
    if within_seconds is not None and gap_seconds is None:
        gaps = tuple(g for g in SECONDS if return_cycle(CameraSpec("return", "left", g)) <= within_seconds)
        if not gaps:
            raise ValueError(f"no revisit gap returns within {within_seconds:g} s (the shortest returns after "
                             f"{return_cycle(CameraSpec('return', 'left', min(SECONDS))):g} s)")
    gap = int(gap_seconds if gap_seconds is not None else rng.choice(gaps))
    direction = direction or str(rng.choice(["left", "right"]))
    texture = str(rng.choice([t for t in TEXTURES if t != "plain"]))
    return SceneSpec(objects, texture, bg, CameraSpec("return", direction, gap))


# Curated (prompt, seed) pairs: every revisit mechanism, gaps from 2 s to 64 s at any fps.
BENCHMARK_SCENES: list[tuple[str, int]] = [
    ("a large red circle standing still over a dotted green background, "
     "camera pans right and returns after 2 seconds", 0),
    ("a medium blue square orbiting over a striped yellow background, camera pans left and returns after 4 seconds", 1),
    ("a small white star bouncing and a large pink ring standing still over a blotchy blue background, "
     "camera pans right and returns after 8 seconds", 2),
    ("a large orange diamond standing still over a checkered cyan background, "
     "camera pans left and returns after 16 seconds", 3),
    ("a medium yellow triangle orbiting and a small red cross standing still over a wavy purple background, "
     "camera pans right and returns after 32 seconds", 4),
    ("a large cyan cross standing still over a dotted orange background, "
     "camera pans left and returns after 64 seconds", 5),
    ("a large green star leaving and returning after 8 seconds over a striped gray background, camera is static", 6),
    ("a medium purple circle leaving and returning after 32 seconds and a small yellow square standing still "
     "over a blotchy white background, camera is static", 7),
    ("a large blue ring standing still over a checkered pink background, "
     "camera is static, a wide yellow curtain passes", 8),
    ("a medium red square drifting right over a dotted cyan background, camera is static", 9),
    ("a large white triangle standing still over a blotchy green background, camera steadily keeps panning right", 10),
    ("a small orange circle orbiting over a wavy blue background, camera slowly keeps panning left", 11),
    ("a large pink diamond bouncing over a striped purple background, camera steadily sweeps back and forth", 12),
]
