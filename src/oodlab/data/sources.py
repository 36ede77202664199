"""Image data: what a stage's ``data`` argument names, resolved by one rule for every stage.

An item of ``data`` is a path, a quoted brace pattern (``pool/{00000..00099}.tar``) or a glob, and
each path it expands to is exactly one of:

- ``shards``: a ``.tar`` file, or a folder holding ``*.tar`` files (webdataset shards as
  img2dataset writes them; a folder's tars are taken in name order);
- ``folder``: an ImageFolder root (class sub-folders holding images; keys are paths relative to
  the root, labels the sorted class folders, as torchvision's ``ImageFolder``);
- ``files``: an image file, or a ``.txt`` list of image paths (one per line).

A folder holding both tars and class folders with images is ambiguous and refused (name the tars
or the class folders instead); a path that is none of these is refused; so is a shard, folder or
file reached twice (e.g. a folder and one of its tars): a sample read twice would be embedded,
copied or trained on twice. Each stage says which kinds it reads (``kinds``).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from braceexpand import braceexpand

from oodlab.data.folders import is_image_file, is_image_folder
from oodlab.utils.errors import InputError

SHARDS, FOLDER, FILES = "shards", "folder", "files"
KINDS = (SHARDS, FOLDER, FILES)
_WHAT = {SHARDS: "webdataset shards", FOLDER: "an ImageFolder root", FILES: "image files or .txt lists"}


@dataclass(frozen=True)
class DataSource:
    """One resolved input: ``path`` is a tar (``shards``), an ImageFolder root (``folder``) or an
    image / ``.txt`` list file (``files``); ``given`` is the item of ``data`` it came from."""

    kind: str
    path: Path
    given: str


def _expand(item: str) -> list[Path]:
    """Paths of one item: its brace expansions, each a path or a glob (sorted); all must exist."""
    out: list[Path] = []
    for part in braceexpand(item):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        matches = [m for m in matches if Path(m).exists()]
        if not matches:
            raise InputError(part, "matches no file", "check the path; quote brace patterns so the shell passes them through")
        out += [Path(m) for m in matches]
    return out


def _classify(path: Path, given: str) -> list[DataSource]:
    if path.is_file():
        if path.name.endswith(".tar"):
            return [DataSource(SHARDS, path, given)]
        if is_image_file(path) or path.suffix.lower() == ".txt":
            return [DataSource(FILES, path, given)]
        raise InputError(path, "is neither a .tar shard, an image nor a .txt list of images",
                         "pass webdataset shards, an ImageFolder root, images or image lists")
    tars = sorted(path.glob("*.tar"))
    if tars and is_image_folder(path):
        raise InputError(path, "holds both .tar shards and class folders with images, so it names two datasets",
                         f"pass the shards as '{path}/*.tar' or the class folders' parent on its own")
    if tars:
        return [DataSource(SHARDS, t, given) for t in tars]
    if is_image_folder(path):
        return [DataSource(FOLDER, path, given)]
    raise InputError(path, "is neither a folder of .tar shards nor an ImageFolder root (class folders with images)",
                     "pass webdataset shards, an ImageFolder root, images or image lists")


def given_paths(data: Any) -> list[Any]:
    """The items of ``data`` (one item or several) as given: a stage may not write inside any of
    them (a folder of tars is an input as much as its tars)."""
    return [data] if isinstance(data, (str, Path)) else list(data)


def resolve_data(data: str | Path | Sequence[str | Path], *, kinds: Sequence[str] = KINDS) -> list[DataSource]:
    """Resolve image data into sources, in the given order (see the module docstring).

    Args:
        data: one item or several: paths, quoted brace patterns, globs.
        kinds: the kinds the calling stage reads (a subset of :data:`KINDS`).

    Returns:
        one :class:`DataSource` per tar, ImageFolder root or file.

    Raises:
        InputError: nothing given, a pattern matching nothing, a path of no kind or of a kind the
            stage does not read, an ambiguous folder, a source reached twice.
    """
    items = given_paths(data)
    wanted = " or ".join(_WHAT[k] for k in kinds)
    if not items:
        raise InputError(None, "no image data given", f"pass {wanted}")
    out: list[DataSource] = []
    seen: dict[Path, str] = {}
    for item in items:
        for path in _expand(str(item)):
            for source in _classify(path, str(item)):
                if source.kind not in kinds:
                    raise InputError(source.path, f"is {_WHAT[source.kind]}, but this stage reads {wanted}",
                                     f"pass {wanted}")
                real = source.path.resolve()
                if real in seen:
                    raise InputError(source.path, f"is given twice (by {seen[real]!r} and {str(item)!r})",
                                     "name each shard, folder or file once")
                seen[real] = str(item)
                out.append(source)
    return out


def shard_paths(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """The tars of shard-only data, in order (see :func:`resolve_data`)."""
    return [s.path for s in resolve_data(data, kinds=(SHARDS,))]
