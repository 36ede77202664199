"""CLI: ``similarity report|accuracy|gallery`` (analyses of ``oodlab neighbors`` outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import call, command, parse_pairs, subapp

REPORT = "oodlab.analysis.report:similarity_report"
ACCURACY = "oodlab.analysis.accuracy:accuracy_vs_similarity"
GALLERY = "oodlab.analysis.gallery:neighbor_gallery"

similarity_app = subapp("similarity", "Analyse train-test similarity: the similarity gap, accuracy vs similarity, galleries.")


@command(similarity_app, "report", REPORT)
def report(
    neighbors: List[str] = typer.Option(..., help="NAME=FOLDER of a training set: an `oodlab neighbors` output (NN similarity to its training store) or its thresholds/ sub-folder (to its reference set); repeat."),
    out: Path = typer.Option(..., help="Output folder."),
    bins: int = typer.Option(50, help="Equal-width histogram bins per eval set (shared by all training sets)."),
    evals: Optional[List[str]] = typer.Option(None, "--eval", help="Eval set to report; repeat (default: all found)."),
) -> None:
    """Histograms and summary of each eval set's nearest-neighbour similarity to each training set."""
    call(REPORT, neighbors=parse_pairs(neighbors, "--neighbors"), out=out, bins=bins, evals=evals or None)


@command(similarity_app, "accuracy", ACCURACY)
def accuracy(
    similarity: Path = typer.Option(..., help="`oodlab neighbors` output folder."),
    eval_set: str = typer.Option(..., help="Eval set name in it."),
    predictions: Path = typer.Option(..., help="Parquet with columns key and correct (bool) for that eval set."),
    out: Path = typer.Option(..., help="Output folder."),
    bins: int = typer.Option(10, help="Number of similarity bins."),
    binning: str = typer.Option("width", help="width (equal-width bins) or mass (equal-count quantile bins)."),
    source: str = typer.Option("train", help="train (NN similarity to the run's training store) or reference (to its reference set)."),
) -> None:
    """Accuracy per nearest-neighbour-similarity bin with 95% Wilson intervals (CSV + PNG)."""
    call(ACCURACY, similarity=similarity, eval_set=eval_set, predictions=predictions, out=out, bins=bins,
         binning=binning, source=source)


@command(similarity_app, "gallery", GALLERY)
def gallery(
    neighbors: Path = typer.Option(..., help="`oodlab neighbors` output folder."),
    eval_set: str = typer.Option(..., help="Eval set name in it."),
    eval_source: List[str] = typer.Option(..., help="Eval images: ImageFolder root or shards (paths, quoted brace patterns, folder); repeat."),
    train_source: List[str] = typer.Option(..., help="Training images: shards (paths, quoted brace patterns, folder) or ImageFolder root; repeat."),
    out: Path = typer.Option(..., help="Output folder."),
    queries: int = typer.Option(8, help="Eval images shown (drawn with --seed)."),
    k: int = typer.Option(5, help="Nearest training images per query."),
    seed: int = typer.Option(0, help="Seed of the query draw."),
) -> None:
    """Eval images next to their nearest training images: gallery.png and a self-contained index.html."""
    call(GALLERY, neighbors=neighbors, eval_set=eval_set, eval_source=eval_source, train_source=train_source,
         out=out, queries=queries, k=k, seed=seed)
