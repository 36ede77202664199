"""``oodlab index build|search``: an approximate (faiss) nearest-neighbour index for interactive use.

An index answers "which training samples look like this one?" in milliseconds, but only
approximately. Every build and every search therefore measures **recall@k against exact search**
(the :class:`~oodlab.similarity.engine.StreamingNeighbors` engine, one streaming pass over the
training store) on a seeded sample of queries, stores it in the manifest and warns when it is
below :data:`RECALL_WARN`: on unstructured data (e.g. uniform random 512-d vectors) IVF and HNSW
are useless. For decontamination use the exact ``oodlab neighbors``.

Build output under ``OUT``::

    knn.index       the faiss index (inner product: rows are L2-normalised, scores are cosines);
                    faiss ids are global row indices of the store (parts in order)
    keys.parquet    column ``key``: the store's keys in row order (id -> key)
    recall.parquet  query_key, recall: the sampled queries and each one's recall@k
    infos.json      autofaiss-like: factory, metric, count, dim, search parameters, sizes, recall
    manifest.json   inputs (store, model), parameters, counts, recall (written last: completion)

Search output under ``OUT``: per named eval set ``eval/{name}.parquet`` (query_key, rank, train_key,
score, train_row: the columns of the top-k files of ``oodlab neighbors``) and
``recall/{name}.parquet``, then ``manifest.json``.

Memory: the build holds the index, one chunk of ``chunk_rows`` rows and a training sample of at
most :data:`MAX_TRAIN_ROWS` rows; a search holds the index, one chunk of queries and its results.
Re-runs follow :mod:`oodlab.utils.runs` (a completed identical build or search is skipped). The
default factory and the search parameters are chosen in :mod:`oodlab.similarity.factory`. HNSW graphs are
built by several threads and are not byte-identical between runs (their recall varies slightly);
Flat and IVF indexes are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.embeddings.store import EmbeddingStore
from oodlab.embeddings.validate import require_unique_keys
from oodlab.models.loading import same_model
from oodlab.similarity.engine import EvalSet, StreamingNeighbors, stream_store
from oodlab.similarity.factory import (
    HNSW_EF_CONSTRUCTION,
    MAX_TRAIN_ROWS,
    MIN_TRAIN_ROWS,
    TRAIN_PER_CENTROID,
    apply_search_params,
    default_search_params,
    import_faiss,
    hnsw_of,
    choose_factory,
    machine_memory_bytes,
)
from oodlab.utils.atomic import atomic_path, read_json, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import MANIFEST_NAME
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

INDEX_FILE, KEYS_FILE, INFOS_FILE, RECALL_FILE = "knn.index", "keys.parquet", "infos.json", "recall.parquet"
#: index search output folders: one file per named eval set
EVAL_DIR, RECALL_DIR = "eval", "recall"
#: recall@k below this triggers the "ANN is unreliable" warning
RECALL_WARN = 0.9
# -- reading helpers -------------------------------------------------------------------------
def _sample_rows(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    """Sorted distinct row indices: a seeded uniform sample of ``min(size, n)`` of ``range(n)``."""
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(n, size=min(size, n), replace=False)).astype(np.int64)


class KeyLookup:
    """Row id -> key through ``keys.parquet``, reading only the row groups that hold the ids."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        if not path.exists():
            raise InputError(path, "is missing", "rebuild the index with `oodlab index build`")
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.metadata.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """object [len(ids)] keys; None where ``ids`` is -1."""
        ids = np.asarray(ids, np.int64)
        out = np.full(len(ids), None, dtype=object)
        valid = ids >= 0
        group = np.searchsorted(self.starts, ids, side="right") - 1
        for g in np.unique(group[valid]):
            sel = valid & (group == g)
            keys = self.file.read_row_group(int(g), columns=["key"]).column(0).to_numpy(zero_copy_only=False)
            out[sel] = keys[ids[sel] - self.starts[g]]
        return out


