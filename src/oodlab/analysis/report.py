"""``oodlab similarity report``: the train-test similarity gap (paper section 4).

For every eval set, the distribution of each eval sample's nearest-neighbour (NN) cosine
similarity to each training set: e.g. ImageNet-Sketch's NN similarity to LAION versus to
ImageNet-train, overlaid on the same bins. Outputs under ``OUT``::

    histogram_{eval_set}.png   overlaid histograms (fraction of eval samples per bin), one per
                               training set, dashed lines at the medians (legend)
    histograms.csv             eval_set, train_set, bin_left, bin_right, count, fraction
    summary.csv                eval_set, train_set, n, mean, median, p10, p90 and, for every other
                               training set B, more_similar_than__{B}: the fraction of eval
                               samples strictly more similar to this training set than to B
    manifest.json

One ``oodlab neighbors`` run with ``--reference-store imagenet-train=STORE`` gives both sides of
the gap: the NN similarity to its training store (the pool) and to ImageNet-train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from oodlab.utils.artifacts import new_figure, save_png, write_csv
from oodlab.analysis.sources import SOURCES, training_sets
from oodlab.similarity.layout import NeighborsFolder
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

#: percentiles reported in summary.csv (column name -> percent)
PERCENTILES = {"p10": 10, "p90": 90}


def similarity_report(
    neighbors: Sequence[str | Path],
    out: str | Path,
    *,
    bins: int = 20,
    eval_sets: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Histograms and summary statistics of the NN similarity of eval sets to training sets.

    Args:
        neighbors: ``oodlab neighbors`` output folders. Each contributes the NN similarity of its
            eval sets to its training store (labelled with the store folder's name, e.g. ``pool``)
            and, when it was run with a reference store, to that reference set (labelled with the
            reference's name, e.g. ``imagenet-train``).
        out: output folder (see module docstring).
        bins: number of equal-width bins per eval set, spanning the smallest to the largest
            similarity of that eval set over all training sets (the same bins for all of them).
        eval_sets: eval sets to report (default: every eval set found in any folder).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (also written to ``out/manifest.json``).

    Raises:
        InputError: no neighbours folders, bins < 1, an unfinished run, an unknown eval set, two
            training sets with one label.
        IncompatibleError: one eval set has different keys in two folders.
    """
    import pandas as pd

    if not neighbors:
        raise InputError(None, "no neighbours folder given", "pass --neighbors NEIGHBORS (repeat for several runs)")
    if bins < 1:
        raise InputError(None, f"bins must be >= 1, got {bins}", None)
    folders = [Path(p) for p in neighbors]
    resolved: dict[str, tuple[Path, str]] = {}  # label -> (neighbours folder, source kind)
    for folder in folders:
        for label, source in training_sets(folder).items():
            if label in resolved:
                raise InputError(folder, f"measures similarity to a training set named {label!r}, as "
                                 f"{resolved[label][0]} does", "compare runs whose training stores have distinct folder names")
            resolved[label] = (folder, source)
    available = {label: set(SOURCES[source].sets(NeighborsFolder(folder))) for label, (folder, source) in resolved.items()}
    found = sorted(set().union(*available.values()))
    names = found if eval_sets is None else check_names(eval_sets, "eval set")
    unknown = [e for e in names if e not in found]
    if unknown or not names:
        raise InputError(", ".join(str(p) for p in folders),
                         f"hold no eval set {unknown}" if unknown else "hold no eval sets",
                         f"eval sets found: {found or 'none'}")
    run = RunFolder(out, "similarity report", inputs={"neighbors": [fingerprint(f) for f in folders]},
                    parameters={"bins": bins, "eval_sets": names}, reads=folders)
    done = run.open(overwrite)
    if done is not None:
        return done

    hist_rows: list[pd.DataFrame] = []
    summary_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        sims = {}
        for label, (folder, source) in resolved.items():
            if name in available[label]:
                path = SOURCES[source].file(NeighborsFolder(folder), name)
                sims[label] = (path, *SOURCES[source].read(path))
        edges = np.histogram_bin_edges(np.concatenate([s for _, _, s in sims.values()]), bins=bins)
        medians = {}
        for label, (path, keys, s) in sims.items():
            c = np.histogram(s, bins=edges)[0]
            hist_rows.append(pd.DataFrame({"eval_set": name, "train_set": label, "bin_left": edges[:-1],
                                           "bin_right": edges[1:], "count": c, "fraction": c / len(s)}))
            row: dict[str, Any] = {"eval_set": name, "train_set": label, "n": len(s), "mean": float(s.mean()),
                                   "median": float(np.median(s))}
            row.update({col: float(np.percentile(s, q)) for col, q in PERCENTILES.items()})
            for other, (opath, okeys, os_) in sims.items():
                if other != label:
                    row[f"more_similar_than__{other}"] = float(np.mean(s > _aligned(keys, okeys, os_, path, opath)))
            summary_rows.append(row)
            medians[label] = row["median"]
        counts[name] = {label: len(s) for label, (_, _, s) in sims.items()}
        _plot(name, edges, {label: s for label, (_, _, s) in sims.items()}, medians, run.out / f"histogram_{name}.png")

    write_csv(run.out / "histograms.csv", pd.concat(hist_rows, ignore_index=True))
    write_csv(run.out / "summary.csv", pd.DataFrame(summary_rows))
    manifest = run.finish(
        counts=counts, model=NeighborsFolder(folders[0]).manifest().get("model"),
        outputs={"histograms": "histograms.csv", "summary": "summary.csv", "figures": "histogram_{eval_set}.png"},
        training_sets={label: {"neighbors": str(folder), "source": source} for label, (folder, source) in resolved.items()},
    )
    medians_text = "; ".join(
        f"{r['eval_set']}/{r['train_set']} median {r['median']:.3f}" for r in summary_rows)
    summary(f"similarity report: {len(names)} eval sets x {len(resolved)} training sets ({medians_text}) -> {run.out}")
    return manifest


