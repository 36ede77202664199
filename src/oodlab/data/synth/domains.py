"""Domain renderers: the same object parts and pose drawn in the six DomainNet styles.

:func:`render` turns an :class:`ImageSpec` into a square RGB image: it builds the class's parts,
places them on a canvas of twice the output size and hands them to the renderer of the spec's
domain (:data:`DOMAINS`), which draws and downsamples (drawing at 2x is the anti-aliasing).
Renderers take two generators: ``style`` (background, stroke jitter, layout: shared by a
near-duplicate and its source) and ``noise`` (pixel noise: differs between them).
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from oodlab.data.synth.backgrounds import BACKGROUNDS
from oodlab.data.synth.classes import CLASSES
from oodlab.data.synth.primitives import RGB, Placed, Pose, hsv, pick_weighted, place
from oodlab.data.synth.variants import VARIANTS, Variant

#: The DomainNet domains, in DomainNet's (alphabetical) order.
DOMAIN_NAMES = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
#: The domains other than ``real``.
RENDITION_DOMAINS = tuple(d for d in DOMAIN_NAMES if d != "real")
#: Images a human would hesitate on (ICLR 2025's "ambiguous"): not DomainNet domains, drawn
#: only where a world's ambiguous share asks for them.
AMBIGUOUS_DOMAINS = ("drawing-photo", "stylised-photo")
#: the three labels of the domain study: natural / rendition / ambiguous
STYLES = ("natural", "rendition", "ambiguous")


def style_of(domain: str) -> str:
    """A domain's label in the domain study: ``real`` is natural, the ambiguous kinds ambiguous,
    every other domain a rendition."""
    return "natural" if domain == "real" else "ambiguous" if domain in AMBIGUOUS_DOMAINS else "rendition"

BLACK = (20, 20, 20)
#: Images are drawn on a canvas this many times larger than the output and reduced (anti-aliasing).
SUPERSAMPLE = 2
#: Side of the coarse grid on which the light of photo-like objects is computed.
_LIGHT_GRID = 8


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one image.

    Attributes:
        class_name: a key of :data:`oodlab.data.synth.classes.CLASSES`.
        domain: a key of :data:`DOMAINS`.
        variant: a key of :data:`oodlab.data.synth.variants.VARIANTS`.
        pose: the object's pose.
        shape_seed: seeds the class's parts and colours.
        style_seed: seeds the renderer's choices (background, strokes, layout).
        noise_seed: seeds the pixel noise.
        quality: JPEG quality, 1-95.
        gain: per-channel RGB factor applied to the finished image (colour jitter of near-duplicates).
        distractors: other objects in the scene, as (class name, shape seed, pose).
    """

    class_name: str
    domain: str
    variant: str
    pose: Pose
    shape_seed: int
    style_seed: int
    noise_seed: int
    quality: int = 90
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    distractors: tuple[tuple[str, int, Pose], ...] = ()


@dataclass(frozen=True)
class Scene:
    """What a renderer draws: placed parts on a ``canvas``-px square that it reduces to ``size`` px."""

    objects: list[Placed]
    distractors: list[list[Placed]]
    canvas: int
    size: int
    variant: Variant
    pose: Pose


Renderer = Callable[[Scene, np.random.Generator, np.random.Generator], Image.Image]
#: A fill for ImageDraw: a grey level or an RGB(A) tuple.
Ink = Union[int, tuple[int, ...]]


def _flat(xy: np.ndarray) -> list[float]:
    return xy.ravel().tolist()


def _closed(xy: np.ndarray) -> np.ndarray:
    return np.concatenate([xy, xy[:1]], axis=0)


def _extent(xy: np.ndarray) -> float:
    return float(np.max(np.ptp(xy, axis=0)))


def _reduce(img: Image.Image) -> Image.Image:
    """The canvas reduced to the output size by averaging SUPERSAMPLE x SUPERSAMPLE blocks."""
    return img.reduce(SUPERSAMPLE)


