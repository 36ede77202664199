"""``oodlab dedup``: semantic deduplication of an embedding store (SemDeDup; the ICLR 2024 paper's
LAION-400M -> 200M step).

1. Spherical k-means (faiss) trained on a seeded uniform sample of at most ``sample_rows`` rows
   (:mod:`oodlab.subsets.clusters`; empty clusters are re-seeded by faiss, centroids
   re-normalised).
2. One streaming pass assigns every row to its most similar centroid and appends
   ``(row, cluster, similarity)`` to one bucket file per range of clusters (about
   ``group_rows`` rows each).
3. Bucket by bucket, cluster by cluster: the cluster's rows are ordered by similarity to the
   centroid, closest first (ties: training order), their embeddings gathered from the store, and
   an item is kept iff its similarity to every item KEPT before it is ``<= 1 - eps``
   (:mod:`oodlab.subsets.greedy`; ``rule="all-earlier"`` gives the reference code's
   non-transitive rule, which compares with all earlier items and over-prunes chains).

Outputs under ``out``: ``kept.parquet`` and ``removed.parquet`` (training order; columns ``key``,
``score`` = the deciding similarity, NaN for the first item of a cluster, ``cause_key`` = the
kept item behind a removal (for ``all-earlier``: the earlier item, possibly removed itself),
``cluster``, ``centroid_sim``), ``centroids.npy`` (float32 [k, d]) and ``manifest.json`` (with
precision/recall against ``duplicate_group`` when the store's metadata has that column).

Memory: the k-means sample (``sample_rows x d`` float32), one chunk, one bucket's records
(16 bytes per row) and the largest cluster's embeddings; per-row decisions live in memory-mapped
files of a temporary work folder (about 25 bytes per row on disk), and the keys of the rows that
caused removals are held at the end (the size of the final key lists).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from oodlab.embeddings.store import EmbeddingStore
from oodlab.embeddings.validate import require_unique_keys
from oodlab.subsets import clusters as cl
from oodlab.subsets.greedy import RULES, dedup_ordered
from oodlab.subsets.keylists import KEY_COLUMN, KeyListWriter, load_keep_from, membership, read_keys
from oodlab.utils.atomic import allocated_memmap, save_npy, temp_path_for
from oodlab.utils.errors import InputError
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

KEPT, REMOVED, CENTROIDS = "kept.parquet", "removed.parquet", "centroids.npy"
#: target cluster size when ``clusters`` is not given (SemDeDup: 50,000 clusters for 440M rows)
ROWS_PER_CLUSTER = 10_000


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("score", pa.float32()), ("cause_key", pa.string()),
        ("cluster", pa.int32()), ("centroid_sim", pa.float32()),
    ])


def _considered_mask(store: EmbeddingStore, allowed: set[str] | None, work: Path) -> np.ndarray | None:
    if allowed is None:
        return None
    mask = allocated_memmap(work / "considered.npy", bool, store.count)
    start = 0
    for part in store.parts:
        for keys in store.iter_keys(part, 1 << 20):
            mask[start : start + len(keys)] = membership(keys, allowed)
            start += len(keys)
    return mask


def _check_args(eps: float, clusters: int | None, sample_rows: int, iterations: int, rule: str, chunk_rows: int,
                block_rows: int, group_rows: int) -> None:
    if not 0 <= eps < 2:
        raise InputError(None, f"eps={eps} is outside [0, 2)", "pass e.g. --eps 0.124 (duplicates have cosine > 1 - eps)")
    if rule not in RULES:
        raise InputError(None, f"unknown rule {rule!r}", f"choose one of {sorted(RULES)}")
    if clusters is not None and clusters < 1:
        raise InputError(None, f"clusters={clusters} must be >= 1", "pass a positive number of clusters")
    if min(sample_rows, iterations, chunk_rows, block_rows, group_rows) < 1:
        raise InputError(None, "sample_rows, iterations, chunk_rows, block_rows and group_rows must be >= 1", None)


def dedup(
    store: str | Path,
    out: str | Path,
    *,
    eps: float,
    clusters: int | None = None,
    sample_rows: int = 200_000,
    iterations: int = 20,
    seed: int = 0,
    rule: str = "greedy",
    keep_from: str | Path | None = None,
    chunk_rows: int = 65536,
    block_rows: int = 2048,
    group_rows: int = 4_194_304,
    key_column: str | None = None,
    group_column: str = "duplicate_group",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Semantic deduplication (SemDeDup): spherical k-means, then greedy within-cluster pruning.

    Args:
        store: embedding store (float16 unit rows [n, d]).
        out: output folder.
        eps: a later item is removed when its cosine similarity to a kept item is ``> 1 - eps``
            (the paper: 0.124, i.e. cosine > 0.876).
        clusters: k-means clusters (default ``ceil(n / 10,000)``, at most the sample size).
        sample_rows: rows sampled (seeded, uniform) to train k-means.
        iterations: k-means iterations.
        seed: seed of the sample and of faiss.
        rule: ``greedy`` (compare with kept items) or ``all-earlier`` (the reference code's rule).
        keep_from: a key list; only its keys are deduplicated, others are ignored.
        chunk_rows: rows per assignment chunk.
        block_rows: rows per within-cluster score block.
        group_rows: target rows per bucket of clusters processed together.
        key_column: metadata column with the sample keys (default: the store's).
        group_column: metadata column with ground-truth duplicate groups for the precision /
            recall report (ignored when absent).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts.clusters``: the number of clusters used).
    """
    _check_args(eps, clusters, sample_rows, iterations, rule, chunk_rows, block_rows, group_rows)
    emb_store = EmbeddingStore(store, key_column)
    require_unique_keys(emb_store)
    run = RunFolder(out, "dedup",
                    inputs={"store": fingerprint(emb_store.path), "keep_from": None if keep_from is None else fingerprint(keep_from),
                            "key_column": key_column, "group_column": group_column},
                    parameters={"eps": eps, "threshold": 1.0 - eps, "clusters": clusters, "sample_rows": sample_rows,
                                "iterations": iterations, "seed": seed, "rule": rule,
                                "order": "by cosine similarity to the centroid, descending; ties by training order"},
                    settings={"chunk_rows": chunk_rows, "block_rows": block_rows, "group_rows": group_rows},
                    reads=[emb_store.path] + ([keep_from] if keep_from is not None else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    out = run.out
    allowed = load_keep_from(keep_from)
    work = temp_path_for(out / "work")
    work.mkdir(parents=True)
    try:
        with Timer() as timer:
            counts = _run(emb_store, out, work, eps=eps, clusters=clusters, sample_rows=sample_rows, iterations=iterations,
                          seed=seed, rule=rule, allowed=allowed, chunk_rows=chunk_rows, block_rows=block_rows,
                          group_rows=group_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    quality = None
    if group_column in _metadata_columns(emb_store):
        quality = dedup_quality(out, emb_store.path, group_column=group_column, key_column=key_column)
        counts["quality"] = quality
    manifest = run.finish(model=emb_store.model, counts=counts,
                          outputs={"kept": KEPT, "removed": REMOVED, "centroids": CENTROIDS})
    q = ""
    if quality is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        q = f"; vs {group_column}: precision {fmt(quality['precision'])}, recall {fmt(quality['recall'])}"
    summary(
        f"dedup: kept {counts['kept']} of {counts['considered']} ({counts['removed']} removed, eps={eps}, {rule}, "
        f"{counts['nonempty_clusters']} clusters, largest {counts['largest_cluster']}) in {timer.seconds:.1f} s{q} -> {out}"
    )
    return manifest


def _metadata_columns(store: EmbeddingStore) -> list[str]:
    import pyarrow.parquet as pq

    return pq.ParquetFile(store.parts[0].meta_path).schema_arrow.names if store.parts else []


def _run(store: EmbeddingStore, out: Path, work: Path, *, eps: float, clusters: int | None, sample_rows: int,
         iterations: int, seed: int, rule: str, allowed: set[str] | None, chunk_rows: int, block_rows: int,
         group_rows: int) -> dict[str, Any]:
    n = store.count
    considered = _considered_mask(store, allowed, work)
    n_c = n if considered is None else int(np.count_nonzero(considered))
    if n_c == 0:
        raise InputError(store.path, "has no rows to deduplicate" + (" in keep_from" if allowed is not None else ""),
                         "check the store and the keep_from list")
    m = min(sample_rows, n_c)
    k = clusters if clusters is not None else max(1, math.ceil(n_c / ROWS_PER_CLUSTER))
    if k > m:
        raise InputError(None, f"clusters={k} exceeds the {m} rows sampled for k-means", "pass fewer clusters or more sample_rows")
    sample = store.take(cl.sample_rows(n, considered, m, seed))
    centroids = cl.train_centroids(sample, k, iterations=iterations, seed=seed)
    del sample
    save_npy(out / CENTROIDS, centroids)

    n_groups = max(1, min(k, math.ceil(n_c / group_rows)))
    with progress("dedup: assign", total=n, unit="rows") as advance:
        sizes, buckets = cl.assign_to_buckets(store, centroids, work / "buckets", n_groups, chunk_rows=chunk_rows,
                                              considered=considered, on_chunk=advance)
    mm = lambda name, dtype, fill: _memmap(work / f"{name}.npy", dtype, n, fill)  # noqa: E731
    kept, score, cause = mm("kept", bool, False), mm("score", np.float32, np.nan), mm("cause", np.int64, -1)
    cluster_of, centroid_sim = mm("cluster", np.int32, -1), mm("centroid_sim", np.float32, np.nan)
    with progress("dedup: clusters", total=int(np.count_nonzero(sizes)), unit="clusters") as advance:
        for path in buckets:
            rec = cl.read_bucket(path)
            bounds = np.flatnonzero(np.diff(rec["cluster"])) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rec)]):
                if hi <= lo:
                    continue
                rows = rec["row"][lo:hi]
                # check_unit=False: the assignment pass (iter_chunks) checked every row
                result = dedup_ordered(store.take(rows, check_unit=False), eps, rule=rule, block_rows=block_rows)
                kept[rows] = result.kept
                score[rows] = result.score
                cause[rows] = np.where(result.cause >= 0, rows[np.maximum(result.cause, 0)], -1)
                cluster_of[rows] = rec["cluster"][lo:hi]
                centroid_sim[rows] = rec["sim"][lo:hi]
                advance(1)
            path.unlink()
    n_kept = _write_outputs(store, out, considered, kept, score, cause, cluster_of, centroid_sim)
    return {
        "rows": n, "considered": n_c, "kept": n_kept, "removed": n_c - n_kept, "clusters": k,
        "nonempty_clusters": int(np.count_nonzero(sizes)), "largest_cluster": int(sizes.max()),
        "kmeans_sample_rows": m,
    }


