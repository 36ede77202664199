"""The object classes of the synthetic world: each is a composition of parts drawn by a function.

A class's (private) drawing function takes a numpy Generator and returns its parts (:class:`Prim`) in
normalised object coordinates ([-1, 1]^2, y down). The generator varies the parts themselves
(number of windows, chimney or not, number of petals), their proportions and their colours;
pose, size and style come later (:mod:`oodlab.data.synth.domains`). Classes are registered in
the order they are defined: smaller worlds take the first N, so names stay consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from oodlab.data.synth.primitives import Prim, arc, ellipse, hsv, line, pick, polygon, polyline, rect, vary

DrawFn = Callable[[np.random.Generator], list[Prim]]

DARK = (35, 30, 30)
WHITE = (245, 245, 240)
WOOD = (0.08, 0.55, 0.55)


@dataclass(frozen=True)
class ObjectClass:
    """A class of the world: its caption name, drawing function and a short description of its parts."""

    name: str
    draw: DrawFn
    parts: str


#: name -> class, in definition order.
CLASSES: dict[str, ObjectClass] = {}


def _register(name: str, parts: str) -> Callable[[DrawFn], DrawFn]:
    def wrap(fn: DrawFn) -> DrawFn:
        CLASSES[name] = ObjectClass(name, fn, parts)
        return fn

    return wrap


def class_names(n: int) -> tuple[str, ...]:
    """The first ``n`` registered class names."""
    if not 1 <= n <= len(CLASSES):
        raise ValueError(f"the world has {len(CLASSES)} classes; asked for {n}")
    return tuple(CLASSES)[:n]


@_register("house", "square walls, triangular roof, door, 1-4 windows, optional chimney")
def _house(rng: np.random.Generator) -> list[Prim]:
    w, top, roof_h = rng.uniform(0.55, 0.8), rng.uniform(-0.15, 0.05), rng.uniform(0.45, 0.75)
    wall = vary(rng, pick(rng, [(0.1, 0.3, 0.95), (0.58, 0.3, 0.9), (0.14, 0.55, 0.95), (0.02, 0.35, 0.9)]))
    roof = vary(rng, pick(rng, [(0.0, 0.8, 0.7), (0.06, 0.7, 0.45), (0.6, 0.3, 0.35)]))
    glass = vary(rng, pick(rng, [(0.55, 0.45, 0.95), (0.14, 0.6, 1.0)]))
    parts = []
    if rng.random() < 0.6:
        parts.append(rect(w * 0.35, top - roof_h * 0.85, w * 0.6, top - roof_h * 0.2, roof, "chimney"))
    parts += [
        rect(-w, top, w, 0.85, wall, "walls"),
        polygon([(-w - 0.12, top), (w + 0.12, top), (0.0, top - roof_h)], roof, "roof"),
    ]
    dw = rng.uniform(0.08, 0.12)
    parts.append(rect(-dw, 0.85 - rng.uniform(0.35, 0.45), dw, 0.85, vary(rng, (0.07, 0.7, 0.4)), "door"))
    slots = [(-0.55, 0.25), (0.55, 0.25), (-0.55, 0.58), (0.55, 0.58)]
    for k in rng.permutation(4)[: int(rng.integers(1, 5))]:
        sx, sy = slots[k]
        x, y, r = sx * w, top + sy * (0.85 - top), 0.12
        parts.append(rect(x - r, y - r, x + r, y + r, glass, "window"))
        parts.append(line((x - r, y), (x + r, y), DARK, "window frame", 0.03, detail=True))
    return parts


@_register("fish", "oval body, triangular tail, dorsal fin, eye, optional stripes")
def _fish(rng: np.random.Generator) -> list[Prim]:
    rx, ry = rng.uniform(0.55, 0.72), rng.uniform(0.3, 0.45)
    hue = rng.uniform(0, 1)
    body, fin = hsv(hue, 0.75, 0.95), hsv(hue + 0.05, 0.85, 0.7)
    cx = -0.2
    tail_x = cx + rx - 0.1
    parts = [
        polygon([(cx - 0.1, -ry * 0.8), (cx + 0.35, -ry - 0.3), (cx + 0.45, -ry * 0.7)], fin, "dorsal fin"),
        polygon([(tail_x, 0.0), (0.95, -ry - 0.1), (0.85, 0.0), (0.95, ry + 0.1)], fin, "tail"),
        ellipse(cx, 0.0, rx, ry, body, "body"),
    ]
    for k in range(int(rng.integers(0, 4))):
        x = cx - 0.05 + 0.18 * k
        h = ry * math.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2)) * 0.9
        parts.append(line((x, -h), (x, h), fin, "stripe", 0.06, detail=True))
    parts.append(ellipse(cx - rx * 0.6, -ry * 0.2, 0.09, 0.09, WHITE, "eye", detail=True))
    parts.append(ellipse(cx - rx * 0.62, -ry * 0.2, 0.045, 0.045, DARK, "pupil", detail=True))
    return parts


@_register("car", "long body, cabin with windows, two wheels with hubcaps, headlight")
def _car(rng: np.random.Generator) -> list[Prim]:
    paint = vary(rng, (rng.uniform(0, 1), 0.8, 0.85), ds=0.15)
    glass = vary(rng, (0.55, 0.35, 0.95))
    cab_top, cab_l, cab_r = rng.uniform(-0.45, -0.3), rng.uniform(-0.6, -0.45), rng.uniform(0.2, 0.45)
    r = rng.uniform(0.18, 0.23)
    parts = [
        polygon([(cab_l, 0.0), (cab_l + 0.15, cab_top), (cab_r - 0.1, cab_top), (cab_r + 0.15, 0.0)], paint, "cabin"),
        polygon([(-0.95, 0.05), (-0.9, -0.05), (0.75, -0.05), (0.95, 0.1), (0.95, 0.35), (-0.95, 0.35)], paint,
                "body"),
        polygon([(cab_l + 0.1, -0.02), (cab_l + 0.2, cab_top + 0.07), (-0.1, cab_top + 0.07), (-0.1, -0.02)], glass,
                "rear window"),
        polygon([(-0.02, -0.02), (-0.02, cab_top + 0.07), (cab_r - 0.12, cab_top + 0.07), (cab_r + 0.05, -0.02)],
                glass, "front window"),
        ellipse(0.88, 0.1, 0.06, 0.05, (250, 230, 120), "headlight", detail=True),
    ]
    for x in (-0.55, 0.55):
        parts.append(ellipse(x, 0.35, r, r, DARK, "wheel"))
        parts.append(ellipse(x, 0.35, r * 0.45, r * 0.45, (190, 190, 195), "hubcap", detail=True))
    return parts


@_register("tree", "brown trunk, round canopy of 3-5 leafy blobs, optional fruit")
def _tree(rng: np.random.Generator) -> list[Prim]:
    trunk = vary(rng, (0.07, 0.6, 0.45))
    green = (rng.uniform(0.22, 0.36), 0.7, rng.uniform(0.5, 0.75))
    tw = rng.uniform(0.09, 0.14)
    parts = [polygon([(-tw, 0.95), (tw, 0.95), (tw * 0.7, -0.1), (-tw * 0.7, -0.1)], trunk, "trunk")]
    n = int(rng.integers(3, 6))
    for k in range(n):
        a = 2 * math.pi * k / n + rng.uniform(-0.3, 0.3)
        parts.append(ellipse(0.32 * math.cos(a), -0.4 + 0.25 * math.sin(a), rng.uniform(0.3, 0.4),
                             rng.uniform(0.28, 0.36), vary(rng, green, ds=0.05), "canopy"))
    parts.append(ellipse(0.0, -0.4, 0.38, 0.3, vary(rng, green, ds=0.05), "canopy"))
    if rng.random() < 0.4:
        fruit = vary(rng, pick(rng, [(0.0, 0.85, 0.85), (0.12, 0.85, 0.95)]))
        for _ in range(int(rng.integers(3, 6))):
            parts.append(ellipse(rng.uniform(-0.5, 0.5), rng.uniform(-0.65, -0.15), 0.06, 0.06, fruit, "fruit",
                                 detail=True))
    return parts


@_register("flower", "green stem with leaves, 5-8 petals around a round centre")
def _flower(rng: np.random.Generator) -> list[Prim]:
    petal = vary(rng, (rng.uniform(0, 1), rng.uniform(0.4, 0.8), 0.95))
    centre = vary(rng, pick(rng, [(0.13, 0.9, 0.95), (0.08, 0.8, 0.45)]))
    stem = vary(rng, (0.3, 0.7, 0.55))
    cy, n, plen = -0.35, int(rng.integers(5, 9)), rng.uniform(0.26, 0.34)
    bend = rng.uniform(-0.15, 0.15)
    parts = [
        polyline([(0.0, cy), (bend, 0.3), (0.0, 0.95)], stem, "stem", 0.07),
        ellipse(0.2, 0.45, 0.2, 0.08, stem, "leaf", angle=-30),
    ]
    if rng.random() < 0.6:
        parts.append(ellipse(-0.2, 0.65, 0.2, 0.08, stem, "leaf", angle=30))
    offset = rng.uniform(0, 360)
    for k in range(n):
        a = offset + 360.0 * k / n
        t = math.radians(a)
        parts.append(ellipse(plen * math.cos(t), cy + plen * math.sin(t), plen, 0.13, petal, "petal", angle=a))
    parts.append(ellipse(0.0, cy, 0.15, 0.15, centre, "centre"))
    return parts


@_register("bicycle", "two spoked wheels, diamond frame, saddle, handlebar")
def _bicycle(rng: np.random.Generator) -> list[Prim]:
    frame = vary(rng, (rng.uniform(0, 1), 0.8, 0.8))
    r = rng.uniform(0.3, 0.38)
    rear, front = (-0.58, 0.4), (0.58, 0.4)
    bracket, seat, head = (-0.05, 0.4), (-0.22, -0.12), (0.36, -0.12)
    parts = []
    for cx, cy in (rear, front):
        parts.append(arc(cx, cy, r, r, 0, 360, DARK, "wheel", 0.06))
        parts.append(line((cx - r, cy), (cx + r, cy), (120, 120, 120), "spoke", 0.02, detail=True))
        parts.append(line((cx, cy - r), (cx, cy + r), (120, 120, 120), "spoke", 0.02, detail=True))
    parts += [
        polyline([rear, bracket, seat, rear], frame, "rear frame", 0.06),
        polyline([seat, head, bracket], frame, "main frame", 0.06),
        line(head, front, frame, "fork", 0.06),
        polyline([head, (0.3, -0.38), (0.5, -0.4)], DARK, "handlebar", 0.05),
        line(seat, (-0.25, -0.25), DARK, "seat post", 0.05),
        polygon([(-0.42, -0.3), (-0.1, -0.3), (-0.15, -0.22), (-0.4, -0.22)], DARK, "saddle"),
    ]
    return parts


@_register("boat", "trapezoid hull, mast, one or two triangular sails, optional waves")
def _boat(rng: np.random.Generator) -> list[Prim]:
    hull = vary(rng, pick(rng, [(0.05, 0.7, 0.5), (0.0, 0.8, 0.75), (0.6, 0.7, 0.6), (0.0, 0.0, 0.92)]))
    sail = vary(rng, pick(rng, [(0.1, 0.08, 0.97), (0.0, 0.7, 0.9), (0.15, 0.6, 0.95)]), ds=0.05)
    top, deck = rng.uniform(-0.95, -0.75), rng.uniform(0.2, 0.35)
    parts = [
        line((0.0, deck), (0.0, top), vary(rng, (0.08, 0.6, 0.35)), "mast", 0.045),
        polygon([(0.06, top + 0.05), (0.06, deck - 0.08), (rng.uniform(0.55, 0.75), deck - 0.08)], sail, "sail"),
    ]
    if rng.random() < 0.6:
        parts.append(polygon([(-0.06, top + 0.15), (-0.06, deck - 0.08), (-rng.uniform(0.4, 0.6), deck - 0.08)],
                             sail, "jib"))
    parts.append(polygon([(-0.9, deck), (0.9, deck), (0.62, deck + 0.35), (-0.62, deck + 0.35)], hull, "hull"))
    parts.append(polygon([(0.0, top), (0.22, top + 0.06), (0.0, top + 0.12)], (220, 40, 40), "flag", detail=True))
    if rng.random() < 0.5:
        y = deck + 0.45
        parts.append(polyline([(-0.95 + 0.19 * k, y + (0.05 if k % 2 else -0.05)) for k in range(11)],
                              (60, 120, 200), "waves", 0.04, detail=True))
    return parts


@_register("airplane", "long fuselage, swept wings, tail fin, cockpit and window row")
def _airplane(rng: np.random.Generator) -> list[Prim]:
    body = vary(rng, pick(rng, [(0.6, 0.05, 0.95), (0.6, 0.1, 0.75), (0.58, 0.4, 0.9)]), ds=0.05)
    accent = vary(rng, (rng.uniform(0, 1), 0.8, 0.8))
    sweep = rng.uniform(0.15, 0.35)
    parts = [
        polygon([(-0.05, -0.05), (0.12, -0.05), (-0.15 + sweep, -0.6), (-0.3 + sweep, -0.6)], body, "far wing"),
        polygon([(0.6, -0.05), (0.88, -0.05), (0.97, -0.5), (0.82, -0.5)], accent, "tail fin"),
        ellipse(0.0, 0.0, 0.92, rng.uniform(0.12, 0.16), body, "fuselage"),
        polygon([(-0.1, 0.02), (0.15, 0.02), (-0.2 + sweep, 0.7), (-0.38 + sweep, 0.7)], body, "near wing"),
        polygon([(0.75, 0.0), (0.97, 0.0), (0.98, 0.14), (0.8, 0.14)], accent, "tailplane"),
        ellipse(-0.78, -0.03, 0.1, 0.06, (60, 90, 140), "cockpit", detail=True),
        line((-0.55, 0.08), (0.45, 0.08), accent, "stripe", 0.035, detail=True),
    ]
    return parts


@_register("cup", "tapered body, elliptic rim, ring handle, optional saucer and steam")
def _cup(rng: np.random.Generator) -> list[Prim]:
    colour = vary(rng, (rng.uniform(0, 1), rng.uniform(0.2, 0.7), 0.9))
    w, h = rng.uniform(0.42, 0.55), rng.uniform(0.4, 0.5)
    parts = []
    if rng.random() < 0.5:
        parts.append(ellipse(0.0, h + 0.05, w + 0.35, 0.12, vary(rng, (0.1, 0.05, 0.9)), "saucer"))
    parts += [
        arc(w * 0.85, 0.0, 0.3, 0.26, -90, 90, colour, "handle", 0.1),
        polygon([(-w, -h), (w, -h), (w * 0.75, h), (-w * 0.75, h)], colour, "body"),
        ellipse(0.0, -h, w, 0.1, vary(rng, (0.07, 0.6, 0.35)), "rim"),
    ]
    if rng.random() < 0.5:
        parts.append(line((-w * 0.9, -h * 0.2), (w * 0.9, -h * 0.2), hsv(rng.uniform(0, 1), 0.8, 0.8), "band",
                          0.08, detail=True))
    if rng.random() < 0.6:
        for x in (-0.15, 0.15):
            parts.append(polyline([(x, -h - 0.15), (x + 0.08, -h - 0.3), (x - 0.05, -h - 0.45), (x + 0.05, -0.98)],
                                  (170, 170, 175), "steam", 0.04, detail=True))
    return parts


@_register("umbrella", "dome canopy with scalloped edge, straight shaft with a J-shaped handle")
def _umbrella(rng: np.random.Generator) -> list[Prim]:
    colour = vary(rng, (rng.uniform(0, 1), 0.8, 0.9))
    n, rx, ry = int(rng.integers(4, 7)), 0.92, rng.uniform(0.5, 0.65)
    base = -0.05
    edge = []
    for k in range(n):
        x0 = rx - 2 * rx * k / n
        x1 = rx - 2 * rx * (k + 1) / n
        for t in np.linspace(0.0, 1.0, 5)[:-1]:
            edge.append((x0 + (x1 - x0) * t, base - 0.12 * math.sin(math.pi * t)))
    dome = [(rx * math.cos(t), base - ry * math.sin(t)) for t in np.linspace(math.pi, 0.0, 13)]
    return [
        line((0.0, base - ry), (0.0, base - ry - 0.12), DARK, "tip", 0.05),
        polygon(dome + edge, colour, "canopy"),
        line((0.0, base - ry), (0.0, base - 0.1), vary(rng, (0.0, 0.0, 0.3)), "rib", 0.03, detail=True),
        line((0.0, base), (0.0, 0.7), DARK, "shaft", 0.05),
        arc(-0.12, 0.7, 0.12, 0.14, 0, 180, DARK, "handle", 0.06),
    ]


@_register("snowman", "2-3 stacked white balls, carrot nose, stick arms, buttons, optional hat")
def _snowman(rng: np.random.Generator) -> list[Prim]:
    snow = vary(rng, (0.58, 0.05, 0.97), ds=0.03, dv=0.03)
    three = rng.random() < 0.6
    radii = [0.38, 0.28, 0.2] if three else [0.42, 0.27]
    parts, y = [], 0.92
    centres = []
    for r in radii:
        y -= r
        centres.append(y)
        y -= r * 0.75
    arm_y = centres[1] if three else centres[0] - 0.1
    stick = vary(rng, (0.07, 0.6, 0.4))
    parts.append(polyline([(-0.25, arm_y), (-0.7, arm_y - 0.3), (-0.8, arm_y - 0.45)], stick, "left arm", 0.045))
    parts.append(polyline([(0.25, arm_y), (0.7, arm_y - 0.25), (0.85, arm_y - 0.35)], stick, "right arm", 0.045))
    for r, cy in zip(radii, centres):
        parts.append(ellipse(0.0, cy, r, r, snow, "ball"))
    hy, hr = centres[-1], radii[-1]
    parts.append(polygon([(0.0, hy - 0.03), (0.3, hy + 0.02), (0.0, hy + 0.05)], (240, 120, 30), "nose"))
    for x in (-0.07, 0.07):
        parts.append(ellipse(x, hy - 0.08, 0.03, 0.03, DARK, "eye", detail=True))
    for k in range(3):
        parts.append(ellipse(0.0, centres[-2] - 0.12 + 0.12 * k, 0.035, 0.035, DARK, "button", detail=True))
    if rng.random() < 0.6:
        hat = vary(rng, pick(rng, [(0.0, 0.0, 0.15), (0.0, 0.8, 0.6)]))
        parts.append(rect(-hr * 1.1, hy - hr - 0.02, hr * 1.1, hy - hr + 0.04, hat, "hat brim"))
        parts.append(rect(-hr * 0.7, hy - hr - 0.28, hr * 0.7, hy - hr - 0.01, hat, "hat"))
    return parts


@_register("rocket", "tall body with pointed nose cone, round window, side fins, optional flame")
def _rocket(rng: np.random.Generator) -> list[Prim]:
    body = vary(rng, pick(rng, [(0.0, 0.0, 0.92), (0.6, 0.1, 0.8), (0.0, 0.7, 0.85)]), ds=0.05)
    fins = vary(rng, (rng.uniform(0, 1), 0.8, 0.8))
    w, bottom = rng.uniform(0.2, 0.26), 0.55
    parts = []
    if rng.random() < 0.7:
        parts.append(polygon([(-w * 0.8, bottom), (w * 0.8, bottom), (0.0, bottom + rng.uniform(0.3, 0.42))],
                             (250, 160, 30), "flame"))
    parts += [
        polygon([(-w, bottom - 0.35), (-w - 0.25, bottom + 0.1), (-w, bottom)], fins, "left fin"),
        polygon([(w, bottom - 0.35), (w + 0.25, bottom + 0.1), (w, bottom)], fins, "right fin"),
        polygon([(-w, bottom), (-w, -0.4), (-w * 0.6, -0.75), (0.0, -0.98), (w * 0.6, -0.75), (w, -0.4),
                 (w, bottom)], body, "body"),
        polygon([(-w * 0.75, -0.55), (-w * 0.6, -0.75), (0.0, -0.98), (w * 0.6, -0.75), (w * 0.75, -0.55)], fins,
                "nose cone"),
        ellipse(0.0, -0.15, w * 0.6, w * 0.6, fins, "window rim"),
        ellipse(0.0, -0.15, w * 0.42, w * 0.42, (120, 190, 240), "window", detail=True),
    ]
    return parts


@_register("mushroom", "wide dome cap, optional white spots, thick pale stem")
def _mushroom(rng: np.random.Generator) -> list[Prim]:
    red = rng.random() < 0.6
    cap = vary(rng, (0.0, 0.85, 0.85) if red else pick(rng, [(0.07, 0.6, 0.55), (0.1, 0.45, 0.8)]))
    stem = vary(rng, (0.12, 0.15, 0.95), ds=0.05, dv=0.05)
    rx, ry, sw = rng.uniform(0.75, 0.95), rng.uniform(0.5, 0.7), rng.uniform(0.18, 0.26)
    parts = [
        polygon([(-sw, 0.0), (sw, 0.0), (sw * 1.25, 0.85), (-sw * 1.25, 0.85)], stem, "stem"),
        ellipse(0.0, 0.05, rx, ry, cap, "cap", start=180, stop=360),
    ]
    if red or rng.random() < 0.3:
        for k in range(int(rng.integers(3, 7))):
            t = math.radians(200 + 140 * (k + rng.uniform(0.2, 0.8)) / 6)
            d = rng.uniform(0.45, 0.75)
            parts.append(ellipse(rx * d * math.cos(t), 0.05 + ry * d * math.sin(t), 0.09, 0.07, WHITE, "spot",
                                 detail=True))
    return parts


@_register("butterfly", "four symmetric wings (large upper, small lower), thin body, antennae, wing spots")
def _butterfly(rng: np.random.Generator) -> list[Prim]:
    hue = rng.uniform(0, 1)
    wing, low, spot = hsv(hue, 0.8, 0.95), hsv(hue + 0.08, 0.85, 0.8), hsv(hue + 0.5, 0.6, 0.95)
    up_r, lo_r = rng.uniform(0.38, 0.48), rng.uniform(0.25, 0.32)
    parts = []
    for s in (-1, 1):
        parts.append(ellipse(s * 0.45, -0.3, up_r + 0.05, up_r, wing, "upper wing", angle=s * 20))
        parts.append(ellipse(s * 0.32, 0.35, lo_r, lo_r + 0.06, low, "lower wing", angle=s * -25))
        parts.append(ellipse(s * 0.5, -0.35, 0.12, 0.12, spot, "wing spot", detail=True))
        parts.append(polyline([(0.0, -0.45), (s * 0.15, -0.8), (s * 0.28, -0.92)], DARK, "antenna", 0.03,
                              detail=True))
    parts.append(ellipse(0.0, 0.0, 0.08, 0.55, DARK, "body"))
    return parts


@_register("clock", "round face inside a rim, tick marks, hour and minute hands, optional alarm bells")
def _clock(rng: np.random.Generator) -> list[Prim]:
    rim = vary(rng, (rng.uniform(0, 1), 0.7, 0.7))
    parts = []
    if rng.random() < 0.4:
        for s in (-1, 1):
            parts.append(ellipse(s * 0.55, -0.72, 0.24, 0.2, rim, "bell", angle=s * 35))
            parts.append(line((s * 0.45, 0.7), (s * 0.65, 0.95), DARK, "leg", 0.06))
    parts += [ellipse(0.0, 0.0, 0.85, 0.85, rim, "rim"), ellipse(0.0, 0.0, 0.7, 0.7, (250, 248, 235), "face")]
    ticks = 12 if rng.random() < 0.5 else 4
    for k in range(ticks):
        t = 2 * math.pi * k / ticks
        parts.append(line((0.52 * math.cos(t), 0.52 * math.sin(t)), (0.64 * math.cos(t), 0.64 * math.sin(t)), DARK,
                          "tick", 0.05, detail=ticks == 12))
    for length, width in ((0.35, 0.08), (0.58, 0.05)):
        t = rng.uniform(0, 2 * math.pi)
        parts.append(line((0.0, 0.0), (length * math.cos(t), length * math.sin(t)), DARK, "hand", width))
    parts.append(ellipse(0.0, 0.0, 0.06, 0.06, DARK, "pin", detail=True))
    return parts


@_register("chair", "backrest with 2-4 slats between two posts, flat seat, four legs")
def _chair(rng: np.random.Generator) -> list[Prim]:
    wood = vary(rng, pick(rng, [WOOD, (0.07, 0.6, 0.35), (0.0, 0.0, 0.3), (0.55, 0.5, 0.6)]))
    seat_y, w = rng.uniform(0.05, 0.2), rng.uniform(0.45, 0.6)
    parts = [
        line((-w * 0.7, seat_y), (-w * 0.7, 0.9), wood, "back leg", 0.07),
        line((w * 0.7, seat_y), (w * 0.7, 0.9), wood, "back leg", 0.07),
        line((-w, -0.95), (-w, seat_y), wood, "post", 0.09),
        line((w, -0.95), (w, seat_y), wood, "post", 0.09),
        rect(-w, -0.95, w, -0.75, wood, "top rail"),
    ]
    n = int(rng.integers(2, 5))
    for k in range(n):
        x = -w + 2 * w * (k + 1) / (n + 1)
        parts.append(line((x, -0.75), (x, seat_y), wood, "slat", 0.06))
    parts += [
        polygon([(-w - 0.08, seat_y), (w + 0.08, seat_y), (w + 0.22, seat_y + 0.18), (-w - 0.22, seat_y + 0.18)],
                wood, "seat"),
        line((-w - 0.15, seat_y + 0.18), (-w - 0.15, 0.97), wood, "front leg", 0.08),
        line((w + 0.15, seat_y + 0.18), (w + 0.15, 0.97), wood, "front leg", 0.08),
    ]
    return parts


@_register("guitar", "figure-eight body, dark sound hole, long neck, headstock, strings")
def _guitar(rng: np.random.Generator) -> list[Prim]:
    body = vary(rng, pick(rng, [(0.08, 0.7, 0.8), (0.0, 0.85, 0.75), (0.0, 0.0, 0.2), (0.1, 0.5, 0.95)]))
    neck = vary(rng, (0.07, 0.6, 0.35))
    lower, upper = rng.uniform(0.36, 0.44), rng.uniform(0.26, 0.32)
    return [
        rect(-0.06, -0.85, 0.06, 0.1, neck, "neck"),
        polygon([(-0.11, -0.98), (0.11, -0.98), (0.08, -0.8), (-0.08, -0.8)], neck, "headstock"),
        ellipse(0.0, 0.52, lower, lower, body, "lower bout"),
        ellipse(0.0, 0.08, upper, upper, body, "upper bout"),
        ellipse(0.0, 0.25, 0.11, 0.11, DARK, "sound hole"),
        rect(-0.14, 0.6, 0.14, 0.66, DARK, "bridge", detail=True),
        line((-0.025, -0.82), (-0.025, 0.63), (220, 220, 210), "string", 0.012, detail=True),
        line((0.025, -0.82), (0.025, 0.63), (220, 220, 210), "string", 0.012, detail=True),
    ]


@_register("ladder", "two long rails joined by 4-7 evenly spaced rungs")
def _ladder(rng: np.random.Generator) -> list[Prim]:
    colour = vary(rng, pick(rng, [WOOD, (0.6, 0.05, 0.75), (0.12, 0.8, 0.9)]))
    top, bottom = rng.uniform(0.22, 0.32), rng.uniform(0.38, 0.48)
    n = int(rng.integers(4, 8))
    parts = [
        line((-top, -0.97), (-bottom, 0.97), colour, "rail", 0.09),
        line((top, -0.97), (bottom, 0.97), colour, "rail", 0.09),
    ]
    for k in range(n):
        y = -0.97 + 1.94 * (k + 0.5) / n
        half = top + (bottom - top) * (y + 0.97) / 1.94
        parts.append(line((-half, y), (half, y), colour, "rung", 0.07))
    return parts


@_register("candle", "upright cylinder, wick, teardrop flame, optional holder plate")
def _candle(rng: np.random.Generator) -> list[Prim]:
    wax = vary(rng, pick(rng, [(0.12, 0.15, 0.97), (0.0, 0.75, 0.85), (0.6, 0.5, 0.85), (0.9, 0.4, 0.95)]))
    w, top = rng.uniform(0.17, 0.24), rng.uniform(-0.35, -0.2)
    parts = []
    if rng.random() < 0.6:
        parts.append(ellipse(0.0, 0.82, 0.55, 0.12, vary(rng, (0.12, 0.6, 0.75)), "holder"))
    fy = top - 0.15
    parts += [
        rect(-w, top, w, 0.8, wax, "wax"),
        ellipse(w * 0.4, top + 0.08, 0.06, 0.12, wax, "drip", detail=True),
        line((0.0, top), (0.0, top - 0.12), DARK, "wick", 0.03),
        polygon([(0.0, fy - 0.5), (0.1, fy - 0.25), (0.12, fy - 0.08), (0.0, fy), (-0.12, fy - 0.08),
                 (-0.1, fy - 0.25)], (255, 190, 40), "flame"),
        ellipse(0.0, fy - 0.1, 0.05, 0.09, (255, 245, 180), "flame core", detail=True),
    ]
    return parts


@_register("key", "round bow with a hole, long shaft, 2-4 teeth")
def _key(rng: np.random.Generator) -> list[Prim]:
    metal = vary(rng, pick(rng, [(0.13, 0.65, 0.85), (0.6, 0.05, 0.75), (0.07, 0.6, 0.65)]), ds=0.05)
    r = rng.uniform(0.28, 0.36)
    parts = [
        rect(-0.6 + r * 0.7, -0.07, 0.9, 0.07, metal, "shaft"),
        ellipse(-0.6, 0.0, r, r, metal, "bow"),
        ellipse(-0.6, 0.0, r * 0.4, r * 0.4, (70, 70, 70), "hole"),
    ]
    n = int(rng.integers(2, 5))
    for k in range(n):
        x = 0.88 - 0.14 * k
        parts.append(rect(x - 0.1, 0.05, x, 0.07 + rng.uniform(0.12, 0.26), metal, "tooth"))
    return parts


@_register("lamp", "trapezoid shade, thin pole, flat base, optional pull chain")
def _lamp(rng: np.random.Generator) -> list[Prim]:
    shade = vary(rng, (rng.uniform(0, 1), rng.uniform(0.3, 0.8), 0.9))
    metal = vary(rng, pick(rng, [(0.0, 0.0, 0.3), (0.12, 0.6, 0.7), (0.6, 0.05, 0.75)]))
    top_w, bot_w = rng.uniform(0.22, 0.32), rng.uniform(0.5, 0.65)
    parts = [
        line((0.0, -0.3), (0.0, 0.8), metal, "pole", 0.06),
        polygon([(-0.45, 0.95), (0.45, 0.95), (0.3, 0.8), (-0.3, 0.8)], metal, "base"),
        polygon([(-top_w, -0.92), (top_w, -0.92), (bot_w, -0.3), (-bot_w, -0.3)], shade, "shade"),
    ]
    if rng.random() < 0.5:
        parts.append(line((bot_w * 0.6, -0.3), (bot_w * 0.6, 0.0), DARK, "pull chain", 0.02, detail=True))
    return parts


@_register("bird", "oval body, round head, pointed beak, wing, tail feathers, thin legs")
def _bird(rng: np.random.Generator) -> list[Prim]:
    hue = pick(rng, [0.0, 0.6, 0.14, 0.08, 0.33])
    body, wing = vary(rng, (hue, 0.75, 0.85)), vary(rng, (hue, 0.8, 0.6))
    return [
        line((-0.05, 0.3), (-0.1, 0.85), (230, 140, 40), "leg", 0.035, detail=True),
        line((0.15, 0.3), (0.15, 0.85), (230, 140, 40), "leg", 0.035, detail=True),
        polygon([(0.4, -0.05), (0.95, -0.35), (0.95, 0.1)], wing, "tail"),
        ellipse(0.05, 0.05, 0.5, 0.33, body, "body"),
        ellipse(-0.45, -0.3, 0.24, 0.24, body, "head"),
        polygon([(-0.66, -0.36), (-0.95, -0.27), (-0.66, -0.2)], (240, 170, 30), "beak"),
        ellipse(0.15, 0.0, 0.32, 0.17, wing, "wing", angle=-15),
        ellipse(-0.5, -0.35, 0.04, 0.04, DARK, "eye", detail=True),
    ]


@_register("cat", "sitting body, round head with two pointed ears, curled tail, eyes and whiskers")
def _cat(rng: np.random.Generator) -> list[Prim]:
    fur = vary(rng, pick(rng, [(0.08, 0.75, 0.95), (0.6, 0.05, 0.55), (0.0, 0.0, 0.2), (0.1, 0.3, 0.95)]))
    eye = vary(rng, pick(rng, [(0.3, 0.8, 0.8), (0.14, 0.9, 0.95)]))
    hx, hy, hr = -0.2, -0.38, rng.uniform(0.3, 0.36)
    parts = [
        polyline([(0.55, 0.7), (0.85, 0.55), (0.9, 0.2), (0.75, -0.05)], fur, "tail", 0.1),
        ellipse(0.12, 0.38, 0.48, 0.5, fur, "body"),
        polygon([(hx - hr, hy - 0.05), (hx - hr * 0.9, hy - hr - 0.3), (hx - 0.05, hy - hr + 0.02)], fur, "ear"),
        polygon([(hx + hr, hy - 0.05), (hx + hr * 0.9, hy - hr - 0.3), (hx + 0.05, hy - hr + 0.02)], fur, "ear"),
        ellipse(hx, hy, hr, hr * 0.9, fur, "head"),
    ]
    for s in (-1, 1):
        parts.append(ellipse(hx + s * 0.12, hy - 0.05, 0.06, 0.08, eye, "eye", detail=True))
        parts.append(line((hx + s * 0.08, hy + 0.12), (hx + s * 0.45, hy + 0.05), DARK, "whisker", 0.015,
                          detail=True))
    parts.append(polygon([(hx - 0.05, hy + 0.06), (hx + 0.05, hy + 0.06), (hx, hy + 0.12)], (230, 120, 130),
                         "nose", detail=True))
    return parts


@_register("sun", "round disc surrounded by 8-14 triangular rays, optional smiling face")
def _sun(rng: np.random.Generator) -> list[Prim]:
    disc = vary(rng, (rng.uniform(0.1, 0.15), 0.85, 1.0), dv=0.05)
    ray = vary(rng, (rng.uniform(0.06, 0.12), 0.9, 1.0), dv=0.05)
    r, n = rng.uniform(0.4, 0.5), int(rng.integers(8, 15))
    parts = []
    offset = rng.uniform(0, 2 * math.pi)
    half = math.pi / n * 0.5
    for k in range(n):
        t = offset + 2 * math.pi * k / n
        parts.append(polygon([(r * 0.9 * math.cos(t - half), r * 0.9 * math.sin(t - half)),
                              (0.97 * math.cos(t), 0.97 * math.sin(t)),
                              (r * 0.9 * math.cos(t + half), r * 0.9 * math.sin(t + half))], ray, "ray"))
    parts.append(ellipse(0.0, 0.0, r, r, disc, "disc"))
    if rng.random() < 0.4:
        for x in (-0.15, 0.15):
            parts.append(ellipse(x, -0.1, 0.04, 0.05, DARK, "eye", detail=True))
        parts.append(arc(0.0, 0.05, 0.18, 0.12, 20, 160, DARK, "smile", 0.03, detail=True))
    return parts
