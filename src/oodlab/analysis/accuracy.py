"""``oodlab similarity accuracy``: accuracy versus train-test similarity (paper section 5).

Joins each eval sample's nearest-neighbour (NN) similarity to a training set with whether the
model classified it correctly, bins the similarity axis and reports the accuracy per bin with a
95% Wilson score interval. Outputs under ``OUT``::

    {eval_set}/accuracy.csv   bin_left, bin_right, n, correct, accuracy, ci_low, ci_high (one row
                              per bin, empty bins included with empty accuracy)
    {eval_set}/accuracy.png   accuracy vs bin centre with CI error bars (top), samples per bin (bottom)
    manifest.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from oodlab.utils.artifacts import new_figure, save_png, write_csv
from oodlab.analysis.sources import SOURCES, nn_similarity
from oodlab.analysis.stats import BINNINGS, accuracy_by_bin
from oodlab.similarity.layout import NeighborsFolder
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

CONFIDENCE = 0.95


def read_correctness(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness from a parquet with columns key and correct (bool, or 0/1 integers),
    such as the zero-shot evaluator's (key, label, prediction, correct, top5).

    Returns:
        (keys object [n], correct bool [n]).

    Raises:
        InputError: missing file or columns, nulls, non-boolean values, duplicate keys.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "predictions file not found", "pass a parquet with columns key and correct")
    names = pq.read_schema(path).names
    if not {"key", "correct"} <= set(names):
        raise InputError(path, f"has columns {names}", "a predictions parquet needs columns key and correct (bool)")
    table = pq.read_table(path, columns=["key", "correct"])
    if table.column("key").null_count or table.column("correct").null_count:
        raise InputError(path, "has null keys or null correct values", "give every sample a key and a correct value")
    keys = np.array([str(k) for k in table.column("key").to_pylist()], dtype=object)
    raw = table.column("correct").to_numpy()
    if raw.dtype != bool:
        if not np.issubdtype(raw.dtype, np.integer) or not np.isin(raw, (0, 1)).all():
            raise InputError(path, f"column correct has dtype {raw.dtype} with values other than true/false",
                             "store correct as bool (or 0/1)")
    uniq, counts = np.unique(keys.astype(str), return_counts=True)
    if (counts > 1).any():
        raise InputError(path, f"has duplicate keys, e.g. {uniq[counts > 1][:3].tolist()}", "keep one row per sample")
    return keys, raw.astype(bool)


def join_by_key(sim_keys: np.ndarray, sims: np.ndarray, pred_keys: np.ndarray, correct: np.ndarray,
                sim_path: Path, pred_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Align correctness to the similarity file's keys; both must hold exactly the same keys.

    Returns:
        (similarity float64 [n], correct bool [n]) in the similarity file's order.

    Raises:
        InputError: naming the file that lacks keys, with examples.
    """
    pos = {k: i for i, k in enumerate(pred_keys.tolist())}
    sim_keys_str = [str(k) for k in sim_keys.tolist()]
    no_pred = [k for k in sim_keys_str if k not in pos]
    if no_pred:
        raise InputError(pred_path, f"has no prediction for {len(no_pred)} of {len(sim_keys)} eval samples in {sim_path} "
                         f"(e.g. {no_pred[:5]})", "evaluate the same eval set the neighbors were computed for")
    extra = sorted(set(pos) - set(sim_keys_str))
    if extra:
        raise InputError(sim_path, f"has no similarity for {len(extra)} samples of {pred_path} (e.g. {extra[:5]})",
                         "compute the neighbors of the same eval set that was evaluated")
    return sims, correct[np.array([pos[k] for k in sim_keys_str], np.int64)]


