"""Drawing primitives of the synthetic world and their placement on a canvas.

An object is a list of :class:`Prim` in normalised object coordinates: the square [-1, 1]^2 with
x to the right and y downwards (the image convention), drawn in list order (later parts on top).
A :class:`Pose` maps the object onto a square canvas in pixels (:func:`place`).
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

RGB = tuple[int, int, int]

#: Primitive kinds drawn as closed, filled outlines; the others are open strokes.
CLOSED_KINDS = frozenset({"polygon", "ellipse"})


@dataclass(frozen=True, eq=False)
class Prim:
    """One part of an object.

    Attributes:
        kind: ``"polygon"`` | ``"ellipse"`` (closed, filled) or ``"polyline"`` | ``"line"`` (strokes).
        points: float64 [n, 2], normalised object coordinates (closed kinds: the outline, not repeated).
        colour: base RGB colour, 0-255; each domain restyles it.
        role: the part's name (``"roof"``, ``"window"``), recorded for debugging and descriptions.
        width: stroke width of open kinds, in normalised units (1 = half the object's extent).
        detail: a small part that sparse styles (quickdraw) leave out.
    """

    kind: str
    points: np.ndarray
    colour: RGB
    role: str
    width: float = 0.0
    detail: bool = False

    @property
    def closed(self) -> bool:
        return self.kind in CLOSED_KINDS


def polygon(points: Sequence[Sequence[float]], colour: RGB, role: str, *, detail: bool = False) -> Prim:
    """A filled polygon through ``points`` (normalised [x, y] pairs)."""
    return Prim("polygon", np.asarray(points, dtype=np.float64), colour, role, detail=detail)


def rect(x0: float, y0: float, x1: float, y1: float, colour: RGB, role: str, *, detail: bool = False) -> Prim:
    """An axis-aligned filled rectangle with corners (x0, y0) and (x1, y1)."""
    return polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, role, detail=detail)


@functools.lru_cache(maxsize=256)
def _unit_arc(start: float, stop: float, n: int) -> np.ndarray:
    """float64 [n, 2]: (cos, sin) of n angles from start to stop degrees (cached: objects reuse few arcs)."""
    t = np.radians(np.linspace(start, stop, n))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _arc_points(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int, angle: float):
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # scale the unit arc to the radii, rotate by angle, move to the centre
    return _unit_arc(start, stop, n) @ np.array([[rx * c, rx * s], [-ry * s, ry * c]]) + (cx, cy)


def ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    colour: RGB,
    role: str,
    *,
    angle: float = 0.0,
    start: float = 0.0,
    stop: float = 360.0,
    detail: bool = False,
) -> Prim:
    """A filled ellipse (or, with ``start``/``stop`` in degrees, the segment cut off by the chord).

    Angles run clockwise on screen from +x (y points down); ``angle`` rotates the ellipse.
    """
    full = stop - start >= 360.0
    n = 24 if full else max(6, int(round(24 * (stop - start) / 360.0)) + 1)
    pts = _arc_points(cx, cy, rx, ry, start, stop - (360.0 / n if full else 0.0), n, angle)
    return Prim("ellipse", pts, colour, role, detail=detail)


def arc(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    start: float,
    stop: float,
    colour: RGB,
    role: str,
    width: float,
    *,
    detail: bool = False,
) -> Prim:
    """A stroked elliptic arc from ``start`` to ``stop`` degrees (clockwise on screen from +x)."""
    n = max(5, int(round(24 * abs(stop - start) / 360.0)) + 1)
    return Prim("polyline", _arc_points(cx, cy, rx, ry, start, stop, n, 0.0), colour, role, width, detail)


def polyline(
    points: Sequence[Sequence[float]], colour: RGB, role: str, width: float, *, detail: bool = False
) -> Prim:
    """An open stroke through ``points``."""
    return Prim("polyline", np.asarray(points, dtype=np.float64), colour, role, width, detail)


def line(
    p0: Sequence[float], p1: Sequence[float], colour: RGB, role: str, width: float, *, detail: bool = False
) -> Prim:
    """A straight stroke from ``p0`` to ``p1``."""
    return Prim("line", np.asarray([p0, p1], dtype=np.float64), colour, role, width, detail)


def hsv(h: float, s: float, v: float) -> RGB:
    """RGB 0-255 from hue (turns, wraps), saturation and value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def vary(rng: np.random.Generator, base: tuple[float, float, float], dh: float = 0.03, ds: float = 0.1,
         dv: float = 0.1) -> RGB:
    """A colour near ``base`` = (h, s, v): uniform jitter of +-dh, +-ds, +-dv."""
    h, s, v = base
    return hsv(h + rng.uniform(-dh, dh), s + rng.uniform(-ds, ds), v + rng.uniform(-dv, dv))


def pick(rng: np.random.Generator, options: Sequence):
    """One element of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def pick_weighted(rng: np.random.Generator, choices: Sequence[tuple[str, float]]) -> str:
    """The name of one (name, weight) pair, with probability proportional to its weight."""
    r = rng.random() * sum(w for _, w in choices)
    for name, w in choices:
        r -= w
        if r < 0:
            return name
    return choices[-1][0]


@dataclass(frozen=True)
class Pose:
    """Where and how an object lies on the canvas.

    Attributes:
        angle: rotation in degrees (counter-clockwise on screen).
        scale: the object's half-extent as a fraction of the canvas half-size (1 fills the canvas).
        aspect: horizontal stretch of the object before rotation.
        cx, cy: the object's centre, as a fraction of the canvas half-size from the middle
            (x right, y down); the canvas spans [-1, 1].
        flip: mirror the object left-right before rotation.
    """

    angle: float = 0.0
    scale: float = 0.75
    aspect: float = 1.0
    cx: float = 0.0
    cy: float = 0.0
    flip: bool = False

    def moved(self, dx: float, dy: float, scale_factor: float = 1.0) -> "Pose":
        """The same pose shifted by (dx, dy) (canvas half-size units) with its scale multiplied."""
        return replace(self, cx=self.cx + dx, cy=self.cy + dy, scale=self.scale * scale_factor)


@dataclass(frozen=True, eq=False)
class Placed:
    """A primitive on the canvas: ``xy`` float64 [n, 2] in pixels, ``width`` the stroke width in pixels."""

    prim: Prim
    xy: np.ndarray
    width: float


def place(prims: Sequence[Prim], pose: Pose, canvas: int) -> list[Placed]:
    """Map normalised primitives to canvas pixels (canvas: side in px) with ``pose``."""
    half = canvas / 2.0
    a = math.radians(pose.angle)
    c, s = math.cos(a), math.sin(a)
    # y points down, so a counter-clockwise turn on screen is the matrix [[c, s], [-s, c]]
    rot = np.array([[c, s], [-s, c]]) * (pose.scale * half)
    stretch = np.array([pose.aspect * (-1.0 if pose.flip else 1.0), 1.0])
    centre = np.array([half * (1.0 + pose.cx), half * (1.0 + pose.cy)])
    width_scale = pose.scale * half
    return [Placed(p, (p.points * stretch) @ rot.T + centre, p.width * width_scale) for p in prims]
