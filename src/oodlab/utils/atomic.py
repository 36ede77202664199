"""Atomic file writes: write to a hidden temporary name in the same folder, then rename.

A killed process therefore never leaves a half-written file under the final name, and readers
that glob for final names (``img_emb_*.npy``, ``*.tar``) never see temporaries.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

TMP_MARK = ".oodlab-tmp-"


def temp_path_for(path: Path) -> Path:
    """A unique hidden temporary name next to ``path``."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a file for writing under a temporary name; rename it into place on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


class CommitOnExit:
    """Mixin for writers with ``close()`` (commit) and ``abort()`` (discard): used as a context
    manager, they commit when the block succeeds and discard everything when it raises."""

    def close(self) -> Any:  # pragma: no cover - implemented by the writer
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - implemented by the writer
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. Key order is kept, so output is deterministic."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save an array as ``.npy`` atomically (never a pickle: object arrays are refused)."""
    if array.dtype == object:
        raise TypeError("object arrays cannot be saved without pickle")
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def write_parquet(path: str | Path, table: Any, **kwargs: Any) -> None:
    """Write a pyarrow Table (or pandas DataFrame) as parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files and folders left by killed runs under ``folder`` (recursively).

    Returns:
        how many were removed.
    """
    import shutil

    folder = Path(folder)
    if not folder.exists():
        return 0
    n = 0
    for p in sorted(folder.rglob(f"*{TMP_MARK}*"), key=lambda x: len(x.parts)):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        n += 1
    return n


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
