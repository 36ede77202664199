"""Where each eval sample's nearest-neighbour (NN) similarity to a training set is read from.

A neighbours folder (:mod:`oodlab.similarity.layout`) holds two such similarities per eval set:

* ``"train"``: the rank-0 score of its top-k file: the NN similarity to the training store of
  that run (the pool, LAION);
* ``"reference"``: its thresholds (key, threshold): the NN similarity to the reference training
  set given with ``--reference-store`` (ImageNet-train in the paper), or the thresholds file given
  with ``--threshold-file``.

Both are cosine similarities in [-1, 1] (float64 here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from oodlab.similarity.layout import NeighborsFolder
from oodlab.utils.errors import InputError


@dataclass(frozen=True)
class SimilaritySource:
    """How to find a similarity kind inside a neighbours folder.

    Attributes:
        file: the neighbours folder and an eval set -> the file holding that similarity.
        sets: the neighbours folder -> the eval sets that have it.
        read: reads one such file -> (keys object [q], similarity float64 [q]).
    """

    file: Callable[[NeighborsFolder, str], Path]
    sets: Callable[[NeighborsFolder], list[str]]
    read: Callable[[Path], tuple[np.ndarray, np.ndarray]]


def _read_rank0(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if not {"query_key", "rank", "score"} <= set(names):
        raise InputError(path, f"has columns {names}", "expected an `oodlab neighbors` eval file (query_key, rank, score)")
    table = pq.read_table(path, columns=["query_key", "rank", "score"], filters=[("rank", "=", 0)])
    if table.num_rows == 0:
        raise InputError(path, "has no rank-0 rows", "re-run `oodlab neighbors` with k >= 1")
    return _checked(path, np.array(table.column("query_key").to_pylist(), dtype=object),
                    table.column("score").to_numpy().astype(np.float64))


def _read_thresholds(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if not {"key", "threshold"} <= set(names):
        raise InputError(path, f"has columns {names}", "a thresholds parquet needs columns key and threshold")
    table = pq.read_table(path, columns=["key", "threshold"])
    return _checked(path, np.array(table.column("key").to_pylist(), dtype=object),
                    table.column("threshold").to_numpy(zero_copy_only=False).astype(np.float64))


def _checked(path: Path, keys: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) == 0:
        raise InputError(path, "holds no samples", "re-run `oodlab neighbors`")
    if not np.isfinite(sims).all():
        raise InputError(path, "has NaN/inf similarities", "re-run `oodlab neighbors`")
    uniq, counts = np.unique(keys.astype(str), return_counts=True)
    if (counts > 1).any():
        raise InputError(path, f"has duplicate keys, e.g. {uniq[counts > 1][:3].tolist()}", "re-run `oodlab neighbors`")
    return keys, sims


#: similarity kind -> where it lives in a neighbours folder
SOURCES: dict[str, SimilaritySource] = {
    "train": SimilaritySource(NeighborsFolder.eval_file, NeighborsFolder.eval_sets, _read_rank0),
    "reference": SimilaritySource(NeighborsFolder.thresholds_file, NeighborsFolder.threshold_sets, _read_thresholds),
}


def _source(source: str) -> SimilaritySource:
    if source not in SOURCES:
        raise InputError(None, f"unknown similarity source {source!r}", f"use one of {sorted(SOURCES)}")
    return SOURCES[source]


def nn_similarity(folder: str | Path, eval_set: str, source: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Each eval sample's NN similarity to a training set.

    Args:
        folder: an ``oodlab neighbors`` output folder.
        eval_set: eval set name (as given to ``--eval-store``).
        source: ``"train"`` (rank-0 score) or ``"reference"`` (thresholds); see module docstring.

    Returns:
        (keys object [q], cosine similarity float64 [q]), in the file's order.

    Raises:
        InputError: the file is missing or malformed.
    """
    spec, run = _source(source), NeighborsFolder(folder)
    path = spec.file(run, eval_set)
    if not path.exists():
        have = spec.sets(run)
        raise InputError(path, f"not found ({source} similarity of eval set {eval_set!r})",
                         f"eval sets with a {source} similarity here: {have or 'none'}"
                         + (" (run `oodlab neighbors` with --reference-store)" if source == "reference" and not have else ""))
    return spec.read(path)


def training_sets(folder: str | Path) -> dict[str, str]:
    """The training sets a neighbours folder measures similarity to, by label -> source kind:
    its training store (labelled with the store folder's name) and, when it was run with one, its
    reference set (labelled with the reference's name).

    Raises:
        InputError: the folder is not a finished ``oodlab neighbors`` run.
    """
    manifest = NeighborsFolder(folder).manifest()
    out = {Path(manifest["inputs"]["train_store"]["path"]).name: "train"}
    for name in manifest["inputs"].get("reference_stores") or {}:
        out[name] = "reference"
    return out
