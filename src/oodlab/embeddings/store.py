"""The embedding store: clip-retrieval's folder layout plus an ``oodlab.json`` sidecar.

::

    STORE/
      img_emb/img_emb_{i}.npy            float16 [n_i, d], L2-normalised rows
      text_emb/text_emb_{i}.npy          optional, same rows
      metadata/metadata_{i}.parquet      image_path (= sample key), caption, label columns...
      stats/part_{i}.json                oodlab: per-part record, written last (commit marker)
      oodlab.json                        oodlab: format version, model identity, dim, dtype,
                                         count, parts, sources, what was skipped

Rows are aligned across the three files of a part. ``{i}`` is zero-padded to
``int(log10(n_parts)) + 1`` digits as clip-retrieval does; readers accept any padding and order
parts numerically. Any clip-retrieval folder (e.g. LAION-400M's released embeddings) reads with or
without the sidecar; the key column is configurable.

Readers stream: :meth:`EmbeddingStore.iter_chunks` memory-maps one part at a time and copies at
most ``chunk_rows`` rows, so memory is bounded by the chunk, never by the store.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from oodlab.utils.atomic import read_json, save_npy, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError

FORMAT = "oodlab-embedding-store"
FORMAT_VERSION = 1
IMG_DIR, TEXT_DIR, META_DIR, STATS_DIR = "img_emb", "text_emb", "metadata", "stats"
SIDECAR = "oodlab.json"
DEFAULT_KEY_COLUMN = "image_path"
#: |norm - 1| allowed for a stored row: float16 rounding moves a unit norm by at most ~5e-4
NORM_TOLERANCE = 5e-3

_PART_RX = re.compile(r"^img_emb_(\d+)\.npy$")


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


class EmbeddingStore:
    """Read access to an embedding store folder (see module docstring).

    Args:
        path: the store folder.
        key_column: metadata column holding the sample key (default: the sidecar's, else
            ``image_path``).
    """

    def __init__(self, path: str | Path, key_column: str | None = None):
        self.path = Path(path)
        img_dir = self.path / IMG_DIR
        if not img_dir.is_dir():
            raise InputError(
                self.path, f"is not an embedding store (no {IMG_DIR}/ folder)", "pass a folder written by `oodlab embed` or clip-retrieval"
            )
        sidecar = self.path / SIDECAR
        self.sidecar: dict[str, Any] | None = read_json(sidecar) if sidecar.exists() else None
        self.key_column = key_column or (self.sidecar or {}).get("key_column", DEFAULT_KEY_COLUMN)
        found = []
        for p in img_dir.iterdir():
            m = _PART_RX.match(p.name)
            if m:
                found.append((int(m.group(1)), m.group(1), p))
        if not found:
            raise InputError(img_dir, "holds no img_emb_*.npy part", "run `oodlab embed` first")
        found.sort()
        parts = []
        for index, suffix, img in found:
            shape, dtype = _npy_header(img)
            if len(shape) != 2:
                raise InputError(img, f"has shape {shape}, expected [rows, dim]", "re-create this part")
            text = self.path / TEXT_DIR / f"text_emb_{suffix}.npy"
            parts.append(
                StorePart(
                    index=index,
                    suffix=suffix,
                    img_path=img,
                    meta_path=self.path / META_DIR / f"metadata_{suffix}.parquet",
                    text_path=text if text.exists() else None,
                    rows=int(shape[0]),
                    dim=int(shape[1]),
                    dtype=str(dtype),
                )
            )
        self.parts: list[StorePart] = parts

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
        return f"EmbeddingStore({str(self.path)!r}, count={self.count}, dim={self.parts[0].dim}, parts={len(self.parts)})"

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
    ) -> Iterator[Chunk]:
        """Stream the store in chunks of at most ``chunk_rows`` rows that never cross parts.

        Args:
            text: read text embeddings instead of image embeddings.
            keys: also read the keys (from the metadata parquet).
            dtype: dtype of the returned embeddings (float32 by default; None keeps the stored one).
            parts: positions in ``self.parts`` to read (default all), e.g. one part per task.
        """
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
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
        embs, keys = [], []
        for chunk in self.iter_chunks(1 << 20, text=text, dtype=dtype):
            embs.append(chunk.embeddings)
            keys.append(chunk.keys)
        return np.concatenate(embs), np.concatenate(keys)

    def read_metadata(self, columns: Sequence[str] | None = None) -> Any:
        """The metadata of all parts as one pyarrow Table (for small stores and reports)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(p.meta_path, columns=columns) for p in self.parts], promote_options="default")