def similarity_accuracy(
    neighbors: str | Path,
    predictions: Mapping[str, str | Path],
    out: str | Path,
    *,
    bins: int = 20,
    bin_edges: Sequence[float] | None = None,
    binning: str = "width",
    source: str = "train",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Accuracy per bin of NN similarity, with 95% Wilson intervals, per eval set.

    Args:
        neighbors: an ``oodlab neighbors`` output folder.
        predictions: eval set name (as in ``neighbors``) -> parquet with columns key and correct
            (bool) for its samples, e.g. an ``oodlab evaluate`` ``predictions.parquet``.
        out: output folder: ``{eval_set}/accuracy.csv``, ``{eval_set}/accuracy.png``,
            ``manifest.json``.
        bins: number of bins of the scheme ``binning``.
        bin_edges: instead of ``bins``: explicit increasing edges (cosine similarity; samples
            outside are left out and counted in the manifest).
        binning: ``"width"`` (equal-width bins from the smallest to the largest similarity) or
            ``"mass"`` (quantile bins with equal counts up to ties).
        source: ``"train"`` (NN similarity to the run's training store, the rank-0 score) or
            ``"reference"`` (to its reference set, e.g. ImageNet-train: the thresholds).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also written to ``out/manifest.json``), ``counts`` per eval set.

    Raises:
        InputError: unknown binning/source, a missing or malformed file, keys present on only one
            side (the message names the file that lacks them).
    """
    if binning not in BINNINGS:
        raise InputError(None, f"unknown binning {binning!r}", f"use one of {sorted(BINNINGS)}")
    if source not in SOURCES:
        raise InputError(None, f"unknown similarity source {source!r}", f"use one of {sorted(SOURCES)}")
    if not predictions:
        raise InputError(None, "no predictions given", "pass --predictions EVAL_SET=FILE at least once")
    check_names(predictions, "eval set")
    folder = NeighborsFolder(neighbors)
    edges_or_bins: int | list[float] = bins if bin_edges is None else [float(b) for b in bin_edges]
    tables = {}  # every input is read and checked before anything is written
    for name, pred_path in predictions.items():
        pred_path = Path(pred_path)
        sim_keys, sims = nn_similarity(folder.path, name, source)
        pred_keys, correct = read_correctness(pred_path)
        sims, correct = join_by_key(sim_keys, sims, pred_keys, correct, SOURCES[source].file(folder, name), pred_path)
        tables[name] = (accuracy_by_bin(sims, correct, bins=edges_or_bins, binning=binning, confidence=CONFIDENCE), correct)
    run = RunFolder(out, "similarity accuracy",
                    inputs={"neighbors": fingerprint(folder.path),
                            "predictions": {name: fingerprint(p) for name, p in predictions.items()}},
                    parameters={"bins": edges_or_bins, "binning": binning, "source": source, "confidence": CONFIDENCE},
                    reads=[folder.path, *predictions.values()])
    done = run.open(overwrite)
    if done is not None:
        return done
    counts, lines = {}, []
    for name, (table, correct) in tables.items():
        write_csv(run.out / name / "accuracy.csv", table)
        _plot(table, name, source, binning, float(correct.mean()), run.out / name / "accuracy.png")
        binned = int(table["n"].sum())
        counts[name] = {"samples": len(correct), "correct": int(correct.sum()), "binned": binned,
                        "outside_edges": len(correct) - binned, "bins": len(table), "empty_bins": int((table["n"] == 0).sum())}
        lines.append(f"{name} accuracy {correct.mean():.3f}, per bin {np.nanmin(table['accuracy']):.3f}.."
                     f"{np.nanmax(table['accuracy']):.3f}")
    manifest = run.finish(counts=counts, model=folder.manifest().get("model"),
                          outputs={"table": "{eval_set}/accuracy.csv", "figure": "{eval_set}/accuracy.png"})
    summary(f"accuracy vs similarity ({source}, {binning} bins): {'; '.join(lines)} -> {run.out}")
    return manifest


def _plot(table: Any, eval_set: str, source: str, binning: str, overall: float, path: Path) -> None:
    fig = new_figure(7.0, 5.0, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    left, right = table["bin_left"].to_numpy(), table["bin_right"].to_numpy()
    centre = (left + right) / 2
    acc = table["accuracy"].to_numpy()
    full = table["n"].to_numpy() > 0
    err = np.vstack([acc - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - acc])
    top.errorbar(centre[full], acc[full], yerr=err[:, full], fmt="o-", color="C0", capsize=3, linewidth=1.5,
                 label="accuracy (95% Wilson CI)")
    top.axhline(overall, color="0.4", linestyle="--", linewidth=1, label=f"overall {overall:.3f}")
    top.set_ylim(-0.02, 1.08)
    top.set_ylabel("top-1 accuracy")
    top.set_title(f"{eval_set}: accuracy vs nearest-neighbour similarity ({source}, {binning} bins)")
    top.legend(loc="lower right", frameon=False)
    top.grid(alpha=0.3)
    bottom.bar(left, table["n"].to_numpy(), width=right - left, align="edge", color="C0", alpha=0.35, edgecolor="C0")
    for x, n in zip(centre, table["n"].to_numpy()):
        bottom.annotate(str(int(n)), (x, n), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    bottom.set_ylim(0, max(1, table["n"].max()) * 1.3)
    bottom.set_ylabel("samples")
    bottom.set_xlabel(f"nearest-neighbour cosine similarity to the {'training' if source == 'train' else 'reference'} set")
    save_png(fig, path)
