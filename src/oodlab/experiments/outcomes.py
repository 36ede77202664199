"""An experiment's outcomes, read back from its folder: every seed's per-sample correctness.

``results.json`` (written by the experiment once every run is evaluated) lists the training sets,
their sizes and, per seed, the run and its predictions files (paths relative to the folder)::

    {"eval_sets": [...], "seeds": [0, 1, 2], "neighbors": PATH, "rows": [
        {"training_set": "full", "size": 12000, "removed": 0,
         "seeds": {"0": {"run": ..., "checkpoint": ..., "predictions": {"val": "eval/full/seed-0/.../predictions.parquet"}}}}]}

Tables and claims are computed from these files only, so a hand-made folder with the same layout
(planted outcomes) is tested the same way as a real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oodlab.utils.atomic import read_json
from oodlab.utils.errors import InputError

RESULTS = "results.json"


@dataclass
class Outcomes:
    """The outcomes of one experiment folder.

    Attributes:
        folder: the experiment folder.
        eval_sets: eval set names, in table order.
        seeds: training seeds (every row has each of them).
        rows: training set -> its record in ``results.json`` (size, removed, seeds).
        neighbors: the neighbours folder the pruning used (NN similarities), or None.
    """

    folder: Path
    eval_sets: list[str]
    seeds: list[int]
    rows: dict[str, dict[str, Any]]
    neighbors: Path | None
    _cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def _read(self, row: str, eval_set: str) -> tuple[np.ndarray, np.ndarray]:
        from oodlab.analysis.accuracy import read_correctness

        if (row, eval_set) not in self._cache:
            if row not in self.rows:
                raise InputError(self.folder / RESULTS, f"has no training set {row!r}", f"rows here: {sorted(self.rows)}")
            keys, columns = None, []
            for s in self.seeds:
                path = self.folder / self.rows[row]["seeds"][str(s)]["predictions"][eval_set]
                k, c = read_correctness(path)
                order = np.argsort(k.astype(str), kind="stable")
                k, c = k[order].astype(str), c[order]
                if keys is None:
                    keys = k
                elif not np.array_equal(keys, k):
                    raise InputError(path, f"holds other {eval_set} samples than seed {self.seeds[0]} of {row}",
                                     "evaluate every run on the same eval set")
                columns.append(c)
            self._cache[(row, eval_set)] = (keys, np.stack(columns).astype(np.float64))
        return self._cache[(row, eval_set)]

    def keys(self, eval_set: str) -> np.ndarray:
        """The eval set's sample keys (str [n], sorted), the column order of :meth:`correct`."""
        return self._read(next(iter(self.rows)), eval_set)[0]

    def correct(self, row: str, eval_set: str) -> np.ndarray:
        """Correctness float64 [S, n] in {0, 1}: seed s (order of :attr:`seeds`) x sample (order of :meth:`keys`).

        Raises:
            InputError: a predictions file is missing or holds other samples than the others.
        """
        keys, c = self._read(row, eval_set)
        if not np.array_equal(keys, self.keys(eval_set)):
            raise InputError(self.folder / RESULTS, f"{row} was evaluated on other {eval_set} samples than "
                             f"{next(iter(self.rows))}", "evaluate every training set on the same eval set")
        return c

    def top1(self, row: str, eval_set: str) -> np.ndarray:
        """Top-1 accuracy per seed, float64 [S] in [0, 1]."""
        return self.correct(row, eval_set).mean(axis=1)

    def similarity(self, eval_set: str) -> np.ndarray:
        """Each sample's nearest-neighbour cosine similarity to the pool, float64 [n] (order of :meth:`keys`)."""
        from oodlab.analysis.sources import nn_similarity

        if self.neighbors is None:
            raise InputError(self.folder / RESULTS, "names no neighbours folder", "re-run the experiment")
        keys, sims = nn_similarity(self.neighbors, eval_set, "train")
        pos = {str(k): i for i, k in enumerate(keys.tolist())}
        missing = [k for k in self.keys(eval_set) if k not in pos]
        if missing:
            raise InputError(self.neighbors, f"has no {eval_set} similarity for {len(missing)} evaluated samples "
                             f"(e.g. {missing[:3]})", "use the neighbours folder of the experiment's eval stores")
        return sims[np.array([pos[k] for k in self.keys(eval_set)], np.int64)]


def load_outcomes(folder: str | Path) -> Outcomes:
    """Read an experiment folder's ``results.json``.

    Raises:
        InputError: no ``results.json`` (the experiment has not finished its runs), or a row
            without every seed.
    """
    folder = Path(folder)
    path = folder / RESULTS
    if not path.is_file():
        raise InputError(path, "not found", "run `oodlab experiment similarity` on this folder to finish its runs")
    data = read_json(path)
    seeds = [int(s) for s in data["seeds"]]
    rows = {r["training_set"]: r for r in data["rows"]}
    for name, r in rows.items():
        lacking = [s for s in seeds if str(s) not in r["seeds"]]
        if lacking:
            raise InputError(path, f"training set {name} has no run for seeds {lacking}", "re-run the experiment")
    neighbors = data.get("neighbors")
    return Outcomes(folder, list(data["eval_sets"]), seeds, rows, None if neighbors is None else Path(neighbors))
