"""The embedding store: clip-retrieval's folder layout plus an ``oodlab.json`` sidecar.

::

    STORE/
      img_emb/img_emb_{i}.npy            float16 [n_i, d], L2-normalised rows
      text_emb/text_emb_{i}.npy          optional, same rows (a sample without a caption: all zeros)
      metadata/metadata_{i}.parquet      image_path (= sample key), caption, label columns...
      stats/part_{i}.json                oodlab: per-part record, written last (commit marker)
      oodlab.json                        oodlab: format version, model identity, dim, dtype,
                                         count, parts, sources, what was skipped

Rows are aligned across the three files of a part. ``{i}`` is zero-padded to
``int(log10(n_parts)) + 1`` digits as clip-retrieval does; readers accept any padding and order
parts numerically. Any clip-retrieval folder (e.g. LAION-400M's released embeddings) reads with or
without the sidecar; the key column is configurable.

Parts are the union of the suffixes found in ``img_emb/``, ``text_emb/``, ``metadata/``,
``stats/`` and the sidecar's part list, so a deleted file is never a silently smaller store: a
part with metadata, text, a stats record or a sidecar entry but no ``img_emb``, or with
``img_emb`` but no metadata, is damaged, and :class:`EmbeddingStore` refuses the store
(``strict=False`` opens it anyway and lists the damage, for validation).

Missing captions are recorded, never invented: a sample embedded with ``--text`` that has no
caption keeps its image row, gets an all-zero *marker* row in ``text_emb`` (so text rows stay
aligned with image rows) and a null caption, and its key is listed under ``missing_text`` in
its part record (and, with its source, in the sidecar). Validation accepts a zero text row only
for such a key.

Readers stream: :meth:`EmbeddingStore.iter_chunks` memory-maps one part at a time and copies at
most ``chunk_rows`` rows, so memory is bounded by the chunk, never by the store;
:meth:`EmbeddingStore.take` and :meth:`EmbeddingStore.keys_at` gather given rows one part at a
time. Validation and summaries live in :mod:`oodlab.embeddings.validate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from oodlab.utils.atomic import read_json, save_npy, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.runs import RUN_RECORD

FORMAT = "oodlab-embedding-store"
FORMAT_VERSION = 1
IMG_DIR, TEXT_DIR, META_DIR, STATS_DIR = "img_emb", "text_emb", "metadata", "stats"
SIDECAR = "oodlab.json"
DEFAULT_KEY_COLUMN = "image_path"
#: |norm - 1| allowed for a stored row: float16 rounding moves a unit norm by at most ~5e-4
NORM_TOLERANCE = 5e-3

#: the per-part files, by kind: (folder, name pattern with the part suffix as group 1)
PART_FILES = {
    "img": (IMG_DIR, re.compile(r"^img_emb_(\d+)\.npy$")),
    "text": (TEXT_DIR, re.compile(r"^text_emb_(\d+)\.npy$")),
    "metadata": (META_DIR, re.compile(r"^metadata_(\d+)\.parquet$")),
    "stats": (STATS_DIR, re.compile(r"^part_(\d+)\.json$")),
}


def part_suffix(index: int, n_parts: int) -> str:
    """clip-retrieval's zero padding: ``int(log10(n_parts)) + 1`` digits."""
    width = int(math.log10(n_parts)) + 1 if n_parts > 0 else 1
    return f"{index:0{width}d}"


@dataclass(frozen=True)
class StorePart:
    """One part of a store: its files and row count."""

    index: int
    suffix: str
    img_path: Path
    meta_path: Path
    text_path: Path | None
    rows: int
    dim: int
    dtype: str
    #: the metadata is readable, has the key column and as many rows as the embeddings
    keys_readable: bool = True


@dataclass
class Chunk:
    """A slice of consecutive rows of one part.

    Attributes:
        part: position of the part in ``store.parts``.
        start: first row within the part.
        offset: global row index of the first row (rows counted over parts in order).
        embeddings: float32 (or the requested dtype) [n, d].
        keys: object array [n] of str keys, or None when not requested.
    """

    part: int
    start: int
    offset: int
    embeddings: np.ndarray
    keys: np.ndarray | None

    def __len__(self) -> int:
        return len(self.embeddings)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"is not a readable .npy array ({err})", "re-create this part") from err
    return arr.shape, arr.dtype