def check_unit_rows(x: np.ndarray, where: str | Path, what: str = "row", rows: np.ndarray | int = 0) -> None:
    """Refuse NaN/inf and non-unit rows (cosine similarity needs L2-normalised embeddings).

    Args:
        x: float [n, d] rows.
        where: the file they come from (named in the error).
        what: how to call a row in the message ("row", "eval row", ...).
        rows: the rows' numbers in ``where``: an array [n], or the number of the first.

    Raises:
        InputError: naming the first bad row, its problem and the fix.
    """
    norms = np.linalg.norm(np.asarray(x, np.float32), axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE)
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
        text: optional float [n, d] text embeddings.
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


# -- info and validation -----------------------------------------------------------------------
def store_info(path: str | Path, key_column: str | None = None) -> dict[str, Any]:
    """JSON summary of a store: count, dim, dtype, model, parts, text, key column."""
    store = EmbeddingStore(path, key_column)
    return {
        "path": str(store.path),
        "count": store.count,
        "dim": store.parts[0].dim if len({p.dim for p in store.parts}) == 1 else sorted({p.dim for p in store.parts}),
        "dtype": store.dtype,
        "parts": len(store.parts),
        "rows_per_part": {"min": min(p.rows for p in store.parts), "max": max(p.rows for p in store.parts)},
        "text": store.has_text,
        "key_column": store.key_column,
        "sidecar": store.sidecar is not None,
        "model": store.model,
        "skipped": len((store.sidecar or {}).get("skipped", [])),
    }


def _hash_keys(keys: np.ndarray) -> np.ndarray:
    # Python's str hash is salted per process, which is fine: hashes never leave this process.
    return np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))


