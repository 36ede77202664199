"""Spherical k-means over an embedding store, trained on a bounded sample and assigned by chunk.

- :func:`sample_rows`: a seeded uniform sample (without replacement) of the considered rows.
- :func:`train_centroids`: ``faiss.Kmeans(d, k, spherical=True, seed=...)`` on the sample.
  faiss re-seeds empty clusters during training: after each iteration its ``split_clusters``
  gives every empty centroid a slightly perturbed copy of a large cluster's centroid (splitting
  that cluster), and ``spherical=True`` re-normalises the centroids each iteration. The result
  is re-normalised once more here (float32). A centroid can still end up with no member when the
  data has fewer distinct points than clusters; such a cluster is simply empty at assignment.
- :func:`assign_to_buckets`: one streaming pass: every considered row goes to its most similar
  centroid (ties -> lower cluster index), and ``(row, cluster, similarity)`` records are appended
  to one bucket file per range of clusters, so that clusters can later be processed one range at
  a time without an n x n anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from oodlab.embeddings.store import EmbeddingStore

#: one bucket record: global row index, cluster, cosine similarity to the cluster's centroid
RECORD = np.dtype([("row", "<i8"), ("cluster", "<i4"), ("sim", "<f4")])
#: scores per assignment tile (rows x clusters), float32
TILE_ELEMENTS = 1 << 23


def sample_rows(n: int, considered: np.ndarray | None, size: int, seed: int, block: int = 1 << 22) -> np.ndarray:
    """int64 [size] sorted global row indices: a uniform sample without replacement of the rows
    where ``considered`` is True (all ``n`` rows when None). Memory: O(size)."""
    n_c = n if considered is None else int(np.count_nonzero(considered))
    size = min(size, n_c)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n_c, size=size, replace=False)).astype(np.int64)
    if considered is None:
        return picks
    out = np.empty(size, np.int64)
    seen = 0  # considered rows before the current block
    for start in range(0, n, block):
        idx = np.flatnonzero(considered[start : start + block]) + start
        lo, hi = np.searchsorted(picks, [seen, seen + len(idx)])
        out[lo:hi] = idx[picks[lo:hi] - seen]
        seen += len(idx)
    return out


def train_centroids(sample: np.ndarray, k: int, *, iterations: int, seed: int) -> np.ndarray:
    """float32 [k, d] unit centroids of spherical k-means (faiss) on ``sample`` (float32 [m, d])."""
    import faiss

    m, d = sample.shape
    km = faiss.Kmeans(
        d, k, niter=iterations, seed=seed, spherical=True, verbose=False,
        # the sample is already bounded: no subsampling by faiss, no "too few points" warning
        min_points_per_centroid=1, max_points_per_centroid=math.ceil(m / k) + 1,
    )
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, d)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.where(norms > 0, norms, 1.0)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster int32 [n], similarity float32 [n]): argmax of ``x @ centroids.T``, ties -> the
    lower cluster index; computed in tiles of at most :data:`TILE_ELEMENTS` scores."""
    n = len(x)
    cluster = np.empty(n, np.int32)
    sim = np.empty(n, np.float32)
    step = max(1, TILE_ELEMENTS // max(len(centroids), 1))
    for s in range(0, n, step):
        scores = x[s : s + step] @ centroids.T
        best = np.argmax(scores, axis=1)
        cluster[s : s + step] = best
        sim[s : s + step] = scores[np.arange(len(best)), best]
    return cluster, sim


def group_of(cluster: np.ndarray, k: int, n_groups: int) -> np.ndarray:
    """The bucket (range of clusters) of each cluster: ``cluster * n_groups // k``."""
    return (cluster.astype(np.int64) * n_groups) // k


def assign_to_buckets(
    store: EmbeddingStore,
    centroids: np.ndarray,
    bucket_dir: Path,
    n_groups: int,
    *,
    chunk_rows: int,
    considered: np.ndarray | None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Assign every considered row to a cluster and append its record to its group's bucket.

    Returns:
        (cluster sizes int64 [k], bucket paths [n_groups]).
    """
    k = len(centroids)
    bucket_dir.mkdir(parents=True, exist_ok=True)
    paths = [bucket_dir / f"group_{g:05d}.bin" for g in range(n_groups)]
    sizes = np.zeros(k, np.int64)
    files = [open(p, "wb") for p in paths]
    try:
        for chunk in store.iter_chunks(chunk_rows, keys=False):
            rows = np.arange(chunk.offset, chunk.offset + len(chunk), dtype=np.int64)
            x = chunk.embeddings
            if considered is not None:
                mask = np.asarray(considered[chunk.offset : chunk.offset + len(chunk)])
                rows, x = rows[mask], x[mask]
            cluster, sim = nearest_centroid(x, centroids)
            sizes += np.bincount(cluster, minlength=k)
            rec = np.empty(len(rows), RECORD)
            rec["row"], rec["cluster"], rec["sim"] = rows, cluster, sim
            groups = group_of(cluster, k, n_groups)
            order = np.argsort(groups, kind="stable")
            bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
            for g in range(n_groups):
                if bounds[g + 1] > bounds[g]:
                    rec[order[bounds[g] : bounds[g + 1]]].tofile(files[g])
            if on_chunk is not None:
                on_chunk(len(chunk))
    finally:
        for f in files:
            f.close()
    return sizes, paths


def read_bucket(path: Path) -> np.ndarray:
    """The records of one bucket sorted into processing order: by cluster, then similarity to the
    centroid descending (closest first), then row ascending (training order)."""
    rec = np.fromfile(path, dtype=RECORD)
    order = np.lexsort((rec["row"], -rec["sim"].astype(np.float64), rec["cluster"]))
    return rec[order]