def _unfinished_embed(path: Path) -> bool:
    """Whether ``path`` was written by an ``oodlab embed`` run that has not finished (its run
    record exists, its sidecar not yet): the parts there may be a fraction of the data."""
    try:
        return read_json(path / RUN_RECORD).get("stage") == "embed"
    except (OSError, ValueError, AttributeError):
        return False


def _part_files(path: Path) -> dict[str, dict[str, Path]]:
    """{suffix: {kind: file}} of every per-part file in the store folder (kinds: PART_FILES)."""
    found: dict[str, dict[str, Path]] = {}
    for kind, (folder, rx) in PART_FILES.items():
        if not (path / folder).is_dir():
            continue
        for f in (path / folder).iterdir():
            m = rx.match(f.name)
            if m:
                found.setdefault(m.group(1), {})[kind] = f
    return found


class EmbeddingStore:
    """Read access to an embedding store folder (see module docstring).

    Args:
        path: the store folder.
        key_column: metadata column holding the sample key (default: the sidecar's, else
            ``image_path``).
        strict: refuse a damaged store: a part missing its ``img_emb`` or metadata file, an
            unreadable ``img_emb`` or metadata, metadata without the key column or with another
            row count than its embeddings, an unreadable sidecar, a store whose ``oodlab embed``
            has not finished. With False the store opens anyway: ``parts`` holds the parts whose
            ``img_emb`` is readable (``keys_readable`` says whether their keys are) and
            ``problems`` lists the damage; only validation should read a store this way.
        unfinished: count an unfinished ``oodlab embed`` run as damage (False only for embed
            itself, which checks the parts it wrote before it writes the sidecar).

    Attributes:
        parts: the readable parts, in numeric order of their suffix.
        problems: the structural problems found when opening (empty when ``strict``).

    Raises:
        InputError: ``path`` is not a store, or (``strict``) the store is damaged, naming every
            damaged part (up to a few) and the fix.
    """

    def __init__(self, path: str | Path, key_column: str | None = None, *, strict: bool = True, unfinished: bool = True):
        self.path = Path(path)
        if not (self.path / IMG_DIR).is_dir():
            raise InputError(
                self.path, f"is not an embedding store (no {IMG_DIR}/ folder)", "pass a folder written by `oodlab embed` or clip-retrieval"
            )
        problems: list[str] = []
        self.sidecar: dict[str, Any] | None = None
        sidecar = self.path / SIDECAR
        if sidecar.exists():
            try:
                self.sidecar = read_json(sidecar)
                if not isinstance(self.sidecar, dict):
                    raise ValueError(f"holds a JSON {type(self.sidecar).__name__}, not an object")
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                self.sidecar = None
                problems.append(f"{SIDECAR} is not a readable sidecar ({err})")
        elif unfinished and _unfinished_embed(self.path):
            problems.append(f"the `oodlab embed` run writing this store has not finished ({RUN_RECORD} but no {SIDECAR})")
        self.key_column = key_column or (self.sidecar or {}).get("key_column", DEFAULT_KEY_COLUMN)
        files = _part_files(self.path)
        listed = [e.get("suffix") for e in (self.sidecar or {}).get("parts", []) if isinstance(e, dict)]
        for suffix in listed:
            if isinstance(suffix, str) and suffix.isdigit():
                files.setdefault(suffix, {})
        if not files:
            raise InputError(self.path / IMG_DIR, "holds no img_emb_*.npy part", "run `oodlab embed` first")
        parts = []
        for suffix in sorted(files, key=lambda x: (int(x), x)):
            have = files[suffix]
            img = have.get("img")
            meta = self.path / META_DIR / f"metadata_{suffix}.parquet"
            if img is None:
                present = [f.name for f in have.values()] or [f"an entry in {SIDECAR}"]
                problems.append(f"part {suffix}: img_emb_{suffix}.npy is missing (the part has {', '.join(present)})")
                continue
            name = f"part {suffix} ({img.name})"
            try:
                shape, dtype = _npy_header(img)
            except InputError as err:
                problems.append(f"{name}: {err.problem}")
                continue
            if len(shape) != 2:
                problems.append(f"{name}: has shape {shape}, expected [rows, dim]")
                continue
            keys_readable = False
            if "metadata" not in have:
                problems.append(f"{name}: metadata {meta.name} is missing")
            else:
                keys_readable = self._check_metadata(meta, int(shape[0]), name, problems)
            parts.append(
                StorePart(
                    index=int(suffix),
                    suffix=suffix,
                    img_path=img,
                    meta_path=meta,
                    text_path=have.get("text"),
                    rows=int(shape[0]),
                    dim=int(shape[1]),
                    dtype=str(dtype),
                    keys_readable=keys_readable,
                )
            )
        if strict and problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise InputError(
                self.path,
                f"is damaged: {'; '.join(problems[:3])}{more}",
                "for an oodlab store, re-run the same `oodlab embed`: it re-creates damaged parts and finishes an "
                "unfinished store (else restore the files); `oodlab store validate` lists every problem",
            )
        self.parts: list[StorePart] = parts
        self.problems: list[str] = problems

    def _check_metadata(self, meta: Path, rows: int, name: str, problems: list[str]) -> bool:
        """Whether a part's metadata can give its keys (read from the parquet footer only)."""
        import pyarrow.parquet as pq

        try:
            footer = pq.ParquetFile(meta)
        except Exception as err:  # pyarrow raises several types for a damaged file
            problems.append(f"{name}: {meta.name} is not a readable parquet file ({type(err).__name__}: {err})")
            return False
        ok = True
        if footer.metadata.num_rows != rows:
            problems.append(f"{name}: {meta.name} has {footer.metadata.num_rows} rows, img_emb has {rows}")
            ok = False
        if self.key_column not in footer.schema_arrow.names:
            problems.append(f"{name}: {meta.name} has no key column {self.key_column!r} "
                            f"(columns: {footer.schema_arrow.names[:8]}; pass --key-column)")
            ok = False
        return ok

    # -- summary -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def dim(self) -> int:
        dims = {p.dim for p in self.parts}
        if len(dims) != 1:
            raise InputError(self.path, f"parts have different dimensions {sorted(dims)}", "run `oodlab store validate`")
        return dims.pop()

    @property
    def dtype(self) -> str:
        return self.parts[0].dtype

    @property
    def model(self) -> dict[str, Any] | None:
        return (self.sidecar or {}).get("model")

    @property
    def has_text(self) -> bool:
        return all(p.text_path is not None for p in self.parts)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, count={self.count}, dim={self.parts[0].dim if self.parts else None}, parts={len(self.parts)})"

    # -- reading -----------------------------------------------------------------------------
    def part_offsets(self) -> np.ndarray:
        """int64 [n_parts + 1]: global row index where each part starts (and the total)."""
        return np.concatenate([[0], np.cumsum([p.rows for p in self.parts])]).astype(np.int64)

    def iter_keys(self, part: StorePart, chunk_rows: int) -> Iterator[np.ndarray]:
        """Keys of one part in slices of exactly ``chunk_rows`` (the last may be shorter)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not part.meta_path.exists():
            raise InputError(part.meta_path, "is missing", "re-create this part or pass the right store folder")
        pf = pq.ParquetFile(part.meta_path)
        if self.key_column not in pf.schema_arrow.names:
            raise InputError(
                part.meta_path,
                f"has no key column {self.key_column!r} (columns: {pf.schema_arrow.names})",
                "pass key_column= / --key-column naming the column that holds sample keys",
            )
        pending: list[Any] = []
        n_pending = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=[self.key_column]):
            col = batch.column(0)
            if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
                col = pc.cast(col, pa.string())
            pending.append(col)
            n_pending += len(col)
            while n_pending >= chunk_rows:
                merged = pa.concat_arrays(pending)
                yield merged.slice(0, chunk_rows).to_numpy(zero_copy_only=False)
                rest = merged.slice(chunk_rows)
                pending, n_pending = ([rest], len(rest)) if len(rest) else ([], 0)
        if n_pending:
            yield pa.concat_arrays(pending).to_numpy(zero_copy_only=False)

    def iter_chunks(
        self,
        chunk_rows: int = 65536,
        *,
        text: bool = False,
        keys: bool = True,
        dtype: Any = np.float32,
        parts: Sequence[int] | None = None,
        check: bool = True,
    ) -> Iterator[Chunk]:
        """Stream the store in chunks of at most ``chunk_rows`` rows that never cross parts.

        Args:
            text: read text embeddings instead of image embeddings.
            keys: also read the keys (from the metadata parquet).
            dtype: dtype of the returned embeddings (float32 by default; None keeps the stored one).
            parts: positions in ``self.parts`` to read (default all), e.g. one part per task.
            check: refuse NaN/inf and non-unit rows as they stream (text: the all-zero marker
                rows pass); False only for a reader that checks them itself.

        Raises:
            InputError: a bad row (naming the part file and the row), or a part whose metadata
                has another number of rows.
        """
        if chunk_rows < 1:
            raise InputError(None, f"chunk_rows must be >= 1, got {chunk_rows}", "pass a positive --chunk-rows")
        offsets = self.part_offsets()
        for pi in range(len(self.parts)) if parts is None else parts:
            part = self.parts[pi]
            path = part.text_path if text else part.img_path
            if path is None:
                raise InputError(self.path, f"part {part.suffix} has no text embeddings", "embed with --text")
            emb = np.load(path, mmap_mode="r", allow_pickle=False)
            key_iter = self.iter_keys(part, chunk_rows) if keys else None
            for start in range(0, part.rows, chunk_rows):
                block = emb[start : start + chunk_rows]
                arr = np.array(block, dtype=dtype if dtype is not None else block.dtype)
                if check:
                    check_unit_rows(arr, path, "text row" if text else "row", start, allow_zero=text)
                k = next(key_iter) if key_iter is not None else None
                if k is not None and len(k) != len(arr):
                    raise InputError(
                        part.meta_path,
                        f"has fewer rows than {path.name} ({part.rows} embeddings)",
                        "the part is damaged; re-create it",
                    )
                yield Chunk(part=pi, start=start, offset=int(offsets[pi]) + start, embeddings=arr, keys=k)
            if key_iter is not None and next(key_iter, None) is not None:
                raise InputError(part.meta_path, f"has more rows than {path.name} ({part.rows})", "re-create this part")

    def read_all(self, *, text: bool = False, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Load the whole store: (embeddings [count, d], keys [count]). For small stores only."""
        embs, keys = [np.zeros((0, self.dim), dtype)], [np.zeros(0, object)]
        for chunk in self.iter_chunks(1 << 20, text=text, dtype=dtype):
            embs.append(chunk.embeddings)
            keys.append(chunk.keys)
        return np.concatenate(embs), np.concatenate(keys)

    def _rows_by_part(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """For each part holding some of ``rows``: (its position, where those rows are in
        ``rows``, their row numbers within the part, ascending)."""
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        offsets = self.part_offsets()
        if len(rows) and (rows.min() < 0 or rows.max() >= offsets[-1]):
            raise IndexError(f"rows must lie in [0, {offsets[-1]}), got [{rows.min()}, {rows.max()}]")
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        bounds = np.searchsorted(sorted_rows, offsets)
        for pi in range(len(self.parts)):
            lo, hi = bounds[pi], bounds[pi + 1]
            if lo < hi:
                yield pi, order[lo:hi], sorted_rows[lo:hi] - offsets[pi]

    def take(self, rows: np.ndarray | Sequence[int], *, dtype: Any = np.float32, check_unit: bool = True) -> np.ndarray:
        """The image embeddings of global row indices ``rows``: ``dtype`` [len(rows), d].

        ``rows`` may come in any order and repeat. Memory: the result plus the requested rows of
        one part at a time (parts are memory-mapped), never the whole store.

        Args:
            rows: int [m] global row indices (rows counted over parts in order).
            dtype: dtype of the result.
            check_unit: refuse NaN/inf and non-unit rows (:func:`check_unit_rows`, naming the
                part file and the row in it); False only for a reader that checks them itself.

        Raises:
            IndexError: a row outside ``[0, count)``.
        """
        out = np.empty((len(rows), self.dim), dtype=dtype)
        for pi, where, local in self._rows_by_part(rows):
            part = self.parts[pi]
            block = np.load(part.img_path, mmap_mode="r", allow_pickle=False)[local]
            if check_unit:
                check_unit_rows(block, part.img_path, "row", local)
            out[where] = block
        return out

    def keys_at(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The keys of global row indices ``rows`` (any order, repeats allowed): object [len(rows)].

        Memory: the result plus the keys of one part at a time.

        Raises:
            IndexError: a row outside ``[0, count)``.
            InputError: a part's metadata is missing, lacks the key column or has another row
                count than its embeddings.
        """
        out = np.empty(len(rows), dtype=object)
        for pi, where, local in self._rows_by_part(rows):
            part = self.parts[pi]
            keys = np.concatenate(list(self.iter_keys(part, max(part.rows, 1))))
            if len(keys) != part.rows:
                raise InputError(part.meta_path, f"has {len(keys)} rows, {part.img_path.name} has {part.rows}",
                                 "the part is damaged; re-create it")
            out[where] = keys[local]
        return out

    def read_metadata(self, columns: Sequence[str] | None = None) -> Any:
        """The metadata of all parts as one pyarrow Table (for small stores and reports)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(p.meta_path, columns=columns) for p in self.parts], promote_options="default")


