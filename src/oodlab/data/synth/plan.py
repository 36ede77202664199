"""The plan of a world: what every index of every dataset holds, and the planted near-duplicates.

Everything here is a pure function of (config, seed, dataset, index): an image's random choices
come from a generator seeded with ``stable_seed(seed, dataset, index)``, so any image can be
re-created anywhere (a worker process, or a near-duplicate copy that needs its source's spec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Union

import numpy as np

from oodlab.data.shard_writer import make_key
from oodlab.data.synth.captions import Caption, make_caption
from oodlab.data.synth.classes import class_names
from oodlab.data.synth.config import WorldConfig
from oodlab.data.synth.domains import AMBIGUOUS_DOMAINS, DOMAIN_NAMES, RENDITION_DOMAINS, ImageSpec
from oodlab.data.synth.primitives import Pose, pick_weighted
from oodlab.data.synth.variants import VARIANTS, Variant
from oodlab.utils.hashing import stable_seed

POOL = "pool"
#: the world's description, written last by the generator
WORLD_JSON = "world.json"
IMAGENET_TRAIN = "imagenet-train"
DOMAINNET = "domainnet"
_SEED_BOUND = 2**62
#: JPEG qualities of near-duplicate copies (never the originals' quality).
_COPY_QUALITIES = (75, 80, 85, 95)


@dataclass(frozen=True)
class EvalSet:
    """An eval set of the ImageNet family: its domains (cycled within each class), variant and class subset."""

    domains: tuple[str, ...]
    variant: str
    subset: bool
    mirrors: str


#: eval set name -> definition; written under ``eval/{name}/``.
EVAL_SETS: dict[str, EvalSet] = {
    "val": EvalSet(("real",), "standard", False, "ImageNet val: photos like imagenet-train"),
    "v2": EvalSet(("real",), "shifted", False, "ImageNet-V2: photos with shifted background and lighting"),
    "sketch": EvalSet(("sketch",), "standard", False, "ImageNet-Sketch: pencil sketches"),
    "r": EvalSet(RENDITION_DOMAINS, "standard", True, "ImageNet-R: clipart, infograph, painting, quickdraw, sketch"),
    "a": EvalSet(("real",), "clutter", True, "ImageNet-A: cluttered photos with distractors and occlusion"),
    "objectnet": EvalSet(("real",), "unusual", True, "ObjectNet: unusual poses and backgrounds"),
}


def eval_dataset(name: str) -> str:
    """The dataset name of an eval set (``"eval/val"``), also its folder under the world."""
    return f"eval/{name}"


def wnid(class_index: int) -> str:
    """The ImageNet-style id of a class: 'n' + 8 digits."""
    return f"n{10_000_000 + class_index:08d}"


@dataclass(frozen=True)
class Item:
    """One image of a folder dataset: ``key`` is its path relative to the dataset root ('/' separators)."""

    dataset: str
    index: int
    class_index: int
    domain: str
    variant: str
    key: str
    split: str | None = None


@dataclass(frozen=True)
class FolderSet:
    """An ImageFolder dataset: ``per_class`` images of each class in ``classes`` under wnid folders."""

    name: str
    classes: tuple[int, ...]
    per_class: int
    domains: tuple[str, ...]
    variant: str

    def __len__(self) -> int:
        return len(self.classes) * self.per_class

    def item(self, index: int) -> Item:
        class_index = self.classes[index // self.per_class]
        j = index % self.per_class
        # shifting the cycle by class keeps each domain's classes balanced too
        domain = self.domains[(j + class_index) % len(self.domains)]
        w = wnid(class_index)
        return Item(self.name, index, class_index, domain, self.variant, f"{w}/{w}_{j}.jpg")

    def describe(self) -> dict[str, Any]:
        """The dataset's description in world.json."""
        return {"format": "imagefolder", "classes": list(self.classes),
                "domains": list(self.domains), "variant": self.variant}


