"""CLI: ``index build|search`` (approximate faiss index for interactive use, with measured recall)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from oodlab.cli._app import call, command, subapp

BUILD = "oodlab.similarity.index:build_index"
SEARCH = "oodlab.similarity.index:search_index"

index_app = subapp("index", "Approximate nearest-neighbour indexes (faiss) for browsing; recall is measured against exact search.")


@command(index_app, "build", BUILD)
def build(
    store: Path = typer.Argument(..., help="Embedding store to index."),
    out: Path = typer.Option(..., help="Index folder to write (knn.index, keys.parquet, infos.json, manifest.json)."),
    factory: Optional[str] = typer.Option(None, help="faiss index_factory string (default: Flat / HNSW32 / IVF,Flat / IVF,PQ by size and memory)."),
    memory_gb: Optional[float] = typer.Option(None, help="Memory the index may take, GiB (default: half the RAM)."),
    recall_queries: int = typer.Option(1000, help="Store rows sampled to measure recall against exact search (0: skip)."),
    recall_k: int = typer.Option(10, help="k of the measured recall@k."),
    chunk_rows: int = typer.Option(65536, help="Rows added at a time (bounds memory)."),
    seed: int = typer.Option(0, help="Seed of the training and recall samples."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding sample keys."),
    overwrite: bool = typer.Option(False, help="Delete OUT first (a completed identical build is skipped)."),
) -> None:
    """Build an approximate inner-product index over a store and report its recall@k."""
    call(BUILD, store=store, out=out, factory=factory, memory_gb=memory_gb, recall_queries=recall_queries,
         recall_k=recall_k, chunk_rows=chunk_rows, seed=seed, key_column=key_column, overwrite=overwrite)


@command(index_app, "search", SEARCH)
def search(
    index: Path = typer.Argument(..., help="Index folder written by `oodlab index build`."),
    evals: Path = typer.Option(..., "--eval", help="Eval embedding store whose rows are the queries."),
    out: Path = typer.Option(..., help="Output folder (neighbors.parquet, recall.parquet, manifest.json)."),
    k: int = typer.Option(10, help="Neighbours per query."),
    nprobe: Optional[int] = typer.Option(None, help="IVF lists visited per query (default: the build's)."),
    ef_search: Optional[int] = typer.Option(None, help="HNSW search breadth (default: the build's)."),
    recall_queries: int = typer.Option(100, help="Queries sampled to measure recall against exact search (0: skip)."),
    chunk_rows: int = typer.Option(65536, help="Queries searched at a time."),
    seed: int = typer.Option(0, help="Seed of the recall sample."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding the eval keys."),
    overwrite: bool = typer.Option(False, help="Delete OUT first (a completed identical search is skipped)."),
) -> None:
    """Approximate top-k training neighbours of every eval row, with recall@k against exact search."""
    call(SEARCH, index=index, evals=evals, out=out, k=k, nprobe=nprobe, ef_search=ef_search,
         recall_queries=recall_queries, chunk_rows=chunk_rows, seed=seed, key_column=key_column, overwrite=overwrite)
