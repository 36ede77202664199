"""``oodlab domains compose``: the domain composition of datasets (the ICLR 2025 slides' Table 2),
and the true shares estimated from it.

Per dataset (an ``oodlab domains predict`` folder): the share of each predicted label, at the
argmax and at the strict (calibrated) thresholds; these are counts over the whole dataset, exact.
A classifier's shares are biased by its errors (a 2% false-rendition rate on 90% natural images
adds 1.8 points of "renditions"), so with a labelled random sample (``--labels``: the calibration
sample, keys found in any of the prediction folders) the true shares are also estimated by
adjusted classify-and-count: ``q = M theta`` with ``M[i, j] = P(predicted i | true j)`` measured on
the sample and ``q`` the predicted shares, solved for ``theta`` on the simplex (non-negative least
squares; scipy). The interval resamples the labelled sample (a bootstrap of ``M``) and the
dataset's own predictions. This assumes that ``P(predicted | true)`` is the same in every dataset;
where a dataset's renditions are of other kinds than the labelled sample's (ImageNet-R's clipart
against the pool's sketches) it is not, and the estimate is off by more than its interval (the
demo's checks show where). The paper gives no correction at all.

Outputs: ``compose.md``, ``compose.csv`` (dataset, labelling, label, count, share, and the
estimates with their intervals), ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.domains.labels import DOMAINS, read_labels
from oodlab.domains.model import label_counts, prediction_parts
from oodlab.utils.artifacts import write_csv
from oodlab.utils.atomic import write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

RESAMPLES = 1000


def simplex_solve(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``argmin ||m theta - q||`` over theta >= 0 with sum 1 (float64 [k]): NNLS with the sum as
    a heavily weighted extra equation."""
    from scipy.optimize import nnls

    weight = 1e3
    a = np.vstack([m, weight * np.ones((1, m.shape[1]))])
    b = np.concatenate([q, [weight]])
    theta = nnls(a, b)[0]
    return theta / theta.sum() if theta.sum() > 0 else theta


