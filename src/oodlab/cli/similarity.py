"""CLI: ``neighbors`` (exact train-test similarity)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import app, call, command, parse_pairs

NEIGHBORS = "oodlab.similarity.neighbors:neighbors"


@command(app, "neighbors", NEIGHBORS)
def neighbors(
    train: Path = typer.Option(..., help="Training embedding store (e.g. the pool, LAION)."),
    evals: List[str] = typer.Option(..., "--eval", help="NAME=STORE of an eval set; repeat for several (one pass for all)."),
    out: Path = typer.Option(..., help="Output folder (completed parts are kept: resume)."),
    k: int = typer.Option(100, help="Nearest training samples per eval sample."),
    thresholds: Optional[List[str]] = typer.Option(None, help="NAME=FILE: parquet (key, threshold) of an eval set; enables margins."),
    reference: Optional[str] = typer.Option(None, help="NAME=STORE: reference training set (ImageNet-train); its NN similarity becomes each eval sample's threshold."),
    chunk_rows: int = typer.Option(8192, help="Training rows per tile (memory ~ chunk_rows x eval rows x 6 bytes)."),
    precision: str = typer.Option("bf16", help="bf16 (fast, re-checked exactly) or fp32."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding sample keys."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
) -> None:
    """Exact top-k neighbours, per-train max similarity and margins in one streaming pass."""
    call(NEIGHBORS, train=train, evals=parse_pairs(evals, "--eval"), out=out, k=k,
         thresholds=parse_pairs(thresholds or [], "--thresholds"),
         reference=parse_pairs([reference] if reference else [], "--reference"), chunk_rows=chunk_rows,
         precision=precision, device=device, key_column=key_column, overwrite=overwrite)
