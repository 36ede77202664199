"""Within-cluster deduplication of ordered embeddings, block by block (no n x n matrix).

Two rules (a registry, :data:`RULES`), for items ``x_0, x_1, ...`` in processing order and the
threshold ``tau = 1 - eps``:

- ``greedy`` (default): item j is kept iff ``max_{i < j, i kept} x_i . x_j <= tau``: an item is
  compared only with the items KEPT before it, so every removed item has a kept item within
  ``eps`` of it and the kept items are pairwise ``<= tau``. A chain a ~ b ~ c with a !~ c keeps
  a and c.
- ``all-earlier``: item j is kept iff ``max_{i < j} x_i . x_j <= tau`` over ALL earlier items, kept
  or not (what the ICLR 2024 reference code and SemDeDup compute: ``max(triu(S)) <= 1 - eps``).
  It is not transitive and over-prunes chains: in a ~ b ~ c it keeps only a, although c is
  not a duplicate of any kept item.

For each item the "deciding similarity" is the maximum over the items it was compared with
(NaN when there were none) and the "cause" is the earliest item attaining it.

Memory: the cluster's embeddings plus two ``block_rows x block_rows`` float32 score blocks.
Similarities are float32 products of the stored rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _within_block(scores, best, cause, kept, tau, only_kept, base):  # pragma: no cover - compiled
    """Sequential pass over one block: ``scores`` [b, b] of the block's items with each other;
    ``best``/``cause`` already hold the maxima over earlier blocks (updated in place)."""
    n = scores.shape[0]
    for i in range(n):
        keep = best[i] <= tau
        kept[i] = keep
        if keep or not only_kept:
            for j in range(i + 1, n):
                v = scores[i, j]
                if v > best[j]:
                    best[j] = v
                    cause[j] = base + i


class ClusterResult(NamedTuple):
    kept: np.ndarray  # bool [m]
    score: np.ndarray  # float32 [m]: deciding similarity (NaN: compared with nothing)
    cause: np.ndarray  # int64 [m]: position (in processing order) of the item attaining it, -1 if none


def dedup_ordered(x: np.ndarray, eps: float, *, rule: str = "greedy", block_rows: int = 2048) -> ClusterResult:
    """Deduplicate the rows of ``x`` (float32 [m, d], unit rows, in processing order).

    Args:
        x: embeddings in the order items are considered (closest to the centroid first).
        eps: items with cosine similarity ``> 1 - eps`` to a compared item are removed.
        rule: ``greedy`` (compare with kept items) or ``all-earlier`` (compare with all earlier).
        block_rows: rows per score block.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {sorted(RULES)}")
    only_kept = RULES[rule]
    tau = np.float32(1.0 - eps)
    m = len(x)
    best = np.full(m, -np.inf, np.float32)
    cause = np.full(m, -1, np.int64)
    kept = np.zeros(m, bool)
    for b0 in range(0, m, block_rows):
        b1 = min(m, b0 + block_rows)
        xb = x[b0:b1]
        earlier = np.flatnonzero(kept[:b0]) if only_kept else np.arange(b0)
        for p0 in range(0, len(earlier), block_rows):
            idx = earlier[p0 : p0 + block_rows]
            scores = xb @ x[idx].T
            arg = np.argmax(scores, axis=1)
            val = scores[np.arange(len(arg)), arg]
            better = val > best[b0:b1]
            best[b0:b1][better] = val[better]
            cause[b0:b1][better] = idx[arg[better]]
        scores = np.ascontiguousarray(xb @ xb.T, dtype=np.float32)
        _within_block(scores, best[b0:b1], cause[b0:b1], kept[b0:b1], tau, only_kept, b0)
    score = np.where(np.isneginf(best), np.float32(np.nan), best).astype(np.float32)
    return ClusterResult(kept, score, cause)


#: rule name -> compare only with kept items?
RULES: dict[str, bool] = {"greedy": True, "all-earlier": False}
