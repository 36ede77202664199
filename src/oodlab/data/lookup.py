"""Fetch sample images by key from webdataset shards or ImageFolder trees.

Keys are those of the embedding stores (:mod:`oodlab.embeddings.store`):

* webdataset shards (img2dataset layout): a sample's key is its member name up to the first dot
  (``000120034`` for ``000120034.jpg``). When a key has 9 digits and a shard is named with 5
  digits, the key can only be in the shard named ``key[:5]`` (``000120034`` -> ``00012.tar``):
  those shards are read first, and every other tar only for keys still missing (re-sharded
  subsets keep their original keys, so nothing is assumed beyond that first guess).
* ImageFolder trees: a sample's key is its path relative to the root
  (``n10000003/n10000003_12.jpg``); the file is read directly, nothing is scanned.

Tars are streamed with :func:`oodlab.data.shards.iter_tar_samples` (which refuses members whose
path escapes the folder); nothing is extracted to disk and a tar is left as soon as all the keys
it can hold are found. Memory holds the requested images plus one sample.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

from oodlab.data.folders import is_image_file
from oodlab.data.shards import iter_tar_samples
from oodlab.data.sources import FOLDER, SHARDS, resolve_data
from oodlab.data.tarformat import IMAGE_EXTENSIONS
from oodlab.utils.errors import InputError

log = logging.getLogger(__name__)

_SHARD_KEY = re.compile(r"^\d{9}$")
_SHARD_NAME = re.compile(r"^\d{5}$")


def _resolve_sources(data: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(ImageFolder roots, tar files) of ``data``, in the given order (:func:`oodlab.data.sources.resolve_data`)."""
    sources = resolve_data(data, kinds=(SHARDS, FOLDER))
    return [s.path for s in sources if s.kind == FOLDER], [s.path for s in sources if s.kind == SHARDS]


def _folder_file(root: Path, key: str) -> Path | None:
    """The file of ``key`` under an ImageFolder root, or None (keys escaping the root never match)."""
    p = PurePosixPath(key)
    if not key or p.is_absolute() or ".." in p.parts or len(p.parts) < 2 or not is_image_file(key):
        return None
    path = root.joinpath(*p.parts)
    return path if path.is_file() else None


def _shard_plan(tars: list[Path], keys: set[str]) -> tuple[list[tuple[Path, set[str]]], list[Path]]:
    """(tars to read first with the keys each can hold, the other tars) for 9-digit keys."""
    by_name = {t.stem: t for t in tars if _SHARD_NAME.match(t.stem)}
    first: dict[Path, set[str]] = {}
    for key in keys:
        tar = by_name.get(key[:5]) if _SHARD_KEY.match(key) else None
        if tar is not None:
            first.setdefault(tar, set()).add(key)
    ordered = [(t, first[t]) for t in tars if t in first]
    return ordered, tars


def iter_images(keys: Iterable[str], sources: str | Path | Sequence[str | Path]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(key, image bytes)`` for every requested key, in the order they are found.

    Args:
        keys: sample keys (repeats are read once).
        sources: webdataset shards (tar paths, quoted brace patterns, globs, folders of tars) and/or
            ImageFolder roots. A key found in several sources is taken from the first one read.

    Yields:
        (key, the stored bytes of its image member: jpg, jpeg, png or webp, in that preference,
        in any case: ``KEY.JPG`` is the jpg member).

    Raises:
        InputError: a source is unusable, or keys are in no source (raised after every found
            key was yielded; the message lists some of them).
    """
    wanted = set(dict.fromkeys(str(k) for k in keys))
    if not wanted:
        return
    roots, tars = _resolve_sources(sources)
    for root in roots:
        for key in sorted(wanted):
            path = _folder_file(root, key)
            if path is not None:
                wanted.discard(key)
                yield key, path.read_bytes()
    if wanted and tars:
        first, rest = _shard_plan(tars, wanted)
        read: set[Path] = set()
        for tar, holds in first:
            yield from _read_tar(tar, wanted, holds)
            read.add(tar)
        if wanted:  # keys not in their img2dataset shard (or not img2dataset keys): scan the rest
            for tar in rest:
                if not wanted:
                    break
                if tar not in read:
                    yield from _read_tar(tar, wanted, None)
    if wanted:
        missing = sorted(wanted)
        where = ", ".join(str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources))
        raise InputError(
            where,
            f"{len(missing)} requested images are in none of these sources (e.g. {missing[:5]})",
            "pass the shards or image folders the embedding store was made from",
        )


def _read_tar(tar: Path, wanted: set[str], holds: set[str] | None) -> Iterator[tuple[str, bytes]]:
    """Yield wanted samples of one tar (removing them from ``wanted``); stop early once all of
    ``holds`` (the keys this tar can hold; None: unknown) are found."""
    log.debug("reading %s", tar)
    for sample in iter_tar_samples(tar):
        if sample.key in wanted:
            image = sample.image
            if image is None:
                raise InputError(tar, f"sample {sample.key} has no image member (members: {sorted(sample.members)})",
                                 f"an image member must be one of {list(IMAGE_EXTENSIONS)}")
            wanted.discard(sample.key)
            yield sample.key, image
        if not wanted or (holds is not None and not (holds & wanted)):
            return


def read_images(keys: Iterable[str], sources: str | Path | Sequence[str | Path]) -> dict[str, bytes]:
    """The image bytes of ``keys`` as ``{key: bytes}`` (see :func:`iter_images`).

    Raises:
        InputError: a source is unusable or keys are missing (the message lists some).
    """
    return dict(iter_images(keys, sources))
