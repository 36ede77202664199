"""Backgrounds of photo-like (``real``) images: a registry of kind -> generator.

Each generator takes a numpy Generator and the canvas side in pixels and returns uint8
[canvas, canvas, 3] RGB.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from PIL import Image

from oodlab.data.synth.primitives import hsv

BackgroundFn = Callable[[np.random.Generator, int], np.ndarray]


@functools.lru_cache(maxsize=8)
def grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) float32 [canvas, canvas] pixel-centre coordinates in [0, 1]."""
    t = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas
    return np.broadcast_to(t[:, None], (canvas, canvas)), np.broadcast_to(t[None, :], (canvas, canvas))


def _colour(rng: np.random.Generator, h: tuple[float, float], s: tuple[float, float], v: tuple[float, float]):
    return np.array(hsv(rng.uniform(*h), rng.uniform(*s), rng.uniform(*v)), dtype=np.float32)


def _blotches(rng: np.random.Generator, canvas: int, cells: int, amplitude: float) -> np.ndarray:
    """Smooth variation, mostly of brightness with a little colour: a coarse random grid upsampled
    bicubically, float32 [canvas, canvas, 3] around 0."""
    coarse = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.int32)
    coarse = (coarse[..., :1] * 3 + coarse) // 4  # 3/4 shared by the channels: brightness
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((canvas, canvas), Image.Resampling.BICUBIC)
    return (np.asarray(smooth, np.float32) - 127.5) * (amplitude / 127.5)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def gradient(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A sky-like two-colour gradient at a slight slant."""
    y, x = grid(canvas)
    top = _colour(rng, (0.5, 0.7), (0.1, 0.5), (0.75, 1.0))
    bottom = _colour(rng, (0.0, 1.0), (0.05, 0.35), (0.55, 0.95))
    t = np.clip(y + rng.uniform(-0.3, 0.3) * (x - 0.5), 0.0, 1.0)
    return np.clip(_lerp(top, bottom, t) + _blotches(rng, canvas, 3, 12.0), 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A natural-looking surface (grass, sand, stone): blotches at two scales around a muted colour."""
    base = _colour(rng, (0.0, 1.0), (0.15, 0.5), (0.35, 0.85))
    arr = base + _blotches(rng, canvas, 4, 40.0) + _blotches(rng, canvas, 16, 18.0)
    return np.clip(arr, 0, 255).astype(np.uint8)


def horizon(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """Sky above, ground below a horizon line."""
    y, _ = grid(canvas)
    sky = _lerp(_colour(rng, (0.52, 0.65), (0.2, 0.6), (0.8, 1.0)), _colour(rng, (0.5, 0.62), (0.05, 0.2), (0.9, 1.0)),
                y)
    ground = _colour(rng, (0.08, 0.35), (0.35, 0.7), (0.35, 0.7)) + _blotches(rng, canvas, 8, 30.0)
    line = rng.uniform(0.55, 0.8)
    arr = np.where((y > line)[..., None], ground, sky)
    return np.clip(arr, 0, 255).astype(np.uint8)


def indoor(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """A wall (optionally striped wallpaper) above a wooden floor."""
    y, x = grid(canvas)
    wall = _colour(rng, (0.0, 1.0), (0.05, 0.3), (0.6, 0.95))
    floor = _colour(rng, (0.05, 0.1), (0.4, 0.7), (0.3, 0.65))
    arr = np.broadcast_to(wall, (canvas, canvas, 3)).copy()
    if rng.random() < 0.5:
        arr *= (1.0 - 0.08 * (np.sin(x * rng.uniform(20, 50)) > 0))[..., None]
    planks = 1.0 - 0.12 * ((y * rng.uniform(15, 25)) % 1.0 < 0.12)
    line = rng.uniform(0.62, 0.85)
    arr = np.where((y > line)[..., None], floor * planks[..., None], arr)
    return np.clip(arr + _blotches(rng, canvas, 4, 10.0), 0, 255).astype(np.uint8)


def pattern(rng: np.random.Generator, canvas: int) -> np.ndarray:
    """Unusual, saturated stripes or checks (a bedspread, a patterned floor)."""
    y, x = grid(canvas)
    a, b = _colour(rng, (0.0, 1.0), (0.5, 0.9), (0.5, 0.95)), _colour(rng, (0.0, 1.0), (0.4, 0.9), (0.4, 0.9))
    period = rng.uniform(4.0, 9.0)
    theta = rng.uniform(0, np.pi)
    u = (x * np.cos(theta) + y * np.sin(theta)) * period
    if rng.random() < 0.5:
        mask = (u % 1.0) < 0.5
    else:
        v = (-x * np.sin(theta) + y * np.cos(theta)) * period
        mask = ((np.floor(u) + np.floor(v)) % 2) == 0
    return np.where(mask[..., None], a, b).astype(np.uint8)


BACKGROUNDS: dict[str, BackgroundFn] = {
    "gradient": gradient,
    "texture": texture,
    "horizon": horizon,
    "indoor": indoor,
    "pattern": pattern,
}
