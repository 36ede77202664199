"""Classification metrics and the CLIP_benchmark result record.

The metrics are CLIP_benchmark's: ``acc1`` and ``acc5`` (fraction of samples whose label is the
top-1 / among the top-5 predictions; ``acc5`` is None with fewer than 5 classes, where
CLIP_benchmark writes NaN) and ``mean_per_class_recall`` (the mean over the classes that occur
among the labels of the fraction of their samples predicted correctly; sklearn's
``balanced_accuracy_score``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TASK = "zeroshot_classification"


def classification_metrics(labels: np.ndarray, topk: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """Metrics of predictions ``topk`` (int [n, k], best first) against ``labels`` (int [n]).

    Returns:
        ``acc1``, ``acc5`` (None when ``n_classes`` < 5), ``mean_per_class_recall``; all in [0, 1].
    """
    labels = np.asarray(labels, dtype=np.int64)
    topk = np.asarray(topk, dtype=np.int64)
    if labels.size == 0:
        return {"acc1": None, "acc5": None, "mean_per_class_recall": None}
    correct1 = topk[:, 0] == labels
    acc5 = None
    if n_classes >= 5:
        acc5 = float((topk[:, :5] == labels[:, None]).any(axis=1).mean())
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels[correct1], minlength=n_classes)
    present = counts > 0
    return {
        "acc1": float(correct1.mean()),
        "acc5": acc5,
        "mean_per_class_recall": float((hits[present] / counts[present]).mean()),
    }


def clip_benchmark_record(dataset: str, model: str, pretrained: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON CLIP_benchmark writes per (dataset, model) (``clip_benchmark build`` reads it)."""
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASK,
        "metrics": {k: metrics[k] for k in ("acc1", "acc5", "mean_per_class_recall")},
        "language": "en",
    }
