"""ImageFolder trees and lists of image files.

Scanning follows torchvision's ``ImageFolder`` exactly (sorted class folders, sorted files, the
same case-insensitive extension list) so that label indices agree with every ImageNet tool; the
file order never depends on ``os.listdir`` order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from oodlab.utils.errors import InputError

#: torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str | Path) -> bool:
    return str(name).lower().endswith(IMG_EXTENSIONS)


@dataclass(frozen=True)
class FolderSample:
    """One image of a folder source: ``key`` is its path relative to the root ('/' separators)."""

    path: Path
    key: str
    label: int | None = None
    class_name: str | None = None


@dataclass
class ImageFolderIndex:
    """The classes (sorted folder names) and samples of an ImageFolder tree."""

    root: Path
    classes: list[str]
    samples: list[FolderSample]


def scan_image_folder(root: str | Path) -> ImageFolderIndex:
    """List an ImageFolder tree: ``root/{class}/**/{image}``.

    Returns:
        classes sorted by name (label = position), samples sorted by class then path.

    Raises:
        InputError: the folder is missing or holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder", "pass an ImageFolder root (one sub-folder per class)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    samples: list[FolderSample] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                if is_image_file(fname):
                    path = Path(dirpath) / fname
                    key = path.relative_to(root).as_posix()
                    samples.append(FolderSample(path, key, label, name))
    if not samples:
        raise InputError(root, "holds no images in class sub-folders", "check the path and the file extensions")
    return ImageFolderIndex(root, classes, samples)


def is_image_folder(path: str | Path) -> bool:
    """A folder whose sub-folders hold images (checked on the first sub-folder with files)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            for _, _, files in os.walk(entry.path):
                if any(is_image_file(f) for f in files):
                    return True
    return False


def read_file_list(paths: Iterable[str | Path]) -> list[FolderSample]:
    """Samples from image paths and/or ``.txt`` files listing one image path per line.

    Relative paths inside a list file are relative to the list file's folder. Keys are the paths
    as given (list-relative for list files).
    """
    out: list[FolderSample] = []
    for item in paths:
        item = Path(item)
        if item.suffix.lower() == ".txt":
            base = item.parent
            for n, line in enumerate(item.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path = Path(line) if Path(line).is_absolute() else base / line
                if not path.exists():
                    raise InputError(item, f"line {n}: {line} does not exist", "fix or remove the line")
                out.append(FolderSample(path, line))
        elif is_image_file(item):
            out.append(FolderSample(item, item.as_posix()))
        else:
            raise InputError(item, "is neither an image nor a .txt list of images", "pass images, lists, shards or folders")
    return out
