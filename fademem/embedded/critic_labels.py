"""Labels of the world critic (``fademem.embedded.critic``): what a clip of a true render shows.
which prompt attributes it shows. A fidelity benchmark calls it on windows of generated video.

Clip: ``frames`` frames sampled every ``stride`` native frames (default 16 frames at stride 2: a
window of ``span`` = 31 native frames, 3.9 s at 8 fps), 64x64.

Attributes. Scene attributes are read with a *scene query*; object attributes with an *object query*
that names the object by its colour (the prompt's "first object" has no visual mark that tells it
from the others, so the critic is asked about "the <colour> object"):

* scene:  ``texture`` (TEXTURES), ``background`` (COLOURS), ``camera`` (static / return / sweep /
  loop, the grammar's CAMERAS keys), ``camera_motion`` (what the camera does *in the window*:
  still / left / right / changes -- stops, starts or turns), ``colours`` (multi-label: which object
  colours are clearly in view);
* object: ``shape`` (SHAPES), ``size`` (SIZES), ``motion`` (still / drift / bounce / orbit /
  leave, the grammar's MOTIONS keys), ``direction`` (left / right / up / down, drifting objects).
  The object's colour is scored as ``colour``: P(the object's colour is in view) > 0.5.

Observability (how training labels and accuracy treat attributes a clip cannot show). Every
label is computed from the world's render layers (``World.layers_at``) and its trajectories; an
attribute that the clip does not determine is *masked*: left out of the loss and of accuracy
(accuracy is over observable clips; ``critic_accuracy`` in ``fademem.embedded.critic_train`` also
reports the observable share).

* an object is *seen* when, in some sampled frame, it is the top layer on >= 60% of the pixels it
  covers unoccluded; *glimpsed* when on any pixel. shape / size / colour need it seen. Object labels
  are masked when another object has the same colour (the query would be ambiguous).
* motion needs the object top layer on >= 30% of its area in >= 3 sampled frames; 'leave' is
  masked while the object holds still at its anchor (it looks standing still); object motion is
  masked when the camera moves in the window over a 'plain' or 'gradient' background (no
  parallax cue to tell object motion from camera motion). direction: drifting objects only, same
  rule as motion.
* ``colours``: colour c is 1 if a seen object has it, 0 if no object of that colour is glimpsed,
  masked otherwise (only partly visible).
* texture / background need >= 30% background pixels in some sampled frame.
* camera / camera_motion need the background visible and a textured background (not plain or
  gradient). ``camera`` is masked unless the window's camera displacements (sampled frames, whole
  pixels) could come from no camera of another kind at any start time: e.g. a still window is
  also the hold or the away phase of 'pans and returns', a steady pan also part of a sweep or a
  loop. So 'static' is never scored at this window length (use ``camera_motion``: a static
  camera must show 'still' throughout), and 'loop' only when no sweep could explain it.

The prompt alone fixes texture, background, camera and the objects' shape/size/colour/motion/
direction; ``camera_motion`` and observability need the time (window start) and, for objects, the
world's seed: ``score_clips(..., starts=, seeds=)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from fademem.embedded.world.grammar import (
    CAMERAS,
    COLOURS,
    LEAVES,
    MOTIONS,
    SECONDS,
    SHAPES,
    SIZES,
    TEXTURES,
    CameraSpec,
    SceneSpec,
    parse_prompt,
)
from fademem.embedded.world.render import World
from fademem.embedded.world.scene import PACE_SPEED, RADIUS, WORLD_WIDTH, return_cycle
from fademem.embedded.world.textures import SDF


@dataclass
class CriticConfig:
    frame_size: int = 64
    frames: int = 16  # sampled frames per clip
    stride: int = 2  # native frames between sampled frames
    fps: int = 8
    channels: tuple[int, ...] = (32, 64, 96)  # per-frame backbone, at size/2, /4, /8
    temporal_blocks: int = 3  # (2+1)D residual blocks on [dim, frames, size/8, size/8]
    groups: int = 8

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if len(self.channels) != 3 or self.frame_size % 8:
            raise ValueError("channels needs 3 entries and frame_size a multiple of 8")

    @property
    def span(self) -> int:
        """Native frames covered by one clip."""
        return (self.frames - 1) * self.stride + 1


CAMERA_MOTIONS = ("still", "left", "right", "changes")
DIRECTIONS = LEAVES["dir"]
SCENE_HEADS = {"texture": TEXTURES, "background": COLOURS, "camera": tuple(CAMERAS), "camera_motion": CAMERA_MOTIONS}
OBJECT_HEADS = {"shape": SHAPES, "size": SIZES, "motion": tuple(MOTIONS), "direction": DIRECTIONS}
ATTRIBUTES = ("colour", *OBJECT_HEADS, *SCENE_HEADS)  # what score_clips / critic_accuracy report
NO_PARALLAX = ("plain", "gradient")
SCENE_QUERY = len(COLOURS)  # query index of the scene query; objects are queried by colour index


def prompt_labels(scene: SceneSpec | str, obj: int = 0) -> dict[str, int]:
    """Class indices the prompt alone fixes: scene attributes and object `obj`'s (direction -1 unless drifting)."""
    spec = scene if isinstance(scene, SceneSpec) else parse_prompt(scene)
    o = spec.objects[obj]
    return {"colour": COLOURS.index(o.colour), "shape": SHAPES.index(o.shape), "size": SIZES.index(o.size),
            "motion": list(MOTIONS).index(o.motion),
            "direction": DIRECTIONS.index(o.direction) if o.motion == "drift" else -1,
            "texture": TEXTURES.index(spec.texture), "background": COLOURS.index(spec.colour),
            "camera": list(CAMERAS).index(spec.camera.move)}