def _aligned(keys: np.ndarray, other_keys: np.ndarray, other: np.ndarray, path: Path, other_path: Path) -> np.ndarray:
    """``other`` reordered to ``keys``; the two files must hold the same eval keys."""
    if len(keys) == len(other_keys) and np.array_equal(keys, other_keys):
        return other
    pos = {k: i for i, k in enumerate(other_keys.tolist())}
    missing = [k for k in keys.tolist() if k not in pos]
    if missing or len(keys) != len(other_keys):
        example = missing[:3] or sorted(set(other_keys.tolist()) - set(keys.tolist()))[:3]
        raise IncompatibleError(other_path, f"holds other eval samples than {path} (e.g. {example})",
                                "compare runs made with the same eval stores")
    return other[np.array([pos[k] for k in keys.tolist()], np.int64)]


def _plot(name: str, edges: np.ndarray, sims: Mapping[str, np.ndarray], medians: Mapping[str, float], path: Path) -> None:
    fig = new_figure(7.0, 4.2, layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(sims))]
    for color, (label, s) in zip(colors, sims.items()):
        frac = np.histogram(s, bins=edges)[0] / len(s)
        ax.stairs(frac, edges, fill=True, alpha=0.25, color=color)
        ax.stairs(frac, edges, color=color, linewidth=1.5,
                  label=f"{label}: median {medians[label]:.3f} (n={len(s)})")
        ax.axvline(medians[label], color=color, linestyle="--", linewidth=1)
    ax.set_xlabel("nearest-neighbour cosine similarity to the training set")
    ax.set_ylabel("fraction of eval samples")
    ax.set_title(f"{name}: similarity to the training sets")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", framealpha=0.85)
    ax.grid(alpha=0.3)
    save_png(fig, path)