def _memmap(path: Path, dtype: Any, n: int, fill: Any) -> np.ndarray:
    arr = allocated_memmap(path, dtype, n)
    arr[:] = fill
    return arr


def _write_outputs(store: EmbeddingStore, out: Path, considered: np.ndarray | None, kept: np.ndarray, score: np.ndarray,
                   cause: np.ndarray, cluster_of: np.ndarray, centroid_sim: np.ndarray) -> int:
    cause_rows = np.unique(np.asarray(cause)[np.asarray(cause) >= 0])
    cause_keys = store.keys_at(cause_rows)
    offsets = store.part_offsets()
    schema = _schema()
    with KeyListWriter(out / KEPT, schema) as kept_w, KeyListWriter(out / REMOVED, schema) as removed_w:
        for pi, part in enumerate(store.parts):
            lo = int(offsets[pi])
            start = lo
            for keys in store.iter_keys(part, 1 << 20):
                sl = slice(start, start + len(keys))
                start += len(keys)
                sel = np.ones(len(keys), bool) if considered is None else np.asarray(considered[sl])
                c = np.asarray(cause[sl])
                ck = np.full(len(keys), None, dtype=object)
                has = c >= 0
                ck[has] = cause_keys[np.searchsorted(cause_rows, c[has])]
                cols = {"key": keys, "score": np.asarray(score[sl]), "cause_key": ck,
                        "cluster": np.asarray(cluster_of[sl]), "centroid_sim": np.asarray(centroid_sim[sl])}
                k = np.asarray(kept[sl])
                kept_w.write({name: v[sel & k] for name, v in cols.items()})
                removed_w.write({name: v[sel & ~k] for name, v in cols.items()})
    return kept_w.rows


