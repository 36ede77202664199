"""A domain classifier's artifacts, as the stages that use them read them: the head
(``oodlab domains train``: ``head.json``), its certified thresholds (``oodlab domains
calibrate``: ``thresholds.json``; both JSON: nothing to unpickle) and the prediction parts
(``oodlab domains predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from oodlab.utils.atomic import read_json
from oodlab.utils.errors import InputError

HEAD = "head.json"
THRESHOLDS = "thresholds.json"


@dataclass(frozen=True)
class DomainHead:
    """A fitted head: ``softmax(x @ weights.T + bias)`` over ``classes``.

    Attributes:
        task: a key of :data:`oodlab.domains.labels.TASKS`.
        classes: class names, in output order.
        weights: float64 [C, d]; bias: float64 [C].
    """

    task: str
    classes: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 [n, C] (rows sum to 1), for embeddings float [n, d].

        The logits are a float32 product (the stored rows are float16 or float32: float64 would
        only copy them; the logits' error, ~1e-6 for unit rows, is far below any threshold's
        resolution), the softmax is float64."""
        z = (np.asarray(x, np.float32) @ self.weights.T.astype(np.float32)).astype(np.float64) + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @classmethod
    def load(cls, folder: str | Path) -> "DomainHead":
        """Read ``folder/head.json`` (an ``oodlab domains train`` output)."""
        path = Path(folder) / HEAD
        if not path.is_file():
            raise InputError(path, "not found", "pass the output folder of `oodlab domains train`")
        data = read_json(path)
        return cls(data["task"], tuple(data["classes"]), np.array(data["weights"], np.float64),
                   np.array(data["bias"], np.float64))


def read_thresholds(folder: str | Path) -> dict[str, float | None]:
    """Class -> certified threshold (None: not certified) from an ``oodlab domains calibrate`` folder."""
    path = Path(folder) / THRESHOLDS
    if not path.is_file():
        raise InputError(path, "not found", "pass the output folder of `oodlab domains calibrate`")
    return {name: c.get("threshold") for name, c in read_json(path)["classes"].items()}


def prediction_parts(predictions: str | Path) -> list[Path]:
    """The part files of an ``oodlab domains predict`` folder, in store order."""
    folder = Path(predictions)
    if not (folder / "manifest.json").is_file():
        raise InputError(folder, "is not a finished `oodlab domains predict` run", "run or finish `oodlab domains predict`")
    return sorted(folder.glob("part_*.parquet"))


def read_predictions(predictions: str | Path, columns: Sequence[str]) -> Any:
    """``key`` and ``columns`` of every part of an ``oodlab domains predict`` folder, in store
    order, as one pandas DataFrame (labels as strings): for datasets that fit in memory (eval
    sets, a labelling candidate list); :func:`label_counts` streams.

    Raises:
        InputError: the folder is not a finished run, or lacks a column.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for path in prediction_parts(predictions):
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(path, f"has no column {missing} (columns: {names})",
                             "predict with --thresholds for strict labels, with a head that has this class")
        frame = pq.read_table(path, columns=["key", *columns]).to_pandas()
        frames.append(frame.astype({c: str for c in columns if c.startswith("label")}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", *columns])


def add_counts(counts: dict[str, int], labels: Any, prefix: str = "") -> None:
    """Add how many samples carry each label (a pandas Series, categorical or strings) to
    ``counts`` under ``prefix + label``; unused categories are not counted."""
    for name, n in labels.value_counts().items():
        if n:  # a categorical lists its unused labels too
            counts[f"{prefix}{name}"] = counts.get(f"{prefix}{name}", 0) + int(n)


def label_counts(predictions: str | Path, column: str, wanted: Collection[str] = ()) -> tuple[dict[str, int], dict[str, str]]:
    """Streamed part by part (memory: one part): how many samples carry each label of ``column``,
    and the labels of the ``wanted`` keys found (a labelled sample's)."""
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    found: dict[str, str] = {}
    wanted = set(wanted)
    for path in prediction_parts(predictions):
        frame = pq.read_table(path, columns=["key", column]).to_pandas()
        add_counts(counts, frame[column])
        if wanted:
            hit = frame[frame.key.isin(wanted)]
            found.update(zip(hit.key, hit[column].astype(str)))
    return counts, found