def _exact_topk(store: EmbeddingStore, queries: np.ndarray, keys: np.ndarray, k: int, chunk_rows: int) -> np.ndarray:
    """Exact top-k training rows (int64 [q, k], -1 where the store has fewer rows) of ``queries``
    over ``store``: one streaming pass of the exact engine."""
    engine = StreamingNeighbors([EvalSet("queries", queries, keys)], k=k, per_train=False)
    stream_store(engine, store, chunk_rows, description="exact recall")
    return engine.topk_result()["queries"][0]


def recall_at_k(ann: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per-query recall: |ANN top-k ∩ exact top-k| / |exact top-k| (ids, -1 = none). float64 [q]."""
    out = np.empty(len(exact))
    for i, (a, e) in enumerate(zip(ann, exact)):
        truth = set(e[e >= 0].tolist())
        out[i] = len(truth & set(a[a >= 0].tolist())) / max(len(truth), 1)
    return out


def _report_recall(per_query: np.ndarray, k: int, what: str) -> dict[str, Any]:
    if not len(per_query):
        log.warning("%s: recall not measured (recall_queries=0): ANN results may be far from exact", what)
        return {"k": k, "queries": 0, "recall_at_k": None}
    value = float(per_query.mean())
    if value < RECALL_WARN:
        log.warning(
            "%s: recall@%d is only %.3f against exact search (%d queries). ANN on this data is unreliable: "
            "use `oodlab neighbors` for exact results", what, k, value, len(per_query),
        )
    return {"k": k, "queries": int(len(per_query)), "recall_at_k": value}


def _write_recall(path: Path, keys: np.ndarray, per_query: np.ndarray) -> None:
    import pyarrow as pa

    write_parquet(path, pa.table({"query_key": pa.array(keys.tolist(), pa.string()), "recall": per_query}))


def _fmt_recall(recall: dict[str, Any]) -> str:
    r = recall["recall_at_k"]
    return f"recall@{recall['k']} {'not measured' if r is None else f'{r:.3f}'} ({recall['queries']} queries)"


# -- build -----------------------------------------------------------------------------------
def index_build(
    store: str | Path,
    out: str | Path,
    *,
    factory: str | None = None,
    memory_gb: float | None = None,
    recall_queries: int = 1000,
    k: int = 10,
    chunk_rows: int = 65536,
    seed: int = 0,
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build an approximate inner-product index over a store and report its recall@k.

    Args:
        store: embedding store (float16/float32 [n, d] L2-normalised rows); faiss ids are its
            global row indices.
        out: output folder (see module docstring).
        factory: any faiss ``index_factory`` string; default :func:`choose_factory` (``Flat`` below
            50k rows, ``HNSW32`` below 1M, else ``IVF{4 sqrt n},Flat`` or ``IVF{..},PQ{m}`` to fit
            ``memory_gb``).
        memory_gb: memory the index may take, GiB (default: half the machine's RAM).
        recall_queries: store rows sampled (seeded) as queries for recall@``k`` against
            exact search (0: not measured). Queries from the store find themselves, so this
            recall is optimistic; ``index_search`` measures it on the eval rows.
        k: k of the recall measurement.
        chunk_rows: rows added (and streamed in the exact pass) at a time; bounds memory.
        seed: seed of the training and query samples.
        key_column: metadata column with the sample keys (default: the store's own).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also ``out/manifest.json``), with ``index`` (factory, search parameters,
        bytes) and ``recall`` ({k, queries, recall_at_k}).
    """
    faiss = import_faiss()
    out = Path(out)
    if chunk_rows < 1 or recall_queries < 0 or k < 1 or (memory_gb is not None and memory_gb <= 0):
        raise InputError(None, "chunk_rows and k must be >= 1, recall_queries >= 0 and memory_gb > 0", None)
    train = EmbeddingStore(store, key_column)
    require_unique_keys(train)
    n, d = train.count, train.dim
    if n == 0:
        raise InputError(train.path, "holds no rows", "embed the store first")
    run = RunFolder(out, "index build",
                    inputs={"store": fingerprint(train.path), "count": n, "dim": d, "key_column": train.key_column},
                    parameters={"factory": factory, "memory_gb": memory_gb, "recall_queries": recall_queries, "k": k,
                                "seed": seed}, settings={"chunk_rows": chunk_rows}, reads=[train.path])
    done = run.open(overwrite)
    if done is not None:
        return done
    out = run.out
    budget = int(memory_gb * 2**30) if memory_gb is not None else machine_memory_bytes() // 2
    if factory is None:
        chosen, rule, estimate = choose_factory(n, d, budget)
    else:
        chosen, rule, estimate = factory, "given", None
    try:
        index = faiss.index_factory(d, chosen, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(None, f"faiss cannot make an index from factory {chosen!r} ({str(err).splitlines()[-1]})",
                         "pass a faiss index_factory string such as HNSW32 or IVF1024,Flat") from err
    build_params = {}
    hnsw = hnsw_of(index)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        build_params["efConstruction"] = HNSW_EF_CONSTRUCTION

    with Timer() as total:
        train_rows = 0
        with Timer() as t_train:
            if not index.is_trained:
                ivf = faiss.try_extract_index_ivf(index)
                want = max(MIN_TRAIN_ROWS, TRAIN_PER_CENTROID * (ivf.nlist if ivf is not None else 0))
                rows = _sample_rows(n, min(want, MAX_TRAIN_ROWS), seed, 0)
                x = train.take(rows)
                train_rows = len(x)
                log.info("index build: training %s on %d sampled rows", chosen, train_rows)
                index.train(x)
                del x
        with Timer() as t_add:
            _add_store(index, train, out / KEYS_FILE, chunk_rows)
        search_params = default_search_params(index)
        apply_search_params(index, search_params)
        with atomic_path(out / INDEX_FILE) as tmp:
            faiss.write_index(index, str(tmp))
        index_bytes = (out / INDEX_FILE).stat().st_size

        with Timer() as t_recall:
            q_rows = _sample_rows(n, recall_queries, seed, 1)
            per_query = np.zeros(0)
            q_keys = np.zeros(0, dtype=object)
            if len(q_rows):
                queries, q_keys = train.take(q_rows), train.keys_at(q_rows)
                _, ann = index.search(queries, k)
                exact = _exact_topk(train, queries, q_keys, k, chunk_rows)
                per_query = recall_at_k(ann, exact)
            _write_recall(out / RECALL_FILE, q_keys, per_query)
            recall = _report_recall(per_query, k, "index build")
    del index

    infos = {
        "factory": chosen,
        "factory_rule": rule,
        "metric": "ip",
        "count": n,
        "dim": d,
        "build_params": build_params,
        "search_params": search_params,
        "index_bytes": index_bytes,
        "estimated_bytes": estimate,
        "memory_budget_bytes": budget,
        "train_rows": train_rows,
        "store": str(train.path),
        "key_column": train.key_column,
        "model": train.model,
        "recall": recall,
    }
    write_json(out / INFOS_FILE, infos)
    manifest = run.finish(
        model=train.model,
        counts={"rows": n, "dim": d, "train_rows": train_rows, "recall_queries": recall["queries"]},
        outputs={"index": INDEX_FILE, "keys": KEYS_FILE, "infos": INFOS_FILE, "recall": RECALL_FILE},
        index={"factory": chosen, "rule": rule, "search_params": search_params, "bytes": index_bytes}, recall=recall,
    )
    summary(
        f"index build: {n} rows x {d} -> {chosen} ({index_bytes / 2**20:.1f} MiB) in {total.seconds:.1f} s "
        f"(train {t_train.seconds:.1f} s, add {t_add.seconds:.1f} s, recall {t_recall.seconds:.1f} s); "
        f"{_fmt_recall(recall)} -> {out}"
    )
    return manifest


def _add_store(index: Any, store: EmbeddingStore, keys_path: Path, chunk_rows: int) -> None:
    """Add the store chunk by chunk (float32 per chunk) and write its keys in row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string())])
    with atomic_path(keys_path) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            progress("index add", total=store.count, unit="rows") as advance:
        for chunk in store.iter_chunks(chunk_rows, keys=True, dtype=np.float32):
            index.add(chunk.embeddings)
            writer.write_table(pa.table({"key": pa.array(chunk.keys.tolist(), pa.string())}, schema=schema))
            advance(len(chunk))


# -- search ----------------------------------------------------------------------------------
def index_search(
    index: str | Path,
    eval_stores: Mapping[str, str | Path],
    out: str | Path,
    *,
    k: int = 10,
    nprobe: int | None = None,
    ef_search: int | None = None,
    recall_queries: int = 1000,
    chunk_rows: int = 65536,
    seed: int = 0,
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Approximate top-k training neighbours of every eval row, with recall@k against exact search.

    Args:
        index: a folder written by :func:`index_build`.
        eval_stores: eval set name -> embedding store (float [q, d] L2-normalised rows, same model
            and dim as the index's store).
        out: output folder: ``eval/{name}.parquet`` (query_key, rank, train_key, score = cosine
            similarity float32, train_row = global row of the training store: the columns of
            ``oodlab neighbors``' top-k files), ``recall/{name}.parquet``, ``manifest.json``.
        k: neighbours per eval row.
        nprobe: IVF lists visited per query (default: the build's, nlist / 16 but >= 8).
        ef_search: HNSW search breadth (default: the build's, 256).
        recall_queries: eval rows sampled (seeded) per eval set for recall@k against exact search
            over the index's training store (0: not measured; the store must still be at its path).
        chunk_rows: queries searched at a time (and training rows per exact tile).
        seed: seed of the recall sample.
        key_column: metadata column with the eval keys (default: the store's own).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also ``out/manifest.json``) with ``recall``: per eval set {k, queries, recall_at_k}.

    Raises:
        IncompatibleError: an eval store's dim or model differs from the index's.
    """
    faiss = import_faiss()

    folder = Path(index)
    if k < 1 or chunk_rows < 1 or recall_queries < 0:
        raise InputError(None, "k and chunk_rows must be >= 1 and recall_queries >= 0", None)
    if not eval_stores:
        raise InputError(None, "no eval stores given", "pass --eval-store NAME=STORE at least once")
    check_names(eval_stores, "eval set")
    if not (folder / MANIFEST_NAME).exists() or not (folder / INDEX_FILE).exists():
        raise InputError(folder, "is not a complete index folder (no manifest.json or knn.index)", "run `oodlab index build` first")
    built = read_json(folder / MANIFEST_NAME)
    infos = read_json(folder / INFOS_FILE)
    stores = {name: EmbeddingStore(path, key_column) for name, path in eval_stores.items()}
    for ev in stores.values():
        _check_matches_index(ev, folder, built, infos)
    params = dict(infos["search_params"])
    overrides = {"nprobe": nprobe, "efSearch": ef_search}
    params.update({name: int(v) for name, v in overrides.items() if v is not None})
    run = RunFolder(out, "index search",
                    inputs={"index": fingerprint(folder), "eval_stores": {n: fingerprint(s.path) for n, s in stores.items()},
                            "key_column": key_column},
                    parameters={"k": k, "search_params": params, "recall_queries": recall_queries, "seed": seed},
                    settings={"chunk_rows": chunk_rows}, reads=[folder, *(s.path for s in stores.values())])
    done = run.open(overwrite)
    if done is not None:
        return done
    ix = faiss.read_index(str(folder / INDEX_FILE))
    apply_search_params(ix, params, folder)
    lookup = KeyLookup(folder / KEYS_FILE)
    recall, counts = {}, {}
    train = _training_store(infos) if recall_queries else None
    with Timer() as total:
        for name, ev in stores.items():
            q_ann, q_rows, pairs = _search_store(ix, ev, lookup, run.out / EVAL_DIR / f"{name}.parquet", k, recall_queries,
                                                 seed, chunk_rows, name)
            per_query, q_keys = np.zeros(0), np.zeros(0, dtype=object)
            if len(q_rows):
                queries, q_keys = ev.take(q_rows), ev.keys_at(q_rows)
                per_query = recall_at_k(q_ann, _exact_topk(train, queries, q_keys, k, chunk_rows))
            _write_recall(run.out / RECALL_DIR / f"{name}.parquet", q_keys, per_query)
            recall[name] = _report_recall(per_query, k, f"index search ({name})")
            counts[name] = {"queries": ev.count, "pairs": pairs, "recall_queries": recall[name]["queries"]}
    del ix
    manifest = run.finish(counts=counts, model=built.get("model"),
                          outputs={"neighbors": f"{EVAL_DIR}/{{name}}.parquet", "recall": f"{RECALL_DIR}/{{name}}.parquet"},
                          recall=recall)
    queried = ", ".join(f"{n} {c['queries']} queries" for n, c in counts.items())
    summary(
        f"index search: {queried} x {infos['count']} rows "
        f"({infos['factory']}, {', '.join(f'{a}={b}' for a, b in params.items()) or 'exact'}), k={k} in "
        f"{total.seconds:.1f} s; {'; '.join(f'{n} {_fmt_recall(r)}' for n, r in recall.items())} -> {run.out}"
    )
    return manifest


def _check_matches_index(ev: EmbeddingStore, folder: Path, built: dict[str, Any], infos: dict[str, Any]) -> None:
    if ev.dim != infos["dim"]:
        raise IncompatibleError(ev.path, f"has dim {ev.dim} but the index {folder} has dim {infos['dim']}",
                                "search with eval embeddings from the model the index was built with")
    if not same_model(ev.model, built.get("model")):
        a, b = built.get("model") or {}, ev.model or {}
        raise IncompatibleError(
            ev.path,
            f"was embedded with {b.get('architecture')} ({(b.get('weights') or {}).get('sha256', 'random')[:12]}) but the "
            f"index {folder} with {a.get('architecture')} ({(a.get('weights') or {}).get('sha256', 'random')[:12]})",
            "similarities are only meaningful within one embedding space: embed the eval set with the index's model",
        )
    if ev.model is None or built.get("model") is None:
        log.warning("index search: model identity unknown for the index or the eval store: cannot check that they match")


def _search_store(ix: Any, ev: EmbeddingStore, lookup: KeyLookup, path: Path, k: int, recall_queries: int, seed: int,
                  chunk_rows: int, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Search every row of ``ev`` chunk by chunk into ``path``; returns (the ANN top-k of the
    sampled recall queries, their rows, pairs written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    q_rows = _sample_rows(ev.count, recall_queries, seed, 1)
    q_ann = np.full((len(q_rows), k), -1, np.int64)
    schema = pa.schema([("query_key", pa.string()), ("rank", pa.int32()), ("train_key", pa.string()),
                        ("score", pa.float32()), ("train_row", pa.int64())])
    n_pairs = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            progress(f"index search {name}", total=ev.count, unit="queries") as advance:
        for chunk in ev.iter_chunks(chunk_rows, keys=True, dtype=np.float32):
            scores, ids = ix.search(chunk.embeddings, k)
            lo, hi = np.searchsorted(q_rows, [chunk.offset, chunk.offset + len(chunk)])
            q_ann[lo:hi] = ids[q_rows[lo:hi] - chunk.offset]
            qi, rank = np.nonzero(ids >= 0)
            rows = ids[qi, rank]
            writer.write_table(pa.table({
                "query_key": pa.array(chunk.keys[qi].tolist(), pa.string()),
                "rank": rank.astype(np.int32),
                "train_key": pa.array(lookup(rows).tolist(), pa.string()),
                "score": scores[qi, rank].astype(np.float32),
                "train_row": rows,
            }, schema=schema))
            n_pairs += len(rows)
            advance(len(chunk))
    return q_ann, q_rows, n_pairs


def _training_store(infos: dict[str, Any]) -> EmbeddingStore:
    """The index's training store (for exact recall), checked to be unchanged since the build."""
    path = Path(infos["store"])
    if not path.exists():
        raise InputError(path, "(the index's training store) is missing, so recall cannot be measured",
                         "restore the store at that path or pass recall_queries=0 / --recall-queries 0")
    store = EmbeddingStore(path, infos.get("key_column"))
    if store.count != infos["count"] or store.dim != infos["dim"]:
        raise IncompatibleError(path, f"now holds {store.count} rows of dim {store.dim}, the index {infos['count']} of dim {infos['dim']}",
                                "rebuild the index, or pass recall_queries=0 / --recall-queries 0")
    return store