def adjusted_shares(pred_labels: np.ndarray, true_labels: np.ndarray, q: np.ndarray, pred_names: list[str],
                    true_names: list[str], *, n: int | None = None, confidence: float = 0.95,
                    resamples: int = RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True shares from predicted shares ``q`` (float [p], order ``pred_names``) of a dataset of
    ``n`` samples and a labelled sample's (predicted, true) labels. The bootstrap resamples the
    labelled sample (within each true class) and, with ``n``, the dataset's predictions (a
    multinomial of its shares: which of its images the classifier gets wrong is chance too, which
    matters for a test set of a few hundred images).

    Returns:
        (estimate, low, high), float64 [t] in the order of ``true_names``; NaN where the
        sample's confusion matrix has rank below the number of true classes (not identifiable).
    """
    pi = {n: i for i, n in enumerate(pred_names)}
    ti = {n: i for i, n in enumerate(true_names)}
    p_idx = np.array([pi[x] for x in pred_labels], np.int64)
    t_idx = np.array([ti[x] for x in true_labels], np.int64)

    def confusion(rows: np.ndarray) -> np.ndarray:
        c = np.zeros((len(pred_names), len(true_names)))
        np.add.at(c, (p_idx[rows], t_idx[rows]), 1.0)
        return c / np.maximum(c.sum(axis=0, keepdims=True), 1.0)

    every = np.arange(len(p_idx))
    m = confusion(every)
    if np.linalg.matrix_rank(m) < len(true_names):
        # the labelling cannot tell some true classes apart (e.g. strict labels with a class left
        # uncertified, everything else "unassigned"): no estimate rather than an arbitrary one
        nan = np.full(len(true_names), np.nan)
        return nan, nan, nan
    estimate = simplex_solve(m, q)
    rng = np.random.default_rng(seed)
    # resampled within each true class: the sample's class sizes are its design, not noise
    groups = [every[t_idx == j] for j in range(len(true_names))]
    boot = np.empty((resamples, len(true_names)))
    for b in range(resamples):
        rows = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups if len(g)])
        q_b = q if n is None else rng.multinomial(n, q / q.sum()) / n
        boot[b] = simplex_solve(confusion(rows), q_b)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
    return estimate, low, high


def domains_compose(
    datasets: Mapping[str, str | Path],
    out: str | Path,
    *,
    labels: str | Path | None = None,
    confidence: float = 0.95,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The domain composition of each dataset, and (with ``labels``) its true shares estimated.

    Args:
        datasets: dataset name -> its ``oodlab domains predict`` folder.
        out: output folder (``compose.md``, ``compose.csv``, ``manifest.json``).
        labels: a label file of a random labelled sample whose keys are in the predictions
            (the calibration sample): enables the corrected estimates.
        confidence: of the estimates' intervals.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``rows``: as in ``compose.csv``).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    if not datasets:
        raise InputError(None, "no datasets given", "pass --dataset NAME=FOLDER (domain predictions) for each dataset")
    names = check_names(datasets, "dataset")
    predictions = datasets
    run = RunFolder(out, "domains compose",
                    inputs={"predictions": {n: fingerprint(p) for n, p in predictions.items()},
                            "labels": None if labels is None else fingerprint(labels)},
                    parameters={"confidence": confidence, "resamples": RESAMPLES},
                    reads=[*predictions.values()] + ([labels] if labels else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    columns = {}
    for name in names:
        first = prediction_parts(predictions[name])
        has_strict = bool(first) and "label_strict" in pq.read_schema(first[0]).names
        columns[name] = ["label"] + (["label_strict"] if has_strict else [])
    truth = read_labels(labels) if labels is not None else None
    read = {(n, c): label_counts(predictions[n], c, truth or ()) for n in names for c in columns[n]}
    samples: dict[str, dict[str, str]] = {}  # labelling -> the labelled keys' predictions, from any dataset
    for (_, column), (_, found) in read.items():
        samples.setdefault(column, {}).update(found)
    rows = []
    for (name, column), (counts, _) in read.items():
        pred_names = sorted(counts)
        total = sum(counts.values())
        for p in pred_names:
            rows.append({"dataset": name, "labelling": "strict" if column == "label_strict" else "argmax",
                         "kind": "predicted", "label": p, "count": counts[p], "share": counts[p] / max(total, 1),
                         "low": None, "high": None})
        if truth is None:
            continue
        sample = samples[column]
        if len(sample) < len(truth):
            raise InputError(labels, f"labels {len(truth) - len(sample)} keys that no prediction folder holds",
                             "label samples of the predicted datasets")
        true_names = [d for d in DOMAINS if d in {DOMAINS[truth[k]] for k in sample}]
        sample_keys = list(sample)
        pred_all = sorted(set(pred_names) | set(sample.values()))
        q_all = np.array([counts.get(p, 0) / max(total, 1) for p in pred_all])
        est, low, high = adjusted_shares(np.array([sample[k] for k in sample_keys]),
                                         np.array([DOMAINS[truth[k]] for k in sample_keys]), q_all, pred_all, true_names,
                                         n=total, confidence=confidence)
        for j, d in enumerate(true_names):
            rows.append({"dataset": name, "labelling": "strict" if column == "label_strict" else "argmax",
                         "kind": "estimated true", "label": d, "count": None, "share": _number(est[j]),
                         "low": _number(low[j]), "high": _number(high[j])})
    frame = pd.DataFrame(rows)
    write_csv(run.out / "compose.csv", frame)
    markdown = _markdown(frame, confidence)
    write_text(run.out / "compose.md", markdown)
    manifest = run.finish(counts={"datasets": len(names)}, outputs={"table": "compose.md", "csv": "compose.csv"},
                          rows=rows, markdown=markdown)
    summary(f"domains compose: {len(names)} datasets -> {run.out / 'compose.md'}")
    return manifest


def _number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _markdown(frame: Any, confidence: float) -> str:
    lines = [f"Domain composition (% of each dataset; estimated true shares with {round(100 * confidence)}% "
             "bootstrap intervals over the labelled sample)", "",
             "| Dataset | Labelling | Kind | Label | Share (%) | Interval |", "|---|---|---|---|---:|---:|"]
    for r in frame.itertuples():
        interval = "" if r.low is None or r.low != r.low else f"[{100 * r.low:.1f}, {100 * r.high:.1f}]"
        share = "not identifiable" if r.share is None or r.share != r.share else f"{100 * r.share:.1f}"
        lines.append(f"| {r.dataset} | {r.labelling} | {r.kind} | {r.label} | {share} | {interval} |")
    return "\n".join(lines) + "\n"