@dataclass(frozen=True)
class DomainNetSet:
    """DomainNet: every domain x class, ``n_train`` then ``n_test`` images per (domain, class)."""

    class_folders: tuple[str, ...]
    n_train: int
    n_test: int
    name: str = DOMAINNET

    @property
    def per_domain(self) -> int:
        return len(self.class_folders) * (self.n_train + self.n_test)

    def __len__(self) -> int:
        return len(DOMAIN_NAMES) * self.per_domain

    def item(self, index: int) -> Item:
        domain = DOMAIN_NAMES[index // self.per_domain]
        class_index, j = divmod(index % self.per_domain, self.n_train + self.n_test)
        split = "train" if j < self.n_train else "test"
        # DomainNet's own file names: {domain}_{1-based class number:03d}_{number:06d}.jpg
        key = f"{domain}/{self.class_folders[class_index]}/{domain}_{class_index + 1:03d}_{j:06d}.jpg"
        return Item(self.name, index, class_index, domain, "standard", key, split)

    def describe(self) -> dict[str, Any]:
        """The dataset's description in world.json."""
        lists = [f"{d}_{s}.txt" for d in DOMAIN_NAMES for s in ("train", "test")]
        return {"format": "domainnet", "classes": list(range(len(self.class_folders))),
                "domains": list(DOMAIN_NAMES), "lists": lists, "train_per_class": self.n_train,
                "test_per_class": self.n_test}

    def list_lines(self, domain: str, split: str) -> list[str]:
        """The lines of ``{domain}_{split}.txt``: ``{relative path} {label}``."""
        base = DOMAIN_NAMES.index(domain) * self.per_domain
        lines = []
        for class_index in range(len(self.class_folders)):
            first = base + class_index * (self.n_train + self.n_test)
            js = range(self.n_train) if split == "train" else range(self.n_train, self.n_train + self.n_test)
            lines += [f"{self.item(first + j).key} {class_index}" for j in js]
        return lines


Layout = Union[FolderSet, DomainNetSet]


@dataclass(frozen=True)
class Copy:
    """A planted near-duplicate: a pool index re-rendering ``source_dataset``'s ``source_index``."""

    source_dataset: str
    source_index: int
    group: int


@dataclass(frozen=True)
class PoolSample:
    """One pool image: its key, spec and caption, and the copy it is (or None)."""

    key: str
    spec: ImageSpec
    caption: Caption
    copy: Copy | None


def _variant_pose(rng: np.random.Generator, v: Variant) -> Pose:
    angle = rng.normal(0.0, v.angle_sd) + (rng.uniform(90.0, 270.0) if rng.random() < v.turned else 0.0)
    return Pose(
        angle=float(angle),
        scale=float(rng.uniform(*v.scale)),
        aspect=float(rng.uniform(0.85, 1.15)),
        cx=float(rng.uniform(-v.offset, v.offset)),
        cy=float(rng.uniform(-v.offset, v.offset)),
        flip=bool(rng.random() < 0.5),
    )


def _infograph_pose(rng: np.random.Generator, v: Variant) -> Pose:
    # small (about 35% of the image) and to one side: the other side holds the text
    side = 1.0 if rng.random() < 0.5 else -1.0
    return Pose(
        angle=float(rng.normal(0.0, 5.0)),
        scale=float(rng.uniform(0.3, 0.38)),
        aspect=float(rng.uniform(0.9, 1.1)),
        cx=float(side * rng.uniform(0.42, 0.5)),
        cy=float(rng.uniform(0.0, 0.2)),
        flip=bool(rng.random() < 0.5),
    )


#: domain -> pose sampler, for domains that do not take the variant's pose.
_DOMAIN_POSES = {"infograph": _infograph_pose}


def _draw_spec(rng: np.random.Generator, names: tuple[str, ...], class_index: int, domain: str, variant: str,
               quality: int) -> ImageSpec:
    v = VARIANTS[variant]
    pose = _DOMAIN_POSES.get(domain, _variant_pose)(rng, v)
    shape_seed, style_seed, noise_seed = (int(s) for s in rng.integers(0, _SEED_BOUND, 3))
    distractors = []
    for _ in range(int(rng.integers(v.distractors[0], v.distractors[1] + 1)) if domain == "real" else 0):
        other = (class_index + 1 + int(rng.integers(len(names) - 1))) % len(names)
        a, r = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.6, 0.8)
        dpose = Pose(float(rng.normal(0.0, 20.0)), float(rng.uniform(0.22, 0.35)), 1.0, float(r * math.cos(a)),
                     float(r * math.sin(a)), bool(rng.random() < 0.5))
        distractors.append((names[other], int(rng.integers(0, _SEED_BOUND)), dpose))
    return ImageSpec(names[class_index], domain, variant, pose, shape_seed, style_seed, noise_seed, quality,
                     distractors=tuple(distractors))


