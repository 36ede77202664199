"""``oodlab neighbors``: one exact streaming pass of a training store against eval stores.

Outputs under ``OUT`` (each folder with a manifest)::

    eval/{name}.parquet          query_key, rank, train_key, score: the k most similar training
                                 samples of every eval sample (ties -> earlier training sample)
    train/part_{i}.parquet       aligned with the training store's parts: key,
                                 max_sim__{name}, argmax__{name} (eval key attaining it), and with
                                 thresholds margin__{name} = max_i (s_ij - t_i), margin_argmax__{name}
    thresholds/{name}.parquet    key, threshold (and reference_key when taken from a reference)
    state/after_part_{i}.npz     the top-k after part i (resume point; removed at the end)

The pass is resumable per training part: a killed run restarts after the last completed part.
All numbers are exact with respect to the stored embeddings (see :mod:`oodlab.similarity.engine`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.embeddings.store import EmbeddingStore, check_unit_rows
from oodlab.models.loading import same_model
from oodlab.similarity.engine import BadRowError, EvalSet, StreamingNeighbors
from oodlab.utils.atomic import atomic_open, read_json, remove_stale_temporaries, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import build_manifest
from oodlab.utils.progress import Timer, progress, summary

log = logging.getLogger(__name__)

#: default training rows per tile: the tile is chunk_rows x (all eval rows) bf16 values
DEFAULT_CHUNK_ROWS = 8192


def load_eval_set(name: str, path: str | Path, key_column: str | None = None) -> tuple[EvalSet, EmbeddingStore]:
    """Read an eval store fully (eval sets are held in memory) and check its rows.

    Raises:
        InputError: NaN/inf or non-unit rows, duplicate keys, an empty store.
    """
    store = EmbeddingStore(path, key_column)
    emb, keys = store.read_all()
    check_unit_rows(emb, store.path, "eval row")
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


def stream_pass(
    engine: StreamingNeighbors, train: EmbeddingStore, chunk_rows: int, *, parts: list[int] | None = None,
    on_part_done=None, description: str = "neighbors",
) -> None:
    """Feed the training store's parts (all, or ``parts``) through ``engine`` chunk by chunk.

    ``on_part_done(part_index, results)`` is called after each part with its chunk results.
    """
    todo = list(range(len(train.parts))) if parts is None else parts
    total = sum(train.parts[p].rows for p in todo)
    offsets = train.part_offsets()
    with progress(description, total=total, unit="train rows") as advance:
        for pi in todo:
            results = []
            for chunk in train.iter_chunks(chunk_rows, keys=False, dtype=None, parts=[pi]):
                try:
                    results.append(engine.process(chunk.embeddings, int(offsets[pi]) + chunk.start))
                except BadRowError as err:
                    raise InputError(
                        train.parts[pi].img_path,
                        f"train row {chunk.start + err.row} {str(err).split(' ', 2)[2]}",
                        "re-embed it; `oodlab store validate` lists all bad rows",
                    ) from err
                advance(len(chunk))
            if on_part_done is not None:
                on_part_done(pi, results)


def reference_thresholds(
    evals: list[EvalSet], reference: EmbeddingStore, *, chunk_rows: int, precision: str, device: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each eval sample's nearest-neighbour similarity to a reference training set.

    Returns:
        {eval name: (threshold float64 [q], reference row index int64 [q])}
    """
    engine = StreamingNeighbors(evals, k=1, per_train=False, precision=precision, device=device)
    stream_pass(engine, reference, chunk_rows, description="reference")
    return {name: (scores[:, 0], idx[:, 0]) for name, (idx, scores) in engine.topk_result().items()}


def _part_table(part_keys: np.ndarray, results: list, evals: list[EvalSet]) -> Any:
    import pyarrow as pa

    cols: dict[str, Any] = {"key": part_keys}
    for e in evals:
        mx = np.concatenate([r.max_sim[e.name] for r in results]) if results else np.zeros(0)
        arg = np.concatenate([r.argmax[e.name] for r in results]) if results else np.zeros(0, np.int64)
        cols[f"max_sim__{e.name}"] = mx.astype(np.float32)
        cols[f"argmax__{e.name}"] = e.keys[arg] if len(arg) else np.zeros(0, dtype=object)
        if e.thresholds is not None:
            mg = np.concatenate([r.margin[e.name] for r in results]) if results else np.zeros(0)
            marg = np.concatenate([r.margin_argmax[e.name] for r in results]) if results else np.zeros(0, np.int64)
            cols[f"margin__{e.name}"] = mg
            cols[f"margin_argmax__{e.name}"] = e.keys[marg] if len(marg) else np.zeros(0, dtype=object)
    return pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in cols.items()})


