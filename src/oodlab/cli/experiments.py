"""CLI: experiments of the papers as one command each."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import call, command, parse_pairs, subapp

experiment_app = subapp("experiment", "The papers' experiments as one command each.")
SIMILARITY = "oodlab.experiments.similarity:similarity_experiment"


@command(experiment_app, "similarity", SIMILARITY)
def similarity(
    pool: Path = typer.Option(..., help="The pool's webdataset shards (folder or pattern)."),
    neighbors: Path = typer.Option(..., help="`oodlab neighbors` folder of the pool vs the eval sets, run with --reference."),
    evals: List[str] = typer.Option(..., "--eval", help="NAME=PATH of an eval dataset (NAME as in the neighbors run); repeat."),
    out: Path = typer.Option(..., help="Output folder (resumable)."),
    model: str = typer.Option("tiny-vit", help="CLIP architecture trained for every row."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Training sets (default: all): full, {eval}-pruned, combined-pruned, near-pruned, far-pruned, random."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per run (default: the model's)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per run (default: the model's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the model's)."),
    seed: int = typer.Option(0, help="Seed of training and of the random control."),
    full_run: Optional[Path] = typer.Option(None, help="Reuse this `oodlab train` run for the full pool's row."),
    per_shard: int = typer.Option(1000, help="Samples per shard of the materialised training sets."),
    workers: int = typer.Option(1, help="Data-loading processes."),
    parallel: int = typer.Option(1, help="Training runs side by side (each gets cores / parallel threads)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Train on the full, aligned-pruned, near/far-pruned and random pools; print the paper's table."""
    from oodlab.experiments.similarity import TRAINING_SETS, read_table

    call(SIMILARITY, pool=pool, neighbors=neighbors, evals=parse_pairs(evals, "--eval"), out=out, model=model,
         sets=sets or list(TRAINING_SETS), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
         full_run=full_run, per_shard=per_shard, workers=workers, parallel=parallel, device=device)
    typer.echo(read_table(out))