@functools.cache
def _shape_area(shape: str, size: str, frame_size: int) -> float:
    """Pixels an unoccluded object covers (alpha > 0.5), averaged over sub-pixel placements."""
    r = RADIUS[size]
    g = (np.arange(-math.ceil(1.2 * r * frame_size), math.ceil(1.2 * r * frame_size) + 1) + 0.5) / frame_size
    total = 0.0
    for ox in (0.0, 0.25, 0.5):
        for oy in (0.0, 0.5):
            d = SDF[shape]((g[None] - ox / frame_size) / r, (g[:, None] - oy / frame_size) / r) * (r * frame_size)
            total += float((np.clip(0.5 - d, 0, 1) > 0.5).sum())
    return total / 6


def _all_cameras() -> list[CameraSpec]:
    cams = [CameraSpec("static")]
    cams += [CameraSpec("return", d, s) for d in LEAVES["hdir"] for s in SECONDS]
    cams += [CameraSpec("sweep", pace=p) for p in LEAVES["pace"]]
    cams += [CameraSpec("loop", d, pace=p) for d in LEAVES["hdir"] for p in LEAVES["pace"]]
    return cams


def _camera_px(cam: CameraSpec, t: int, size: int, fps: float) -> int:
    from fademem.embedded.world.scene import camera_x

    return math.floor(camera_x(cam, t / fps) * size + 0.5) % (WORLD_WIDTH * size)


