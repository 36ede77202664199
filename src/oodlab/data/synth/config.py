"""Sizes and knobs of a synthetic world, and the named presets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    """One world's sizes and knobs.

    Attributes:
        name: the preset's name.
        n_classes: number of classes (the first N of the class registry).
        image_size: side of every image, px.
        pool_size: images in the web-like pool.
        pool_shard_size: pool samples per webdataset shard (at most 10,000: 4-digit key index).
        imagenet_per_class: images per class of ``imagenet-train``.
        eval_per_class: images per class of each eval set.
        domainnet_train_per_class, domainnet_test_per_class: images per class and domain of DomainNet.
        rendition_share: fraction of pool images drawn in a non-``real`` domain.
        rendition_domains: (domain, weight) mix of those renditions (None: evenly over the five).
        ambiguous_share: fraction of pool and eval images drawn as ambiguous (a photo of a
            drawing, a heavily stylised photo: ``AMBIGUOUS_DOMAINS``).
        eval_opposite_share: fraction of each eval set's images drawn in the opposite kind of
            domain (a rendition in a photo set, a photo in a rendition set).
        duplicate_share: planted near-duplicate copies, as a fraction of the pool.
        pool_internal_duplicate_share: fraction of the planted copies that copy a pool image (the rest copy
            eval images).
        noisy_caption_share: fraction of pool captions without the class name or with filler words.
        subset_share: fraction of the classes in the class-subset eval sets (r, a, objectnet).
        pool_real_variants: (variant, weight) mix of the pool's ``real`` images.
        chunk_size: images per task of the folder datasets.
        jpeg_quality: JPEG quality of every image that is not a near-duplicate copy.
    """

    name: str
    n_classes: int
    image_size: int
    pool_size: int
    pool_shard_size: int
    imagenet_per_class: int
    eval_per_class: int
    domainnet_train_per_class: int
    domainnet_test_per_class: int
    rendition_share: float = 0.2
    rendition_domains: tuple[tuple[str, float], ...] | None = None
    ambiguous_share: float = 0.0
    eval_opposite_share: float = 0.0
    duplicate_share: float = 0.03
    pool_internal_duplicate_share: float = 0.25
    noisy_caption_share: float = 0.1
    subset_share: float = 2 / 3
    pool_real_variants: tuple[tuple[str, float], ...] = (
        ("standard", 0.7),
        ("shifted", 0.12),
        ("clutter", 0.08),
        ("unusual", 0.1),
    )
    chunk_size: int = 250
    jpeg_quality: int = 90


#: preset name -> config. tiny is for tests (about a second), default for experiments.
PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(
        name="tiny",
        n_classes=8,
        image_size=32,
        pool_size=400,
        pool_shard_size=100,
        imagenet_per_class=10,
        eval_per_class=4,
        domainnet_train_per_class=3,
        domainnet_test_per_class=2,
        chunk_size=50,
    ),
    "small": WorldConfig(
        name="small",
        n_classes=12,
        image_size=64,
        pool_size=3000,
        pool_shard_size=500,
        imagenet_per_class=40,
        eval_per_class=12,
        domainnet_train_per_class=15,
        domainnet_test_per_class=6,
    ),
    "default": WorldConfig(
        name="default",
        n_classes=24,
        image_size=64,
        pool_size=12000,
        pool_shard_size=1000,
        imagenet_per_class=80,
        eval_per_class=25,
        domainnet_train_per_class=40,
        domainnet_test_per_class=15,
    ),
    # LAION-like: few renditions (mostly sketches) and few copies of test images, so that the
    # renditions' pruned fractions are about LAION-200M's; 12 classes, so that the similarity
    # model separates them (docs/world.md has the measured effect of each knob)
    "laion": WorldConfig(
        name="laion",
        n_classes=12,
        image_size=64,
        pool_size=8000,
        pool_shard_size=1000,
        imagenet_per_class=320,
        eval_per_class=20,
        domainnet_train_per_class=40,
        domainnet_test_per_class=15,
        rendition_share=0.06,
        rendition_domains=(("sketch", 0.6), ("clipart", 0.1), ("infograph", 0.1), ("painting", 0.1), ("quickdraw", 0.1)),
        duplicate_share=0.005,
        ambiguous_share=0.02,
        eval_opposite_share=0.05,
    ),
}