def dedup_quality(
    dedup_out: str | Path,
    store: str | Path,
    *,
    group_column: str = "duplicate_group",
    key_column: str | None = None,
) -> dict[str, Any]:
    """Precision and recall of a dedup result against ground-truth duplicate groups.

    Only the keys in ``kept.parquet`` or ``removed.parquet`` (the considered keys) count. With
    ``n_g`` members of group g among them and ``r_g`` of those removed:

    - ``precision`` = removed items that belong to some group / removed items;
    - ``pair_precision`` = removed items whose ``cause_key`` is in the same group / removed;
    - ``recall`` = sum_g min(r_g, n_g - 1) / sum_g (n_g - 1) (one member per group must stay).

    Args:
        dedup_out: a folder written by :func:`dedup`.
        store: the store it deduplicated (its metadata holds ``group_column``; null = no group).

    Returns:
        {precision, pair_precision, recall, removed, removed_in_groups, removable}; a ratio is
        None when its denominator is 0.
    """
    import pyarrow.parquet as pq

    dedup_out = Path(dedup_out)
    emb = EmbeddingStore(store, key_column)
    meta = emb.read_metadata([emb.key_column, group_column])
    keys = meta.column(emb.key_column).to_numpy(zero_copy_only=False).astype(str)
    groups = meta.column(group_column).to_pandas()
    group_of = {k: int(g) for k, g in zip(keys, groups) if g == g and g is not None}
    removed = pq.read_table(dedup_out / REMOVED, columns=[KEY_COLUMN, "cause_key"]).to_pydict()
    considered = set(read_keys(dedup_out / KEPT).tolist()) | set(removed[KEY_COLUMN])
    members: dict[int, int] = {}
    for key in considered:
        if key in group_of:
            members[group_of[key]] = members.get(group_of[key], 0) + 1
    removed_per_group: dict[int, int] = {}
    same_group = 0
    for key, cause in zip(removed[KEY_COLUMN], removed["cause_key"]):
        g = group_of.get(key)
        if g is not None:
            removed_per_group[g] = removed_per_group.get(g, 0) + 1
            same_group += cause is not None and group_of.get(cause) == g
    n_removed = len(removed[KEY_COLUMN])
    in_groups = sum(removed_per_group.values())
    removable = sum(n - 1 for n in members.values())
    found = sum(min(r, members[g] - 1) for g, r in removed_per_group.items())
    ratio = lambda a, b: None if b == 0 else a / b  # noqa: E731
    return {
        "precision": ratio(in_groups, n_removed),
        "pair_precision": ratio(same_group, n_removed),
        "recall": ratio(found, removable),
        "removed": n_removed,
        "removed_in_groups": in_groups,
        "removable": removable,
    }
