"""Where a pruning rule reads the pool from, part by part.

- a ``neighbors`` output folder: ``train/part_{suffix}.parquet`` (key, ``max_sim__{eval}``,
  ``argmax__{eval}``, and with thresholds ``margin__{eval}``, ``margin_argmax__{eval}``), aligned
  with the training store's parts;
- an embedding store: the key column of ``metadata/metadata_{suffix}.parquet``;
- a key list (``.parquet`` with a ``key`` column, or ``.txt``).

Parts are read in numeric order of their suffix, rows in file order: this "training order" is what
every deterministic tie-break refers to. A source is picked by what the path is (a small registry
of detectors), never by a flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from oodlab.utils.errors import InputError

_PART_RX = re.compile(r"^part_(\d+)\.parquet$")


@dataclass
class PartSource:
    """A pool readable part by part.

    Attributes:
        path: the folder or file.
        kind: ``neighbors``, ``store`` or ``keys``.
        columns: the columns every part has.
        read: ``read(columns)`` yields one pyarrow Table per part with those columns (``key``
            first), in training order.
    """

    path: Path
    kind: str
    columns: list[str]
    read: Callable[[Sequence[str]], Iterator[Any]]


def _neighbors_source(path: Path) -> PartSource:
    import pyarrow.parquet as pq

    found = []
    train = path / "train"
    for p in train.iterdir() if train.is_dir() else []:
        m = _PART_RX.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        raise InputError(train, "holds no part_*.parquet", "run `oodlab neighbors` to completion first")
    found.sort()
    parts = [p for _, p in found]
    if not (path / "manifest.json").exists():
        raise InputError(path, "has no manifest.json: the neighbors run did not finish", "re-run `oodlab neighbors` with the same arguments (it resumes)")
    columns = pq.ParquetFile(parts[0]).schema_arrow.names

    def read(cols: Sequence[str]) -> Iterator[Any]:
        for p in parts:
            table = pq.read_table(p, columns=list(cols))
            yield table

    return PartSource(path=path, kind="neighbors", columns=columns, read=read)


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

    return PartSource(path=path, kind="store", columns=["key"], read=read)


def _keylist_source(path: Path) -> PartSource:
    import pyarrow as pa

    from oodlab.subsets.keylists import iter_keys

    def read(cols: Sequence[str]) -> Iterator[Any]:
        for batch in iter_keys(path):
            yield pa.table({"key": pa.array(batch.tolist(), pa.string())})

    return PartSource(path=path, kind="keys", columns=["key"], read=read)


#: (detector, constructor): the first whose detector accepts the path builds the source
DETECTORS: list[tuple[Callable[[Path], bool], Callable[[Path], PartSource]]] = [
    (lambda p: p.is_dir() and (p / "train").is_dir(), _neighbors_source),
    (lambda p: p.is_dir() and (p / "img_emb").is_dir(), _store_source),
    (lambda p: p.is_file() and p.suffix in (".parquet", ".txt"), _keylist_source),
]


def open_source(path: str | Path, *, kinds: Sequence[str] = ("neighbors", "store", "keys")) -> PartSource:
    """Open ``path`` as a pool source of one of ``kinds``.

    Raises:
        InputError: the path does not exist, is none of the accepted kinds.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found", "pass a neighbors output folder, an embedding store or a key list")
    for detect, build in DETECTORS:
        if detect(path):
            source = build(path)
            if source.kind not in kinds:
                break
            return source
    wanted = {"neighbors": "an `oodlab neighbors` output folder", "store": "an embedding store", "keys": "a key list (.parquet/.txt)"}
    raise InputError(path, f"is not {' or '.join(wanted[k] for k in kinds)}", "pass the folder written by `oodlab neighbors --out`")


def require_columns(source: PartSource, columns: Sequence[str], fix: str) -> None:
    """Raise a clear error naming the missing columns of a neighbors folder."""
    missing = [c for c in columns if c not in source.columns]
    if missing:
        have = sorted({c.split("__", 1)[1] for c in source.columns if c.startswith("max_sim__")})
        raise InputError(source.path, f"has no column(s) {missing} (eval sets there: {have})", fix)


def eval_names(source: PartSource) -> list[str]:
    """The eval sets of a neighbors folder, in column order."""
    return [c.split("__", 1)[1] for c in source.columns if c.startswith("max_sim__")]
