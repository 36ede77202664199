"""Keys that occur more than once in a stream of key batches, in bounded memory (any reader's
check that a key names one sample: stores, neighbours folders, key lists)."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


def _hash_keys(keys: np.ndarray) -> np.ndarray:
    # Python's str hash is salted per process, which is fine: hashes never leave this process.
    return np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys))


def repeated_keys(batches: Callable[[], Iterable[np.ndarray]], n_rows: int, bucket_rows: int = 1 << 25) -> dict[str, int]:
    """Keys that occur more than once, with their counts.

    Memory is bounded by ``bucket_rows`` hashes: more rows than that have their 8-byte hashes
    spilled into buckets on disk (by hash value) and each bucket is checked alone; hash
    collisions are then confirmed on the keys themselves (a second pass).

    Args:
        batches: called twice; each call yields the keys in batches (object or str arrays).
        n_rows: about how many keys there are (sizes the buckets).
    """
    n_buckets = max(1, -(-n_rows // bucket_rows))
    with tempfile.TemporaryDirectory(prefix="oodlab-dupkeys-") as tmp:
        files = [open(Path(tmp) / f"b{i}.bin", "wb") for i in range(n_buckets)]
        try:
            for keys in batches():
                h = _hash_keys(keys)
                bucket = (h.view(np.uint64) % np.uint64(n_buckets)).astype(np.int64)
                for b in range(n_buckets):
                    files[b].write(h[bucket == b].tobytes())
        finally:
            for f in files:
                f.close()
        suspects: list[np.ndarray] = [np.zeros(0, np.int64)]
        for i in range(n_buckets):
            h = np.fromfile(Path(tmp) / f"b{i}.bin", dtype=np.int64)
            values, counts = np.unique(h, return_counts=True)
            suspects.append(values[counts > 1])
    suspect = np.concatenate(suspects)
    if not len(suspect):
        return {}
    counter: Counter[str] = Counter()
    for keys in batches():
        hit = np.isin(_hash_keys(keys), suspect)
        counter.update(np.asarray(keys)[hit].tolist())
    return {k: c for k, c in counter.items() if c > 1}