def neighbors(
    train: str | Path,
    evals: Mapping[str, str | Path],
    out: str | Path,
    *,
    k: int = 100,
    thresholds: Mapping[str, str | Path] | None = None,
    reference: Mapping[str, str | Path] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    precision: str = "bf16",
    device: str = "cpu",
    key_column: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exact train-test similarity in one streaming pass over ``train``.

    Args:
        train: the training embedding store (e.g. the pool, LAION).
        evals: eval set name -> embedding store (held in memory).
        out: output folder (see module docstring); completed parts are kept (resume).
        k: neighbours per eval sample (0 for none).
        thresholds: eval name -> parquet (key, threshold): enables margins for that set.
        reference: {name: store}: each eval sample's nearest-neighbour similarity to this
            reference training set (ImageNet-train in the paper) becomes its threshold.
        chunk_rows: training rows per tile; memory is about chunk_rows x (eval rows) x 6 bytes.
        precision: ``bf16`` (fast, re-checked exactly) or ``fp32``.
        device: ``cpu`` or ``cuda``.
        key_column: metadata column with the sample keys (default: the stores' own).
        overwrite: delete ``out`` first instead of resuming.

    Returns:
        the manifest (also written to ``out/manifest.json``).
    """
    out = Path(out)
    thresholds = dict(thresholds or {})
    reference = dict(reference or {})
    if k < 0 or chunk_rows < 1:
        raise InputError(None, "k must be >= 0 and chunk_rows >= 1", None)
    if len(reference) > 1:
        raise InputError(None, "give at most one reference store", "e.g. --reference imagenet-train=STORE")
    if not evals:
        raise InputError(None, "no eval sets given", "pass --eval NAME=STORE at least once")
    unknown = set(thresholds) - set(evals)
    if unknown:
        raise InputError(None, f"thresholds given for unknown eval sets {sorted(unknown)}", "use the names of --eval")
    if overwrite and out.exists():
        shutil.rmtree(out)
    train_store = EmbeddingStore(train, key_column)
    eval_sets, stores = [], {"train": train_store}
    for name, path in evals.items():
        e, s = load_eval_set(name, path, key_column)
        eval_sets.append(e)
        stores[f"eval {name}"] = s
    ref_name, ref_store = None, None
    if reference:
        ref_name, ref_path = next(iter(reference.items()))
        ref_store = EmbeddingStore(ref_path, key_column)
        stores[f"reference {ref_name}"] = ref_store
    _check_compatible(stores)
    parameters = {"k": k, "chunk_rows": chunk_rows, "precision": precision, "device": device}
    inputs = {"train": str(train_store.path), "evals": {n: str(stores[f"eval {n}"].path) for n in evals},
              "thresholds": {n: str(p) for n, p in thresholds.items()},
              "reference": {ref_name: str(ref_store.path)} if ref_store is not None else {}}
    _check_resume(out, inputs, parameters)
    remove_stale_temporaries(out)
    write_json(out / "run.json", {"inputs": inputs, "parameters": parameters})

    with Timer() as timer:
        _resolve_thresholds(out, eval_sets, thresholds, ref_name, ref_store, chunk_rows, precision, device)
        engine = StreamingNeighbors(eval_sets, k, precision=precision, device=device)
        start = _load_resume_state(out, train_store, engine)
        n_parts = len(train_store.parts)

        def part_done(pi: int, results: list) -> None:
            part = train_store.parts[pi]
            keys = np.concatenate(list(train_store.iter_keys(part, 1 << 20))) if part.rows else np.zeros(0, dtype=object)
            write_parquet(out / "train" / f"part_{part.suffix}.parquet", _part_table(keys, results, eval_sets))
            with atomic_open(out / "state" / f"after_part_{part.suffix}.npz") as f:
                np.savez(f, **engine.topk.state())
            if pi > 0:
                (out / "state" / f"after_part_{train_store.parts[pi - 1].suffix}.npz").unlink(missing_ok=True)

        (out / "state").mkdir(parents=True, exist_ok=True)
        stream_pass(engine, train_store, chunk_rows, parts=list(range(start, n_parts)), on_part_done=part_done)
        counts = _write_eval_outputs(out, engine, eval_sets, train_store)
    shutil.rmtree(out / "state", ignore_errors=True)
    manifest = build_manifest(
        "neighbors",
        inputs=inputs,
        parameters=parameters,
        model=train_store.model,
        counts={"train_rows": train_store.count, "train_parts": n_parts, "resumed_parts": start, **counts},
        outputs={"eval": "eval/{name}.parquet", "train": "train/part_{suffix}.parquet", "thresholds": "thresholds/{name}.parquet"},
    )
    write_json(out / "manifest.json", manifest)
    rate = (train_store.count - sum(p.rows for p in train_store.parts[:start])) * sum(len(e.keys) for e in eval_sets)
    summary(
        f"neighbors: {train_store.count} train rows x {sum(len(e.keys) for e in eval_sets)} eval rows "
        f"({', '.join(e.name for e in eval_sets)}), k={k}, {precision}, in {timer.seconds:.1f} s "
        f"({rate / max(timer.seconds, 1e-9) / 1e9:.2f} G pairs/s; {start} parts resumed) -> {out}"
    )
    return manifest


def _check_resume(out: Path, inputs: dict, parameters: dict) -> None:
    run = out / "run.json"
    if run.exists():
        previous = read_json(run)
        if previous != {"inputs": inputs, "parameters": parameters}:
            raise IncompatibleError(
                out, "holds a neighbors run with other inputs or parameters", "choose a new --out or pass overwrite=True"
            )


def _resolve_thresholds(out: Path, eval_sets: list[EvalSet], files: dict, ref_name: str | None,
                        ref_store: EmbeddingStore | None, chunk_rows: int, precision: str, device: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e in eval_sets:
        if e.name in files:
            e.thresholds = _read_threshold_file(Path(files[e.name]), e.keys)
            write_parquet(out / "thresholds" / f"{e.name}.parquet", pa.table({"key": e.keys.tolist(), "threshold": e.thresholds}))
    need = [e for e in eval_sets if e.thresholds is None] if ref_store is not None else []
    if not need:
        return
    done = all((out / "thresholds" / f"{e.name}.parquet").exists() for e in need)
    if not done:
        result = reference_thresholds(need, ref_store, chunk_rows=chunk_rows, precision=precision, device=device)
        for e in need:
            t, ridx = result[e.name]
            rkeys = ref_store.keys_at(ridx)
            table = pa.table({"key": e.keys.tolist(), "threshold": t, "reference_key": rkeys.tolist()})
            write_parquet(out / "thresholds" / f"{e.name}.parquet", table)
        write_json(out / "thresholds" / "manifest.json", build_manifest(
            "reference-thresholds", inputs={"reference": {ref_name: str(ref_store.path)}},
            parameters={"precision": precision}, model=ref_store.model,
            counts={e.name: len(e.keys) for e in need}))
    for e in need:
        table = pq.read_table(out / "thresholds" / f"{e.name}.parquet")
        if table.column("key").to_pylist() != e.keys.tolist():
            raise IncompatibleError(out / "thresholds", f"thresholds of {e.name} do not match its keys", "pass overwrite=True")
        e.thresholds = table.column("threshold").to_numpy()


def _load_resume_state(out: Path, train: EmbeddingStore, engine: StreamingNeighbors) -> int:
    """Index of the first part to process; loads the top-k state saved after the previous one."""
    for pi in range(len(train.parts) - 1, -1, -1):
        suffix = train.parts[pi].suffix
        state = out / "state" / f"after_part_{suffix}.npz"
        if state.exists() and all((out / "train" / f"part_{p.suffix}.parquet").exists() for p in train.parts[: pi + 1]):
            with np.load(state, allow_pickle=False) as data:
                engine.topk.load(dict(data))
            return pi + 1
    return 0


def _write_eval_outputs(out: Path, engine: StreamingNeighbors, eval_sets: list[EvalSet], train: EmbeddingStore) -> dict:
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
        write_parquet(out / "eval" / f"{name}.parquet", table)
        counts[f"eval_rows__{name}"] = len(e.keys)
    return counts
