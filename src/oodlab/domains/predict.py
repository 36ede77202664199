"""``oodlab domains predict``: every row of an embedding store through a domain head.

One output part per store part, aligned row for row (``part_{suffix}.parquet``: key, ``p_{class}``
per class, ``label`` = the argmax, and with calibrated thresholds ``label_strict`` = the class
whose threshold the sample passes, the more probable if both, else ``unassigned``, the
paper's "not assigned"). A part is
written whole under a temporary name and renamed, so a killed run resumes at the first missing
part; memory is bounded by ``chunk_rows``; every row is predicted (the reference code dropped each
worker's last partial batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oodlab.domains.model import HEAD, THRESHOLDS, DomainHead, add_counts, read_thresholds
from oodlab.utils.atomic import write_parquet
from oodlab.utils.errors import InputError
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

UNASSIGNED = "unassigned"


def part_file(out: Path, suffix: str) -> Path:
    """The prediction file of the store part with this suffix."""
    return out / f"part_{suffix}.parquet"


def strict_labels(proba: np.ndarray, classes: tuple[str, ...], thresholds: dict[str, float | None]) -> np.ndarray:
    """Per row the index (into ``classes`` + :data:`UNASSIGNED`) of the class whose calibrated
    threshold it reaches, the more probable where several do, else ``len(classes)`` (int8 [n])."""
    passing = np.zeros_like(proba, bool)
    for c, name in enumerate(classes):
        t = thresholds.get(name)
        if t is not None:
            passing[:, c] = proba[:, c] >= t
    best = np.where(passing, proba, -1.0).argmax(axis=1)
    return np.where(passing.any(axis=1), best, len(classes)).astype(np.int8)


def _labels(indices: np.ndarray, names: list[str]) -> Any:
    """Label indices as a dictionary-encoded string column: no string per row is built (the
    conversion of per-row strings made prediction 6x slower than reading the store)."""
    import pyarrow as pa

    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int8()), pa.array(names, pa.string()))


def domains_predict(
    store: str | Path,
    head: str | Path,
    out: str | Path,
    *,
    thresholds: str | Path | None = None,
    chunk_rows: int = 65536,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Predict the domain of every row of a store.

    Args:
        store: an embedding store (any clip-retrieval folder).
        head: an ``oodlab domains train`` folder (the head must match the store's model).
        out: output folder (``part_{suffix}.parquet`` per store part, ``manifest.json``).
        thresholds: an ``oodlab domains calibrate`` folder: adds ``label_strict``.
        chunk_rows: rows read at a time: bounds memory.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts``: rows, and rows per label and strict label).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oodlab.embeddings.store import EmbeddingStore

    model = DomainHead.load(head)
    cut = None if thresholds is None else read_thresholds(thresholds)
    source = EmbeddingStore(store)
    if source.dim != model.weights.shape[1]:
        raise InputError(store, f"has {source.dim}-d embeddings, the head expects {model.weights.shape[1]}",
                         "use the head trained on this store's model")
    run = RunFolder(out, "domains predict",
                    inputs={"store": fingerprint(store), "head": fingerprint(Path(head) / HEAD),
                            "thresholds": None if thresholds is None else fingerprint(Path(thresholds) / THRESHOLDS)},
                    parameters={}, settings={"chunk_rows": chunk_rows}, reads=[store, head] + ([thresholds] if thresholds else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    counts: dict[str, int] = {"rows": 0, "resumed_parts": 0}
    with Timer() as timer:
        for pi, part in enumerate(source.parts):
            path = part_file(run.out, part.suffix)
            if path.exists():  # renamed into place only when whole
                counts["resumed_parts"] += 1
                table = pq.read_table(path, columns=["label"] + (["label_strict"] if cut else []))
            else:
                # the keys straight from the part's metadata, as arrow strings (memory: one part)
                keys = pq.read_table(part.meta_path, columns=[source.key_column]).column(0).cast(pa.string())
                proba = [model.predict_proba(c.embeddings) for c in source.iter_chunks(chunk_rows, parts=[pi], keys=False)]
                proba = np.concatenate(proba) if proba else np.zeros((0, len(model.classes)))
                if len(proba) != len(keys):
                    raise InputError(part.meta_path, f"has {len(keys)} keys for {len(proba)} embeddings", "re-create this part")
                columns = {"key": keys, **{f"p_{c}": pa.array(proba[:, i].astype(np.float32)) for i, c in enumerate(model.classes)},
                           "label": _labels(proba.argmax(axis=1).astype(np.int8), list(model.classes))}
                if cut is not None:
                    columns["label_strict"] = _labels(strict_labels(proba, model.classes, cut), [*model.classes, UNASSIGNED])
                table = pa.table(columns)
                write_parquet(path, table)
            counts["rows"] += table.num_rows
            for column in ("label", "label_strict"):
                if column in table.column_names:  # categorical: counted without a string per row
                    add_counts(counts, table.column(column).to_pandas(), f"{column}:")
    if counts["rows"] != source.count:
        raise InputError(run.out, f"holds {counts['rows']} predictions for {source.count} store rows",
                         "re-run with --overwrite")
    manifest = run.finish(counts=counts, outputs={"parts": "part_{suffix}.parquet"}, task=model.task,
                          classes=list(model.classes))
    shares = ", ".join(f"{k.split(':', 1)[1]} {v / max(counts['rows'], 1):.1%}" for k, v in counts.items()
                       if k.startswith("label_strict:" if cut else "label:"))
    summary(f"domains predict: {counts['rows']:,} rows ({shares}) in {timer.seconds:.1f} s -> {run.out}")
    return manifest
