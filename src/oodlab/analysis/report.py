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

Training sets are named by the caller: ``{"pool": RUN}`` reads the rank-0 scores of an
``oodlab neighbors`` run (its training store), ``{"imagenet-train": RUN/thresholds}`` reads the
reference NN similarities of that run (``--reference``), so one run gives both sides of the gap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from oodlab.analysis._io import new_figure, save_png, write_csv
from oodlab.analysis.sources import SOURCES, resolve_training_set
from oodlab.utils.atomic import read_json, write_json
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import MANIFEST_NAME, build_manifest
from oodlab.utils.progress import summary

log = logging.getLogger(__name__)

#: percentiles reported in summary.csv (column name -> percent)
PERCENTILES = {"p10": 10, "p90": 90}


def similarity_report(
    neighbors: Mapping[str, str | Path],
    out: str | Path,
    *,
    bins: int = 50,
    evals: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Histograms and summary statistics of the NN similarity of eval sets to training sets.

    Args:
        neighbors: training-set label -> an ``oodlab neighbors`` output folder (its rank-0
            scores: NN similarity to that run's training store) or its ``thresholds``
            sub-folder (NN similarity to the run's reference set, e.g. ImageNet-train); any folder
            of ``{eval_set}.parquet`` files with columns key, threshold also works.
        out: output folder (see module docstring).
        bins: number of equal-width bins per eval set, spanning the smallest to the largest
            similarity of that eval set over all training sets (the same bins for all of them).
        evals: eval sets to report (default: every eval set found in any folder).

    Returns:
        the manifest (also written to ``out/manifest.json``).

    Raises:
        InputError: no training sets, bins < 1, an unusable folder, an unknown eval set.
        IncompatibleError: one eval set has different keys in two folders.
    """
    import pandas as pd

    if not neighbors:
        raise InputError(None, "no training sets given", "pass e.g. --neighbors pool=RUN --neighbors imagenet-train=RUN/thresholds")
    if bins < 1:
        raise InputError(None, f"bins must be >= 1, got {bins}", None)
    out = Path(out)
    resolved = {label: resolve_training_set(path) for label, path in neighbors.items()}
    available = {label: {p.stem for p in folder.glob("*.parquet")} for label, (folder, _) in resolved.items()}
    found = sorted(set().union(*available.values()))
    names = found if evals is None else list(dict.fromkeys(evals))
    unknown = [e for e in names if e not in found]
    if unknown or not names:
        raise InputError(", ".join(str(p) for p in neighbors.values()),
                         f"hold no eval set {unknown}" if unknown else "hold no eval sets",
                         f"eval sets found: {found or 'none'}")

    hist_rows: list[pd.DataFrame] = []
    summary_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        sims = {}
        for label, (folder, source) in resolved.items():
            if name in available[label]:
                sims[label] = (folder / f"{name}.parquet", *SOURCES[source].read(folder / f"{name}.parquet"))
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
        _plot(name, edges, {label: s for label, (_, _, s) in sims.items()}, medians, out / f"histogram_{name}.png")

    write_csv(out / "histograms.csv", pd.concat(hist_rows, ignore_index=True))
    table = pd.DataFrame(summary_rows)
    write_csv(out / "summary.csv", table)
    manifest = build_manifest(
        "similarity-report",
        inputs={"neighbors": {label: str(path) for label, path in neighbors.items()}},
        parameters={"bins": bins, "evals": names},
        model=_model_of(resolved),
        counts=counts,
        outputs={"histograms": "histograms.csv", "summary": "summary.csv", "figures": "histogram_{eval_set}.png"},
    )
    write_json(out / MANIFEST_NAME, manifest)
    medians_text = "; ".join(
        f"{r['eval_set']}/{r['train_set']} median {r['median']:.3f}" for r in summary_rows)
    summary(f"similarity report: {len(names)} eval sets x {len(neighbors)} training sets ({medians_text}) -> {out}")
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


def _model_of(resolved: Mapping[str, tuple[Path, str]]) -> dict[str, Any] | None:
    """The embedding model recorded by the first input run's manifest (None when absent)."""
    for folder, _ in resolved.values():
        for candidate in (folder / "manifest.json", folder.parent / "manifest.json"):
            if candidate.exists():
                model = read_json(candidate).get("model")
                if model is not None:
                    return model
    return None


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
