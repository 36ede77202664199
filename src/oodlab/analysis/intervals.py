"""How sure a number is: intervals over training seeds and over test samples.

The statistics behind every table and claim of an experiment:

* :func:`seed_interval`: a row's mean accuracy over its training seeds with a Student-t 95%
  interval (the seeds are independent runs; the test set is fixed).
* :func:`paired_difference`: one training set's accuracy minus another's, *paired* (the same
  seeds, the same test samples), with a bootstrap interval that resamples both the seeds and the
  test samples, so the interval holds the run-to-run variation and the finite test set.
* :func:`recovered_share`: how much of the gap between two training sets a third recovers, with
  the same paired bootstrap (:func:`paired_accuracies` draws the replicates for both).
* :func:`trend`: Spearman's rank correlation of per-sample correctness with nearest-neighbour
  similarity, with a percentile bootstrap interval over test samples.

The paired, two-level bootstrap is written here because scipy.stats.bootstrap resamples one level
(samples) only; the single-level cases match scipy's (see the tests).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from oodlab.utils.errors import InputError

CONFIDENCE = 0.95
#: bootstrap replicates: the Monte Carlo error of a 95% percentile bound is ~0.1 points at 2,000
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval (same units as the estimate; NaN when undefined)."""

    estimate: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "significant": self.significant}


def finite(x: float) -> float | None:
    """JSON has no NaN: an undefined number (the bound of a one-seed interval) becomes None."""
    return None if np.isnan(x) else float(x)


def seed_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Mean over seeds with the Student-t interval ``mean +- t_{(1+c)/2, S-1} * sd / sqrt(S)``.

    Args:
        values: float [S], one number per seed (e.g. top-1 accuracy in [0, 1]).
        confidence: in (0, 1).

    Returns:
        the mean and its interval (NaN bounds for a single seed: there is no spread to measure).
    """
    from scipy.stats import t

    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise InputError(None, f"need a 1-D array of per-seed values, got shape {x.shape}", None)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half)


def _check_pair(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] == 0:
        raise InputError(None, f"eval set {name}: correctness arrays must be [seeds, samples] of one shape, "
                         f"got {a.shape} and {b.shape}", "evaluate both training sets with the same seeds and test set")
    return a, b


def paired_accuracies(
    rows: Sequence[Sequence[np.ndarray]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean accuracy over eval sets and seeds of several training sets, and its two-level paired
    bootstrap replicates.

    Each replicate draws S seeds with replacement (the same draw for every eval set and every
    row: a seed is one training run per row) and, per eval set, n test samples with replacement
    (the same draw for every row: the pairing).

    Args:
        rows: ``rows[r][e]``: correctness float/bool [S, n_e] of training set r on eval set e.

    Returns:
        (point float64 [R], replicates float64 [B, R]): fractions in [0, 1].
    """
    arrays = [[np.asarray(x, np.float64) for x in row] for row in rows]
    if not arrays or not arrays[0]:
        raise InputError(None, "no training sets or eval sets to compare", None)
    shapes = {tuple(x.shape for x in row) for row in arrays}
    if len(shapes) != 1 or any(len(sh) != 2 or sh[1] == 0 for sh in next(iter(shapes))):
        raise InputError(None, f"correctness arrays must be [seeds, samples] of one shape per eval set, got {shapes}",
                         "evaluate every training set with the same seeds and test sets")
    seed_counts = {x.shape[0] for x in arrays[0]}
    if len(seed_counts) != 1:
        raise InputError(None, f"eval sets have different seed counts {sorted(seed_counts)}", "evaluate every seed on every eval set")
    n_seeds, n_sets = seed_counts.pop(), len(arrays[0])
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(resamples, n_seeds))  # [B, S], shared by sets and rows
    point = np.array([np.mean([x.mean() for x in row]) for row in arrays])
    boot = np.zeros((resamples, len(arrays)))
    for e in range(n_sets):
        n = arrays[0][e].shape[1]
        # a resample of the samples as multinomial counts: an accuracy is a dot product, so all
        # replicates are one [S, n] x [n, B] product instead of B fancy-indexing passes
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).T.astype(np.float64)  # [n, B]
        for r, row in enumerate(arrays):
            per_seed = row[e] @ counts / n  # [S, B]
            boot[:, r] += per_seed[seed_draw, np.arange(resamples)[:, None]].mean(axis=1)
    return point, boot / n_sets


