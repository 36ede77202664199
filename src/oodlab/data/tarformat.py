"""The tar-format primitives every shard reader and writer shares.

A webdataset sample is the run of consecutive tar members with the same *key*: the member name
up to the first dot of its base name (``dir/abc.seg.png`` -> key ``dir/abc``, extension
``seg.png``). Member paths that would escape the folder they are extracted or copied into
(absolute, ``..``, drive letters) are refused everywhere with the same message.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from oodlab.utils.errors import InputError


class TruncatedShardError(InputError):
    """A tar ended in the middle of a member (an interrupted download or copy)."""


#: member extensions read as a sample's image, in order of preference
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``): key up to the first dot of the base name."""
    path = PurePosixPath(name)
    base, _, ext = path.name.partition(".")
    parent = "" if str(path.parent) == "." else f"{path.parent}/"
    return parent + base, ext


def check_member_path(tar_path: str | Path, name: str) -> None:
    """Refuse member names that would escape the folder they are extracted or copied into."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or ":" in p.parts[0]:
        raise InputError(
            tar_path,
            f"member {name!r} has a path that escapes its folder",
            "the shard is malformed or malicious; re-create it",
        )


#: leading bytes of gzip, bzip2 and xz streams (tars that must be decompressed to be read)
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
