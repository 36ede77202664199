"""Webdataset shards in the layout img2dataset writes.

Layout of a shard folder::

    00000.tar          KEY.jpg, KEY.txt, KEY.json (+ any other members) per sample
    00000.parquet      one row per sample: key, caption, status, ... (+ extra columns)
    00000_stats.json   counts for the shard

Keys are ``{shard:05d}{index:04d}`` (9 digits) when shards hold at most 10,000 samples, as in
LAION-400M. A sample's key is its member name up to the first dot of the base name (the
webdataset convention), so ``0000100023.jpg`` and ``0000100023.txt`` belong together.

Tars are read in streaming mode. Members that are not regular files or whose path would escape
the folder (absolute, ``..``) are refused; a truncated tar raises :class:`TruncatedShardError`
naming the file, after yielding every complete sample before the damage.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

from oodlab.utils.atomic import CommitOnExit, atomic_path, write_json, write_parquet
from oodlab.utils.errors import InputError

#: Fixed tar header fields, so that a shard's bytes depend only on its content.
_TAR_MTIME = 0
_TAR_MODE = 0o644


class TruncatedShardError(InputError):
    """A tar ended in the middle of a member (an interrupted download or copy)."""


#: member extensions read as a sample's image, in order of preference
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class RawSample:
    """One webdataset sample: its key and its members' bytes by extension, in tar order."""

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


def make_key(shard_index: int, index: int, per_shard: int = 10_000) -> str:
    """img2dataset's key: shard id (5 digits) followed by the index zero-padded to the number of
    digits of ``per_shard - 1`` (4 for 10,000 per shard)."""
    width = max(1, math.ceil(math.log10(per_shard))) if per_shard > 1 else 1
    if not 0 <= index < 10**width:
        raise ValueError(f"index {index} does not fit {width} digits")
    return f"{shard_index:05d}{index:0{width}d}"


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
_END_OF_ARCHIVE = b"\0" * 1024


