"""Renderer of the procedural world: frames are a pure function of (prompt, seed, size, fps, t).

`World` precomputes the seeded background once; each frame is then a column slice of it (the
camera moves in whole pixels, so a revisited view is bit-identical to the first visit) with the
objects and the occluder composited on top with anti-aliased edges.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from fademem.embedded.world.grammar import SceneSpec, parse_prompt
from fademem.embedded.world.scene import WORLD_WIDTH, Layout
from fademem.embedded.world.textures import RGB, SDF, make_texture

Scene = SceneSpec | str


def as_spec(scene: Scene) -> SceneSpec:
    return scene if isinstance(scene, SceneSpec) else parse_prompt(scene)


class World:
    """A rendered scene. `frame_at(t)` for random access, `iter_frames` for streaming."""

    def __init__(self, scene: Scene, seed: int, size: int = 64, fps: float = 8):
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.spec, self.seed, self.size, self.fps = as_spec(scene), int(seed), int(size), float(fps)
        self.layout = Layout.build(self.spec, self.seed)
        self.texture = make_texture(self.spec.texture, self.spec.colour, self.seed, self.size)
        self.world_px = WORLD_WIDTH * self.size
        self._centres = (np.arange(self.size) + 0.5) / self.size  # pixel centres, viewport units
        self._cols = np.arange(self.size)

    @property
    def num_entities(self) -> int:
        """Objects 0..n-1, then the occluder (index n) if any; background is -1 in `layers_at`."""
        return len(self.layout.objects) + (self.layout.occluder is not None)

    def camera_px(self, t: int) -> int:
        """World column (pixels) of the frame's left edge; whole pixels, so revisits are exact."""
        return math.floor(self.layout.camera_x(t / self.fps) * self.size + 0.5) % self.world_px

    def layers_at(self, t: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(frame [H, W, 3] float32, top [H, W] int8, camera_px): `top` is the entity visible at each
        pixel (-1 background, k object k, n occluder), counting a pixel once coverage exceeds 0.5."""
        S, ts = self.size, t / self.fps
        cam = self.camera_px(t)
        frame = self.texture[:, (cam + self._cols) % self.world_px]
        top = np.full((S, S), -1, np.int8)
        cam_x = cam / S
        for k, (track, o) in enumerate(zip(self.layout.objects, self.spec.objects)):
            x, y = track.position(ts)
            sx = (x - cam_x - 0.5 + WORLD_WIDTH / 2) % WORLD_WIDTH - WORLD_WIDTH / 2 + 0.5  # nearest copy
            r = track.radius
            ext = r * 1.05 + 2.0 / S
            if sx + ext < 0 or sx - ext > 1 or y + ext < 0 or y - ext > 1:
                continue
            x0, x1 = max(0, int((sx - ext) * S)), min(S, math.ceil((sx + ext) * S) + 1)
            y0, y1 = max(0, int((y - ext) * S)), min(S, math.ceil((y + ext) * S) + 1)
            d = SDF[o.shape]((self._centres[None, x0:x1] - sx) / r, (self._centres[y0:y1, None] - y) / r) * (r * S)
            alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]  # d in pixels: 1-px anti-aliased edge
            # 1-px dark rim
            colour = np.asarray(RGB[o.colour], np.float32) * (1 - 0.35 * np.clip(d + 1.5, 0, 1))[..., None]
            win = frame[y0:y1, x0:x1]
            win += alpha * (colour - win)
            top[y0:y1, x0:x1][alpha[..., 0] > 0.5] = k
        occ = self.layout.occluder
        if occ is not None:
            left = occ.left(ts)
            rel = self._centres - left
            cover = np.clip(np.minimum(rel, occ.width - rel) * S + 0.5, 0.0, 1.0)
            if cover.any():
                if occ.kind == "curtain":  # vertical folds that travel with it
                    shade = 0.8 + 0.2 * np.cos(2 * math.pi * rel * 10 / occ.width)
                else:  # wall: darker edges
                    shade = 0.7 + 0.3 * np.clip(np.minimum(rel, occ.width - rel) * S / 3, 0, 1)
                colour = np.asarray(RGB[self.spec.occluder.colour], np.float32) * shade[:, None]
                frame += cover[:, None] * (colour - frame)
                top[:, cover > 0.5] = len(self.layout.objects)
        return np.clip(frame, 0.0, 1.0, out=frame).astype(np.float32, copy=False), top, cam

    def frame_at(self, t: int) -> np.ndarray:
        """Frame t (t >= 0, an integer frame index) as [H, W, 3] float32 in [0, 1]."""
        return self.layers_at(t)[0]

    def iter_frames(self, num_frames: int, start: int = 0) -> Iterator[np.ndarray]:
        for t in range(start, start + num_frames):
            yield self.frame_at(t)

    def render(self, num_frames: int, start: int = 0) -> np.ndarray:
        out = np.empty((num_frames, self.size, self.size, 3), np.float32)
        for i, f in enumerate(self.iter_frames(num_frames, start)):
            out[i] = f
        return out


def render(scene: Scene, seed: int, num_frames: int, size: int = 64, fps: float = 8, start: int = 0) -> np.ndarray:
    """Video [num_frames, size, size, 3] float32 in [0, 1]; bit-identical for the same arguments."""
    return World(scene, seed, size, fps).render(num_frames, start)


def iter_frames(scene: Scene, seed: int, num_frames: int, size: int = 64, fps: float = 8,
                start: int = 0) -> Iterator[np.ndarray]:
    """Stream frames start..start+num_frames-1 one at a time (constant memory for long videos)."""
    return World(scene, seed, size, fps).iter_frames(num_frames, start)


def frame_at(scene: Scene, seed: int, t: int, size: int = 64, fps: float = 8) -> np.ndarray:
    """Frame t alone (builds the world; keep a `World` for many random accesses)."""
    return World(scene, seed, size, fps).frame_at(t)
