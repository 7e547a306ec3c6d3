"""Seeded layout and trajectories of a scene: where the camera, objects and occluder are at time t.

Units: the viewport is 1 x 1; the world is a horizontal cylinder WORLD_WIDTH viewports wide and
one viewport high (y grows downwards, image convention). Time is in seconds, so trajectories do
not depend on fps. The prompt fixes *what* moves and *how*; the seed picks anchors, speeds within
a range, and phases. The camera's trajectory depends on the prompt only, so planted revisit gaps
are exactly what the prompt says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fademem.embedded.world.grammar import CameraSpec, OccluderSpec, SceneSpec

WORLD_WIDTH = 4  # viewports; content leaves the frame and comes back
HOME_HOLD = 2.0  # s at home before each 'pans ... and returns' excursion
RETURN_SPEED = 0.5  # viewports/s for 'pans ... and returns'; one viewport away takes 2 s
PACE_SPEED = {"slowly": 0.25, "steadily": 0.5, "quickly": 1.0}  # viewports/s
RADIUS = {"small": 0.08, "medium": 0.12, "large": 0.17}  # viewports
LEAVE_SPEED = 0.5  # viewports/s, objects that leave upwards and return
# occluders live in screen space: (width, speed, period) in viewports, viewports/s, s
OCCLUDER_MOTION = {"curtain": (1.5, 0.75, 12.0), "wall": (0.2, 0.4, 6.0)}


def camera_x(cam: CameraSpec, t: float) -> float:
    """World x of the viewport's left edge at time t (s), in [0, WORLD_WIDTH).

    'pans <d> and returns after N seconds': hold HOME_HOLD s at 0, pan one viewport away at
    RETURN_SPEED (2 s), stay N - 2 s, pan back (2 s), repeat. The home view's centre column is
    then out of view for exactly N s per cycle (it leaves 1 s into the pan, returns 1 s before
    home); columns left/right of centre are away up to 2 s longer/shorter.
    """
    if cam.move == "static":
        return 0.0
    sign = -1.0 if cam.direction == "left" else 1.0
    if cam.move == "loop":
        return (sign * PACE_SPEED[cam.pace] * t) % WORLD_WIDTH
    if cam.move == "sweep":  # 0 -> WORLD_WIDTH-1 -> 0, triangle wave
        span, v = WORLD_WIDTH - 1, PACE_SPEED[cam.pace]
        u = (t * v) % (2 * span)
        return u if u <= span else 2 * span - u
    travel = 1.0 / RETURN_SPEED
    away = cam.seconds - travel
    tau = t % return_cycle(cam)
    if tau < HOME_HOLD:
        x = 0.0
    elif tau < HOME_HOLD + travel:
        x = (tau - HOME_HOLD) * RETURN_SPEED
    elif tau < HOME_HOLD + travel + away:
        x = 1.0
    else:
        x = 1.0 - (tau - HOME_HOLD - travel - away) * RETURN_SPEED
    return (sign * x) % WORLD_WIDTH


def return_cycle(cam: CameraSpec) -> float:
    """Period (s) of a 'pans ... and returns' camera: hold, pan out, stay away, pan back."""
    return HOME_HOLD + 2.0 / RETURN_SPEED + (cam.seconds - 1.0 / RETURN_SPEED)


def _reflect(u: float, lo: float, hi: float) -> float:
    """Triangle wave: u folded into [lo, hi] as if bouncing off both ends."""
    span = hi - lo
    w = (u - lo) % (2 * span)
    return lo + (w if w <= span else 2 * span - w)


@dataclass
class ObjectTrack:
    """One object's seeded trajectory; `position(t)` -> world (x, y) of its centre."""

    motion: str
    radius: float
    x0: float
    y0: float
    velocity: tuple[float, float] = (0.0, 0.0)  # drift / bounce, viewports/s
    orbit: tuple[float, float, float] = (0.0, 0.0, 0.0)  # radius, angular speed (rad/s), phase
    hold: float = 0.0  # leave: s at the anchor before leaving
    seconds: float = 0.0  # leave: s fully out of view

    def position(self, t: float) -> tuple[float, float]:
        if self.motion == "drift":
            x, y = self.x0 + self.velocity[0] * t, self.y0 + self.velocity[1] * t
            if self.velocity[1]:  # vertical drift wraps through a band twice the viewport's height
                y = (y + 0.5) % 2.0 - 0.5
            return x, y
        if self.motion == "bounce":
            r, half = self.radius, 0.4  # box: 0.8 viewport wide around the anchor, full height
            return (_reflect(self.x0 + self.velocity[0] * t, self.x0 - half + r, self.x0 + half - r),
                    _reflect(self.y0 + self.velocity[1] * t, r, 1.0 - r))
        if self.motion == "orbit":
            rad, omega, phase = self.orbit
            return self.x0 + rad * math.cos(omega * t + phase), self.y0 + rad * math.sin(omega * t + phase)
        if self.motion == "leave":
            # rise until just out of view (y = -r), keep rising for seconds/2, come back symmetrically
            rise = (self.y0 + self.radius) / LEAVE_SPEED
            moving = 2 * rise + self.seconds
            k = t % (self.hold + moving) - self.hold
            return self.x0, self.y0 - LEAVE_SPEED * max(0.0, min(k, moving - k))
        return self.x0, self.y0


