"""Key lists: the files that pruning, deduplication and ``subset`` exchange.

A key list is a parquet file with a string column ``key`` (``kept.parquet`` and
``removed.parquet`` add the score that decided and other columns), or a text file with one key
per line (blank lines ignored, surrounding whitespace stripped).

Key lists are written with :class:`KeyListWriter`, which streams row groups into a temporary file
and renames it into place when closed, so memory stays bounded by what is written at once.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from oodlab.utils.atomic import CommitOnExit, PendingPath
from oodlab.utils.errors import InputError

KEY_COLUMN = "key"
#: rows per batch when streaming a parquet key list
BATCH_ROWS = 1 << 20


def _parquet_reader(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise InputError(path, f"is not a readable parquet file ({err})", "pass a key list written by oodlab (kept.parquet)") from err
    if KEY_COLUMN not in pf.schema_arrow.names:
        raise InputError(
            path, f"has no {KEY_COLUMN!r} column (columns: {pf.schema_arrow.names})", "a key list needs a string column named 'key'"
        )
    return pf


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "key list not found", "pass a kept.parquet, a parquet with a 'key' column, or a .txt file of keys")
    if path.suffix not in (".parquet", ".txt"):
        raise InputError(path, f"has an unsupported extension {path.suffix!r}", "use a .parquet (column 'key') or a .txt (one key per line)")
    return path


def iter_keys(path: str | Path, batch_rows: int = BATCH_ROWS) -> Iterator[np.ndarray]:
    """Stream a key list in batches: object arrays of str, in file order."""
    path = _check_path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.compute as pc

        pf = _parquet_reader(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[KEY_COLUMN]):
            col = batch.column(0)
            if col.null_count:
                raise InputError(path, "has null keys", "drop the null rows")
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                col = pc.cast(col, pa.string())
            yield col.to_numpy(zero_copy_only=False)
        return
    try:
        with open(path, encoding="utf-8") as f:
            batch: list[str] = []
            for line in f:
                key = line.strip()
                if key:
                    batch.append(key)
                    if len(batch) >= batch_rows:
                        yield np.array(batch, dtype=object)
                        batch = []
            if batch:
                yield np.array(batch, dtype=object)
    except UnicodeDecodeError as err:
        raise InputError(path, f"is not UTF-8 text ({err.reason})", "write the key list as UTF-8, one key per line") from None


def row_name(path: str | Path, row: int) -> str:
    """How a user finds row ``row`` (0-based, as :func:`iter_keys` counts) of a key list:
    ``row 12`` of a parquet (counted from 0), ``line 14`` of a text file (blank lines counted)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return f"row {row} (counted from 0)"
    with open(path, encoding="utf-8") as f:
        keys = (number for number, line in enumerate(f, 1) if line.strip())
        return f"line {next(itertools.islice(keys, row, None))}"


def read_keys(path: str | Path) -> np.ndarray:
    """All keys of a key list: object array [n] of str, in file order (repeats kept)."""
    parts = list(iter_keys(path))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


def count_keys(path: str | Path) -> int:
    """Number of rows of a key list (parquet: from its footer, without reading the keys)."""
    path = _check_path(path)
    if path.suffix == ".parquet":
        return int(_parquet_reader(path).metadata.num_rows)
    return sum(len(b) for b in iter_keys(path))


class KeyListWriter(CommitOnExit):
    """Stream rows into a parquet key list; the file appears under its name only on :meth:`close`.

    Args:
        path: the final path.
        schema: pyarrow schema; its first field must be ``key`` (string).
    """

    def __init__(self, path: str | Path, schema: Any):
        import pyarrow.parquet as pq

        if schema.names[0] != KEY_COLUMN:
            raise ValueError("the first column of a key list must be 'key'")
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self._pending = PendingPath(self.path)
        self._writer = pq.ParquetWriter(self._pending.tmp, schema)

    def write(self, columns: dict[str, Any]) -> None:
        """Append rows given as {column: array}; the columns must match the schema."""
        import pyarrow as pa

        table = pa.table({name: columns[name] for name in self.schema.names}, schema=self.schema)
        if len(table):
            self._writer.write_table(table)
            self.rows += len(table)

    def close(self) -> Path:
        self._writer.close()
        return self._pending.commit()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self._pending.discard()


def membership(keys: np.ndarray, allowed: set[str] | None) -> np.ndarray:
    """bool [n]: which ``keys`` are in ``allowed`` (all when ``allowed`` is None)."""
    if allowed is None:
        return np.ones(len(keys), dtype=bool)
    return np.fromiter((k in allowed for k in keys), dtype=bool, count=len(keys))


def load_keep_from(path: str | Path | None) -> set[str] | None:
    """The keys of a ``keep_from`` list as a set (None when no list is given).

    Memory: one Python set of the list's keys (~100 bytes per key).
    """
    if path is None:
        return None
    out: set[str] = set()
    for batch in iter_keys(path):
        out.update(batch.tolist())
    return out
