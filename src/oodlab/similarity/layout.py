"""The layout of a neighbours folder (the output of ``oodlab neighbors``), owned here and only here.

::

    NEIGHBORS/
      eval/{name}.parquet          query_key, rank, train_key, score, train_row: the k most similar
                                   training samples of every sample of eval set ``name``
      train/part_{suffix}.parquet  one per part of the training store, row-aligned with it: key,
                                   max_sim__{name}, argmax__{name} (the eval key attaining it) and, for
                                   eval sets with thresholds, margin__{name} = max_i (s_ij - t_i) and
                                   margin_argmax__{name}
      thresholds/{name}.parquet    key, threshold (and reference_key when the thresholds are each eval
                                   sample's nearest-neighbour similarity to a reference set)
      state/                       resume points while the pass runs (removed at the end)
      run.json, manifest.json      the run record and the completion record (:mod:`oodlab.utils.runs`)

Readers (pruning, the similarity analyses, the experiments) go through :class:`NeighborsFolder`.
"""

from __future__ import annotations

import re
from pathlib import Path

from oodlab.utils.atomic import read_json
from oodlab.utils.errors import InputError
from oodlab.utils.manifest import MANIFEST_NAME

EVAL_DIR, TRAIN_DIR, THRESHOLDS_DIR, STATE_DIR = "eval", "train", "thresholds", "state"
#: per-training-row column kinds: ``{kind}__{eval set}``
MAX_SIM, ARGMAX, MARGIN, MARGIN_ARGMAX = "max_sim", "argmax", "margin", "margin_argmax"
_SEP = "__"
_PART = re.compile(r"^part_(\d+)\.parquet$")


def column(kind: str, eval_set: str) -> str:
    """The per-training-row column of ``kind`` (:data:`MAX_SIM`, ...) for ``eval_set``."""
    return f"{kind}{_SEP}{eval_set}"


def sets_with(columns: list[str], kind: str) -> list[str]:
    """The eval sets that have a ``kind`` column among ``columns``, in column order."""
    prefix = f"{kind}{_SEP}"
    return [c[len(prefix):] for c in columns if c.startswith(prefix)]


class NeighborsFolder:
    """Paths and listings of one neighbours folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def eval_file(self, eval_set: str) -> Path:
        return self.path / EVAL_DIR / f"{eval_set}.parquet"

    def thresholds_file(self, eval_set: str) -> Path:
        return self.path / THRESHOLDS_DIR / f"{eval_set}.parquet"

    def train_part(self, suffix: str) -> Path:
        return self.path / TRAIN_DIR / f"part_{suffix}.parquet"

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def thresholds_dir(self) -> Path:
        return self.path / THRESHOLDS_DIR

    def eval_sets(self) -> list[str]:
        """Eval sets with top-k neighbours (sorted names)."""
        return sorted(p.stem for p in (self.path / EVAL_DIR).glob("*.parquet"))

    def threshold_sets(self) -> list[str]:
        """Eval sets with thresholds (sorted names)."""
        return sorted(p.stem for p in (self.path / THRESHOLDS_DIR).glob("*.parquet"))

    def train_parts(self) -> list[Path]:
        """The per-training-part files, in numeric order of their suffix (training order).

        Raises:
            InputError: a finished run's folder holds fewer parts than its manifest counts, or a
                part is not a readable parquet file (a reader would otherwise see part of the pool).
        """
        import pyarrow.parquet as pq

        found = []
        folder = self.path / TRAIN_DIR
        for p in folder.iterdir() if folder.is_dir() else []:
            m = _PART.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        parts = [p for _, p in sorted(found)]
        record = self.path / MANIFEST_NAME
        expected = (read_json(record).get("counts") or {}).get("train_parts") if record.is_file() else None
        if expected is not None and expected != len(parts):
            raise InputError(folder, f"holds {len(parts)} per-training-part tables, its manifest counts {expected}",
                             "re-run the same `oodlab neighbors` with --overwrite")
        for p in parts:
            try:
                pq.ParquetFile(p)
            except Exception as err:  # pyarrow raises several types for a damaged file
                raise InputError(p, f"is not a readable parquet file ({err})",
                                 "re-run the same `oodlab neighbors` with --overwrite") from err
        return parts

    def manifest(self) -> dict:
        """The completion record of the run.

        Raises:
            InputError: the folder is not a finished ``oodlab neighbors`` run.
        """
        path = self.path / MANIFEST_NAME
        if not path.is_file():
            raise InputError(self.path, "is not a finished `oodlab neighbors` output (no manifest.json)",
                             "run `oodlab neighbors` to completion (re-running it resumes)")
        return read_json(path)