def check_unit_rows(x: np.ndarray, where: str | Path, what: str = "row", rows: np.ndarray | int = 0, *,
                    allow_zero: bool = False) -> None:
    """Refuse NaN/inf and non-unit rows (cosine similarity needs L2-normalised embeddings).

    Args:
        x: float [n, d] rows.
        where: the file they come from (named in the error).
        what: how to call a row in the message ("row", "eval row", ...).
        rows: the rows' numbers in ``where``: an array [n], or the number of the first.
        allow_zero: accept all-zero rows (the marker of a sample without a caption in text_emb).

    Raises:
        InputError: naming the first bad row, its problem and the fix.
    """
    norms = np.linalg.norm(np.asarray(x, np.float32), axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE)
    if allow_zero:
        bad &= norms != 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(rows[i]) if isinstance(rows, np.ndarray) else rows + i
        problem = "has NaN/inf values" if not np.isfinite(norms[i]) else f"has norm {norms[i]:.4f}, not 1"
        raise InputError(where, f"{what} {row} {problem} (cosine similarity needs L2-normalised rows)",
                         "re-embed it; `oodlab store validate` lists all bad rows")


# -- writing ---------------------------------------------------------------------------------
def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float32 (zero rows stay zero and are reported by validation)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def write_part(
    store: str | Path,
    index: int,
    n_parts: int,
    *,
    image: np.ndarray,
    metadata: Any,
    text: np.ndarray | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one part atomically; ``stats/part_{i}.json`` is written last and marks completion.

    Args:
        image: float [n, d] embeddings, L2-normalised here and stored as float16.
        metadata: pyarrow Table with n rows, including the key column.
        text: optional float [n, d] text embeddings; an all-zero row marks a sample without a
            caption (stays zero; list its key under ``missing_text`` in ``record``).
        record: extra fields for the part's stats record (source, skipped samples...).

    Returns:
        the part's stats record.
    """
    store = Path(store)
    suffix = part_suffix(index, n_parts)
    n = len(image)
    if len(metadata) != n or (text is not None and len(text) != n):
        raise ValueError("image, text and metadata rows differ")
    img16 = normalize_rows(image).astype(np.float16)
    save_npy(store / IMG_DIR / f"img_emb_{suffix}.npy", img16)
    if text is not None:
        save_npy(store / TEXT_DIR / f"text_emb_{suffix}.npy", normalize_rows(text).astype(np.float16))
    write_parquet(store / META_DIR / f"metadata_{suffix}.parquet", metadata)
    stats = {"part": index, "suffix": suffix, "rows": n, "dim": int(image.shape[1]) if n else None}
    stats.update(record or {})
    write_json(store / STATS_DIR / f"part_{suffix}.json", stats)
    return stats


def read_part_record(store: str | Path, index: int, n_parts: int) -> dict[str, Any] | None:
    """The stats record of a completed part, or None when the part is absent or incomplete."""
    store = Path(store)
    suffix = part_suffix(index, n_parts)
    path = store / STATS_DIR / f"part_{suffix}.json"
    if not path.exists():
        return None
    record = read_json(path)
    needed = [store / IMG_DIR / f"img_emb_{suffix}.npy", store / META_DIR / f"metadata_{suffix}.parquet"]
    if record.get("text"):
        needed.append(store / TEXT_DIR / f"text_emb_{suffix}.npy")
    return record if all(p.exists() for p in needed) else None


def write_sidecar(store: str | Path, *, model: dict[str, Any] | None, records: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Write ``oodlab.json`` from the parts' records (called when every part is complete)."""
    dims = {r["dim"] for r in records if r.get("dim")}
    if len(dims) > 1:
        raise IncompatibleError(store, f"parts have different dimensions {sorted(dims)}", "re-embed with one model")
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "dim": dims.pop() if dims else None,
        "dtype": "float16",
        "count": sum(r["rows"] for r in records),
        "key_column": DEFAULT_KEY_COLUMN,
        "parts": [{k: r[k] for k in ("suffix", "rows", "source") if k in r} for r in records],
    }
    sidecar.update(fields)
    write_json(Path(store) / SIDECAR, sidecar)
    return sidecar
