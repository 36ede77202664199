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

Search output under ``DIR``: ``neighbors.parquet`` (query_key, rank, train_key, score, train_row:
the columns of ``oodlab neighbors``' eval output), ``recall.parquet`` and ``manifest.json``.

Memory: the build holds the index, one chunk of ``chunk_rows`` rows and a training sample of at
most :data:`MAX_TRAIN_ROWS` rows; a search holds the index, one chunk of queries and its results.
Re-runs: a completed build or search (same inputs and parameters) is skipped. HNSW graphs are
built by several threads and are not byte-identical between runs (their recall varies slightly);
Flat and IVF indexes are.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from oodlab.embeddings.store import EmbeddingStore, check_unit_rows
from oodlab.models.loading import same_model
from oodlab.similarity.engine import EvalSet, StreamingNeighbors
from oodlab.similarity.neighbors import stream_pass
from oodlab.utils.atomic import atomic_path, read_json, remove_stale_temporaries, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import MANIFEST_NAME, build_manifest
from oodlab.utils.progress import Timer, progress, summary

log = logging.getLogger(__name__)

INDEX_FILE, KEYS_FILE, INFOS_FILE, RECALL_FILE, NEIGHBORS_FILE = (
    "knn.index", "keys.parquet", "infos.json", "recall.parquet", "neighbors.parquet"
)
#: recall@k below this triggers the "ANN is unreliable" warning
RECALL_WARN = 0.9
#: stores with fewer rows get an exact ``Flat`` index (an ANN index has no benefit there)
FLAT_MAX_ROWS = 50_000
#: stores with fewer rows get ``HNSW32`` when it fits (build ~45 s per 200k rows on 2 cores)
HNSW_MAX_ROWS = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
#: product-quantizer sizes tried, largest (most accurate) first; each must divide the dim
PQ_SIZES = (64, 48, 32, 24, 16, 12, 8, 4)
#: training sample: ``TRAIN_PER_CENTROID * nlist`` rows, at least MIN, at most MAX (and the store)
TRAIN_PER_CENTROID = 64
MIN_TRAIN_ROWS = 1 << 16
MAX_TRAIN_ROWS = 1 << 20


# -- the default factory ---------------------------------------------------------------------
def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: 4 sqrt(n) rounded to the nearest power of 2 (autofaiss)."""
    return 1 << max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))


def _flat_bytes(n: int, d: int) -> int:
    return 4 * n * d


def _hnsw_bytes(n: int, d: int) -> int:
    # float32 rows + 2M int32 links on level 0, ~10% more for the upper levels
    return int(n * (4 * d + 1.1 * 2 * HNSW_M * 4))


def _ivf_flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + 8) + 4 * ivf_nlist(n) * d  # codes + int64 ids + centroids


def _ivf_pq_bytes(n: int, d: int, m: int) -> int:
    return n * (m + 8) + 4 * ivf_nlist(n) * d + 4 * 256 * d  # codes + ids + centroids + codebooks


def _pq_size(n: int, d: int, budget: int) -> int | None:
    return next((m for m in PQ_SIZES if d % m == 0 and m <= d and _ivf_pq_bytes(n, d, m) <= budget), None)


@dataclass(frozen=True)
class FactoryRule:
    """One rung of the default-factory ladder: applies when ``applies(n, d, budget)``."""

    applies: Callable[[int, int, int], bool]
    factory: Callable[[int, int, int], str]
    estimate: Callable[[int, int, int], int]


#: the ladder of :func:`choose_factory`, tried in order (see its docstring)
FACTORY_RULES: dict[str, FactoryRule] = {
    "flat": FactoryRule(
        lambda n, d, b: n < FLAT_MAX_ROWS and _flat_bytes(n, d) <= b,
        lambda n, d, b: "Flat",
        lambda n, d, b: _flat_bytes(n, d),
    ),
    "hnsw": FactoryRule(
        lambda n, d, b: n < HNSW_MAX_ROWS and _hnsw_bytes(n, d) <= b,
        lambda n, d, b: f"HNSW{HNSW_M}",
        lambda n, d, b: _hnsw_bytes(n, d),
    ),
    "ivf-flat": FactoryRule(
        lambda n, d, b: _ivf_flat_bytes(n, d) <= b,
        lambda n, d, b: f"IVF{ivf_nlist(n)},Flat",
        lambda n, d, b: _ivf_flat_bytes(n, d),
    ),
    "ivf-pq": FactoryRule(
        lambda n, d, b: _pq_size(n, d, b) is not None,
        lambda n, d, b: f"IVF{ivf_nlist(n)},PQ{_pq_size(n, d, b)}",
        lambda n, d, b: _ivf_pq_bytes(n, d, _pq_size(n, d, b) or 0),
    ),
}


def choose_factory(n: int, d: int, memory_bytes: int) -> tuple[str, str, int]:
    """The default faiss factory string for ``n`` rows of dimension ``d`` within ``memory_bytes``.

    The first rung that applies wins (a smaller-memory rung is taken when a bigger one does not fit):

    1. ``Flat`` (exact) when ``n < FLAT_MAX_ROWS`` (50,000): an ANN index has no benefit there.
    2. ``HNSW32`` (efConstruction 80, efSearch 256) when ``n < HNSW_MAX_ROWS`` (1,000,000) and
       ``n (4 d + 1.1 * 2 * 32 * 4)`` bytes fit.
    3. ``IVF{nlist},Flat`` with ``nlist = 4 sqrt(n)`` rounded to a power of 2 when
       ``n (4 d + 8) + 4 nlist d`` bytes fit (nprobe nlist / 16).
    4. ``IVF{nlist},PQ{m}`` with the largest ``m`` in 64, 48, 32, 24, 16, 12, 8, 4 that divides
       ``d`` and makes ``n (m + 8) + 4 nlist d + 4 * 256 d`` bytes fit.

    Returns:
        (factory string, rule name, estimated index bytes).

    Raises:
        InputError: when not even the smallest IVF-PQ index fits.
    """
    for name, rule in FACTORY_RULES.items():
        if rule.applies(n, d, memory_bytes):
            return rule.factory(n, d, memory_bytes), name, rule.estimate(n, d, memory_bytes)
    raise InputError(
        None,
        f"no index for {n} rows of dim {d} fits in {memory_bytes / 2**30:.2f} GiB",
        "raise --memory-gb or pass --factory",
    )


def machine_memory_bytes() -> int:
    """Total RAM of this machine (``MemTotal`` of /proc/meminfo, else sysconf)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _faiss() -> Any:
    """Import faiss without its loader's INFO lines about CPU-specific builds."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss  # noqa: I001

    return faiss


# -- search parameters -----------------------------------------------------------------------
def _hnsw_of(index: Any) -> Any | None:
    faiss = _faiss()

    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return idx if hasattr(idx, "hnsw") else None


def _has_ivf(index: Any) -> bool:
    faiss = _faiss()

    return faiss.try_extract_index_ivf(index) is not None


def _default_nprobe(index: Any) -> int:
    faiss = _faiss()

    nlist = faiss.extract_index_ivf(index).nlist
    return max(1, min(nlist, max(8, nlist // 16)))


#: search parameter (faiss ParameterSpace name) -> (index has it?, default value)
SEARCH_PARAMS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], int]]] = {
    "nprobe": (_has_ivf, _default_nprobe),
    "efSearch": (lambda ix: _hnsw_of(ix) is not None, lambda ix: HNSW_EF_SEARCH),
}


def _default_search_params(index: Any) -> dict[str, int]:
    return {name: int(default(index)) for name, (has, default) in SEARCH_PARAMS.items() if has(index)}


def _apply_search_params(index: Any, params: dict[str, int], where: Path | None = None) -> None:
    faiss = _faiss()

    space = faiss.ParameterSpace()
    for name, value in params.items():
        flag = {"nprobe": "--nprobe", "efSearch": "--ef-search"}[name]
        if not SEARCH_PARAMS[name][0](index):
            raise InputError(where, f"{flag} {value} does not apply to this index ({type(faiss.downcast_index(index)).__name__})",
                             f"drop {flag}")
        if value < 1:
            raise InputError(where, f"{flag} is {value}", f"give {flag} >= 1")
        space.set_index_parameter(index, name, value)


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
    stream_pass(engine, store, chunk_rows, description="exact recall")
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


def _completed(out: Path, inputs: dict, parameters: dict, overwrite: bool, what: str) -> dict[str, Any] | None:
    """The manifest of a completed identical run in ``out`` (skip it), else None; refuses another run's folder."""
    manifest_path = out / MANIFEST_NAME
    if overwrite and out.exists():
        shutil.rmtree(out)
    if not manifest_path.exists():
        return None
    previous = read_json(manifest_path)
    if previous.get("inputs") == inputs and previous.get("parameters") == parameters:
        log.info("%s: %s is complete with the same inputs and parameters: skipped", what, out)
        return previous
    raise IncompatibleError(out, f"holds an {what} with other inputs or parameters", "choose a new --out or pass overwrite=True")


def _fmt_recall(recall: dict[str, Any]) -> str:
    r = recall["recall_at_k"]
    return f"recall@{recall['k']} {'not measured' if r is None else f'{r:.3f}'} ({recall['queries']} queries)"


# -- build -----------------------------------------------------------------------------------
def build_index(
    store: str | Path,
    out: str | Path,
    *,
    factory: str | None = None,
    memory_gb: float | None = None,
    recall_queries: int = 1000,
    recall_k: int = 10,
    chunk_rows: int = 65536,
    seed: int = 0,
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build an approximate inner-product (cosine) faiss index over an embedding store.

    Args:
        store: embedding store (float16/float32 [n, d] L2-normalised rows); faiss ids are its
            global row indices.
        out: output folder (see module docstring).
        factory: any faiss ``index_factory`` string; default :func:`choose_factory` (``Flat`` below
            50k rows, ``HNSW32`` below 1M, else ``IVF{4 sqrt n},Flat`` or ``IVF{..},PQ{m}`` to fit
            ``memory_gb``).
        memory_gb: memory the index may take, GiB (default: half the machine's RAM).
        recall_queries: store rows sampled (seeded) as queries for recall@``recall_k`` against
            exact search (0: not measured). Queries from the store find themselves, so this
            recall is optimistic; ``search_index`` measures it on the eval rows.
        recall_k: k of the recall measurement.
        chunk_rows: rows added (and streamed in the exact pass) at a time; bounds memory.
        seed: seed of the training and query samples.
        key_column: metadata column with the sample keys (default: the store's own).
        overwrite: delete ``out`` first; otherwise a completed identical build is skipped.

    Returns:
        the manifest (also ``out/manifest.json``), with ``index`` (factory, search parameters,
        bytes) and ``recall`` ({k, queries, recall_at_k}).
    """
    faiss = _faiss()
    out = Path(out)
    if chunk_rows < 1 or recall_queries < 0 or recall_k < 1 or (memory_gb is not None and memory_gb <= 0):
        raise InputError(None, "chunk_rows and recall_k must be >= 1, recall_queries >= 0 and memory_gb > 0", None)
    train = EmbeddingStore(store, key_column)
    n, d = train.count, train.dim
    if n == 0:
        raise InputError(train.path, "holds no rows", "embed the store first")
    inputs = {"store": str(train.path), "count": n, "dim": d, "key_column": train.key_column}
    parameters = {"factory": factory, "memory_gb": memory_gb, "recall_queries": recall_queries, "recall_k": recall_k,
                  "chunk_rows": chunk_rows, "seed": seed}
    done = _completed(out, inputs, parameters, overwrite, "index build")
    if done is not None:
        return done
    remove_stale_temporaries(out)
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
    hnsw = _hnsw_of(index)
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
                x = train.take(rows, check_unit=True)
                train_rows = len(x)
                log.info("index build: training %s on %d sampled rows", chosen, train_rows)
                index.train(x)
                del x
        with Timer() as t_add:
            _add_store(index, train, out / KEYS_FILE, chunk_rows)
        search_params = _default_search_params(index)
        _apply_search_params(index, search_params)
        with atomic_path(out / INDEX_FILE) as tmp:
            faiss.write_index(index, str(tmp))
        index_bytes = (out / INDEX_FILE).stat().st_size

        with Timer() as t_recall:
            q_rows = _sample_rows(n, recall_queries, seed, 1)
            per_query = np.zeros(0)
            q_keys = np.zeros(0, dtype=object)
            if len(q_rows):
                queries, q_keys = train.take(q_rows, check_unit=True), train.keys_at(q_rows)
                _, ann = index.search(queries, recall_k)
                exact = _exact_topk(train, queries, q_keys, recall_k, chunk_rows)
                per_query = recall_at_k(ann, exact)
            _write_recall(out / RECALL_FILE, q_keys, per_query)
            recall = _report_recall(per_query, recall_k, "index build")
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
    manifest = build_manifest(
        "index-build", inputs=inputs, parameters=parameters, model=train.model,
        counts={"rows": n, "dim": d, "train_rows": train_rows, "recall_queries": recall["queries"]},
        outputs={"index": INDEX_FILE, "keys": KEYS_FILE, "infos": INFOS_FILE, "recall": RECALL_FILE},
    )
    manifest["index"] = {"factory": chosen, "rule": rule, "search_params": search_params, "bytes": index_bytes}
    manifest["recall"] = recall
    write_json(out / MANIFEST_NAME, manifest)
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
            check_unit_rows(chunk.embeddings, store.parts[chunk.part].img_path, "row", chunk.start)
            index.add(chunk.embeddings)
            writer.write_table(pa.table({"key": pa.array(chunk.keys.tolist(), pa.string())}, schema=schema))
            advance(len(chunk))


# -- search ----------------------------------------------------------------------------------
def search_index(
    index: str | Path,
    evals: str | Path,
    out: str | Path,
    *,
    k: int = 10,
    nprobe: int | None = None,
    ef_search: int | None = None,
    recall_queries: int = 100,
    chunk_rows: int = 65536,
    seed: int = 0,
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Approximate top-k training neighbours of every row of an eval store, with measured recall.

    Args:
        index: a folder written by :func:`build_index`.
        evals: eval embedding store (float [q, d] L2-normalised rows, same model and dim as the
            index's store).
        out: output folder: ``neighbors.parquet`` (query_key, rank, train_key, score = cosine
            similarity float32, train_row = global row of the training store), ``recall.parquet``,
            ``manifest.json``.
        k: neighbours per eval row.
        nprobe: IVF lists visited per query (default: the build's, nlist / 16 but >= 8).
        ef_search: HNSW search breadth (default: the build's, 256).
        recall_queries: eval rows sampled (seeded) for recall@k against exact search over the
            index's training store (0: not measured; the store must still be at its path).
        chunk_rows: queries searched at a time (and training rows per exact tile).
        seed: seed of the recall sample.
        key_column: metadata column with the eval keys (default: the store's own).
        overwrite: delete ``out`` first; otherwise a completed identical search is skipped.

    Returns:
        the manifest (also ``out/manifest.json``) with ``recall`` ({k, queries, recall_at_k}).

    Raises:
        IncompatibleError: the eval store's dim or model differs from the index's.
    """
    faiss = _faiss()
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, out = Path(index), Path(out)
    if k < 1 or chunk_rows < 1 or recall_queries < 0:
        raise InputError(None, "k and chunk_rows must be >= 1 and recall_queries >= 0", None)
    if not (folder / MANIFEST_NAME).exists() or not (folder / INDEX_FILE).exists():
        raise InputError(folder, "is not a complete index folder (no manifest.json or knn.index)", "run `oodlab index build` first")
    built = read_json(folder / MANIFEST_NAME)
    infos = read_json(folder / INFOS_FILE)
    ev = EmbeddingStore(evals, key_column)
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
    params = dict(infos["search_params"])
    overrides = {"nprobe": nprobe, "efSearch": ef_search}
    params.update({name: int(v) for name, v in overrides.items() if v is not None})
    inputs = {"index": str(folder), "index_factory": infos["factory"], "index_count": infos["count"],
              "evals": str(ev.path), "eval_count": ev.count, "key_column": ev.key_column}
    parameters = {"k": k, "search_params": params, "recall_queries": recall_queries, "chunk_rows": chunk_rows, "seed": seed}
    done = _completed(out, inputs, parameters, overwrite, "index search")
    if done is not None:
        return done
    remove_stale_temporaries(out)

    ix = faiss.read_index(str(folder / INDEX_FILE))
    _apply_search_params(ix, params, folder)
    lookup = KeyLookup(folder / KEYS_FILE)
    q_rows = _sample_rows(ev.count, recall_queries, seed, 1)
    q_ann = np.full((len(q_rows), k), -1, np.int64)
    schema = pa.schema([("query_key", pa.string()), ("rank", pa.int32()), ("train_key", pa.string()),
                        ("score", pa.float32()), ("train_row", pa.int64())])
    n_pairs = 0
    with Timer() as total:
        with Timer() as t_search:
            with atomic_path(out / NEIGHBORS_FILE) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
                    progress("index search", total=ev.count, unit="queries") as advance:
                for chunk in ev.iter_chunks(chunk_rows, keys=True, dtype=np.float32):
                    check_unit_rows(chunk.embeddings, ev.parts[chunk.part].img_path, "eval row", chunk.start)
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
        del ix
        with Timer() as t_recall:
            per_query, q_keys = np.zeros(0), np.zeros(0, dtype=object)
            if len(q_rows):
                train = _training_store(built, infos)
                queries, q_keys = ev.take(q_rows, check_unit=True), ev.keys_at(q_rows)
                per_query = recall_at_k(q_ann, _exact_topk(train, queries, q_keys, k, chunk_rows))
            _write_recall(out / RECALL_FILE, q_keys, per_query)
            recall = _report_recall(per_query, k, "index search")
    manifest = build_manifest(
        "index-search", inputs=inputs, parameters=parameters, model=built.get("model"),
        counts={"queries": ev.count, "pairs": n_pairs, "recall_queries": recall["queries"]},
        outputs={"neighbors": NEIGHBORS_FILE, "recall": RECALL_FILE},
    )
    manifest["recall"] = recall
    write_json(out / MANIFEST_NAME, manifest)
    summary(
        f"index search: {ev.count} queries x {infos['count']} rows ({infos['factory']}, "
        f"{', '.join(f'{a}={b}' for a, b in params.items()) or 'exact'}), k={k} in {total.seconds:.1f} s "
        f"({ev.count / max(t_search.seconds, 1e-9):.0f} queries/s); {_fmt_recall(recall)} -> {out}"
    )
    return manifest


def _training_store(built: dict[str, Any], infos: dict[str, Any]) -> EmbeddingStore:
    """The index's training store (for exact recall), checked to be unchanged since the build."""
    path = Path(built["inputs"]["store"])
    if not path.exists():
        raise InputError(path, "(the index's training store) is missing, so recall cannot be measured",
                         "restore the store at that path or pass recall_queries=0 / --recall-queries 0")
    store = EmbeddingStore(path, infos.get("key_column"))
    if store.count != infos["count"] or store.dim != infos["dim"]:
        raise IncompatibleError(path, f"now holds {store.count} rows of dim {store.dim}, the index {infos['count']} of dim {infos['dim']}",
                                "rebuild the index, or pass recall_queries=0 / --recall-queries 0")
    return store

