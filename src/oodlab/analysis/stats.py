"""Binomial confidence intervals and the binning of a similarity axis.

``accuracy_by_bin`` is the paper's accuracy-vs-similarity analysis (spec section 5): top-1
accuracy of the eval samples whose nearest-neighbour similarity falls in each bin, with a
Wilson score interval.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from oodlab.utils.errors import InputError


def wilson_interval(successes: np.ndarray | int, n: np.ndarray | int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (no continuity correction).

    ``centre = (p + z^2/2n) / (1 + z^2/n)``, ``half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)``
    with ``p = successes / n`` and ``z`` the two-sided normal quantile of ``confidence``.

    Args:
        successes: int array (any shape), 0 <= successes <= n.
        n: int array of the same shape (trials).
        confidence: in (0, 1).

    Returns:
        (low, high) float64 arrays of that shape, within [0, 1]; NaN where n == 0.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if not 0 < confidence < 1:
        raise InputError(None, f"confidence {confidence} is not in (0, 1)", None)
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n):
        raise InputError(None, "need 0 <= successes <= n", None)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def _width_edges(x: np.ndarray, bins: int) -> np.ndarray:
    return np.histogram_bin_edges(x, bins=bins)


def _mass_edges(x: np.ndarray, bins: int) -> np.ndarray:
    return np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))


#: binning scheme -> edges(similarity float64 [n], number of bins) -> increasing edges float64 [m+1]
BINNINGS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "width": _width_edges,  # equal-width bins from the smallest to the largest similarity
    "mass": _mass_edges,  # equal-mass (quantile) bins: equal counts up to ties (tied edges merge)
}


def bin_edges(x: np.ndarray, bins: int | Sequence[float], binning: str = "width") -> np.ndarray:
    """Bin edges for values ``x`` (float [n]): ``bins`` explicit increasing edges, or a number of
    bins of the scheme ``binning`` (see :data:`BINNINGS`)."""
    if isinstance(bins, (int, np.integer)):
        if binning not in BINNINGS:
            raise InputError(None, f"unknown binning {binning!r}", f"use one of {sorted(BINNINGS)}")
        if bins < 1:
            raise InputError(None, f"bins must be >= 1, got {bins}", None)
        if len(x) == 0:
            raise InputError(None, "no values to bin", None)
        return BINNINGS[binning](np.asarray(x, np.float64), int(bins))
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
        raise InputError(None, f"bin edges {bins!r} are not at least two increasing numbers", None)
    return edges


def assign_bins(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value (int64 [n]): bins are ``[e_i, e_{i+1})``, the last one closed (as
    ``np.histogram``); values outside ``[e_0, e_m]`` get -1."""
    x = np.asarray(x, np.float64)
    idx = np.searchsorted(edges, x, side="right") - 1
    idx[x == edges[-1]] = len(edges) - 2
    idx[(x < edges[0]) | (x > edges[-1])] = -1
    return idx.astype(np.int64)


def accuracy_by_bin(similarity: np.ndarray, correct: np.ndarray, *, bins: int | Sequence[float] = 10,
                    binning: str = "width", confidence: float = 0.95):
    """Accuracy per similarity bin.

    Args:
        similarity: float [n], each sample's NN cosine similarity to the training set.
        correct: bool [n], whether the sample was classified correctly.
        bins: number of bins, or explicit increasing edges (then ``binning`` is not used and
            values outside the edges are left out).
        binning: ``"width"`` (equal-width) or ``"mass"`` (equal-count quantile bins).
        confidence: of the Wilson interval.

    Returns:
        pandas DataFrame, one row per bin (empty bins included, with NaN accuracy): bin_left,
        bin_right (float64), n, correct (int64), accuracy, ci_low, ci_high (float64, in [0, 1]).
    """
    import pandas as pd

    similarity = np.asarray(similarity, np.float64)
    correct = np.asarray(correct)
    if similarity.shape != correct.shape or similarity.ndim != 1:
        raise InputError(None, f"similarity {similarity.shape} and correct {correct.shape} must be 1-D of one length", None)
    edges = bin_edges(similarity, bins, binning)
    idx = assign_bins(similarity, edges)
    inside = idx >= 0
    m = len(edges) - 1
    n = np.bincount(idx[inside], minlength=m).astype(np.int64)
    k = np.bincount(idx[inside], weights=correct[inside].astype(np.float64), minlength=m).round().astype(np.int64)
    low, high = wilson_interval(k, n, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "n": n, "correct": k,
                         "accuracy": acc, "ci_low": low, "ci_high": high})
