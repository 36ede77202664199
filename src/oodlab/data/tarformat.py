"""The tar-format primitives every shard reader and writer shares.

A webdataset sample is the run of consecutive tar members with the same *key*: the member name
up to the first dot of its base name (``dir/abc.SEG.png`` -> key ``dir/abc``, extension
``seg.png``). The key is case-sensitive; the extension is lower-cased (``str.lower``, as
webdataset's ``group_by_keys`` with ``lcase=True``), so ``abc.JPG`` is the ``jpg`` member of
``abc`` and ``abc.jpg`` next to ``abc.JPG`` is a sample with two ``jpg`` members.

Members whose key has a base name ``__x__`` (starting and ending with ``__``, at least one
character in between) are housekeeping and belong to no sample (:func:`is_housekeeping`):
``__meta__.json`` and ``dir/__index__`` are skipped, ``__notes.jpg`` and ``____.jpg`` are
samples. webdataset's rule differs at the edges: it keeps ``__meta__.json`` (it skips whole names
``__x__`` and folders ``__x__/``).

Member paths that would escape the folder they are extracted or copied into (absolute, ``..``,
drive letters), and names holding a NUL, are refused everywhere with the same message; a damaged
tar is reported by both readers with :func:`truncated_shard`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from oodlab.utils.errors import InputError


class TruncatedShardError(InputError):
    """A tar ended in the middle of a member (an interrupted download or copy) or is damaged.

    Attributes:
        first_lost: the key of the first sample not read completely: the one being read when the
            damage was hit, or the last one begun, whose completeness no later header proves;
            it and every sample after it are lost. None: the damage comes before any sample.
        offset: the byte of the (for a compressed tar: decompressed) tar where the reader met the
            damage: the header of the member cut short, or where the next header was due.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None, *,
                 first_lost: str | None = None, offset: int | None = None):
        super().__init__(path, problem, fix)
        self.first_lost = first_lost
        self.offset = offset


def truncated_shard(path: str | Path, why: str, offset: int, first_lost: str | None) -> TruncatedShardError:
    """The error both tar readers raise for a damaged tar, naming the damage, its byte offset and
    the first sample lost (see :class:`TruncatedShardError`)."""
    lost = ("no sample comes before it" if first_lost is None
            else f"sample {first_lost!r} and any after it are lost, the samples before it are complete")
    return TruncatedShardError(path, f"truncated or corrupt tar ({why} at byte {offset}); {lost}",
                               "re-download or re-create this shard", first_lost=first_lost, offset=offset)


#: member extensions (as :func:`split_member_name` lower-cases them) read as a sample's image, in order of preference
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def member_extension(ext: str) -> str:
    """The extension a member is matched by: ``ext`` lower-cased (``SEG.Png`` -> ``seg.png``)."""
    return ext.lower()


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/abc.SEG.png`` -> (``dir/abc``, ``seg.png``): key up to the first dot of the base name,
    extension lower-cased (:func:`member_extension`)."""
    path = PurePosixPath(name)
    base, _, ext = path.name.partition(".")
    parent = "" if str(path.parent) == "." else f"{path.parent}/"
    return parent + base, member_extension(ext)


def is_housekeeping(key: str) -> bool:
    """Whether a member with this key (as :func:`split_member_name` returns it) is housekeeping:
    its base name (after the last ``/``) is ``__x__`` with at least one character for ``x``."""
    base = key.rpartition("/")[2]
    return len(base) > 4 and base.startswith("__") and base.endswith("__")


def check_member_path(tar_path: str | Path, name: str) -> None:
    """Refuse member names that would escape the folder they are extracted or copied into, or
    that hold a NUL (only a pax header can carry one; no file name can, and key arrays of numpy
    ``S`` type would drop a trailing one)."""
    if "\0" in name:
        raise InputError(tar_path, f"member {name!r} has a NUL character in its name", "the shard is malformed; re-create it")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or ":" in p.parts[0]:
        raise InputError(
            tar_path,
            f"member {name!r} has a path that escapes its folder",
            "the shard is malformed or malicious; re-create it",
        )


#: leading bytes of gzip, bzip2 and xz streams (tars that must be decompressed to be read)
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


def sample_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be the key of any sample (:func:`split_member_name`), or None when it can.

    A key never holds a NUL (no member name does) nor a dot after its last ``/`` (the key ends
    at the first dot of the base name: ``abc.jpg`` is the ``jpg`` member of ``abc``)."""
    if "\0" in key:
        return "holds a NUL character, which no tar member name can"
    if "." in key.rpartition("/")[2]:
        return "has a '.' after its last '/', where a sample key ends (the rest is a member's extension)"
    return None
