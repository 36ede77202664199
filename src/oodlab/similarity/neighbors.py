"""``oodlab neighbors``: one exact streaming pass of a training store against eval stores.

Outputs under ``OUT``: a neighbours folder (:mod:`oodlab.similarity.layout`): the k most similar
training samples of every eval sample (ties -> earlier training sample), per training sample its
maximum similarity to each eval set (and the eval key attaining it) and, with thresholds, its
margin ``max_i (s_ij - t_i)``; the thresholds; ``state/after_part_{i}.npz`` holds the top-k after
part i while the pass runs (the resume point).

The pass is resumable per training part: a killed run restarts after the last completed part.
All numbers are exact with respect to the stored embeddings (see :mod:`oodlab.similarity.engine`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.embeddings.store import EmbeddingStore
from oodlab.embeddings.validate import require_unique_keys
from oodlab.models.loading import check_compute, same_model
from oodlab.similarity.engine import EvalSet, StreamingNeighbors, stream_store
from oodlab.similarity.screens import SCREEN_CHOICES
from oodlab.similarity.layout import (
    ARGMAX,
    EVAL_DIR,
    MARGIN,
    MARGIN_ARGMAX,
    MAX_SIM,
    THRESHOLDS_DIR,
    TRAIN_DIR,
    NeighborsFolder,
    column,
)
from oodlab.utils.atomic import atomic_open, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import write_manifest
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)



def load_eval_set(name: str, path: str | Path, key_column: str | None = None) -> tuple[EvalSet, EmbeddingStore]:
    """Read an eval store fully (eval sets are held in memory) and check its rows.

    Raises:
        InputError: NaN/inf or non-unit rows, duplicate keys, an empty store.
    """
    store = EmbeddingStore(path, key_column)
    emb, keys = store.read_all()
    if len(emb) == 0:
        raise InputError(store.path, "holds no rows", "embed the eval set first")
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise InputError(store.path, f"has duplicate keys, e.g. {uniq[counts > 1][:3].tolist()}", "run `oodlab store validate`")
    return EvalSet(name=name, embeddings=emb, keys=keys), store


def _check_compatible(stores: Mapping[str, EmbeddingStore]) -> None:
    items = list(stores.items())
    (name0, s0), rest = items[0], items[1:]
    for name, s in rest:
        if s.dim != s0.dim:
            raise IncompatibleError(
                s.path, f"has dim {s.dim} but {name0} ({s0.path}) has dim {s0.dim}", "embed all stores with the same model"
            )
        if not same_model(s.model, s0.model):
            a, b = (x.model or {} for x in (s0, s))
            raise IncompatibleError(
                s.path,
                f"was embedded with {b.get('architecture')} ({(b.get('weights') or {}).get('sha256', 'random')[:12]}) "
                f"but {name0} with {a.get('architecture')} ({(a.get('weights') or {}).get('sha256', 'random')[:12]})",
                "similarities are only meaningful within one embedding space: embed all stores with the same model",
            )
    unknown = [n for n, s in items if s.model is None]
    if unknown:
        log.warning("stores without model identity (%s): cannot check that they share one model", ", ".join(unknown))


def _read_threshold_file(path: Path, keys: np.ndarray) -> np.ndarray:
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(path, "thresholds file not found", "pass a parquet with columns key, threshold")
    table = pq.read_table(path)
    if not {"key", "threshold"} <= set(table.column_names):
        raise InputError(path, f"has columns {table.column_names}", "a thresholds parquet needs columns key and threshold")
    lookup = dict(zip(table.column("key").to_pylist(), table.column("threshold").to_pylist()))
    missing = [k for k in keys.tolist() if k not in lookup]
    if missing:
        raise InputError(path, f"has no threshold for {len(missing)} eval samples (e.g. {missing[:3]})", "give every eval key a threshold")
    t = np.array([lookup[k] for k in keys.tolist()], np.float64)
    if not np.isfinite(t).all():
        raise InputError(path, "has NaN/inf thresholds", "fix the file")
    return t


def reference_thresholds(
    evals: list[EvalSet], reference: EmbeddingStore, *, chunk_rows: int, screen: str, device: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each eval sample's nearest-neighbour similarity to a reference training set.

    Returns:
        {eval name: (threshold float64 [q], reference row index int64 [q])}
    """
    engine = StreamingNeighbors(evals, k=1, per_train=False, screen=screen, device=device)
    stream_store(engine, reference, chunk_rows, description="reference")
    return {name: (scores[:, 0], idx[:, 0]) for name, (idx, scores) in engine.topk_result().items()}


