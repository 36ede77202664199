"""The domain label space and label files.

Three labels (the paper's): ``natural`` (photos), ``rendition`` (sketches, paintings, clipart,
...) and ``ambiguous``. A classifier is trained for a *task*: the three classes, or one of the
paper's binary variants (``binary_labels_mapping.yaml``): natural vs rest (ambiguous counts as
rest) and rendition vs rest (ambiguous counts as rest).

A label file is a parquet or CSV with columns ``key`` and ``label`` (one of :data:`DOMAINS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oodlab.utils.errors import InputError

DOMAINS = ("natural", "rendition", "ambiguous")
#: task -> (class names, index of each of DOMAINS in the task's classes)
TASKS: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "3-class": (("natural", "rendition", "ambiguous"), (0, 1, 2)),
    "natural-v-rest": (("natural", "rest"), (0, 1, 1)),
    "rendition-v-rest": (("rest", "rendition"), (0, 1, 0)),
}
#: the classes whose predictions select samples (and get thresholds): never "rest" / "ambiguous"
SELECTING = ("natural", "rendition")


def task_classes(task: str) -> tuple[str, ...]:
    """The class names of a task (:data:`TASKS`)."""
    if task not in TASKS:
        raise InputError(None, f"unknown task {task!r}", f"choose one of {list(TASKS)}")
    return TASKS[task][0]


def to_task(labels: np.ndarray, task: str) -> np.ndarray:
    """Domain indices (int [n] into :data:`DOMAINS`) -> the task's class indices (int64 [n])."""
    task_classes(task)
    return np.asarray(TASKS[task][1], np.int64)[np.asarray(labels, np.int64)]


def read_labels(path: str | Path) -> dict[str, int]:
    """A label file -> key -> index into :data:`DOMAINS`.

    Raises:
        InputError: missing file or columns, unknown labels, a key labelled twice.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "label file not found", "pass a parquet or CSV with columns key and label")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    if not {"key", "label"} <= set(frame.columns):
        raise InputError(path, f"has columns {list(frame.columns)}", "a label file needs columns key and label")
    unknown = sorted(set(frame["label"].astype(str)) - set(DOMAINS))
    if unknown:
        raise InputError(path, f"has labels {unknown[:5]} outside {list(DOMAINS)}", "label every sample natural, rendition or ambiguous")
    keys = frame["key"].astype(str)
    twice = keys[keys.duplicated()].unique().tolist()
    if twice:
        raise InputError(path, f"labels keys twice, e.g. {twice[:3]}", "keep one label per key")
    index = {name: i for i, name in enumerate(DOMAINS)}
    return dict(zip(keys, (index[x] for x in frame["label"].astype(str))))


def write_labels(path: str | Path, keys: list[str], labels: list[str]) -> Path:
    """Write a label file (parquet: key, label)."""
    import pyarrow as pa

    from oodlab.utils.atomic import write_parquet

    write_parquet(Path(path), pa.table({"key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.string())}))
    return Path(path)


def labelled_embeddings(store: str | Path, labels: dict[str, int], *, chunk_rows: int = 65536,
                        source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The store's rows of the labelled keys, streamed (memory: the chunk and the labelled rows).

    Returns:
        (keys str [m], embeddings float32 [m, d], labels int64 [m] into :data:`DOMAINS`), in
        store order.

    Raises:
        InputError: labelled keys that the store does not hold (naming ``source``, the label file).
    """
    from oodlab.embeddings.store import EmbeddingStore

    found_keys, rows = [], []
    for chunk in EmbeddingStore(store).iter_chunks(chunk_rows):
        hit = np.fromiter((k in labels for k in chunk.keys), bool, len(chunk.keys))
        if hit.any():
            found_keys.extend(chunk.keys[hit].tolist())
            rows.append(chunk.embeddings[hit])
    missing = len(labels) - len(found_keys)
    if missing:
        example = sorted(set(labels) - set(found_keys))[:3]
        raise InputError(source, f"labels {missing} keys that {store} does not hold (e.g. {example})",
                         "label samples of this store (keys as in its metadata)")
    keys = np.array(found_keys, dtype=object)
    return keys, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32), np.array([labels[k] for k in found_keys], np.int64)