@dataclass
class OccluderTrack:
    """Screen-space vertical band; `left(t)` -> its left edge in viewport units (may be off screen)."""

    kind: str
    direction: float  # +1 moves right, -1 left
    phase: float

    @property
    def width(self) -> float:
        return OCCLUDER_MOTION[self.kind][0]

    def left(self, t: float) -> float:
        width, speed, period = OCCLUDER_MOTION[self.kind]
        travelled = ((t + self.phase) % period) * speed
        return -width + travelled if self.direction > 0 else 1.0 - travelled


def _object_track(rng: np.random.Generator, o, placed: list) -> ObjectTrack:
    r = RADIUS[o.size]
    for _ in range(30):  # anchors inside the home view, avoiding earlier objects where possible
        x0, y0 = rng.uniform(0.15, 0.85), rng.uniform(0.25, 0.75)
        if all(math.hypot(x0 - x, y0 - y) > r + rr + 0.04 for x, y, rr in placed):
            break
    placed.append((x0, y0, r))
    track = ObjectTrack(o.motion, r, x0, y0)
    if o.motion == "drift":
        s = rng.uniform(0.1, 0.25)
        track.velocity = {"left": (-s, 0.0), "right": (s, 0.0), "up": (0.0, -s), "down": (0.0, s)}[o.direction]
    elif o.motion == "bounce":
        track.velocity = tuple(rng.choice([-1, 1], 2) * rng.uniform(0.12, 0.3, 2))
    elif o.motion == "orbit":
        period = rng.uniform(3.0, 7.0)
        track.orbit = (rng.uniform(0.1, 0.2), float(rng.choice([-1, 1])) * 2 * math.pi / period,
                       rng.uniform(0, 2 * math.pi))
    elif o.motion == "leave":
        track.hold, track.seconds = rng.uniform(1.0, 3.0), float(o.seconds)
    return track


@dataclass
class Layout:
    """Everything time-dependent about a (spec, seed): camera, object tracks, occluder."""

    spec: SceneSpec
    objects: list[ObjectTrack]
    occluder: OccluderTrack | None

    @classmethod
    def build(cls, spec: SceneSpec, seed: int) -> Layout:
        rng = np.random.default_rng([int(seed), 0x5CE7E])  # own stream: texture changes don't move objects
        placed: list = []
        objects = [_object_track(rng, o, placed) for o in spec.objects]
        occ = None
        if spec.occluder is not None:
            occ = _occluder_track(rng, spec.occluder)
        return cls(spec, objects, occ)

    def camera_x(self, t: float) -> float:
        return camera_x(self.spec.camera, t)


def _occluder_track(rng: np.random.Generator, occ: OccluderSpec) -> OccluderTrack:
    period = OCCLUDER_MOTION[occ.kind][2]
    return OccluderTrack(occ.kind, float(rng.choice([-1, 1])), rng.uniform(0, period))