def near_duplicate(spec: ImageSpec, rng: np.random.Generator, size: int) -> ImageSpec:
    """A near-duplicate of ``spec``, as a web copy of an image is (re-encoded, slightly resized or
    cropped): shifted by half an output pixel, scaled by up to +-1.5%, new pixel noise, colours
    jittered by up to +-4% per channel, another JPEG quality; class, domain, parts, colours,
    background and style (strokes, layout) are kept. ``size``: the image side in px.

    Shifts of whole pixels would move every stroke of a line drawing off its place and make a
    sketch's copy as different, pixel for pixel, as another sketch of its class.
    """
    px = 1.0 / size  # half an output pixel in canvas half-size units
    dx, dy = int(rng.choice([-1, 1])) * px, int(rng.integers(-1, 2)) * px
    pose = spec.pose.moved(dx, dy, 1.0 + float(rng.uniform(-0.015, 0.015)))
    qualities = [q for q in _COPY_QUALITIES if q != spec.quality]
    return replace(
        spec,
        pose=pose,
        noise_seed=int(rng.integers(0, _SEED_BOUND)),
        gain=tuple(float(g) for g in 1.0 + rng.uniform(-0.04, 0.04, 3)),
        quality=qualities[int(rng.integers(len(qualities)))],
        distractors=tuple((n, s, p.moved(dx, dy)) for n, s, p in spec.distractors),
    )


@dataclass(frozen=True)
class WorldPlan:
    """A world's layout: class names, folder datasets, and the planted near-duplicates.

    Attributes:
        layouts: dataset name (``"imagenet-train"``, ``"eval/val"``, ..., ``"domainnet"``) -> layout.
        pool_copies: pool index -> the image it copies.
        groups: (dataset, index) of each copied source image -> its duplicate group.
    """

    config: WorldConfig
    seed: int
    class_names: tuple[str, ...]
    layouts: dict[str, Layout]
    pool_copies: dict[int, Copy]
    groups: dict[tuple[str, int], int]

    def item_rng(self, dataset: str, index: int) -> np.random.Generator:
        """The generator of all random choices of image ``index`` of ``dataset``."""
        return np.random.default_rng(stable_seed(self.seed, dataset, index))

    def spec(self, dataset: str, index: int) -> ImageSpec:
        """The spec of an original image (pool: the image drawn fresh at that index, ignoring copies)."""
        rng = self.item_rng(dataset, index)
        if dataset == POOL:
            return self._fresh_pool_spec(rng)
        item = self.layouts[dataset].item(index)
        return _draw_spec(rng, self.class_names, item.class_index, self.domain_of(dataset, index, item.domain),
                          item.variant, self.config.jpeg_quality)

    def domain_of(self, dataset: str, index: int, intended: str) -> str:
        """The domain an eval image is drawn in: its set's (``intended``), or, for the world's
        ``eval_opposite_share`` of them, the opposite kind (a rendition in a photo set, a photo in
        a rendition set: the ~5% the ICLR 2025 paper found in the standard OOD test sets), or one
        of the ambiguous kinds for ``ambiguous_share``. Decided by a hash of the image's index, so
        the other images' random draws stay as they were."""
        cfg = self.config
        if not dataset.startswith("eval/") or (cfg.eval_opposite_share == 0 and cfg.ambiguous_share == 0):
            return intended
        u = (stable_seed(self.seed, "domain", dataset, index) % 1_000_003) / 1_000_003
        if u < cfg.eval_opposite_share:
            pick = stable_seed(self.seed, "opposite", dataset, index)
            return RENDITION_DOMAINS[pick % len(RENDITION_DOMAINS)] if intended == "real" else "real"
        if u < cfg.eval_opposite_share + cfg.ambiguous_share:
            return AMBIGUOUS_DOMAINS[stable_seed(self.seed, "ambiguous", dataset, index) % len(AMBIGUOUS_DOMAINS)]
        return intended

    def _fresh_pool_spec(self, rng: np.random.Generator) -> ImageSpec:
        cfg = self.config
        class_index = int(rng.integers(len(self.class_names)))
        if cfg.ambiguous_share > 0 and rng.random() < cfg.ambiguous_share:  # no draw for worlds without
            domain, variant = AMBIGUOUS_DOMAINS[int(rng.integers(len(AMBIGUOUS_DOMAINS)))], "standard"
        elif rng.random() < cfg.rendition_share:
            domain = (RENDITION_DOMAINS[int(rng.integers(len(RENDITION_DOMAINS)))] if cfg.rendition_domains is None
                      else pick_weighted(rng, cfg.rendition_domains))
            variant = "standard"
        else:
            domain, variant = "real", pick_weighted(rng, cfg.pool_real_variants)
        return _draw_spec(rng, self.class_names, class_index, domain, variant, cfg.jpeg_quality)

    def pool_key(self, index: int) -> str:
        """The 9-digit img2dataset key of pool image ``index``."""
        shard, i = divmod(index, self.config.pool_shard_size)
        return make_key(shard, i)

    def pool_sample(self, index: int) -> PoolSample:
        """Pool image ``index``: drawn fresh, or a near-duplicate of the image the plan copies there."""
        rng = self.item_rng(POOL, index)
        spec = self._fresh_pool_spec(rng)
        copy = self.pool_copies.get(index)
        if copy is not None:
            spec = near_duplicate(self.spec(copy.source_dataset, copy.source_index), rng, self.config.image_size)
        caption = make_caption(rng, spec.class_name, spec.domain, noisy_share=self.config.noisy_caption_share)
        return PoolSample(self.pool_key(index), spec, caption, copy)

    def group_of(self, dataset: str, index: int) -> int | None:
        """The duplicate group of an image (a copy's group, or a copied source's), else None."""
        if dataset == POOL and index in self.pool_copies:
            return self.pool_copies[index].group
        return self.groups.get((dataset, index))