def _percentile_interval(estimate: float, boot: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def paired_difference(
    a: Sequence[np.ndarray] | np.ndarray,
    b: Sequence[np.ndarray] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Accuracy of A minus accuracy of B, averaged over eval sets and seeds, with the two-level
    percentile bootstrap interval of :func:`paired_accuracies`.

    Args:
        a, b: per eval set, correctness float/bool [S, n_e] (row s: seed s, the same seed for A
            and B; column j: test sample j, the same sample for A and B). A single [S, n] array is
            one eval set.
        confidence: in (0, 1).
        resamples: bootstrap replicates.
        seed: of the bootstrap's generator (the interval is reproducible).

    Returns:
        the difference (fraction; x100 for points) and its interval.
    """
    if isinstance(a, np.ndarray) and a.ndim == 2:
        a, b = [a], [b]
    if len(a) != len(b):
        raise InputError(None, f"{len(a)} and {len(b)} eval sets to compare", "pass the same eval sets for both")
    point, boot = paired_accuracies([list(a), list(b)], resamples=resamples, seed=seed)
    return _percentile_interval(point[0] - point[1], boot[:, 0] - boot[:, 1], confidence)


def recovered_share(
    partial: Sequence[np.ndarray],
    base: Sequence[np.ndarray],
    full: Sequence[np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """How much of the gap between ``base`` and ``full`` ``partial`` recovers:
    ``(acc_partial - acc_base) / (acc_full - acc_base)`` over eval sets and seeds, with the
    two-level paired bootstrap interval (replicates with no gap are left out).

    Args:
        partial, base, full: per eval set, correctness [S, n_e] as in :func:`paired_difference`.

    Returns:
        the share (1: all of the gap; NaN where there is no gap) and its interval.
    """
    point, boot = paired_accuracies([list(partial), list(base), list(full)], resamples=resamples, seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = (point[0] - point[1]) / (point[2] - point[1]) if point[2] != point[1] else float("nan")
        ratios = (boot[:, 0] - boot[:, 1]) / (boot[:, 2] - boot[:, 1])
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return Interval(float("nan"), float("nan"), float("nan"))
    return _percentile_interval(estimate, ratios, confidence)


def trend(
    similarity: np.ndarray,
    correct: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Spearman's rank correlation of correctness with nearest-neighbour similarity, with a
    percentile bootstrap interval over test samples (pairs resampled together).

    Args:
        similarity: float [n], each test sample's NN cosine similarity to the training set.
        correct: float [n] in [0, 1], its correctness (the fraction of seeds that got it right).
        confidence: in (0, 1).
        resamples: bootstrap replicates.
        seed: of the bootstrap's generator.

    Returns:
        rho in [-1, 1] and its interval (NaN when correctness or similarity is constant).
    """
    from scipy.stats import bootstrap, spearmanr

    s, c = np.asarray(similarity, np.float64), np.asarray(correct, np.float64)
    if s.ndim != 1 or s.shape != c.shape or len(s) < 3:
        raise InputError(None, f"similarity {s.shape} and correctness {c.shape} must be 1-D of one length >= 3", None)
    if np.ptp(s) == 0 or np.ptp(c) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rho = float(spearmanr(s, c).statistic)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return spearmanr(x, y, axis=axis).statistic if x.ndim == 1 else _rowwise_spearman(x, y)

    with warnings.catch_warnings():  # a resample with constant correctness has no rho: NaN, bounded below
        warnings.simplefilter("ignore")
        result = bootstrap((s, c), statistic, paired=True, vectorized=True, n_resamples=resamples,
                           confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(rho, float(np.nan_to_num(low, nan=-1.0)), float(np.nan_to_num(high, nan=1.0)))


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of [B, n] arrays (average ranks for ties), NaN for a constant row."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
