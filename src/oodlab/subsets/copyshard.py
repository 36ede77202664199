"""Write one output shard by copying member byte spans out of input tars.

The tar is the concatenation of the samples' original member blocks (headers and padded data,
byte for byte), then the end-of-archive marker (two zero blocks) padded to tarfile's 10 KiB
record size. Runs of adjacent spans are copied with one ``os.copy_file_range`` call (in-kernel,
no copy through Python), falling back to ``pread``/``write``.

Commit order matches :class:`oodlab.data.shard_writer.ShardWriter`: parquet and stats first, the tar
renamed into place last, so an existing tar means a complete shard (``shard_complete``). With
``verify``, the temporary tar is indexed again before the rename and its keys and member sizes
must be the planned ones.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from oodlab.data.tarindex import BLOCK, RECORD_SIZE, index_tar
from oodlab.utils.atomic import atomic_path, write_parquet

_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@dataclass
class ShardPlan:
    """What one output shard holds: its samples (in order) and where their members' bytes are.

    Attributes:
        name: shard name (``00000``).
        keys, captions, source_shards: per sample (the parquet's rows).
        sources: input tar paths; ``member_source`` indexes into it.
        members: int64 [s]: members per sample.
        member_source: int32 [m]; member_start, member_end: int64 [m] (byte spans, in order).
    """

    name: str
    keys: list[str]
    captions: list[str | None]
    source_shards: list[str]
    sources: list[str]
    members: np.ndarray
    member_source: np.ndarray
    member_start: np.ndarray
    member_end: np.ndarray


def shard_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("caption", pa.string()), ("status", pa.string()), ("source_shard", pa.string())])


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    use_kernel = hasattr(os, "copy_file_range")
    while length > 0:
        if use_kernel:
            try:
                n = os.copy_file_range(src, dst, min(length, 1 << 30), offset)
            except OSError as err:
                if err.errno not in _FALLBACK_ERRNOS:
                    raise
                use_kernel = False
                continue
        else:
            data = os.pread(src, min(length, 1 << 24), offset)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
        if n == 0:
            raise OSError(f"source ended early at byte {offset}: was it modified during the copy?")
        offset += n
        length -= n


def copy_spans(dst: int, sources: Sequence[str], source: np.ndarray, start: np.ndarray, end: np.ndarray) -> int:
    """Append the byte ranges ``sources[source[i]][start[i]:end[i]]`` to ``dst`` in order, one
    copy per run of adjacent ranges. Returns the bytes written."""
    if not len(start):
        return 0
    new = np.ones(len(start), bool)
    new[1:] = (source[1:] != source[:-1]) | (start[1:] != end[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(start)) - 1
    fds: dict[int, int] = {}
    try:
        for a, b in zip(first.tolist(), last.tolist()):
            src = int(source[a])
            if src not in fds:
                fds[src] = os.open(sources[src], os.O_RDONLY)
            _copy_range(fds[src], dst, int(start[a]), int(end[b] - start[a]))
    finally:
        for fd in fds.values():
            os.close(fd)
    return int((end - start).sum())


def write_shard(folder: Path, plan: ShardPlan, *, verify: bool = True) -> int:
    """Write ``{name}.tar``, ``{name}.parquet`` and ``{name}_stats.json`` in ``folder``.

    Returns:
        the tar's size in bytes.

    Raises:
        OSError: verification found other keys or sizes than planned (a source changed).
    """
    import pyarrow as pa

    n = len(plan.keys)
    with atomic_path(folder / f"{plan.name}.tar") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            body = copy_spans(fd, plan.sources, plan.member_source, plan.member_start, plan.member_end)
            tail = 2 * BLOCK
            tail += (-(body + tail)) % RECORD_SIZE
            os.write(fd, b"\0" * tail)
        finally:
            os.close(fd)
        if verify:
            _verify(tmp, plan)
        rows = {"key": plan.keys, "caption": plan.captions, "status": ["success"] * n, "source_shard": plan.source_shards}
        write_parquet(folder / f"{plan.name}.parquet", pa.table(rows, schema=shard_schema()))
        _write_stats(folder / f"{plan.name}_stats.json", n)
        size = os.path.getsize(tmp)
    return size


def _write_stats(path: Path, n: int) -> None:
    """``ShardWriter``'s stats file, written atomically (rename) but not fsynced: a shard is only
    complete once its tar is renamed after it, and a thousand fsyncs cost seconds."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"count": n, "successes": n, "failed_to_download": 0}, indent=2) + "\n", encoding="utf-8")


def _verify(tar: Path, plan: ShardPlan) -> None:
    index = index_tar(tar)
    same = (
        len(index.keys) == len(plan.keys)
        and [k.decode("utf-8", "surrogateescape") for k in index.keys.tolist()] == plan.keys
        and np.array_equal(np.diff(index.bounds), plan.members)
        and np.array_equal(index.end - index.start, plan.member_end - plan.member_start)
    )
    if not same:
        raise OSError(f"{tar}: the written shard does not hold the planned samples (did a source shard change?)")