def _restyle(colour: RGB, saturation: float, value: float, floor: float = 0.0) -> RGB:
    """The colour with saturation and value scaled (dark and grey colours keep their character)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in colour))
    if s > 0.15:
        s = s * saturation
    if v > 0.3:
        v = max(v * value, floor)
    return hsv(h, s, v)


def _draw_flat(draw: ImageDraw.ImageDraw, parts: Sequence[Placed], colour: Callable[[RGB], Ink],
               outline: RGB | None = None, outline_width: int = 0) -> None:
    """Filled parts with flat colours; strokes get an outline by drawing them wider underneath."""
    for p in parts:
        fill = colour(p.prim.colour)
        if p.prim.closed:
            draw.polygon(_flat(p.xy), fill=fill, outline=outline, width=outline_width if outline else 1)
        else:
            w = max(1, round(p.width))
            if outline is not None:
                draw.line(_flat(p.xy), fill=outline, width=w + 2 * outline_width, joint="curve")
            draw.line(_flat(p.xy), fill=fill, width=w, joint="curve")


def _darker(colour: RGB) -> RGB:
    return (int(colour[0] * 0.6), int(colour[1] * 0.6), int(colour[2] * 0.6))


def _bbox(parts: Sequence[Placed]) -> tuple[float, float, float]:
    """Centre x, centre y and half-extent (px) of the placed parts."""
    pts = np.concatenate([p.xy for p in parts])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, float(max(hi - lo)) / 2 + 1.0


def render_real(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Photo-like: background, soft shadow, shaded filled object among distractors, occluder, light, pixel noise."""
    v, c, size = scene.variant, scene.canvas, scene.size
    # Backgrounds are smooth, so they are made at the output size; only the objects are drawn on
    # the large canvas, on black with a coverage mask, and reduced: a premultiplied-alpha layer.
    ground = Image.fromarray(BACKGROUNDS[pick_weighted(style, v.backgrounds)](style, size))
    cx, cy, r = _bbox(scene.objects)
    shadow = [v / SUPERSAMPLE for v in (cx - r * 0.8, cy + r * 0.75, cx + r * 0.8, cy + r)]
    ImageDraw.Draw(ground, "RGBA").ellipse(shadow, fill=(0, 0, 0, 50))
    layer, cover, mask = Image.new("RGB", (c, c)), Image.new("L", (c, c)), Image.new("L", (c, c))
    draw, cdraw, mdraw = ImageDraw.Draw(layer), ImageDraw.Draw(cover), ImageDraw.Draw(mask)
    for parts in scene.distractors:
        _draw_flat(draw, parts, lambda col: col)
        _draw_flat(cdraw, parts, lambda col: 255)
    for p in scene.objects:
        fill = p.prim.colour
        if p.prim.closed:
            draw.polygon(_flat(p.xy), fill=fill, outline=_darker(fill), width=1)
            mdraw.polygon(_flat(p.xy), fill=255)
        else:
            w = max(1, round(p.width))
            draw.line(_flat(p.xy), fill=fill, width=w, joint="curve")
            mdraw.line(_flat(p.xy), fill=255, width=w, joint="curve")
    theta = style.uniform(0, 2 * math.pi)
    _shade(layer, mask, cx, cy, r, math.cos(theta), math.sin(theta))
    cover = ImageChops.lighter(cover, mask)
    if style.random() < v.occlusion:
        _occlude(draw, ImageDraw.Draw(cover), style, cx, cy, r)
    behind = ImageChops.multiply(ground, Image.merge("RGB", (ImageChops.invert(_reduce(cover)),) * 3))
    img = ImageChops.add(_reduce(layer), behind)
    gain = np.array(v.tint, dtype=np.float32) * np.float32(style.uniform(*v.brightness))
    arr = np.asarray(img, dtype=np.float32) * gain
    arr += _noise(noise, arr.shape) * np.float32(style.uniform(*v.noise))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _shade(img: Image.Image, mask: Image.Image, cx: float, cy: float, r: float, lx: float, ly: float) -> None:
    """Light the masked object in place from direction (lx, ly), with a highlight on the lit side:
    flat fills then read as rounded 3-d surfaces. The light is smooth, so it is computed on a
    coarse grid over the object's bounding box and enlarged."""
    x0, y0 = max(0, int(cx - r)), max(0, int(cy - r))
    x1, y1 = min(img.width, int(cx + r) + 1), min(img.height, int(cy + r) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    box = (x0, y0, x1, y1)
    xs = np.linspace(x0, x1, _LIGHT_GRID, dtype=np.float32)
    ys = np.linspace(y0, y1, _LIGHT_GRID, dtype=np.float32)
    u = ((xs - cx) * (lx / r))[None, :] + ((ys - cy) * (ly / r))[:, None]
    spot = np.float32(0.3 * r)
    hx, hy = cx - 0.45 * r * lx, cy - 0.45 * r * ly
    highlight = np.exp(-(((ys - hy) / spot) ** 2))[:, None] * np.exp(-(((xs - hx) / spot) ** 2))[None, :]
    size = (x1 - x0, y1 - y0)
    light, shine = _enlarge(255 * (0.78 - 0.22 * u), size), _enlarge(50 * highlight, size)
    img.paste(ImageChops.add(ImageChops.multiply(img.crop(box), light), shine), box, mask.crop(box))


def _enlarge(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A grey RGB image of the float grid ``values`` (0-255, clipped), enlarged bilinearly to ``size``."""
    grey = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return Image.merge("RGB", (grey,) * 3)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """float32 [512, 512, 3] standard normal samples from a fixed seed (the same in every process)."""
    return np.random.default_rng(0).standard_normal((512, 512, 3), dtype=np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal pixel noise of ``shape`` (h, w, 3): a window of the bank at a random offset,
    which is much faster than drawing fresh samples per image."""
    bank = _noise_bank()
    h, w = shape[0], shape[1]
    oy, ox = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
    return bank[oy:oy + h, ox:ox + w]


def _occlude(draw: ImageDraw.ImageDraw, cover: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float,
             cy: float, r: float) -> None:
    """A plain blob (a hand, a post, a leaf) covering one side of the object, on the layer and its cover."""
    side = rng.uniform(0, 2 * math.pi)
    ox, oy = cx + math.cos(side) * r * 0.9, cy + math.sin(side) * r * 0.9
    size = r * rng.uniform(0.4, 0.6)
    colour = hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
    box = [ox - size, oy - size, ox + size, oy + size]
    blob = ImageDraw.ImageDraw.ellipse if rng.random() < 0.5 else ImageDraw.ImageDraw.rectangle
    blob(draw, box, fill=colour)
    blob(cover, box, fill=255)


@functools.lru_cache(maxsize=8)
def _hatch(canvas: int, period: int) -> Image.Image:
    """L image: 255 on diagonal hatching lines ``period`` px apart, 0 elsewhere."""
    y, x = np.mgrid[0:canvas, 0:canvas]
    return Image.fromarray(np.where((x + y) % period == 0, 255, 0).astype(np.uint8))


def _outline_path(p: Placed) -> list[np.ndarray]:
    """The strokes that outline a part: its closed contour, or both edges of a thick stroke."""
    if p.prim.closed:
        return [_closed(p.xy)]
    if p.width < 3.0:
        return [p.xy]
    d = np.diff(p.xy, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    normals = np.concatenate([n[:1], (n[:-1] + n[1:]) / 2, n[-1:]], axis=0) * (p.width / 2)
    return [_closed(np.concatenate([p.xy + normals, (p.xy - normals)[::-1]], axis=0))]


def render_sketch(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Pencil sketch: doubled, jittered grey outlines on white paper, hatching on some parts."""
    c = scene.canvas
    img = Image.new("L", (c, c), int(style.integers(240, 256)))
    draw = ImageDraw.Draw(img)
    pen = int(style.integers(30, 100))
    width = max(1, round(c / 64))
    jitter = c * 0.006
    for p in scene.objects:
        dark = sum(p.prim.colour) < 200
        if p.prim.closed and (dark or (_extent(p.xy) > c * 0.2 and style.random() < 0.35)):
            mask = Image.new("L", (c, c), 0)
            ImageDraw.Draw(mask).polygon(_flat(p.xy), fill=255)
            img.paste(pen + 40, mask=ImageChops.multiply(mask, _hatch(c, 3 if dark else 5)))
        for path in _outline_path(p):
            for stroke in range(2):
                xy = path + style.normal(0.0, jitter, path.shape) + style.normal(0.0, jitter, 2)
                draw.line(_flat(xy), fill=pen + 35 * stroke, width=width if stroke == 0 else 1, joint="curve")
    return _reduce(img).convert("RGB")


def render_clipart(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Clip art: flat saturated colours, thick black outlines, plain light background."""
    c = scene.canvas
    bg = (250, 250, 250) if style.random() < 0.4 else hsv(style.uniform(0, 1), style.uniform(0.1, 0.25), 0.98)
    img = Image.new("RGB", (c, c), bg)
    draw = ImageDraw.Draw(img)
    if style.random() < 0.4:
        cx, cy, r = _bbox(scene.objects)
        badge = hsv(style.uniform(0, 1), style.uniform(0.15, 0.3), 0.95)
        draw.ellipse([cx - r * 1.05, cy - r * 1.05, cx + r * 1.05, cy + r * 1.05], fill=badge)
    _draw_flat(draw, scene.objects, lambda col: _restyle(col, 1.4, 1.15, floor=0.7), BLACK, max(2, round(c / 36)))
    return _reduce(img)


def render_painting(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Painting: soft colour blobs as the ground, a layered soft-edged object, short brush strokes, blur."""
    c = scene.canvas
    hue = style.uniform(0, 1)
    # blobs drawn small, blurred there and enlarged: a strong blur at a sixteenth of the cost
    tiny = max(8, c // 4)
    ground = Image.new("RGB", (tiny, tiny), hsv(hue, style.uniform(0.2, 0.5), style.uniform(0.5, 0.85)))
    draw = ImageDraw.Draw(ground)
    for _ in range(int(style.integers(5, 10))):
        x, y, r = style.uniform(0, tiny), style.uniform(0, tiny), style.uniform(0.15, 0.4) * tiny
        colour = hsv(hue + style.uniform(-0.2, 0.2), style.uniform(0.2, 0.6), style.uniform(0.35, 0.95))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    img = ground.filter(ImageFilter.GaussianBlur(tiny / 10)).resize((c, c), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img, "RGBA")
    shift = c * 0.015
    for layer in range(3):
        offset = style.normal(0.0, shift, 2)
        moved = [Placed(p.prim, p.xy + offset, p.width * 1.2) for p in scene.objects]
        alpha = 255 if layer == 2 else 120
        _draw_flat(draw, moved, lambda col: (*_restyle(col, 0.8, 0.95), alpha))
    arr = np.asarray(img)
    n = c * c // 160
    xs, ys = style.integers(0, c, n), style.integers(0, c, n)
    angles = style.uniform(0, math.pi) + style.normal(0.0, 0.3, n)
    half = style.uniform(0.015, 0.035, n) * c
    dx, dy = np.cos(angles) * half, np.sin(angles) * half
    ends = np.stack([xs - dx, ys - dy, xs + dx, ys + dy], axis=1).tolist()
    colours = np.clip(arr[ys, xs].astype(np.int32) + style.integers(-24, 25, (n, 3)), 0, 255).tolist()
    width = max(2, round(c / 32))
    for xy, col in zip(ends, colours):
        draw.line(xy, fill=tuple(col), width=width)
    return _reduce(img.filter(ImageFilter.GaussianBlur(0.7)))


def _nearest_start(path: np.ndarray, pen: np.ndarray, closed: bool) -> np.ndarray:
    """The path re-ordered to start where the pen is: a closed loop rotated, an open one maybe reversed."""
    if closed:
        k = int(np.argmin(np.sum((path - pen) ** 2, axis=1)))
        return _closed(np.roll(path, -k, axis=0))
    return path if np.sum((path[0] - pen) ** 2) <= np.sum((path[-1] - pen) ** 2) else path[::-1]


def render_quickdraw(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Quick, Draw! doodle: one thin black polyline through simplified outlines of the main parts."""
    c = scene.canvas
    parts = [p for p in scene.objects if not p.prim.detail] or scene.objects
    pen = parts[0].xy[0]
    path = []
    for p in parts:
        step = max(1, len(p.xy) // (8 if p.prim.closed else 5))
        simple = p.xy[::step] if p.prim.closed else np.concatenate([p.xy[:-1:step], p.xy[-1:]])
        simple = _nearest_start(simple, pen, p.prim.closed)
        path.append(simple)
        pen = simple[-1]
    xy = np.concatenate(path) + style.normal(0.0, c * 0.008, (sum(len(s) for s in path), 2))
    img = Image.new("L", (c, c), 255)
    ImageDraw.Draw(img).line(_flat(xy), fill=0, width=max(1, round(c / 64)), joint="curve")
    return _reduce(img).convert("RGB")


def render_infograph(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """Infographic: a small flat object beside grey text bars, coloured bullet icons and a header band."""
    c = scene.canvas
    img = Image.new("RGB", (c, c), hsv(style.uniform(0, 1), style.uniform(0.0, 0.08), 1.0))
    draw = ImageDraw.Draw(img)
    accent = hsv(style.uniform(0, 1), style.uniform(0.6, 0.9), style.uniform(0.6, 0.9))
    top = 0
    if style.random() < 0.75:
        top = round(c * style.uniform(0.1, 0.16))
        draw.rectangle([0, 0, c, top], fill=accent)
        draw.rectangle([c * 0.08, top * 0.35, c * style.uniform(0.4, 0.8), top * 0.65], fill=(255, 255, 255))
    # text goes on the half the object leaves free, a small bar chart under the object
    text_left = scene.pose.cx > 0
    x0, x1 = (c * 0.06, c * 0.48) if text_left else (c * 0.54, c * 0.96)
    row = c / 14
    y = top + row * 0.8
    while y + row * 0.5 < c * 0.95:
        if style.random() < 0.3:
            draw.ellipse([x0, y, x0 + row * 0.5, y + row * 0.5], fill=hsv(style.uniform(0, 1), 0.7, 0.9))
        length = (x1 - x0 - row * 0.8) * style.uniform(0.4, 1.0)
        shade = int(style.integers(90, 190))
        draw.rectangle([x0 + row * 0.8, y, x0 + row * 0.8 + length, y + row * 0.4], fill=(shade, shade, shade))
        y += row
    _draw_flat(draw, scene.objects, lambda col: _restyle(col, 1.2, 1.05), (60, 60, 60), max(1, round(c / 96)))
    ox = c * (0.75 if text_left else 0.25)
    for k in range(int(style.integers(0, 4))):
        h = c * style.uniform(0.05, 0.14)
        bx = ox - c * 0.12 + k * c * 0.07
        draw.rectangle([bx, c * 0.95 - h, bx + c * 0.05, c * 0.95], fill=hsv(style.uniform(0, 1), 0.7, 0.85))
    return _reduce(img)


def render_drawing_photo(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """A photo of a drawing: a sketch on a tilted sheet of paper lying in a photo-like scene."""
    size = scene.size
    ground = Image.fromarray(BACKGROUNDS[pick_weighted(style, scene.variant.backgrounds)](style, size))
    sheet = render_sketch(scene, style, noise)
    side = int(size * style.uniform(0.62, 0.8))
    sheet = sheet.resize((side, side), Image.BILINEAR).rotate(float(style.normal(0.0, 12.0)), Image.BILINEAR,
                                                               expand=True, fillcolor=(0, 0, 0))
    mask = sheet.convert("L").point(lambda x: 255 if x > 0 else 0)
    at = ((size - sheet.width) // 2 + int(style.integers(-3, 4)), (size - sheet.height) // 2 + int(style.integers(-3, 4)))
    ImageDraw.Draw(ground, "RGBA").rectangle([at[0] + 2, at[1] + 2, at[0] + sheet.width + 1, at[1] + sheet.height + 1],
                                             fill=(0, 0, 0, 60))
    ground.paste(sheet, at, mask)
    arr = np.asarray(ground, dtype=np.float32) * np.float32(style.uniform(0.8, 1.05))
    arr += _noise(noise, arr.shape) * np.float32(style.uniform(2.0, 6.0))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_stylised_photo(scene: Scene, style: np.random.Generator, noise: np.random.Generator) -> Image.Image:
    """A heavily stylised photo: the photo, posterised to a few tones with darkened edges (a filter
    that makes it look half drawn)."""
    from PIL import ImageOps

    img = ImageOps.posterize(render_real(scene, style, noise), int(style.integers(2, 4)))
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda x: 255 - min(255, 3 * x))
    return ImageChops.multiply(img, Image.merge("RGB", (edges,) * 3))


#: domain -> renderer.
DOMAINS: dict[str, Renderer] = {
    "clipart": render_clipart,
    "infograph": render_infograph,
    "painting": render_painting,
    "quickdraw": render_quickdraw,
    "real": render_real,
    "sketch": render_sketch,
    "drawing-photo": render_drawing_photo,
    "stylised-photo": render_stylised_photo,
}


def render(spec: ImageSpec, size: int) -> Image.Image:
    """The RGB image of ``spec``, ``size`` x ``size`` pixels (drawn on a canvas SUPERSAMPLE times larger)."""
    canvas = SUPERSAMPLE * size
    objects = place(CLASSES[spec.class_name].draw(np.random.default_rng(spec.shape_seed)), spec.pose, canvas)
    distractors = [
        place(CLASSES[name].draw(np.random.default_rng(seed)), pose, canvas) for name, seed, pose in spec.distractors
    ]
    scene = Scene(objects, distractors, canvas, size, VARIANTS[spec.variant], spec.pose)
    img = DOMAINS[spec.domain](scene, np.random.default_rng(spec.style_seed), np.random.default_rng(spec.noise_seed))
    if spec.gain != (1.0, 1.0, 1.0):
        arr = np.asarray(img, dtype=np.float32) * np.asarray(spec.gain, dtype=np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """JPEG bytes of ``img`` at ``quality`` (deterministic for the same pixels and quality)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
