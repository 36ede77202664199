"""Keep/remove decisions from a score, applied part by part in training order.

Policies (a small registry keyed by how the size is given):

- :class:`KeepLowest` (``keep=N``): keep the N rows with the lowest score (``sign=-1``: the
  highest). Ties at the cut go to the rows that come first in training order, so the result is
  deterministic. The cut is found once from the whole score column with ``np.partition``
  (memory: 8 bytes per considered row, plus a copy while partitioning), then every part is
  decided on its own.
- :class:`Threshold` (``threshold=T``): keep rows with ``sign * score <= sign * T``; no pass over
  the scores is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class KeepLowest:
    """Keep the ``n`` lowest values of ``sign * score``; ties at the cut by training order."""

    n: int
    sign: float = 1.0
    needs_scores: bool = True
    _cut: float = field(default=np.inf, init=False)
    _take_equal: int = field(default=0, init=False)

    def prepare(self, scores: np.ndarray) -> None:
        """Find the cut from all considered scores (in training order)."""
        s = self.sign * np.asarray(scores, dtype=np.float64)
        if self.n <= 0:
            self._cut, self._take_equal = -np.inf, 0
            return
        if self.n >= len(s):
            self._cut, self._take_equal = np.inf, 0
            return
        cut = float(np.partition(s, self.n - 1)[self.n - 1])
        self._cut = cut
        self._take_equal = self.n - int(np.count_nonzero(s < cut))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """bool keep mask for the next part's scores (parts must come in training order)."""
        s = self.sign * np.asarray(scores, dtype=np.float64)
        if np.isinf(self._cut) and self._cut > 0:
            return np.ones(len(s), dtype=bool)
        keep = s < self._cut
        if self._take_equal > 0:
            equal = np.flatnonzero(s == self._cut)[: self._take_equal]
            keep[equal] = True
            self._take_equal -= len(equal)
        return keep


@dataclass
class Threshold:
    """Keep rows with ``sign * score <= sign * threshold`` (``sign=-1``: keep ``score >= T``)."""

    threshold: float
    sign: float = 1.0
    needs_scores: bool = False

    def prepare(self, scores: np.ndarray) -> None:  # pragma: no cover - never called
        pass

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return self.sign * np.asarray(scores, dtype=np.float64) <= self.sign * self.threshold
