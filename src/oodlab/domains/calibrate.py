"""``oodlab domains calibrate``: per-class thresholds certified to a target precision.

Precision depends on the base rate, so the thresholds are set on a labelled sample of the
*target distribution* (e.g. drawn at random from the pool), never on the balanced training set.
For each selecting class c (natural, rendition) each candidate threshold lambda is a hypothesis
test of ``precision(lambda) < target``: its p-value is ``P(Binomial(n, target) >= k)`` for the n
samples scoring at least lambda, k of them truly c (a one-sided exact test; it rejects exactly
when the Clopper-Pearson lower bound at ``confidence`` is at least the target). The scan is a
multiple test, controlled by Learn-then-Test fixed-sequence testing (Angelopoulos et al. 2021):
walk from strict to loose and stop at the first threshold not rejected; the loosest rejected one
is chosen, and then ``P(precision(chosen) < target) <= 1 - confidence`` over calibration samples.
The candidates are fixed before any label is read: :data:`GRID` thresholds at the scores where n
(samples at or above) grows geometrically from twice :func:`min_positives` (below which not even
zero errors certify the target) to the whole sample. Every distinct score as a candidate would be
valid too, but the walk would stop at the first strict threshold with a single error (measured:
a natural class at 99.3% precision over 3,000 samples went uncertified).

Outputs under ``OUT``::

    thresholds.json     per class: threshold (None: not certified), n, correct, precision, its
                        one-sided Clopper-Pearson lower bound, recall; the target and confidence
    curve_{class}.csv   threshold, n, correct, precision, cp_low, recall, p_value, rejected
    curve_{class}.png   precision (with the lower bound) against recall, the chosen threshold
    manifest.json

The reference code had no calibration step (it read predictions already thresholded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from oodlab.domains.model import HEAD, THRESHOLDS, DomainHead
from oodlab.domains.labels import SELECTING, labelled_embeddings, read_labels, to_task
from oodlab.utils.artifacts import new_figure, save_png, write_csv
from oodlab.utils.atomic import write_json
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

#: candidate thresholds per class
GRID = 24


def min_positives(target: float, confidence: float) -> int:
    """The fewest predicted positives that can certify ``precision >= target`` at ``confidence``:
    with zero errors the p-value is ``target ** n``, so n >= log(1 - confidence) / log(target)
    (149 for 0.98 at 95%)."""
    return math.ceil(math.log(1 - confidence) / math.log(target) - 1e-12)


def clopper_pearson_low(correct: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a binomial proportion (float64, 0 where k = 0)."""
    from scipy.stats import beta

    k, n = np.asarray(correct, np.float64), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore"):
        low = beta.ppf(1 - confidence, k, n - k + 1)
    return np.where(k > 0, low, 0.0)


