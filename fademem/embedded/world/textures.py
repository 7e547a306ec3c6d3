"""Seeded background textures and object shapes.

Textures are computed once per (texture, colour, seed, size) over the whole cylindrical world
and tile seamlessly in x (period WORLD_WIDTH). Most carry seeded irregularity (stripe widths,
cell tints, dot and blob positions), so a location's look cannot be guessed from the prompt:
reproducing it after a revisit needs memory.
"""

from __future__ import annotations

import math

import numpy as np

from fademem.embedded.world.scene import WORLD_WIDTH

RGB = {
    "red": (0.90, 0.15, 0.15), "orange": (0.97, 0.55, 0.10), "yellow": (0.95, 0.90, 0.20),
    "green": (0.20, 0.75, 0.25), "cyan": (0.15, 0.80, 0.85), "blue": (0.20, 0.35, 0.92),
    "purple": (0.58, 0.25, 0.82), "pink": (0.97, 0.52, 0.76), "white": (0.96, 0.96, 0.96),
    "gray": (0.50, 0.50, 0.50),
}


def _pattern(texture: str, rng: np.random.Generator, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pattern in [0, 1] (0 = light tone, 1 = dark tone) on the world grid X [1, Wpx], Y [H, 1]."""
    W = WORLD_WIDTH
    if texture == "plain":
        return np.zeros(np.broadcast_shapes(X.shape, Y.shape))
    if texture == "striped":  # slanted stripes of random widths and tints
        u = (X + rng.uniform(-0.6, 0.6) * Y) % W
        widths = rng.uniform(0.04, 0.2, 80)
        edges = np.cumsum(widths[: np.searchsorted(np.cumsum(widths), W) + 1])
        edges *= W / edges[-1]
        tint = (np.arange(len(edges)) % 2) * 0.8 + rng.uniform(0, 0.2, len(edges))
        return tint[np.minimum(np.searchsorted(edges, u, side="right"), len(edges) - 1)]
    if texture == "checkered":  # square cells, each with its own tint
        n = int(rng.integers(16, 33))
        cell = W / n
        rows = max(1, round(1 / cell))
        i, j = np.floor(X / cell).astype(int) % n, np.floor(Y * rows).astype(int)
        tint = ((np.arange(rows)[:, None] + np.arange(n)) % 2) * 0.75 + rng.uniform(0, 0.25, (rows, n))
        return tint[j, i]
    if texture == "dotted":  # random dots of random sizes
        p = np.zeros(np.broadcast_shapes(X.shape, Y.shape))
        size = Y.shape[0]
        for cx, cy, r in zip(rng.uniform(0, W, 30 * W), rng.uniform(0, 1, 30 * W), rng.uniform(0.015, 0.05, 30 * W)):
            dx = (X - cx + W / 2) % W - W / 2
            np.maximum(p, np.clip(0.5 - (np.sqrt(dx**2 + (Y - cy) ** 2) - r) * size, 0, 1), out=p)
        return p
    k = np.arange(1, 9)[:, None, None]  # Fourier terms periodic in x: smooth seeded variation
    amp, phase = rng.normal(0, 1, (8, 1, 1)) / k, rng.uniform(0, 2 * math.pi, (8, 1, 1))
    wobble = (amp * np.cos(2 * math.pi * k * X / W + phase)).sum(0)
    wobble /= np.abs(wobble).max() + 1e-9
    if texture == "gradient":  # vertical gradient whose level wanders along x
        return np.clip(0.15 + 0.7 * Y + 0.3 * wobble, 0, 1)
    if texture == "wavy":  # horizontal wavy bands
        f = int(rng.integers(3, 6))
        return 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * f * (Y + 0.12 * wobble)))
    if texture == "blotchy":  # thresholded sum of random Gaussian blobs
        n = np.zeros(np.broadcast_shapes(X.shape, Y.shape))
        for cx, cy, s, a in zip(rng.uniform(0, W, 40 * W), rng.uniform(-0.1, 1.1, 40 * W),
                                rng.uniform(0.04, 0.12, 40 * W), rng.choice([-1.0, 1.0], 40 * W)):
            dx = (X - cx + W / 2) % W - W / 2
            n += a * np.exp(-(dx**2 + (Y - cy) ** 2) / (2 * s * s))
        return 1 / (1 + np.exp(-8 * (n - np.median(n)) / (n.std() + 1e-9)))
    raise ValueError(f"unknown texture {texture!r}")


def make_texture(texture: str, colour: str, seed: int, size: int) -> np.ndarray:
    """World background [size, WORLD_WIDTH * size, 3] float32, seamless in x."""
    rng = np.random.default_rng([int(seed), 0x7E87])
    X = ((np.arange(WORLD_WIDTH * size) + 0.5) / size)[None, :]
    Y = ((np.arange(size) + 0.5) / size)[:, None]
    c = np.asarray(RGB[colour])
    light, dark = 0.3 + 0.5 * c, 0.08 + 0.42 * c  # muted, so full-colour objects stand out
    p = _pattern(texture, rng, X, Y)[..., None]
    return (light * (1 - p) + dark * p).astype(np.float32)


# Signed distance (approx.) to each shape's outline, in units of the object's radius; y grows down.
def _sd_triangle(u, v):
    return np.maximum(0.866 * np.abs(u) - 0.5 * v, v) - 0.5


def _sd_star(u, v):
    r, theta = np.sqrt(u * u + v * v), np.arctan2(u, -v)  # theta = 0 points up
    return 0.6 * (r - (0.45 + 0.55 * (0.5 + 0.5 * np.cos(5 * theta)) ** 2))


SDF = {
    "circle": lambda u, v: np.sqrt(u * u + v * v) - 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.85,
    "triangle": _sd_triangle,
    "ring": lambda u, v: np.abs(np.sqrt(u * u + v * v) - 0.72) - 0.28,
    "cross": lambda u, v: np.minimum(np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.3),
                                     np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95)),
    "diamond": lambda u, v: (np.abs(u) + np.abs(v) - 1.0) * 0.7071,
    "star": _sd_star,
}
