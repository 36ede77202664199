"""Write one output shard by copying member byte spans out of input tars.

The tar is the concatenation of the samples' original member blocks (headers and padded data,
byte for byte), then the end-of-archive marker (two zero blocks) padded to tarfile's 10 KiB
record size. Runs of adjacent spans are copied with one ``os.copy_file_range`` call (in-kernel,
no copy through Python), falling back to ``pread``/``write``.

The parquet holds the samples' metadata rows, taken from the rows each input's scan staged (see
:mod:`oodlab.subsets.reshard` for the columns and the ``_stats.json`` fields), conformed to the
one schema of the whole subset. Memory: one input's staged rows at a time, plus this shard's rows.

Commit order matches :class:`oodlab.data.shard_writer.ShardWriter`: parquet and stats first, the tar
renamed into place last, so an existing tar means a complete shard (``shard_complete``). With
``verify``, the temporary tar is indexed again before the rename and its keys and member sizes
must be the planned ones, and so must the keys of the parquet rows.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from oodlab.data.tarindex import BLOCK, RECORD_SIZE, index_tar
from oodlab.utils.atomic import atomic_path, write_json, write_parquet

_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}

#: the column oodlab adds to every output row: the name of the input tar the sample came from
SOURCE_COLUMN = "source_shard"
#: img2dataset's ``_stats.json`` counters, recomputed for the samples of an output shard
RECOMPUTED_STATS = ("count", "successes", "failed_to_download", "failed_to_resize", "status_dict")


@dataclass
class ShardPlan:
    """What one output shard holds: its samples (in order) and where their members' bytes are.

    Attributes:
        name: shard name (``00000``).
        keys, source_shards: per sample.
        sources: input tar paths; ``member_source`` and ``sample_source`` index into it, and into
            ``row_files`` and ``run_fields``.
        members: int64 [s]: members per sample.
        member_source: int32 [m]; member_start, member_end: int64 [m] (byte spans, in order).
        sample_source: int32 [s]: each sample's input.
        rows: int64 [s]: each sample's row in its input's staged rows.
        row_files: per input, the parquet of its staged rows (the scan's selection).
        run_fields: per input, the ``_stats.json`` fields other than :data:`RECOMPUTED_STATS`
            (None: the input has no stats file).
        schema: pyarrow schema of the input rows of the whole subset (without ``source_shard``).
    """

    name: str
    keys: list[str]
    source_shards: list[str]
    sources: list[str]
    members: np.ndarray
    member_source: np.ndarray
    member_start: np.ndarray
    member_end: np.ndarray
    sample_source: np.ndarray
    rows: np.ndarray
    row_files: list[str]
    run_fields: list[dict[str, Any] | None]
    schema: Any


def conform(table: Any, schema: Any) -> Any:
    """``table`` with exactly the columns of ``schema``, in its order and types: a column the
    table lacks is all null, the others are cast (a promotion, e.g. int32 -> int64)."""
    import pyarrow as pa

    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def shard_rows(plan: ShardPlan) -> Any:
    """The shard's parquet table: per sample in order, its input row (columns of ``plan.schema``),
    then ``source_shard`` (string)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts, positions = [], []
    for s, path in enumerate(plan.row_files):
        mine = np.flatnonzero(plan.sample_source == s)
        if len(mine):
            staged = pq.ParquetFile(path).read()  # one input's selected rows, dropped after the take
            parts.append(conform(staged.take(plan.rows[mine]), plan.schema))
            positions.append(mine)
    table = pa.concat_tables(parts) if parts else plan.schema.empty_table()
    if positions:
        table = table.take(np.argsort(np.concatenate(positions), kind="stable"))
    return table.append_column(pa.field(SOURCE_COLUMN, pa.string()), pa.array(plan.source_shards, pa.string()))


def shard_stats(rows: Any, run_fields: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """img2dataset's ``_stats.json`` for the rows of one output shard (field meanings:
    :mod:`oodlab.subsets.reshard`).

    Args:
        rows: the shard's parquet table.
        run_fields: the contributing inputs' non-counter stats fields (None: no stats file).
    """
    n = rows.num_rows
    status = rows.column("status").to_pylist() if "status" in rows.column_names else [None] * n
    error = rows.column("error_message").to_pylist() if "error_message" in rows.column_names else [None] * n
    success = [s is None or s == "success" for s in status]  # no status: the sample is in the tar
    reasons = Counter("success" if ok else str(e if e is not None else s) for ok, s, e in zip(success, status, error))
    stats: dict[str, Any] = {"count": n, "successes": sum(success),
                             "failed_to_download": status.count("failed_to_download"),
                             "failed_to_resize": status.count("failed_to_resize")}
    if run_fields and all(f is not None for f in run_fields):
        first, *rest = run_fields
        stats.update({k: v for k, v in first.items() if all(k in f and f[k] == v for f in rest)})
    stats["status_dict"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return stats


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
    with atomic_path(folder / f"{plan.name}.tar") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            body = copy_spans(fd, plan.sources, plan.member_source, plan.member_start, plan.member_end)
            tail = 2 * BLOCK
            tail += (-(body + tail)) % RECORD_SIZE
            os.write(fd, b"\0" * tail)
        finally:
            os.close(fd)
        rows = shard_rows(plan)
        if verify:
            _verify(tmp, plan)
            if rows.column("key").to_pylist() != plan.keys:
                raise OSError(f"{tmp}: the staged parquet rows do not hold the planned keys (did a source parquet change?)")
        write_parquet(folder / f"{plan.name}.parquet", rows)
        write_json(folder / f"{plan.name}_stats.json", shard_stats(rows, plan.run_fields))
        size = os.path.getsize(tmp)
    return size


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
