"""ObjectNet's label space, read from the mapping files the dataset ships (not bundled).

ObjectNet 1.0 (``objectnet-1.0/``) holds ``images/{folder}/*.png`` and ``mappings/`` with
``folder_to_objectnet_label.json`` (folder -> ObjectNet class name) and
``objectnet_to_imagenet_1k.json`` (ObjectNet class name -> ``"ImageNet name; ..."``). The 113
ObjectNet classes that overlap ImageNet-1k are the keys of the second file; as in CLIP_benchmark
(and wise-ft) they are ordered by folder name and prompted with their lower-cased ObjectNet
name, and the images of the other 200 classes are not evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

from oodlab.evaluation.classes import ClassSet
from oodlab.utils.errors import InputError

FOLDER_TO_LABEL = "folder_to_objectnet_label.json"
TO_IMAGENET = "objectnet_to_imagenet_1k.json"


def objectnet_root(path: Path) -> Path:
    """The ``objectnet-1.0`` folder: ``path`` itself or its child of that name.

    Raises:
        InputError: neither holds ``mappings/`` and ``images/``.
    """
    for candidate in (path, path / "objectnet-1.0"):
        if (candidate / "mappings").is_dir() and (candidate / "images").is_dir():
            return candidate
    raise InputError(
        path,
        "is not an ObjectNet 1.0 folder (no mappings/ and images/ in it or in objectnet-1.0/)",
        "pass the extracted objectnet-1.0 folder; for wnid folders restricted to ImageNet classes use "
        "the objectnet-subsample spec",
    )


def objectnet_classes(path: Path) -> ClassSet:
    """The 113 ObjectNet classes that map to ImageNet-1k: ids = image folders (sorted), names =
    lower-cased ObjectNet class names."""
    mappings = objectnet_root(path) / "mappings"
    files = {}
    for name in (FOLDER_TO_LABEL, TO_IMAGENET):
        try:
            files[name] = json.loads((mappings / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(mappings / name, f"cannot be read ({err})", "restore the ObjectNet mapping file") from err
    label_to_folder = {label: folder for folder, label in files[FOLDER_TO_LABEL].items()}
    missing = sorted(set(files[TO_IMAGENET]) - set(label_to_folder))
    if missing:
        raise InputError(mappings / FOLDER_TO_LABEL, f"has no folder for ObjectNet classes {missing[:3]}",
                         "restore the original mapping files")
    folders = sorted(label_to_folder[label] for label in files[TO_IMAGENET])
    names = tuple(files[FOLDER_TO_LABEL][f].lower() for f in folders)
    return ClassSet(names, tuple(folders))
