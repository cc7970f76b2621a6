"""Dead-leaves pictures: overlapping opaque discs with power-law radii, an endless supply of photo-like images.

The dead-leaves model (Matheron; Lee, Mumford & Huang 2001) stacks discs whose radii follow r^-3, which gives
the scale-invariant statistics of natural photos: edges at every scale, flat regions, occlusions. dv's camera-pans
set adds them to its training split (`--synthetic-photos`) so that a model which keeps the reference image must
learn to copy and move any picture, not recall the twelve photos it was trained on. A faint 1/f texture on top
gives the flat regions the fine detail that gravel or the moon's surface have.
"""

from __future__ import annotations

import random

import numpy as np

SIZE = 160
"""Side of a dead-leaves picture in pixels (the renderer scales it to its window, as it does a photo)."""
SUBJECT = "coloured discs"
"""What a caption calls a dead-leaves picture ("the camera pans left over a photo of coloured discs")."""


def dead_leaves(key: str, size: int = SIZE, discs: int = 2500, min_radius: float = 1.5) -> np.ndarray:
    """A uint8 RGB picture (size, size, 3), a deterministic function of `key` (any string)."""
    rng = np.random.default_rng(random.Random(key).getrandbits(64))
    max_radius = size / 4
    # Inverse-CDF draws from p(r) ∝ r^-3 on [min_radius, max_radius].
    u = rng.random(discs)
    radii = (min_radius**-2 - u * (min_radius**-2 - max_radius**-2)) ** -0.5
    centres = rng.uniform(-max_radius / 2, size + max_radius / 2, size=(discs, 2))
    # Colours from a few per-picture hues, as a photo has a palette, with per-disc shading.
    palette = rng.integers(0, 256, size=(int(rng.integers(3, 8)), 3)).astype(np.float64)
    grey = palette.mean(axis=1, keepdims=True)
    palette = grey + rng.uniform(0, 1) * (palette - grey)  # from grey pictures (gravel, the moon) to vivid ones
    colours = palette[rng.integers(0, len(palette), discs)] * rng.uniform(0.6, 1.2, size=(discs, 1))
    img = np.full((size, size, 3), palette[0])
    yy, xx = np.mgrid[0:size, 0:size]
    # Painted back to front: the last disc drawn is the nearest leaf.
    for (cx, cy), r, colour in zip(centres, radii, colours):
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
        if x0 >= x1 or y0 >= y1:
            continue
        inside = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        img[y0:y1, x0:x1][inside] = colour
    return np.clip(img + _pink_noise(rng, size)[..., None] * rng.uniform(4, 16), 0, 255).astype(np.uint8)


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-variance noise (size, size) with a 1/f amplitude spectrum."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fx, fy), 1 / size)
    noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * amplitude).real
    return (noise - noise.mean()) / noise.std()
