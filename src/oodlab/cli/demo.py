"""CLI: the end-to-end demo on the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import app, call, command

TARGET = "oodlab.demo:run_demo"


@command(app, "demo", TARGET)
def demo(
    out: Path = typer.Argument(Path("demo-out"), help="Output folder (re-running resumes)."),
    preset: str = typer.Option("default", help="Synthetic world size: tiny, small, default."),
    seed: int = typer.Option(0, help="Seed of the world and of training."),
    workers: Optional[int] = typer.Option(None, help="Processes for world generation (default: all cores)."),
    model: str = typer.Option("tiny-vit", help="CLIP architecture used throughout."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs of the similarity model (default: the model's)."),
    experiment_epochs: Optional[int] = typer.Option(4, help="Training epochs of each experiment run (4 keeps the demo under 15 min)."),
    stages: Optional[List[str]] = typer.Option(None, "--stage", help="Run only these stages (repeat; default: all)."),
) -> None:
    """Run the whole pipeline on the synthetic world and say where the outputs are."""
    call(TARGET, out=out, preset=preset, seed=seed, workers=workers, model=model, epochs=epochs,
         experiment_epochs=experiment_epochs, stages=stages)
