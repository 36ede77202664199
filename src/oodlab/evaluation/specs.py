"""Declarative dataset specifications: which label space, how labels are read, which prompts.

A spec is data, not code: the registries :data:`SPECS` (name -> spec), and in
:mod:`oodlab.evaluation.datasets` ``VOCABULARIES`` (label spaces) and ``LAYOUTS`` (how a
folder's images get their labels) hold every choice. ``-clean`` variants restrict the label space
to the classes that still have images (the ICLR 2025 clean test sets).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from oodlab.utils.errors import InputError

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


@dataclass(frozen=True)
class DatasetSpec:
    """How to evaluate one kind of dataset.

    Attributes:
        name: registry name (``imagenet-r``, ``domainnet-sketch-clean``, ``world:eval/val``).
        description: one line for listings and errors.
        vocabulary: key of ``VOCABULARIES``: the label space (ordered classes, prompt names, ids).
        layout: key of ``LAYOUTS``: how images and their labels are listed under the path.
        templates: key of :data:`oodlab.evaluation.templates.TEMPLATE_SETS`.
        unknown_folders: ``error`` (a class folder outside the label space is a mistake) or
            ``skip`` (the dataset holds more classes than are evaluated, e.g. ``imagenet-200``).
        present_only: restrict the label space to the classes that have images (clean sets,
            ``objectnet-subsample``); labels are re-indexed in the label space's order.
        domain: the DomainNet domain (names the split list ``{domain}_{split}.txt``).
        split: the DomainNet split read from such a list.
        world_dataset: the dataset inside a synthetic world (``eval/val``), for world specs.
    """

    name: str
    description: str
    vocabulary: str
    layout: str
    templates: str = "openai"
    unknown_folders: str = "error"
    present_only: bool = False
    domain: str | None = None
    split: str = "test"
    world_dataset: str | None = None


def _base_specs() -> dict[str, DatasetSpec]:
    specs = [
        DatasetSpec("imagenet-val", "ImageNet val: 1000 wnid folders", "imagenet", "class_folders"),
        DatasetSpec("imagenet-v2", "ImageNet-V2: integer folders 0..999 = ImageNet label index", "imagenet",
                    "index_folders"),
        DatasetSpec("imagenet-sketch", "ImageNet-Sketch: 1000 wnid folders", "imagenet", "class_folders"),
        DatasetSpec("imagenet-r", "ImageNet-R: 200 wnid folders, 200-class mask", "imagenet-r", "class_folders"),
        DatasetSpec("imagenet-a", "ImageNet-A: 200 wnid folders, 200-class mask", "imagenet-a", "class_folders"),
        DatasetSpec("imagenet-200", "ImageNet val restricted to ImageNet-R's 200 classes (other folders skipped)",
                    "imagenet-r", "class_folders", unknown_folders="skip"),
        DatasetSpec("objectnet", "ObjectNet 1.0 with its mapping files: 113 ImageNet-overlapping classes, "
                    "ObjectNet names (CLIP_benchmark)", "objectnet", "objectnet", unknown_folders="skip"),
        DatasetSpec("objectnet-subsample", "ObjectNet as wnid folders restricted to ImageNet classes (clip-ood); "
                    "label space = the wnid folders present, ImageNet names", "imagenet", "class_folders",
                    present_only=True),
    ]
    specs += [
        DatasetSpec(f"domainnet-{d}", f"DomainNet {d}: the DomainNet root (reads {d}_test.txt), a split list, or "
                    "the domain folder; 345 classes", "domainnet", "domainnet", templates="openai+domainnet", domain=d)
        for d in DOMAINNET_DOMAINS
    ]
    out = {s.name: s for s in specs}
    for s in specs:
        out[f"{s.name}-clean"] = replace(
            s, name=f"{s.name}-clean", present_only=True,
            description=f"{s.description}; clean copy: only the classes that still have images",
        )
    return out


#: spec name -> spec
SPECS: dict[str, DatasetSpec] = _base_specs()

#: other names of the same specs (CLIP_benchmark's and clip-dg's dataset names)
ALIASES: dict[str, str] = {
    "imagenet1k": "imagenet-val",
    "imagenetv2": "imagenet-v2",
    "imagenet_sketch": "imagenet-sketch",
    **{f"dn-{d}": f"domainnet-{d}" for d in DOMAINNET_DOMAINS},
    **{f"dn-{d}-clean": f"domainnet-{d}-clean" for d in DOMAINNET_DOMAINS},
}

#: the spec name that means "a dataset of a synthetic world, described by its world.json"
WORLD = "world"


def registered_spec(name: str) -> DatasetSpec | None:
    """The spec registered under ``name`` or one of its aliases (None if there is none)."""
    return SPECS.get(ALIASES.get(name, name))


def unknown_spec_error(name: str, spec: str | None) -> InputError:
    names = ", ".join(sorted(SPECS))
    what = (f"spec {spec!r} is unknown" if spec
            else f"dataset {name!r} is not the name of a spec and is not in a synthetic world")
    return InputError(
        None,
        what,
        f"name the dataset after a spec or pass --spec {name}=SPEC (specs={{{name!r}: SPEC}}); "
        f"specs: {names}, and {WORLD!r} for a synthetic world's dataset",
    )
