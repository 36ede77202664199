"""``oodlab domains train``: a natural / rendition / ambiguous classifier on stored embeddings.

The way web-scale curation classifies: embed once, then a linear head (multinomial logistic
regression, scikit-learn) on the L2-normalised image embeddings. (Balanced class weights were
tried on the laion world: validation accuracy fell from 0.95 to 0.91 and no class certified.) The regularisation strength is
chosen on a stratified validation split by log-loss; the head is fitted on the training split
only, so the validation numbers recorded stay honest. The head is saved as JSON (weights as
numbers: nothing to unpickle)::

    OUT/head.json      task, classes, weights [C, d], bias [C], the chosen C, the store's model
    OUT/selection.csv  C, validation log-loss and accuracy of each candidate
    OUT/manifest.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oodlab.domains.labels import labelled_embeddings, read_labels, task_classes, to_task
from oodlab.domains.model import HEAD
from oodlab.embeddings.store import EmbeddingStore
from oodlab.utils.artifacts import write_csv
from oodlab.utils.atomic import write_json
from oodlab.utils.errors import InputError
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

#: inverse regularisation strengths tried (scikit-learn's C)
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def domains_train(
    store: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    task: str = "3-class",
    val_share: float = 0.25,
    seed: int = 0,
    chunk_rows: int = 65536,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a domain head on the labelled rows of an embedding store.

    Args:
        store: an embedding store holding the labelled samples.
        labels: a label file (key, label in natural / rendition / ambiguous).
        out: output folder (``head.json``, ``selection.csv``, ``manifest.json``).
        task: ``3-class``, ``natural-v-rest`` or ``rendition-v-rest``.
        val_share: fraction of the labelled samples held out (stratified) to choose C, in (0, 1).
        seed: of the split.
        chunk_rows: rows read at a time.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``validation``: accuracy and log-loss of the chosen head per class count).
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    classes = task_classes(task)
    if not 0 < val_share < 1:
        raise InputError(None, f"val_share must be in (0, 1), got {val_share}", "pass e.g. --val-share 0.25")
    run = RunFolder(out, "domains train", inputs={"store": fingerprint(store), "labels": fingerprint(labels)},
                    parameters={"task": task, "val_share": val_share, "seed": seed, "c_grid": list(C_GRID)},
                    reads=[store, labels])
    done = run.open(overwrite)
    if done is not None:
        return done
    with Timer() as timer:
        keys, x, y_domain = labelled_embeddings(store, read_labels(labels), chunk_rows=chunk_rows, source=labels)
        y = to_task(y_domain, task)
        counts = np.bincount(y, minlength=len(classes))
        if (counts < 2).any():
            raise InputError(labels, f"has too few samples of some class for task {task} "
                             f"({dict(zip(classes, counts.tolist()))})", "label at least 2 samples of every class")
        x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=val_share, random_state=seed, stratify=y)
        rows, fitted = [], {}
        for c in C_GRID:
            model = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr)
            proba = model.predict_proba(x_val)
            rows.append({"C": c, "val_log_loss": float(log_loss(y_val, proba, labels=model.classes_)),
                         "val_accuracy": float((model.classes_[proba.argmax(1)] == y_val).mean())})
            fitted[c] = model
        best = min(rows, key=lambda r: (r["val_log_loss"], r["C"]))
        weights, bias = _as_softmax(fitted[best["C"]], len(classes))
    write_json(run.out / HEAD, {"task": task, "classes": list(classes), "C": best["C"], "weights": weights.tolist(),
                                "bias": bias.tolist(), "model": EmbeddingStore(store).model})
    write_csv(run.out / "selection.csv", pd.DataFrame(rows))
    manifest = run.finish(counts={"labelled": len(keys), "train": len(y_tr), "validation": len(y_val),
                                  "per_class": dict(zip(classes, counts.tolist()))},
                          outputs={"head": HEAD, "selection": "selection.csv"}, validation=best)
    summary(f"domains train: {task} head on {len(y_tr)} samples (C={best['C']}), validation accuracy "
            f"{best['val_accuracy']:.3f} on {len(y_val)} in {timer.seconds:.1f} s -> {run.out / HEAD}")
    return manifest


def _as_softmax(model: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted LogisticRegression as softmax weights over all the task's classes: the binary
    model's one logit z becomes (0, z), which gives the same probabilities."""
    coef, intercept = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
    if n_classes == 2 and coef.shape[0] == 1:
        return np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return coef, intercept
