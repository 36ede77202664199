"""CLI: the end-to-end demo on the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from oodlab.cli._app import app, call, command

TARGET = "oodlab.demo:run_demo"


@command(app, "demo", TARGET)
def demo(
    out: Path = typer.Argument(Path("demo-out"), help="Output folder (re-running resumes)."),
    preset: str = typer.Option("default", help="Synthetic world size: tiny, small, default."),
    seed: int = typer.Option(0, help="World seed."),
    workers: Optional[int] = typer.Option(None, help="Processes for world generation (default: all cores)."),
    model: str = typer.Option("tiny-vit", help="CLIP architecture used throughout."),
) -> None:
    """Run the whole pipeline on the synthetic world and say where the outputs are."""
    call(TARGET, out=out, preset=preset, seed=seed, workers=workers, model=model)
