"""CLI: the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from oodlab.cli._app import app, call, command

TARGET = "oodlab.data.synth:generate_world"


@command(app, "synth", TARGET)
def synth(
    out: Path = typer.Argument(..., help="Folder to create the world in."),
    preset: str = typer.Option("default", help="Size: tiny (tests), small, default (demo)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: all cores)."),
    rendition_share: Optional[float] = typer.Option(None, help="Share of renditions in the pool (default: preset's)."),
    duplicate_share: Optional[float] = typer.Option(None, help="Share of planted near-duplicates in the pool."),
    overwrite: bool = typer.Option(False, help="Replace an existing world."),
) -> None:
    """Generate the synthetic world: pool shards, ImageNet-like train/eval folders, DomainNet."""
    call(TARGET, out=out, preset=preset, seed=seed, workers=workers, rendition_share=rendition_share,
         duplicate_share=duplicate_share, overwrite=overwrite)
