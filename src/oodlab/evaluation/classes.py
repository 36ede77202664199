"""Label spaces: the ordered classes of an evaluation, read from the package's data files.

A :class:`ClassSet` says, for every class index, the name used in the prompts and the folder
identifier under which its images are stored (an ImageNet wnid, a DomainNet class folder, a
synthetic-world wnid). Labels are always looked up by identifier, never by folder order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

from oodlab.utils.errors import InputError

RESOURCES = "resources"


@dataclass(frozen=True)
class ClassSet:
    """Ordered classes: class ``i`` is prompted as ``names[i]`` and stored in folders named ``ids[i]``."""

    names: tuple[str, ...]
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ids):
            raise ValueError(f"{len(self.names)} names but {len(self.ids)} ids")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("class ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """id -> class index."""
        return {c: i for i, c in enumerate(self.ids)}

    def subset(self, keep: Sequence[str]) -> "ClassSet":
        """The classes whose id is in ``keep``, in this set's order (a class mask).

        Raises:
            InputError: an id of ``keep`` is not in this set.
        """
        wanted = set(keep)
        unknown = sorted(wanted - set(self.ids))
        if unknown:
            raise InputError(None, f"class ids {unknown[:5]} are not in the label space", "check the class list")
        pairs = [(n, c) for n, c in zip(self.names, self.ids) if c in wanted]
        return ClassSet(tuple(n for n, _ in pairs), tuple(c for _, c in pairs))


def resource_lines(name: str) -> list[str]:
    """The non-empty lines of a data file in ``oodlab/resources`` (``#`` lines are comments)."""
    text = resources.files("oodlab").joinpath(RESOURCES, name).read_text(encoding="utf-8")
    return [line.rstrip("\n") for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> ClassSet:
    """ImageNet-1k: 1000 wnids in the standard label order, with OpenAI's cleaned class names."""
    wnids = resource_lines("imagenet_wnids.txt")
    names = resource_lines("imagenet_classnames.txt")
    if len(wnids) != 1000 or len(names) != 1000:
        raise RuntimeError("oodlab's ImageNet class files are damaged: reinstall oodlab")
    return ClassSet(tuple(names), tuple(wnids))


@functools.lru_cache(maxsize=None)
def imagenet_mask(resource: str) -> ClassSet:
    """The ImageNet classes listed (as wnids) in the data file ``resource``, in ImageNet order."""
    return imagenet_classes().subset(resource_lines(resource))


@functools.lru_cache(maxsize=None)
def domainnet_classes() -> ClassSet:
    """DomainNet's 345 classes in the official label order; prompt names have ``_`` -> space."""
    folders = resource_lines("domainnet_classes.txt")
    if len(folders) != 345:
        raise RuntimeError("oodlab's DomainNet class file is damaged: reinstall oodlab")
    return ClassSet(tuple(f.replace("_", " ") for f in folders), tuple(folders))
