"""Checks and summaries of an embedding store (layout: :mod:`oodlab.embeddings.store`).

- :func:`store_info`: a JSON summary; refuses a damaged store rather than report a wrong count.
- :func:`store_validate`: every problem found, each naming the part: it opens the store leniently
  (``EmbeddingStore(..., strict=False)``) and runs every check on whatever can be read, so one
  kind of damage never hides another.
- :func:`find_duplicate_keys`: keys that occur more than once, in bounded memory.

A text row of all zeros is the marker of a sample embedded without a caption; it is accepted only
for a key recorded under ``missing_text`` (the part's stats record, else the sidecar).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from oodlab.embeddings.store import NORM_TOLERANCE, SIDECAR, STATS_DIR, EmbeddingStore, StorePart, _npy_header
from oodlab.utils.atomic import read_json
from oodlab.utils.duplicates import repeated_keys
from oodlab.utils.errors import InputError


def store_info(store: str | Path, key_column: str | None = None) -> dict[str, Any]:
    """Print a JSON summary of a store: count, dim, dtype, model, parts, text, key column, and how
    many samples were skipped or have no caption.

    Args:
        store: the embedding store.
        key_column: the metadata column holding sample keys (default: the store's, else image_path).

    Raises:
        InputError: the store is damaged (a part lacks its embeddings or metadata): its count
            would be wrong; `oodlab store validate` lists the problems.
    """
    store = EmbeddingStore(store, key_column)
    dims = sorted({p.dim for p in store.parts})
    sidecar = store.sidecar or {}
    return {
        "path": str(store.path),
        "count": store.count,
        "dim": dims[0] if len(dims) == 1 else dims,
        "dtype": store.dtype,
        "parts": len(store.parts),
        "rows_per_part": {"min": min(p.rows for p in store.parts), "max": max(p.rows for p in store.parts)},
        "text": store.has_text,
        "key_column": store.key_column,
        "sidecar": store.sidecar is not None,
        "model": store.model,
        "skipped": len(sidecar.get("skipped", [])),
        "missing_text": len(sidecar.get("missing_text", [])),
    }


def find_duplicate_keys(
    store: EmbeddingStore, chunk_rows: int = 1 << 20, bucket_rows: int = 1 << 25, *, parts: Sequence[int] | None = None
) -> dict[str, int]:
    """Keys that occur more than once, with their counts, in bounded memory
    (:func:`oodlab.utils.duplicates.repeated_keys`).

    Args:
        parts: positions in ``store.parts`` to look at (default all).
    """
    chosen = [store.parts[i] for i in (range(len(store.parts)) if parts is None else parts)]

    def batches() -> Iterator[np.ndarray]:
        for part in chosen:
            yield from store.iter_keys(part, chunk_rows)

    return repeated_keys(batches, sum(p.rows for p in chosen), bucket_rows)


def require_unique_keys(store: EmbeddingStore) -> None:
    """Refuse a store whose keys repeat (a reader's check: a key must name one sample, or pruning
    puts it in both kept and removed). One pass over the key columns, memory as
    :func:`find_duplicate_keys`.

    Raises:
        InputError: naming how many keys repeat and a few of them.
    """
    dups = find_duplicate_keys(store)
    if dups:
        raise InputError(store.path, f"{len(dups)} keys occur more than once in column {store.key_column!r} "
                         f"(e.g. {list(dups)[:3]})",
                         "a key must name one sample: re-embed with unique keys (`oodlab store validate` lists them)")


def _scan_rows(path: Path, chunk_rows: int, norm_tolerance: float, zeros: bool) -> tuple[int, list[int], int, list[int], np.ndarray]:
    """One pass over the rows of an ``.npy`` file (its own length, whatever the part says).

    Returns:
        (rows with NaN/inf, the first such rows, finite non-unit rows, the first such rows,
        int64 [z] the all-zero rows: with ``zeros`` they are kept apart from the non-unit rows,
        else empty).
    """
    emb = np.load(path, mmap_mode="r", allow_pickle=False)
    n_nonfinite, first_nonfinite, n_off, first_off, zero_rows = 0, [], 0, [], [np.zeros(0, np.int64)]
    for start in range(0, len(emb), chunk_rows):
        x = np.asarray(emb[start : start + chunk_rows], dtype=np.float32)
        finite = np.isfinite(x).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(x), x, 0), axis=1)
        off = finite & (np.abs(norms - 1) > norm_tolerance)
        if zeros:
            zero = finite & (norms == 0)
            zero_rows.append(np.flatnonzero(zero) + start)
            off &= ~zero
        n_nonfinite += int((~finite).sum())
        first_nonfinite += (np.flatnonzero(~finite)[:5] + start).tolist()
        n_off += int(off.sum())
        first_off += (np.flatnonzero(off)[:5] + start).tolist()
    return n_nonfinite, first_nonfinite[:5], n_off, first_off[:5], np.concatenate(zero_rows)


def _part_record(store: EmbeddingStore, part: StorePart) -> dict[str, Any] | None:
    path = store.path / STATS_DIR / f"part_{part.suffix}.json"
    return read_json(path) if path.exists() else None


def store_validate(
    store: str | Path, key_column: str | None = None, *, chunk_rows: int = 65536, norm_tolerance: float = NORM_TOLERANCE
) -> list[str]:
    """Check a store (NaN/inf, unit norm, dims/dtypes, row counts, lost parts, duplicate keys); exit 1 on problems.

    Returns the problems found (empty when sound), each naming the part.

    Checks, each on every part whose files can be read: every part has its ``img_emb`` and its
    metadata (with the key column and the same row count), and text embeddings (with the same
    rows) if any part has them or its stats record says so; dims and dtypes agree across parts;
    no NaN/inf rows; rows are unit-norm within ``norm_tolerance`` (a zero text row only for a
    key recorded as missing text, and every such key has one); keys are unique over the parts
    whose keys can be read; the sidecar (if any) agrees.

    Args:
        store: the embedding store.
        key_column: the metadata column holding sample keys (default: the store's, else image_path).
        chunk_rows: rows read at a time (bounds memory).
        norm_tolerance: allowed |norm - 1| of a row (float16 rounding moves a unit norm by ~5e-4).
    """
    if chunk_rows < 1:
        raise InputError(None, f"chunk_rows must be >= 1, got {chunk_rows}", "pass a positive --chunk-rows")
    store = EmbeddingStore(store, key_column, strict=False)
    problems: list[str] = list(store.problems)
    parts = store.parts
    main_dim = Counter(p.dim for p in parts).most_common(1)[0][0] if parts else None
    main_dtype = Counter(p.dtype for p in parts).most_common(1)[0][0] if parts else None
    any_text = any(p.text_path for p in parts)
    sidecar_missing = {e.get("key") for e in (store.sidecar or {}).get("missing_text", []) if isinstance(e, dict)}
    key_parts: list[int] = []  # parts whose keys can be read
    text_parts: list[int] = []  # parts whose text embeddings can be read
    missing_text: dict[int, set[str]] = {}
    for pi, p in enumerate(parts):
        name = f"part {p.suffix} ({p.img_path.name})"
        if p.dim != main_dim:
            problems.append(f"{name}: dim {p.dim} differs from the other parts' {main_dim}")
        if p.dtype != main_dtype:
            problems.append(f"{name}: dtype {p.dtype} differs from the other parts' {main_dtype}")
        if p.dtype not in ("float16", "float32"):
            problems.append(f"{name}: dtype {p.dtype} is not float16 or float32")
        record = _part_record(store, p) or {}
        missing_text[pi] = set(record["missing_text"]) if "missing_text" in record else sidecar_missing
        if p.text_path is None and (any_text or record.get("text")):
            why = "other parts have text embeddings" if any_text else "its stats record says it has them"
            problems.append(f"{name}: text_emb_{p.suffix}.npy is missing while {why}")
        if p.text_path is not None:
            try:
                shape, _ = _npy_header(p.text_path)
            except InputError as err:
                problems.append(f"{name}: {p.text_path.name} {err.problem}")
            else:
                if len(shape) != 2 or shape[1] != p.dim:
                    problems.append(f"{name}: {p.text_path.name} has shape {shape}, img_emb has [{p.rows}, {p.dim}]")
                else:
                    text_parts.append(pi)
                    if shape[0] != p.rows:
                        problems.append(f"{name}: {p.text_path.name} has {shape[0]} rows, img_emb has {p.rows}")
        if p.keys_readable:  # metadata problems were found when the store was opened
            key_parts.append(pi)
    for kind, positions in (("img", range(len(parts))), ("text", text_parts)):
        for pi in positions:
            p = parts[pi]
            file = p.img_path if kind == "img" else p.text_path
            n_nonfinite, first_nonfinite, n_off, first_off, zeros = _scan_rows(file, chunk_rows, norm_tolerance,
                                                                                 zeros=kind == "text")
            if kind == "text":
                unrecorded = _unrecorded_zero_rows(store, pi, zeros, missing_text[pi], pi in key_parts, problems)
                n_off += len(unrecorded)
                first_off = sorted(first_off + unrecorded[:5].tolist())[:5]
            name = f"part {p.suffix} ({file.name})"
            if n_nonfinite:
                problems.append(f"{name}: {n_nonfinite} rows with NaN/inf (first rows {first_nonfinite})")
            if n_off:
                problems.append(
                    f"{name}: {n_off} rows not unit-norm (|norm - 1| > {norm_tolerance}; first rows {first_off})"
                )
    if key_parts:
        dups = find_duplicate_keys(store, chunk_rows=max(chunk_rows, 1 << 16), parts=key_parts)
        if dups:
            sample = dict(list(dups.items())[:5])
            problems.append(f"{len(dups)} duplicate keys in column {store.key_column!r} (e.g. {sample})")
    if store.sidecar is not None:
        sc = store.sidecar
        if sc.get("count") not in (None, store.count):
            problems.append(f"{SIDECAR}: count {sc['count']} but the parts hold {store.count} rows")
        if sc.get("dim") not in (None, main_dim):
            problems.append(f"{SIDECAR}: dim {sc['dim']} but the parts have {main_dim}")
        if "parts" in sc and len(sc["parts"]) != len(parts):
            problems.append(f"{SIDECAR}: lists {len(sc['parts'])} parts but {len(parts)} are readable on disk")
    return problems


def _unrecorded_zero_rows(
    store: EmbeddingStore, pi: int, zeros: np.ndarray, recorded: set[str], keys_readable: bool, problems: list[str]
) -> np.ndarray:
    """int64 [u] the all-zero text rows of part ``pi`` (``zeros``, ascending) that are not the
    marker of a key recorded as missing text; appends a problem when a recorded key of the part
    has a text row other than the marker."""
    part = store.parts[pi]
    if not recorded or not keys_readable:
        return zeros
    keys = np.concatenate([np.zeros(0, object), *store.iter_keys(part, max(part.rows, 1))])
    with_key = zeros[zeros < len(keys)]
    marked = np.isin(keys[with_key], list(recorded))
    unmarked = sorted(recorded.intersection(keys.tolist()) - set(keys[with_key[marked]].tolist()))
    if unmarked:
        problems.append(
            f"part {part.suffix} ({part.text_path.name}): {len(unmarked)} keys recorded as missing text have a text "
            f"row other than the all-zero marker (e.g. {unmarked[:5]})"
        )
    return np.setdiff1d(zeros, with_key[marked])