def find_duplicate_keys(store: EmbeddingStore, chunk_rows: int = 1 << 20, bucket_rows: int = 1 << 25) -> dict[str, int]:
    """Keys that occur more than once, with their counts.

    Memory is bounded by ``bucket_rows`` hashes: a store larger than that has its 8-byte key
    hashes spilled into buckets on disk (by hash value) and each bucket is checked alone.
    """
    n_buckets = max(1, -(-store.count // bucket_rows))
    with tempfile.TemporaryDirectory(prefix="oodlab-dupkeys-") as tmp:
        files = [open(Path(tmp) / f"b{i}.bin", "wb") for i in range(n_buckets)]
        try:
            for part in store.parts:
                for keys in store.iter_keys(part, chunk_rows):
                    h = _hash_keys(keys)
                    bucket = (h.view(np.uint64) % np.uint64(n_buckets)).astype(np.int64)
                    for b in range(n_buckets):
                        files[b].write(h[bucket == b].tobytes())
        finally:
            for f in files:
                f.close()
        suspects: list[np.ndarray] = []
        for i in range(n_buckets):
            h = np.fromfile(Path(tmp) / f"b{i}.bin", dtype=np.int64)
            values, counts = np.unique(h, return_counts=True)
            suspects.append(values[counts > 1])
    suspect = np.concatenate(suspects)
    if not len(suspect):
        return {}
    # hashes can collide: confirm on the keys themselves (few, since duplicates are rare)
    counter: Counter[str] = Counter()
    for part in store.parts:
        for keys in store.iter_keys(part, chunk_rows):
            hit = np.isin(_hash_keys(keys), suspect)
            counter.update(keys[hit].tolist())
    return {k: c for k, c in counter.items() if c > 1}


def validate_store(
    path: str | Path, key_column: str | None = None, *, chunk_rows: int = 65536, norm_tolerance: float = NORM_TOLERANCE
) -> list[str]:
    """Check a store; returns the problems found (empty when sound), each naming the part.

    Checks: every part has metadata with the key column and the same row count (and text
    embeddings, if any part has them); dims and dtypes agree across parts; no NaN/inf rows; rows
    are unit-norm within ``norm_tolerance``; keys are unique; the sidecar (if any) agrees.
    """
    store = EmbeddingStore(path, key_column)
    problems: list[str] = []
    dims = Counter(p.dim for p in store.parts)
    dtypes = Counter(p.dtype for p in store.parts)
    main_dim, main_dtype = dims.most_common(1)[0][0], dtypes.most_common(1)[0][0]
    any_text = any(p.text_path for p in store.parts)
    readable = []
    for p in store.parts:
        name = f"part {p.suffix} ({p.img_path.name})"
        if p.dim != main_dim:
            problems.append(f"{name}: dim {p.dim} differs from the other parts' {main_dim}")
        if p.dtype != main_dtype:
            problems.append(f"{name}: dtype {p.dtype} differs from the other parts' {main_dtype}")
        if p.dtype not in ("float16", "float32"):
            problems.append(f"{name}: dtype {p.dtype} is not float16 or float32")
        if any_text and p.text_path is None:
            problems.append(f"{name}: text_emb_{p.suffix}.npy is missing while other parts have text embeddings")
        if p.text_path is not None:
            shape, _ = _npy_header(p.text_path)
            if shape[0] != p.rows:
                problems.append(f"{name}: {p.text_path.name} has {shape[0]} rows, img_emb has {p.rows}")
        if not p.meta_path.exists():
            problems.append(f"{name}: metadata {p.meta_path.name} is missing")
            continue
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(p.meta_path)
        if meta.metadata.num_rows != p.rows:
            problems.append(f"{name}: {p.meta_path.name} has {meta.metadata.num_rows} rows, img_emb has {p.rows}")
            continue
        if store.key_column not in meta.schema_arrow.names:
            problems.append(f"{name}: {p.meta_path.name} has no key column {store.key_column!r}")
            continue
        readable.append(p)
    for kind in ("img", "text") if any_text else ("img",):
        for pi, p in enumerate(store.parts):
            if kind == "text" and p.text_path is None:
                continue
            bad_finite, bad_norm, first = 0, 0, []
            for chunk in store.iter_chunks(chunk_rows, text=kind == "text", keys=False, parts=[pi]):
                x = chunk.embeddings
                finite = np.isfinite(x).all(axis=1)
                norms = np.linalg.norm(np.where(np.isfinite(x), x, 0), axis=1)
                off = finite & (np.abs(norms - 1) > norm_tolerance)
                bad_finite += int((~finite).sum())
                bad_norm += int(off.sum())
                first += (np.flatnonzero(~finite | off)[:5] + chunk.start).tolist()
            name = f"part {p.suffix} ({kind}_emb_{p.suffix}.npy)"
            if bad_finite:
                problems.append(f"{name}: {bad_finite} rows with NaN/inf (first rows {first[:5]})")
            if bad_norm:
                problems.append(
                    f"{name}: {bad_norm} rows not unit-norm (|norm - 1| > {norm_tolerance}; first rows {first[:5]})"
                )
    if len(readable) == len(store.parts):
        dups = find_duplicate_keys(store, chunk_rows=max(chunk_rows, 1 << 16))
        if dups:
            sample = dict(list(dups.items())[:5])
            problems.append(f"{len(dups)} duplicate keys in column {store.key_column!r} (e.g. {sample})")
    if store.sidecar is not None:
        sc = store.sidecar
        if sc.get("count") not in (None, store.count):
            problems.append(f"{SIDECAR}: count {sc['count']} but the parts hold {store.count} rows")
        if sc.get("dim") not in (None, main_dim):
            problems.append(f"{SIDECAR}: dim {sc['dim']} but the parts have {main_dim}")
        if "parts" in sc and len(sc["parts"]) != len(store.parts):
            problems.append(f"{SIDECAR}: lists {len(sc['parts'])} parts but {len(store.parts)} are on disk")
    return problems