def iter_tar_samples(path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one tar, grouping consecutive members by key.

    Skips ``__*__`` housekeeping members and directories. Memory holds one sample at a time.

    An uncompressed, intact tar is read through its compiled index (:mod:`oodlab.data.tarindex`:
    one read per sample; tarfile's per-header Python parsing cost ~100 us per 3-member sample, as
    much as decoding a small JPEG); a compressed or damaged one through tarfile's streaming mode,
    which yields the samples before the damage. Both refuse the same members with the same errors.

    Raises:
        TruncatedShardError: the tar ends inside a member or lacks its end-of-archive marker
            (tarfile accepts a tar cut at a block boundary silently); every complete sample
            before the damage has been yielded.
        InputError: a member is a link or special file, or its path escapes the folder.
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
                raise TruncatedShardError(path, f"truncated while being read (sample {key!r})", "re-create this shard")
            sample = RawSample(key=key.decode("utf-8", "surrogateescape"), shard=str(path))
            for m in range(first, last):
                lo = starts[m] - offset
                sample.members[exts[m]] = span[lo : lo + sizes[m]]
            yield sample


def _stream_tar_samples(path: Path) -> Iterator[RawSample]:
    """:func:`iter_tar_samples` through tarfile's streaming mode (compressed or damaged tars)."""
    current: RawSample | None = None
    with open(path, "rb") as raw:
        compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
        raw.seek(0)
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    check_member_path(path, member.name)
                    if not member.isfile():
                        raise InputError(path, f"member {member.name!r} is a link or special file", "re-create the shard")
                    key, ext = split_member_name(member.name)
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                    if PurePosixPath(key).name.startswith("__"):
                        continue
                    if current is not None and key != current.key:
                        yield current
                        current = None
                    if current is None:
                        current = RawSample(key=key, shard=str(path))
                    if ext in current.members:
                        raise InputError(path, f"sample {key} has two {ext!r} members", "re-create the shard")
                    current.members[ext] = data
                    tar.members = []  # streaming: do not keep every header in memory
                end = tar.offset
            if not compressed:
                raw.seek(end)
                if raw.read(len(_END_OF_ARCHIVE)) != _END_OF_ARCHIVE:
                    raise tarfile.ReadError("no end-of-archive marker")
        except (tarfile.ReadError, EOFError) as err:
            # the sample being read when the damage was hit may lack members: it is not yielded
            raise TruncatedShardError(
                path,
                f"truncated or corrupt tar ({err}); the samples before the damage were read",
                "re-download or re-create this shard",
            ) from err
    if current is not None:
        yield current


class ShardWriter(CommitOnExit):
    """Writes one shard (tar + parquet + stats) atomically: nothing appears under the final names
    until :meth:`close`, and the tar is renamed last, so an existing tar means a complete shard.

    Args:
        folder: output folder.
        name: shard name without extension (``"00000"``).
        columns: the parquet columns, in order; records missing a column get null.
        schema: optional pyarrow schema of the parquet, so that every shard of a set gets the same
            column types even when a column is all-null in one shard.
    """

    def __init__(self, folder: str | Path, name: str, columns: Iterable[str] = ("key", "caption", "status"),
                 schema: Any = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.columns = list(columns) if schema is None else list(schema.names)
        self.schema = schema
        self._records: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._tar_ctx = atomic_path(self.tar_path)
        self._tar_tmp = self._tar_ctx.__enter__()
        self._tar = tarfile.open(self._tar_tmp, "w", format=tarfile.PAX_FORMAT)
        self._closed = False

    @property
    def tar_path(self) -> Path:
        return self.folder / f"{self.name}.tar"

    def __len__(self) -> int:
        return len(self._records)

    def write(self, key: str, members: Mapping[str, bytes], record: Mapping[str, Any] | None = None) -> None:
        """Add a sample: ``members`` maps extension to bytes (written in the given order)."""
        if key in self._keys:
            raise InputError(self.tar_path, f"duplicate key {key}", "keys must be unique within a shard")
        self._keys.add(key)
        for ext, data in members.items():
            name = f"{key}.{ext}"
            check_member_path(self.tar_path, name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = _TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        row = {"key": key}
        row.update(record or {})
        self._records.append(row)

    def close(self) -> Path:
        """Commit the shard: write parquet and stats, then rename the tar into place."""
        if self._closed:
            return self.tar_path
        import pyarrow as pa

        self._tar.close()
        columns = self.columns + sorted({k for r in self._records for k in r} - set(self.columns))
        rows = [{c: r.get(c) for c in columns} for r in self._records]
        if self.schema is not None:
            extra = set(columns) - set(self.schema.names)
            if extra:
                raise ValueError(f"records have columns {sorted(extra)} that the schema lacks")
            table = pa.Table.from_pylist(rows, schema=self.schema)
        else:
            table = pa.Table.from_pylist(rows)
        write_parquet(self.folder / f"{self.name}.parquet", table)
        statuses = [r.get("status", "success") for r in self._records]
        write_json(
            self.folder / f"{self.name}_stats.json",
            {
                "count": len(self._records),
                "successes": sum(s == "success" for s in statuses),
                "failed_to_download": sum(s != "success" for s in statuses),
            },
        )
        self._tar_ctx.__exit__(None, None, None)
        self._closed = True
        return self.tar_path

    def abort(self) -> None:
        """Discard the shard (its temporary tar is removed)."""
        if not self._closed:
            self._tar.close()
            self._tar_tmp.unlink(missing_ok=True)
            self._closed = True


def shard_complete(folder: str | Path, name: str) -> bool:
    """Whether a shard written by :class:`ShardWriter` is complete (its tar was committed last)."""
    folder = Path(folder)
    return all((folder / f"{name}{suffix}").exists() for suffix in (".tar", ".parquet", "_stats.json"))
