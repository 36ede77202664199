"""Where a pruning rule reads the pool from, part by part (a registry, :data:`SOURCE_KINDS`).

- ``neighbors``: a neighbours folder's per-training-part tables (key and the similarity columns,
  :mod:`oodlab.similarity.layout`), aligned with the training store's parts;
- ``store``: an embedding store: the keys of its parts;
- ``keys``: a key list (``.parquet`` with a ``key`` column, or ``.txt``).

Parts are read in numeric order of their suffix, rows in file order: this "training order" is what
every deterministic tie-break refers to. The caller says which kind a path is (``--neighbors``,
``--store``, ``--keys``); it is checked, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from oodlab.similarity.layout import MAX_SIM, NeighborsFolder, sets_with
from oodlab.utils.duplicates import repeated_keys
from oodlab.utils.errors import InputError


@dataclass
class PartSource:
    """A pool readable part by part.

    Attributes:
        path: the folder or file.
        kind: ``neighbors``, ``store`` or ``keys``.
        columns: the columns every part has.
        read: ``read(columns)`` yields one pyarrow Table per part with those columns (``key``
            first), in training order.
        rows: how many rows there are, or an upper bound (sizes the duplicate-key check).
    """

    path: Path
    kind: str
    columns: list[str]
    read: Callable[[Sequence[str]], Iterator[Any]]
    rows: int


def _neighbors_source(path: Path) -> PartSource:
    import pyarrow.parquet as pq

    folder = NeighborsFolder(path)
    folder.manifest()  # refuses an unfinished run
    parts = folder.train_parts()
    if not parts:
        raise InputError(path, "holds no per-training-part tables", "run `oodlab neighbors` to completion first")
    columns = pq.ParquetFile(parts[0]).schema_arrow.names

    def read(cols: Sequence[str]) -> Iterator[Any]:
        for p in parts:
            yield pq.read_table(p, columns=list(cols))

    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    return PartSource(path=path, kind="neighbors", columns=columns, read=read, rows=rows)


def _store_source(path: Path) -> PartSource:
    import pyarrow as pa

    from oodlab.embeddings.store import EmbeddingStore

    store = EmbeddingStore(path)

    def read(cols: Sequence[str]) -> Iterator[Any]:
        if list(cols) != ["key"]:
            raise InputError(path, "an embedding store only provides keys", "pass a neighbors folder for similarity rules")
        for part in store.parts:
            import numpy as np

            chunks = list(store.iter_keys(part, 1 << 20))
            keys = np.concatenate(chunks) if chunks else np.zeros(0, dtype=object)
            yield pa.table({"key": pa.array(keys.tolist(), pa.string())})

    return PartSource(path=path, kind="store", columns=["key"], read=read, rows=store.count)


def _keylist_source(path: Path) -> PartSource:
    import pyarrow as pa

    from oodlab.subsets.keylists import iter_keys

    def read(cols: Sequence[str]) -> Iterator[Any]:
        for batch in iter_keys(path):
            yield pa.table({"key": pa.array(batch.tolist(), pa.string())})

    # a key takes at least 2 bytes in either format: an upper bound without reading the list
    return PartSource(path=path, kind="keys", columns=["key"], read=read, rows=path.stat().st_size // 2)


#: source kind -> constructor
SOURCE_KINDS: dict[str, Callable[[Path], PartSource]] = {
    "neighbors": _neighbors_source,
    "store": _store_source,
    "keys": _keylist_source,
}


def open_source(path: str | Path, kind: str) -> PartSource:
    """Open ``path`` as a pool source of ``kind`` (see :data:`SOURCE_KINDS`).

    Raises:
        InputError: the path does not exist, is not of that kind or repeats a key.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found", f"pass an existing {kind} path")
    source = SOURCE_KINDS[kind](path)
    dups = repeated_keys(lambda: (t.column("key").to_numpy(zero_copy_only=False) for t in source.read(["key"])), source.rows)
    if dups:
        raise InputError(path, f"{len(dups)} keys occur more than once (e.g. {list(dups)[:3]}): a pruned key would be "
                         "both kept and removed", "deduplicate the keys of the pool (`oodlab store validate` lists a store's)")
    return source


def require_columns(source: PartSource, columns: Sequence[str], fix: str) -> None:
    """Raise a clear error naming the missing columns of a neighbours folder."""
    missing = [c for c in columns if c not in source.columns]
    if missing:
        have = sets_with(source.columns, MAX_SIM)
        raise InputError(source.path, f"has no column(s) {missing} (eval sets there: {have})", fix)
