"""Flavours of the photo-like rendering: the statistics that separate val, v2, -A and ObjectNet.

A variant sets pose ranges (used by every domain) and, for ``real`` images, the background mix,
lighting, pixel noise, occlusion and clutter. The eval sets and the pool pick variants by name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """Rendering statistics of one flavour.

    Attributes:
        backgrounds: (background kind, weight) pairs, see :data:`oodlab.data.synth.backgrounds.BACKGROUNDS`.
        brightness: range of a global brightness factor.
        tint: per-channel RGB gain (colour of the light).
        noise: range of the gaussian pixel-noise standard deviation, 0-255 units.
        occlusion: probability that an occluding blob covers part of the object.
        distractors: inclusive range of the number of other objects in the scene.
        angle_sd: standard deviation of the rotation, degrees.
        turned: probability of a large rotation (90-270 degrees, e.g. upside down).
        scale: range of the object's half-extent as a fraction of the canvas half-size.
        offset: largest distance of the object's centre from the middle (canvas half-size units).
    """

    backgrounds: tuple[tuple[str, float], ...]
    brightness: tuple[float, float] = (0.95, 1.08)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: tuple[float, float] = (2.0, 6.0)
    occlusion: float = 0.1
    distractors: tuple[int, int] = (0, 0)
    angle_sd: float = 10.0
    turned: float = 0.0
    scale: tuple[float, float] = (0.62, 0.85)
    offset: float = 0.12


VARIANTS: dict[str, Variant] = {
    # ImageNet-like: a centred object on an ordinary background
    "standard": Variant(backgrounds=(("gradient", 0.3), ("texture", 0.3), ("horizon", 0.25), ("indoor", 0.15))),
    # ImageNet-V2-like: the same objects under other backgrounds and lighting statistics
    "shifted": Variant(
        backgrounds=(("gradient", 0.1), ("texture", 0.2), ("horizon", 0.1), ("indoor", 0.6)),
        brightness=(0.72, 0.9),
        tint=(1.08, 1.0, 0.86),
        noise=(5.0, 10.0),
        occlusion=0.15,
        scale=(0.55, 0.8),
        offset=0.18,
    ),
    # ImageNet-A-like: clutter, distractor objects and occlusion
    "clutter": Variant(
        backgrounds=(("texture", 0.4), ("indoor", 0.4), ("horizon", 0.2)),
        noise=(3.0, 8.0),
        occlusion=0.6,
        distractors=(2, 4),
        angle_sd=15.0,
        scale=(0.45, 0.65),
        offset=0.22,
    ),
    # ObjectNet-like: unusual poses (on its side, upside down) on unusual backgrounds
    "unusual": Variant(
        backgrounds=(("pattern", 0.6), ("indoor", 0.2), ("texture", 0.2)),
        noise=(3.0, 8.0),
        occlusion=0.15,
        angle_sd=20.0,
        turned=0.8,
        scale=(0.55, 0.8),
        offset=0.15,
    ),
}
