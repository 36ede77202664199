"""CLI: ``embed`` and ``store info|validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import app, call, command, store_app

EMBED = "oodlab.embeddings.embed:embed"
INFO = "oodlab.embeddings.validate:store_info"
VALIDATE = "oodlab.embeddings.validate:validate_store"


@command(app, "embed", EMBED)
def embed(
    sources: List[str] = typer.Argument(..., help="Shards (paths or quoted brace patterns), ImageFolder roots, images or .txt lists."),
    out: Path = typer.Option(..., help="Store folder to write (completed parts are kept: resume)."),
    model: str = typer.Option("tiny-vit", help="open_clip architecture or oodlab tiny config."),
    checkpoint: Optional[Path] = typer.Option(None, help="Local weights file (none: seeded random weights)."),
    text: bool = typer.Option(False, help="Also embed captions (shards' txt members)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    precision: str = typer.Option("fp32", help="fp32, bf16 (fast on AMX CPUs and GPUs) or fp16 (GPU)."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    workers: int = typer.Option(1, help="DataLoader processes decoding images (0: in-process)."),
    images_per_part: int = typer.Option(10_000, help="Images per store part for folders and lists."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
) -> None:
    """Embed images (and captions) into an embedding store (clip-retrieval layout + oodlab.json)."""
    call(EMBED, sources=sources, out=out, model=model, checkpoint=checkpoint, text=text, device=device,
         precision=precision, batch_size=batch_size, workers=workers, images_per_part=images_per_part,
         overwrite=overwrite)


@command(store_app, "info", INFO)
def info(
    path: Path = typer.Argument(..., help="Embedding store folder."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding the sample key (default image_path)."),
) -> None:
    """Print a JSON summary of a store: count, dim, dtype, model, parts."""
    typer.echo(json.dumps(call(INFO, path=path, key_column=key_column), indent=2))


@command(store_app, "validate", VALIDATE)
def validate(
    path: Path = typer.Argument(..., help="Embedding store folder."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding the sample key."),
    chunk_rows: int = typer.Option(65536, help="Rows read at a time (bounds memory)."),
    norm_tolerance: float = typer.Option(5e-3, help="Allowed |norm - 1| of a row."),
) -> None:
    """Check a store (NaN/inf, unit norm, dims/dtypes, row counts, duplicate keys); exit 1 on problems."""
    problems = call(VALIDATE, path=path, key_column=key_column, chunk_rows=chunk_rows, norm_tolerance=norm_tolerance)
    for p in problems:
        typer.echo(f"{path}: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{path}: ok")