def _part_table(part_keys: np.ndarray, results: list, evals: list[EvalSet]) -> Any:
    import pyarrow as pa

    cols: dict[str, Any] = {"key": part_keys}
    for e in evals:
        mx = np.concatenate([r.max_sim[e.name] for r in results]) if results else np.zeros(0)
        arg = np.concatenate([r.argmax[e.name] for r in results]) if results else np.zeros(0, np.int64)
        cols[column(MAX_SIM, e.name)] = mx.astype(np.float32)
        cols[column(ARGMAX, e.name)] = e.keys[arg] if len(arg) else np.zeros(0, dtype=object)
        if e.thresholds is not None:
            mg = np.concatenate([r.margin[e.name] for r in results]) if results else np.zeros(0)
            marg = np.concatenate([r.margin_argmax[e.name] for r in results]) if results else np.zeros(0, np.int64)
            cols[column(MARGIN, e.name)] = mg
            cols[column(MARGIN_ARGMAX, e.name)] = e.keys[marg] if len(marg) else np.zeros(0, dtype=object)
    return pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in cols.items()})


def neighbors(
    train_store: str | Path,
    eval_stores: Mapping[str, str | Path],
    out: str | Path,
    *,
    k: int = 10,
    threshold_files: Mapping[str, str | Path] | None = None,
    reference_stores: Mapping[str, str | Path] | None = None,
    chunk_rows: int = 65536,
    screen: str = "auto",
    device: str = "cpu",
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exact top-k neighbours, per-train max similarity and margins in one streaming pass.

    Args:
        train_store: the training embedding store (e.g. the pool, LAION).
        eval_stores: eval set name -> embedding store (held in memory).
        out: output folder (see module docstring); completed parts are kept (resume).
        k: neighbours per eval sample (0 for none).
        threshold_files: eval name -> parquet (key, threshold): enables margins for that set.
        reference_stores: {name: store} of at most one reference training set (ImageNet-train in
            the paper): each eval sample's nearest-neighbour similarity to it becomes the
            sample's threshold (for the sets without a threshold file).
        chunk_rows: training rows read at a time (the engine tiles them to fit the cache);
            memory is about chunk_rows x dim x 12 bytes plus the eval sets.
        screen: ``auto`` (the faster of the two on this machine, timed once), ``bf16`` or
            ``fp32``: how candidates are found; the results are exact with any.
        device: ``cpu`` or ``cuda``.
        key_column: metadata column with the sample keys (default: the stores' own).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also written to ``out/manifest.json``).
    """
    threshold_files = dict(threshold_files or {})
    reference_stores = dict(reference_stores or {})
    if k < 0 or chunk_rows < 1:
        raise InputError(None, f"k must be >= 0 and chunk_rows >= 1 (got k={k}, chunk_rows={chunk_rows})",
                         "pass --k 0 or more and a positive --chunk-rows")
    if len(reference_stores) > 1:
        raise InputError(None, f"{len(reference_stores)} reference stores given; the margins need one threshold per eval sample",
                         "pass one --reference-store NAME=STORE (run again for another reference)")
    if not eval_stores:
        raise InputError(None, "no eval sets given", "pass --eval-store NAME=STORE at least once")
    check_compute(device)
    if screen not in SCREEN_CHOICES:
        raise InputError(None, f"unknown screen {screen!r}", f"pass --screen as one of {', '.join(SCREEN_CHOICES)}")
    check_names([*eval_stores, *reference_stores], "eval set or reference")
    unknown = set(threshold_files) - set(eval_stores)
    if unknown:
        raise InputError(None, f"threshold files given for unknown eval sets {sorted(unknown)}", "use the names of --eval-store")
    train = EmbeddingStore(train_store, key_column)
    require_unique_keys(train)
    eval_sets, stores = [], {"train": train}
    for name, path in eval_stores.items():
        e, s = load_eval_set(name, path, key_column)
        eval_sets.append(e)
        stores[f"eval {name}"] = s
    ref_name, ref_store = None, None
    if reference_stores:
        ref_name, ref_path = next(iter(reference_stores.items()))
        ref_store = EmbeddingStore(ref_path, key_column)
        stores[f"reference {ref_name}"] = ref_store
    _check_compatible(stores)
    k_used = min(k, train.count)  # more neighbours than training rows would only allocate -inf slots
    if k_used < k:
        log.info("neighbors: k=%d is more than the %d training rows: %d neighbours per eval sample", k, train.count, k_used)
    run = RunFolder(out, "neighbors",
                    inputs={"train_store": fingerprint(train.path),
                            "eval_stores": {n: fingerprint(stores[f"eval {n}"].path) for n in eval_stores},
                            "threshold_files": {n: fingerprint(p) for n, p in threshold_files.items()},
                            "reference_stores": {ref_name: fingerprint(ref_store.path)} if ref_store is not None else {}},
                    parameters={"k": k, "key_column": key_column},
                    # the screen changes speed, never results: a resumed run may use another
                    settings={"chunk_rows": chunk_rows, "device": device, "screen": screen},
                    reads=[s.path for s in stores.values()] + list(threshold_files.values()))
    done = run.open(overwrite)
    if done is not None:
        return done
    folder = NeighborsFolder(run.out)
    n_parts = len(train.parts)

    with Timer() as timer:
        _resolve_thresholds(folder, eval_sets, threshold_files, ref_name, ref_store, chunk_rows, screen, device)
        engine = StreamingNeighbors(eval_sets, k_used, screen=screen, device=device)
        start = _load_resume_state(folder, train, engine)

        def part_done(pi: int, results: list) -> None:
            part = train.parts[pi]
            keys = np.concatenate(list(train.iter_keys(part, 1 << 20))) if part.rows else np.zeros(0, dtype=object)
            write_parquet(folder.train_part(part.suffix), _part_table(keys, results, eval_sets))
            with atomic_open(folder.state_dir / f"after_part_{part.suffix}.npz") as f:
                np.savez(f, **engine.topk.state())
            if pi > 0:
                (folder.state_dir / f"after_part_{train.parts[pi - 1].suffix}.npz").unlink(missing_ok=True)

        folder.state_dir.mkdir(parents=True, exist_ok=True)
        stream_store(engine, train, chunk_rows, parts=range(start, n_parts), on_part_done=part_done)
        counts = _write_eval_outputs(folder, engine, eval_sets, train)
    shutil.rmtree(folder.state_dir, ignore_errors=True)
    manifest = run.finish(
        model=train.model,
        counts={"train_rows": train.count, "train_parts": n_parts, "k": k_used, **counts},
        outputs={"eval": f"{EVAL_DIR}/{{name}}.parquet", "train": f"{TRAIN_DIR}/part_{{suffix}}.parquet",
                 "thresholds": f"{THRESHOLDS_DIR}/{{name}}.parquet"},
    )
    rate = (train.count - sum(p.rows for p in train.parts[:start])) * sum(len(e.keys) for e in eval_sets)
    summary(
        f"neighbors: {train.count} train rows x {sum(len(e.keys) for e in eval_sets)} eval rows "
        f"({', '.join(e.name for e in eval_sets)}), k={k}, {engine.screen.name} screen, in {timer.seconds:.1f} s "
        f"({rate / max(timer.seconds, 1e-9) / 1e9:.2f} G pairs/s; {start} parts resumed) -> {run.out}"
    )
    return manifest


def _resolve_thresholds(folder: NeighborsFolder, eval_sets: list[EvalSet], files: dict, ref_name: str | None,
                        ref_store: EmbeddingStore | None, chunk_rows: int, screen: str, device: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e in eval_sets:
        if e.name in files:
            e.thresholds = _read_threshold_file(Path(files[e.name]), e.keys)
            write_parquet(folder.thresholds_file(e.name), pa.table({"key": e.keys.tolist(), "threshold": e.thresholds}))
    need = [e for e in eval_sets if e.thresholds is None] if ref_store is not None else []
    if not need:
        return
    if not all(folder.thresholds_file(e.name).exists() for e in need):
        result = reference_thresholds(need, ref_store, chunk_rows=chunk_rows, screen=screen, device=device)
        for e in need:
            t, ridx = result[e.name]
            table = pa.table({"key": e.keys.tolist(), "threshold": t, "reference_key": ref_store.keys_at(ridx).tolist()})
            write_parquet(folder.thresholds_file(e.name), table)
        write_manifest(folder.thresholds_dir, "reference-thresholds", inputs={"reference": {ref_name: str(ref_store.path)}},
                       parameters={}, model=ref_store.model, counts={e.name: len(e.keys) for e in need})
    for e in need:
        table = pq.read_table(folder.thresholds_file(e.name))
        if table.column("key").to_pylist() != e.keys.tolist():
            raise IncompatibleError(folder.thresholds_dir, f"thresholds of {e.name} do not match its keys", "pass --overwrite")
        e.thresholds = table.column("threshold").to_numpy()


def _load_resume_state(folder: NeighborsFolder, train: EmbeddingStore, engine: StreamingNeighbors) -> int:
    """Index of the first part to process; loads the top-k state saved after the previous one."""
    for pi in range(len(train.parts) - 1, -1, -1):
        state = folder.state_dir / f"after_part_{train.parts[pi].suffix}.npz"
        if state.exists() and all(folder.train_part(p.suffix).exists() for p in train.parts[: pi + 1]):
            with np.load(state, allow_pickle=False) as data:
                engine.topk.load(dict(data))
            return pi + 1
    return 0


def _write_eval_outputs(folder: NeighborsFolder, engine: StreamingNeighbors, eval_sets: list[EvalSet],
                        train: EmbeddingStore) -> dict:
    import pyarrow as pa

    counts = {}
    for name, (idx, scores) in engine.topk_result().items():
        e = next(x for x in eval_sets if x.name == name)
        valid = idx >= 0
        qi, rank = np.nonzero(valid)
        train_keys = train.keys_at(idx[valid])
        table = pa.table({
            "query_key": e.keys[qi].tolist(),
            "rank": rank.astype(np.int32),
            "train_key": train_keys.tolist(),
            "score": scores[valid].astype(np.float32),
            "train_row": idx[valid],
        })
        write_parquet(folder.eval_file(name), table)
        counts[f"eval_rows__{name}"] = len(e.keys)
    return counts
