"""Atomic file writes: the one way oodlab writes a file.

Every file is written under a hidden temporary name in its final folder and renamed into place when complete; on error the temporary
is removed. :class:`PendingPath` is the mechanism, :func:`atomic_path` / :func:`atomic_open` and
the ``write_*`` / ``save_*`` helpers are its forms.

The guarantee, the same for every file: **a process killed at any point (kill -9, out of memory,
Ctrl-C) never leaves a file under its final name that is not complete**, and readers that glob
for final names (``img_emb_*.npy``, ``*.tar``) never see temporaries; a re-run removes the
temporaries a killed run left (:func:`remove_stale_temporaries`). Files are **not fsynced**: after
an operating-system crash or a power loss, files written in the last seconds may be missing or
empty although their names exist; re-run the stage with ``--overwrite`` then. Why: an fsync made
writing a 5 MB shard 2.4x slower here (20 vs 8.5 ms), and every stage can be re-run from its
inputs, so durability against power loss is not worth that on every file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

TMP_MARK = ".oodlab-tmp-"


def temp_path_for(path: str | Path) -> Path:
    """A unique hidden temporary name next to ``path`` (recognised by :func:`remove_stale_temporaries`)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


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
            try:
                self.close()
            except OSError as err:
                self.abort()
                raise_output_error(getattr(self, "path", None), err)
        else:
            self.abort()
            if isinstance(exc, OSError):
                raise_output_error(getattr(self, "path", None), exc)


#: errno values that mean "this output cannot be written here" rather than a bug
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def existing_ancestor(path: str | Path) -> Path | None:
    """``path`` itself if it exists, else its nearest existing parent (None: none exists)."""
    path = Path(path)
    for probe in (path, *path.parents):
        if probe.exists():
            return probe
    return None


def raise_output_error(path: str | Path | None, err: OSError) -> None:
    """Re-raise a failed write as :class:`~oodlab.utils.errors.OutputError` naming the file, the
    cause and the free space left, when it is a full disk or a read-only/forbidden output (numpy's
    ``tofile`` reports a full disk as "N requested and M written" without an errno); else re-raise
    ``err`` unchanged."""
    from oodlab.utils.errors import OutputError

    short = "requested and" in str(err) and "written" in str(err)
    if err.errno not in _WRITE_ERRNOS and not short:
        raise err
    where = Path(err.filename) if err.filename else Path(path) if path is not None else None
    probe = None if where is None else existing_ancestor(where)
    free = f"; {shutil.disk_usage(probe).free:,} bytes free on its file system" if probe is not None else ""
    cause = err.strerror or str(err)
    if short or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise OutputError(path if path is not None else where, f"could not be written: {cause} (the disk or quota is full, "
                          f"or the file size limit was reached){free}",
                          "free space or choose another --out, then run the same command again: it resumes, "
                          "and nothing complete was lost") from err
    raise OutputError(where, f"cannot be written: {cause}", "choose a writable --out (or fix its permissions)") from err


def allocated_memmap(path: str | Path, dtype: Any, n: int) -> np.ndarray:
    """A new writable ``.npy`` memmap of ``n`` items whose blocks are allocated on disk now.

    A plain ``open_memmap`` file is sparse: on a full disk the first write to a page kills the
    process with SIGBUS, long after the file was made. Allocating it first turns that into an
    :class:`~oodlab.utils.errors.OutputError` naming the file, before any work is done.

    Returns:
        the memmap, shape [n], uninitialised.
    """
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n,))
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system without fallocate
                del arr
                raise_output_error(path, err)
    return arr


class PendingPath(CommitOnExit):
    """A file being written under a temporary name until :meth:`commit`.

    ``tmp`` is where to write; :meth:`commit` renames it to ``path`` (replacing what is there),
    :meth:`discard` removes it. Used as a context manager it commits when the block succeeds and
    discards when it raises.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path_for(self.path)
        self._open = True

    def commit(self) -> Path:
        """Rename the temporary into place (replacing a file of that name)."""
        if self._open:
            os.replace(self.tmp, self.path)
            self._open = False
        return self.path

    def discard(self) -> None:
        if self._open:
            self.tmp.unlink(missing_ok=True)
            self._open = False

    close, abort = commit, discard  # the CommitOnExit protocol


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block succeeds."""
    with PendingPath(path) as pending:
        yield pending.tmp


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a file for writing under a temporary name; it becomes ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. Key order is kept, so output is deterministic."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, paths strings, numpy scalars numbers):
    the form to compare with what a file holds."""
    return json.loads(json.dumps(obj, default=_json_default))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given), atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


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