def precision_curve(scores: np.ndarray, positive: np.ndarray, target: float, confidence: float) -> Any:
    """The fixed-sequence scan of one class over the candidate grid.

    Args:
        scores: float [m], the class's probability for each calibration sample.
        positive: bool [m], whether the sample truly is of the class.

    Returns:
        pandas DataFrame from strict to loose, one row per candidate threshold: threshold, n
        (samples scoring >= it), correct, precision, cp_low, recall, p_value, rejected (True up
        to the first p-value above 1 - confidence, False after).
    """
    import pandas as pd
    from scipy.stats import binom

    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, pos = np.asarray(scores, np.float64)[order], np.asarray(positive, bool)[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of tied scores
    n = np.arange(1, len(s) + 1)[last]
    k = np.cumsum(pos)[last]
    start = 2 * min_positives(target, confidence)
    wanted = np.unique(np.geomspace(start, max(len(s), start), GRID).round()) if len(s) >= start else np.zeros(0)
    # the strictest distinct score whose n reaches each wanted count (ties make n jump)
    pick = np.unique(np.searchsorted(n, wanted[wanted <= len(s)]))
    pick = pick[pick < len(n)]
    n, k, thr = n[pick], k[pick], s[last][pick]
    p_value = binom.sf(k - 1, n, target)
    rejected = np.cumprod(p_value <= 1 - confidence).astype(bool)
    total = max(int(pos.sum()), 1)
    return pd.DataFrame({"threshold": thr, "n": n, "correct": k, "precision": k / np.maximum(n, 1),
                         "cp_low": clopper_pearson_low(k, n, confidence), "recall": k / total,
                         "p_value": p_value, "rejected": rejected})


def domains_calibrate(
    head: str | Path,
    store: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    target: float = 0.98,
    confidence: float = 0.95,
    chunk_rows: int = 65536,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Certify per-class thresholds of a domain head on a labelled sample of the target distribution.

    Args:
        head: an ``oodlab domains train`` folder.
        store: the embedding store holding the calibration samples.
        labels: a label file of the calibration sample (drawn from the distribution the
            thresholds will be used on; disjoint from the head's training labels).
        out: output folder (see module docstring).
        target: precision to certify, in (0, 1) (0.98: the paper's "strict").
        confidence: of the guarantee, in (0, 1).
        chunk_rows: rows read at a time.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``thresholds``: per class as in ``thresholds.json``).
    """
    if not 0 < target < 1 or not 0 < confidence < 1:
        raise InputError(None, f"target {target} and confidence {confidence} must be in (0, 1)", None)
    model = DomainHead.load(head)
    run = RunFolder(out, "domains calibrate",
                    inputs={"head": fingerprint(Path(head) / HEAD), "store": fingerprint(store),
                            "labels": fingerprint(labels)},
                    parameters={"target": target, "confidence": confidence}, reads=[head, store, labels])
    done = run.open(overwrite)
    if done is not None:
        return done
    keys, x, y_domain = labelled_embeddings(store, read_labels(labels), chunk_rows=chunk_rows, source=labels)
    y = to_task(y_domain, model.task)
    proba = model.predict_proba(x)
    result, lines = {}, []
    for c, name in enumerate(model.classes):
        if name not in SELECTING:
            continue
        curve = precision_curve(proba[:, c], y == c, target, confidence)
        write_csv(run.out / f"curve_{name}.csv", curve)
        chosen = curve[curve.rejected]
        if len(chosen):
            row = chosen.iloc[-1]
            result[name] = {"threshold": float(row.threshold), "n": int(row.n), "correct": int(row.correct),
                            "precision": float(row.precision), "cp_low": float(row.cp_low), "recall": float(row.recall),
                            "certified": True}
            lines.append(f"{name} >= {row.threshold:.4f} (precision {row.precision:.3f}, lower bound {row.cp_low:.3f}, "
                         f"recall {row.recall:.3f})")
        else:
            need = min_positives(target, confidence)
            result[name] = {"threshold": None, "certified": False, "positives": int((y == c).sum()),
                            "why": f"no threshold certifies precision >= {target} at {confidence:.0%}: the first "
                                   f"candidate holds the {2 * need} top-scored samples (zero errors need {need}), and "
                                   "they hold too many errors; label a larger calibration sample or train a better head"}
            lines.append(f"{name}: not certified")
        _plot(curve, name, result[name], target, run.out / f"curve_{name}.png")
    write_json(run.out / THRESHOLDS, {"task": model.task, "target": target, "confidence": confidence,
                                      "classes": result})
    manifest = run.finish(counts={"calibration": len(keys)}, outputs={"thresholds": THRESHOLDS}, thresholds=result)
    summary(f"domains calibrate: precision >= {target} at {confidence:.0%} on {len(keys)} samples: "
            f"{'; '.join(lines)} -> {run.out / THRESHOLDS}")
    return manifest


def _plot(curve: Any, name: str, chosen: dict[str, Any], target: float, path: Path) -> None:
    fig = new_figure(5.5, 3.8, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(curve.recall, curve.precision, color="C0", label="precision")
    ax.plot(curve.recall, curve.cp_low, color="C0", linestyle="--", label="lower bound (Clopper-Pearson)")
    ax.axhline(target, color="0.4", linewidth=1, label=f"target {target}")
    if chosen.get("certified"):
        ax.axvline(chosen["recall"], color="C3", linewidth=1, label=f"chosen: p >= {chosen['threshold']:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{name}: calibration")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    save_png(fig, path)
