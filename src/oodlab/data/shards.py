"""Reading webdataset shards in the layout img2dataset writes.

Layout of a shard folder::

    00000.tar          KEY.jpg, KEY.txt, KEY.json (+ any other members) per sample
    00000.parquet      one row per sample: key, caption, status, ... (+ extra columns)
    00000_stats.json   counts for the shard

Keys are ``{shard:05d}{index:04d}`` (9 digits) when shards hold at most 10,000 samples, as in
LAION-400M. A sample's key is its member name up to the first dot of the base name (the
webdataset convention, :mod:`oodlab.data.tarformat`), so ``0000100023.jpg`` and
``0000100023.txt`` belong together. Members are keyed by their lower-cased extension
(``0000100023.JPG`` is the sample's ``jpg``), and ``__x__`` housekeeping members are skipped
(:func:`oodlab.data.tarformat.is_housekeeping`).

Tars are read in streaming mode. Members that are not regular files or whose path would escape
the folder (absolute, ``..``) are refused; a truncated tar raises
:class:`~oodlab.data.tarformat.TruncatedShardError` naming the file, the byte offset of the damage
and the first sample lost, after yielding every complete sample before the damage. Shards are written by
:mod:`oodlab.data.shard_writer`.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from oodlab.data.tarformat import (
    COMPRESSED_MAGIC,
    IMAGE_EXTENSIONS,
    check_member_path,
    is_housekeeping,
    split_member_name,
    truncated_shard,
)
from oodlab.utils.errors import InputError

_END_OF_ARCHIVE = b"\0" * 1024


@dataclass
class RawSample:
    """One webdataset sample: its key and its members' bytes by lower-cased extension, in tar order."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    shard: str = ""

    @property
    def caption(self) -> str | None:
        raw = self.members.get("txt")
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def image(self) -> bytes | None:
        """The bytes of the image member (the first of :data:`IMAGE_EXTENSIONS` present)."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in self.members), None)
        return None if ext is None else self.members[ext]

    @property
    def meta(self) -> dict[str, Any]:
        raw = self.members.get("json")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(self.shard, f"sample {self.key}: json member is not valid JSON ({err})") from err


def iter_tar_samples(path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one tar, grouping consecutive members by key.

    Members are keyed by their lower-cased extension (``KEY.JPG`` -> ``members["jpg"]``); skips
    ``__x__`` housekeeping members (:func:`~oodlab.data.tarformat.is_housekeeping`) and
    directories. Memory holds one sample at a time.

    An uncompressed, intact tar is read through its compiled index (:mod:`oodlab.data.tarindex`:
    one read per sample; tarfile's per-header Python parsing cost ~100 us per 3-member sample, as
    much as decoding a small JPEG); a compressed or damaged one through tarfile's streaming mode,
    which yields the samples before the damage. Both refuse the same members with the same errors.

    Raises:
        TruncatedShardError: the tar ends inside a member or lacks its end-of-archive marker
            (tarfile accepts a tar cut at a block boundary silently); every complete sample
            before the damage has been yielded, and the error's ``first_lost`` and ``offset``
            name the first sample that was not and where the damage is.
        InputError: a member is a link or special file, or its path escapes the folder, or a
            sample has two members of one extension (``a.jpg`` and ``a.JPG`` included).
    """
    from oodlab.data.tarindex import index_tar

    path = Path(path)
    with open(path, "rb") as raw:
        try:
            index = index_tar(path)
        except InputError:  # compression, damage, or what only tarfile reads (pax global headers)
            yield from _stream_tar_samples(path)
            return
        fd = raw.fileno()
        starts, sizes, bounds = index.data.tolist(), index.size.tolist(), index.bounds.tolist()
        exts = [e.decode("utf-8", "surrogateescape") for e in index.ext.tolist()]
        for i, key in enumerate(index.keys.tolist()):
            first, last = bounds[i], bounds[i + 1]
            offset = starts[first]
            length = starts[last - 1] + sizes[last - 1] - offset
            span = os.pread(fd, length, offset)
            if len(span) != length:  # the file shrank after it was indexed
                raise truncated_shard(path, "the file shrank while it was read", int(index.start[first]),
                                      key.decode("utf-8", "surrogateescape"))
            sample = RawSample(key=key.decode("utf-8", "surrogateescape"), shard=str(path))
            for m in range(first, last):
                lo = starts[m] - offset
                sample.members[exts[m]] = span[lo : lo + sizes[m]]
            yield sample


def _stream_tar_samples(path: Path) -> Iterator[RawSample]:
    """:func:`iter_tar_samples` through tarfile's streaming mode (compressed or damaged tars)."""
    current: RawSample | None = None
    key, housekeeping = None, True
    next_header = 0  # where the next header is due
    cut_member: int | None = None  # the header of the member whose data is being read
    with open(path, "rb") as raw:
        compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
        raw.seek(0)
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    next_header = tar.offset
                    if member.isdir():
                        continue
                    check_member_path(path, member.name)
                    if not member.isfile():
                        raise InputError(path, f"member {member.name!r} is a link or special file", "re-create the shard")
                    key, ext = split_member_name(member.name)
                    housekeeping = is_housekeeping(key)
                    # a header of another key ends the current sample: yield it before reading
                    # this member's data, which may be what is damaged
                    if not housekeeping and current is not None and key != current.key:
                        yield current
                        current = None
                    cut_member = member.offset_data - tarfile.BLOCKSIZE  # its own header, after any extended ones
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                    cut_member = None
                    if housekeeping:
                        continue
                    if current is None:
                        current = RawSample(key=key, shard=str(path))
                    if ext in current.members:
                        raise InputError(path, f"sample {key} has two {ext!r} members", "re-create the shard")
                    current.members[ext] = data
                    tar.members = []  # streaming: do not keep every header in memory
            if not compressed:
                raw.seek(next_header)
                if raw.read(len(_END_OF_ARCHIVE)) != _END_OF_ARCHIVE:
                    raise tarfile.ReadError("no end-of-archive marker")
        except (tarfile.ReadError, EOFError) as err:
            # the sample being read when the damage was hit may lack members: it is not yielded
            # and is the first lost (one whose member was cut short, or the last begun)
            if current is not None:
                lost = current.key
            else:
                lost = key if cut_member is not None and not housekeeping else None
            why = str(err) or type(err).__name__
            raise truncated_shard(path, why, next_header if cut_member is None else cut_member, lost) from err
    if current is not None:
        yield current