def subset(seed: int, name: str, n_classes: int, share: float) -> tuple[int, ...]:
    """A deterministic sorted subset of ``round(share * n_classes)`` class indices for eval set ``name``."""
    k = max(1, round(share * n_classes))
    rng = np.random.default_rng(stable_seed(seed, "class-subset", name))
    return tuple(sorted(int(c) for c in rng.choice(n_classes, size=k, replace=False)))


def build_plan(config: WorldConfig, seed: int) -> WorldPlan:
    """Lay out the world of ``config`` and ``seed`` and choose the planted near-duplicates."""
    names = class_names(config.n_classes)
    everything = tuple(range(config.n_classes))
    layouts: dict[str, Layout] = {
        IMAGENET_TRAIN: FolderSet(IMAGENET_TRAIN, everything, config.imagenet_per_class, ("real",), "standard")
    }
    for name, ev in EVAL_SETS.items():
        classes = subset(seed, name, config.n_classes, config.subset_share) if ev.subset else everything
        layouts[eval_dataset(name)] = FolderSet(eval_dataset(name), classes, config.eval_per_class, ev.domains,
                                                ev.variant)
    layouts[DOMAINNET] = DomainNetSet(tuple(n.replace(" ", "_") for n in names), config.domainnet_train_per_class,
                                      config.domainnet_test_per_class)
    copies, groups = _plant_duplicates(config, seed, layouts)
    return WorldPlan(config, seed, names, layouts, copies, groups)


def _plant_duplicates(config: WorldConfig, seed: int,
                      layouts: dict[str, Layout]) -> tuple[dict[int, Copy], dict[tuple[str, int], int]]:
    """Choose the copied images and the pool indices that hold the copies.

    Eval sources are taken round-robin over the eval sets (1 copy each in the first round, then
    1-2), pool sources are pool indices that hold no copy (1-2 copies each).
    """
    rng = np.random.default_rng(stable_seed(seed, "duplicates"))
    n_copies = round(config.duplicate_share * config.pool_size)
    n_pool_copies = round(n_copies * config.pool_internal_duplicate_share)
    order = rng.permutation(config.pool_size)
    slots = iter(int(i) for i in order[:n_copies])
    copies: dict[int, Copy] = {}
    groups: dict[tuple[str, int], int] = {}

    def plant(dataset: str, index: int, k: int) -> None:
        group = len(groups)
        groups[(dataset, index)] = group
        for _ in range(k):
            copies[next(slots)] = Copy(dataset, index, group)

    queues = {eval_dataset(n): iter(int(i) for i in rng.permutation(len(layouts[eval_dataset(n)])))
              for n in EVAL_SETS}
    left, turn = n_copies - n_pool_copies, 0
    while left > 0 and queues:
        dataset = list(queues)[turn % len(queues)]
        index = next(queues[dataset], None)
        if index is None:
            del queues[dataset]
            continue
        k = min(left, 1 if turn < len(EVAL_SETS) else int(rng.integers(1, 3)))
        plant(dataset, index, k)
        left, turn = left - k, turn + 1
    sources = iter(int(i) for i in order[n_copies:])
    left = n_pool_copies
    while left > 0:
        k = min(left, int(rng.integers(1, 3)))
        plant(POOL, next(sources), k)
        left -= k
    return copies, groups