def _displacements(px: list[int], size: int) -> tuple[int, ...]:
    w = WORLD_WIDTH * size
    return tuple(int((b - a + w // 2) % w - w // 2) for a, b in zip(px[:-1], px[1:]))


@functools.lru_cache(maxsize=8)
def camera_table(frames: int, stride: int, size: int = 64, fps: float = 8) -> dict[tuple, frozenset]:
    """Displacement sequence of a window (sampled frames, whole pixels) -> camera kinds that produce it
    at some start frame. A window's kind is identifiable iff its entry has one kind."""
    table: dict[tuple, set] = {}
    for cam in _all_cameras():
        if cam.move == "static":
            period = 1
        elif cam.move == "return":
            period = math.ceil(return_cycle(cam) * fps)
        elif cam.move == "sweep":
            period = math.ceil(2 * (WORLD_WIDTH - 1) / PACE_SPEED[cam.pace] * fps)
        else:
            period = math.ceil(WORLD_WIDTH / PACE_SPEED[cam.pace] * fps)
        for start in range(period):
            px = [_camera_px(cam, start + i * stride, size, fps) for i in range(frames)]
            table.setdefault(_displacements(px, size), set()).add(cam.move)
    return {k: frozenset(v) for k, v in table.items()}


def camera_motion_class(disp: tuple[int, ...]) -> int:
    """still / left / right / changes from a window's camera displacements."""
    d = np.asarray(disp)
    if (d == 0).all():
        return 0
    if (d < 0).all():
        return 1
    if (d > 0).all():
        return 2
    return 3


def camera_labels(scene: SceneSpec | str, start: int, cfg: CriticConfig) -> dict[str, int]:
    """camera and camera_motion labels of a window (-1 = masked), ignoring background visibility."""
    spec = scene if isinstance(scene, SceneSpec) else parse_prompt(scene)
    px = [_camera_px(spec.camera, start + i * cfg.stride, cfg.frame_size, cfg.fps) for i in range(cfg.frames)]
    disp = _displacements(px, cfg.frame_size)
    textured = spec.texture not in NO_PARALLAX
    kinds = camera_table(cfg.frames, cfg.stride, cfg.frame_size, cfg.fps).get(disp, frozenset())
    ok = textured and kinds == {spec.camera.move}
    return {"camera": list(CAMERAS).index(spec.camera.move) if ok else -1,
            "camera_motion": camera_motion_class(disp) if textured else -1, "_moving": any(disp)}


def clip_labels(world: World, start: int, cfg: CriticConfig, obj: int | None = 0,
                frames_out: np.ndarray | None = None) -> dict:
    """Labels of the clip of `world` starting at native frame `start` (see the module doc).

    Returns {"colours": int8 [10] (1 / 0 / -1 masked), "query": colour index of object `obj`, and
    for each attribute in ATTRIBUTES its class index or -1 when not observable}. With obj=None the
    object attributes are all -1 and query is SCENE_QUERY. If `frames_out` ([frames, H, W, 3]) is
    given, the sampled frames are written into it (the labels come from the same render).
    """
    spec, S = world.spec, cfg.frame_size
    n_obj = len(spec.objects)
    vis = np.zeros((n_obj, cfg.frames), np.int64)
    bg_share = np.zeros(cfg.frames)
    for i in range(cfg.frames):
        frame, top, _ = world.layers_at(start + i * cfg.stride)
        if frames_out is not None:
            frames_out[i] = frame
        counts = np.bincount(top.ravel().astype(np.int64) + 1, minlength=n_obj + 2)
        bg_share[i] = counts[0] / top.size
        vis[:, i] = counts[1:n_obj + 1]
    area = np.array([_shape_area(o.shape, o.size, S) for o in spec.objects])
    seen = (vis >= 0.6 * area[:, None]).any(1)
    glimpsed = (vis > 0).any(1)
    colours = np.zeros(len(COLOURS), np.int8)
    for k, o in enumerate(spec.objects):
        c = COLOURS.index(o.colour)
        if seen[k]:
            colours[c] = 1
        elif glimpsed[k] and colours[c] == 0:
            colours[c] = -1
    lab = {"colours": colours}
    cam = camera_labels(spec, start, cfg)
    bg_ok = bg_share.max() >= 0.3
    pl = prompt_labels(spec, 0)
    lab["texture"] = pl["texture"] if bg_ok else -1
    lab["background"] = pl["background"] if bg_ok else -1
    lab["camera"] = cam["camera"] if bg_ok else -1
    lab["camera_motion"] = cam["camera_motion"] if bg_ok else -1
    for name in ("colour", *OBJECT_HEADS):
        lab[name] = -1
    lab["query"] = SCENE_QUERY
    if obj is None:
        return lab
    o = spec.objects[obj]
    lab["query"] = COLOURS.index(o.colour)
    if sum(p.colour == o.colour for p in spec.objects) > 1:
        return lab
    pl = prompt_labels(spec, obj)
    if seen[obj]:
        for name in ("colour", "shape", "size"):
            lab[name] = pl[name]
    moving_ok = (vis[obj] >= 0.3 * area[obj]).sum() >= 3
    if cam["_moving"] and spec.texture in NO_PARALLAX:
        moving_ok = False
    if moving_ok and o.motion == "leave":  # holding at its anchor looks like standing still
        track = world.layout.objects[obj]
        ys = [track.position((start + i * cfg.stride) / world.fps)[1] for i in range(cfg.frames)
              if vis[obj, i] >= 0.3 * area[obj]]
        moving_ok = max(ys) - min(ys) > 0.03
    if moving_ok:
        lab["motion"] = pl["motion"]
        lab["direction"] = pl["direction"]
    return lab
