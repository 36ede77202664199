"""Where each eval sample's nearest-neighbour (NN) similarity to a training set is read from.

An ``oodlab neighbors`` output folder holds two such similarities per eval set (see
:mod:`oodlab.similarity.neighbors`):

* ``"train"``: the rank-0 score of ``eval/{name}.parquet``: the NN similarity to the training
  store of that run (the pool, LAION);
* ``"reference"``: ``thresholds/{name}.parquet`` (key, threshold): the NN similarity to the
  reference training set given with ``--reference`` (ImageNet-train in the paper), or the
  thresholds file given with ``--thresholds``.

Both are cosine similarities in [-1, 1] (float64 here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from oodlab.utils.errors import InputError


@dataclass(frozen=True)
class SimilaritySource:
    """How to find a similarity kind inside a neighbors folder.

    Attributes:
        subdir: sub-folder holding one ``{eval_set}.parquet`` per eval set.
        read: reads one such file -> (keys object [q], similarity float64 [q]).
    """

    subdir: str
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


#: similarity kind -> where it lives in a neighbors folder
SOURCES: dict[str, SimilaritySource] = {
    "train": SimilaritySource("eval", _read_rank0),
    "reference": SimilaritySource("thresholds", _read_thresholds),
}


def _source(source: str) -> SimilaritySource:
    if source not in SOURCES:
        raise InputError(None, f"unknown similarity source {source!r}", f"use one of {sorted(SOURCES)}")
    return SOURCES[source]


def eval_sets(folder: str | Path, source: str = "train") -> list[str]:
    """Names of the eval sets with a ``source`` similarity in a neighbors folder (sorted)."""
    sub = Path(folder) / _source(source).subdir
    return sorted(p.stem for p in sub.glob("*.parquet")) if sub.is_dir() else []


def nn_similarity(folder: str | Path, eval_set: str, source: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Each eval sample's NN similarity to a training set.

    Args:
        folder: an ``oodlab neighbors`` output folder.
        eval_set: eval set name (as given to ``--eval``).
        source: ``"train"`` (rank-0 score) or ``"reference"`` (thresholds); see module docstring.

    Returns:
        (keys object [q], cosine similarity float64 [q]), in the file's order.

    Raises:
        InputError: the file is missing or malformed.
    """
    spec = _source(source)
    path = Path(folder) / spec.subdir / f"{eval_set}.parquet"
    if not path.exists():
        have = eval_sets(folder, source)
        raise InputError(path, f"not found ({source} similarity of eval set {eval_set!r})",
                         f"eval sets with a {source} similarity here: {have or 'none'}"
                         + (" (run `oodlab neighbors` with --reference)" if source == "reference" and not have else ""))
    return spec.read(path)


def resolve_training_set(path: str | Path) -> tuple[Path, str]:
    """Turn a training-set path of :func:`~oodlab.analysis.report.similarity_report` into
    (folder of ``{eval_set}.parquet`` files, source kind).

    * a neighbors output folder (holds ``eval/``) -> (``path/eval``, ``"train"``): the NN
      similarity to that run's training store;
    * its ``thresholds`` sub-folder, or any folder of ``{eval_set}.parquet`` files with columns
      key, threshold -> (``path``, ``"reference"``): the NN similarity to the reference set.

    Raises:
        InputError: the path is neither.
    """
    path = Path(path)
    if (path / SOURCES["train"].subdir).is_dir():
        return path / SOURCES["train"].subdir, "train"
    if path.is_dir() and any(path.glob("*.parquet")):
        return path, "reference"
    raise InputError(path, "is neither an `oodlab neighbors` output folder nor its thresholds/ sub-folder",
                     "pass the folder given as --out to `oodlab neighbors`, or OUT/thresholds for the reference similarity")
