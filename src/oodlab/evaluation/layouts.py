"""How the images of an evaluation folder are listed and labelled (the ``LAYOUTS`` registry).

Every layout maps an image to a class by the *identifier* in its path (a wnid folder, a DomainNet
class folder, an ImageNet-V2 index folder), looked up in the spec's label space; folder order is
never used as the label. Sample keys are paths relative to the dataset root with ``/``
separators, the keys ``oodlab embed`` gives the same folder, so predictions join with
neighbours. Images are ordered as torchvision's ``ImageFolder`` orders them (or as the list file
lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from oodlab.data.folders import is_image_file, is_image_folder, scan_image_folder
from oodlab.evaluation.classes import ClassSet
from oodlab.evaluation.specs import DatasetSpec
from oodlab.utils.errors import InputError


@dataclass(frozen=True)
class Sample:
    """One evaluation image: ``key`` relative to the dataset root, ``label`` in the label space."""

    key: str
    path: Path
    label: int


def _unknown(root: Path, spec: DatasetSpec, folders: list[str], what: str) -> InputError:
    return InputError(
        root,
        f"{len(folders)} {what} are not classes of spec {spec.name!r} (e.g. {folders[:3]})",
        f"check that the path holds a {spec.name} dataset ({spec.description}), or pick another spec",
    )


def class_folders(root: Path, spec: DatasetSpec, classes: ClassSet) -> list[Sample]:
    """``root/{class id}/**/image``: the folder name (wnid, DomainNet class) is the class id."""
    index = scan_image_folder(root)
    unknown = [c for c in index.classes if c not in classes.index]
    if unknown and spec.unknown_folders == "error":
        raise _unknown(root, spec, unknown, "class folders")
    return [Sample(s.key, s.path, classes.index[s.class_name]) for s in index.samples if s.class_name in classes.index]


def index_folders(root: Path, spec: DatasetSpec, classes: ClassSet) -> list[Sample]:
    """``root/{i}/**/image`` with ``i`` in 0..N-1 the index into the label space (ImageNet-V2).

    The folders are read as integers, so ``10`` is class 10 although ``ImageFolder`` would sort
    it before ``2``.
    """
    index = scan_image_folder(root)
    bad = [c for c in index.classes if not c.isdigit() or int(c) >= len(classes)]
    if bad:
        raise InputError(
            root,
            f"folders {bad[:3]} are not class indices 0..{len(classes) - 1}",
            f"spec {spec.name!r} expects integer class folders (ImageNet-V2's layout); "
            "use imagenet-val for wnid folders",
        )
    return [Sample(s.key, s.path, int(s.class_name)) for s in index.samples]


def domainnet(root: Path, spec: DatasetSpec, classes: ClassSet) -> list[Sample]:
    """DomainNet, given as any of: the DomainNet root (reads ``{domain}_{split}.txt``), a split
    list file itself, or a domain folder of class folders (e.g. a clean copy).

    Keys of listed images are relative to the DomainNet root (``sketch/lion/x.jpg``, as
    ``oodlab embed DOMAINNET_ROOT`` names them); of a domain folder, relative to that folder.

    List lines are ``{domain}/{class}/{file} {label}``; the class folder gives the label (the
    list's integer is not used: it is only an index in one particular class order).
    """
    if root.is_file():
        return _domainnet_list(root, root.parent, spec, classes)
    listing = root / f"{spec.domain}_{spec.split}.txt"
    if spec.domain and listing.is_file():
        return _domainnet_list(listing, root, spec, classes)
    if is_image_folder(root):
        return class_folders(root, spec, classes)
    raise InputError(
        root,
        f"is neither a DomainNet root with {spec.domain}_{spec.split}.txt, a split list, nor a folder of class folders",
        "pass the DomainNet root, the list file or the domain folder",
    )


def _domainnet_list(listing: Path, base: Path, spec: DatasetSpec, classes: ClassSet) -> list[Sample]:
    samples: list[Sample] = []
    unknown: set[str] = set()
    for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        rel = parts[0]
        segments = rel.split("/")
        if len(segments) < 3 or not is_image_file(rel):
            raise InputError(listing, f"line {n}: {rel!r} is not {{domain}}/{{class}}/{{image}}", "fix the list")
        folder = segments[1]
        if folder not in classes.index:
            unknown.add(folder)
            continue
        label = classes.index[folder]
        path = base / rel
        if not path.is_file():
            raise InputError(listing, f"line {n}: {path} does not exist", "fix the list or restore the file")
        samples.append(Sample(rel, path, label))
    if unknown and spec.unknown_folders == "error":
        raise _unknown(listing, spec, sorted(unknown), "class folders in the list")
    return samples


def objectnet(root: Path, spec: DatasetSpec, classes: ClassSet) -> list[Sample]:
    """ObjectNet 1.0: ``images/{folder}/*.png``; only the folders of the label space are read."""
    from oodlab.evaluation.objectnet import objectnet_root

    images = objectnet_root(root) / "images"
    prefix = images.relative_to(root).as_posix()  # keys relative to the path given, as `oodlab embed PATH` names them
    return [Sample(f"{prefix}/{s.key}", s.path, s.label) for s in class_folders(images, spec, classes)]


#: layout name -> lister (root, spec, label space) -> samples in a fixed order
LAYOUTS: dict[str, Callable[[Path, DatasetSpec, ClassSet], list[Sample]]] = {
    "class_folders": class_folders,
    "index_folders": index_folders,
    "domainnet": domainnet,
    "objectnet": objectnet,
}
