"""CLI: ``prune near|far|aligned|random``, ``dedup`` and ``subset`` (key lists and new shards)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import app, call, command, subapp

NEAR = "oodlab.subsets.prune:prune_near"
FAR = "oodlab.subsets.prune:prune_far"
ALIGNED = "oodlab.subsets.prune:prune_aligned"
RANDOM = "oodlab.subsets.prune:prune_random"
DEDUP = "oodlab.subsets.dedup:dedup"
SUBSET = "oodlab.subsets.reshard:subset"

prune_app = subapp(
    "prune",
    "Prune a pool by similarity to eval sets; every rule writes kept.parquet (the keys that stay) and removed.parquet.",
)

_NEIGHBORS = typer.Argument(..., help="Output folder of `oodlab neighbors` (its train/part_*.parquet).")
_OUT = typer.Option(..., help="Output folder (kept.parquet, removed.parquet, manifest.json).")
_EVALS = typer.Option(None, "--eval", help="Eval set name; repeat for several (score = max over them). Default: all.")
_KEEP_FROM = typer.Option(None, help="Key list (e.g. an earlier kept.parquet): only its keys are considered.")


@command(prune_app, "near", NEAR)
def near(
    neighbors: Path = _NEIGHBORS,
    out: Path = _OUT,
    evals: Optional[List[str]] = _EVALS,
    keep: Optional[int] = typer.Option(None, help="Keep the N LEAST similar samples (ties: training order)."),
    threshold: Optional[float] = typer.Option(None, help="Instead of --keep: remove samples with max similarity > T."),
    keep_from: Optional[Path] = _KEEP_FROM,
) -> None:
    """Remove the pool samples most similar to the eval sets (the paper's near-pruned sets)."""
    call(NEAR, neighbors=neighbors, out=out, evals=evals or None, keep=keep, threshold=threshold, keep_from=keep_from)


@command(prune_app, "far", FAR)
def far(
    neighbors: Path = _NEIGHBORS,
    out: Path = _OUT,
    evals: Optional[List[str]] = _EVALS,
    keep: Optional[int] = typer.Option(None, help="Keep the N MOST similar samples (ties: training order)."),
    threshold: Optional[float] = typer.Option(None, help="Instead of --keep: remove samples with max similarity < T."),
    keep_from: Optional[Path] = _KEEP_FROM,
) -> None:
    """Remove the pool samples least similar to the eval sets (the paper's far-pruned sets)."""
    call(FAR, neighbors=neighbors, out=out, evals=evals or None, keep=keep, threshold=threshold, keep_from=keep_from)


@command(prune_app, "aligned", ALIGNED)
def aligned(
    neighbors: Path = typer.Argument(..., help="Output folder of `oodlab neighbors` run with --reference (margins)."),
    out: Path = _OUT,
    evals: Optional[List[str]] = typer.Option(None, "--eval", help="Eval set name; repeat for the union (combined-pruned). Default: all with margins."),
    keep_from: Optional[Path] = _KEEP_FROM,
) -> None:
    """Similarity-aligned pruning: remove j iff s(i, j) > t_i for some eval sample i (exact margins)."""
    call(ALIGNED, neighbors=neighbors, out=out, evals=evals or None, keep_from=keep_from)


@command(prune_app, "random", RANDOM)
def random_subset(
    pool: Path = typer.Argument(..., help="Keys to draw from: a neighbors folder, an embedding store or a key list."),
    out: Path = _OUT,
    keep: Optional[int] = typer.Option(None, help="Subset size."),
    like: Optional[Path] = typer.Option(None, help="Instead of --keep: the size of this key list (e.g. another rule's kept.parquet)."),
    seed: int = typer.Option(0, help="Seed of the per-key random priorities."),
    keep_from: Optional[Path] = _KEEP_FROM,
) -> None:
    """A uniform random subset without replacement (the paper's size-matched controls)."""
    call(RANDOM, pool=pool, out=out, keep=keep, like=like, seed=seed, keep_from=keep_from)


@command(app, "dedup", DEDUP)
def dedup(
    store: Path = typer.Argument(..., help="Embedding store to deduplicate."),
    out: Path = typer.Option(..., help="Output folder (kept.parquet, removed.parquet, centroids.npy, manifest.json)."),
    eps: float = typer.Option(..., help="Remove an item with cosine similarity > 1 - EPS to a kept item (paper: 0.124)."),
    clusters: Optional[int] = typer.Option(None, help="k-means clusters (default: one per 10,000 rows)."),
    sample_rows: int = typer.Option(200_000, help="Rows sampled (seeded) to train k-means."),
    iterations: int = typer.Option(20, help="k-means iterations."),
    seed: int = typer.Option(0, help="Seed of the k-means sample and initialisation."),
    rule: str = typer.Option("greedy", help="greedy (compare with kept items) or all-earlier (the reference code's rule)."),
    keep_from: Optional[Path] = _KEEP_FROM,
    chunk_rows: int = typer.Option(65536, help="Rows per assignment chunk."),
    block_rows: int = typer.Option(2048, help="Rows per within-cluster similarity block."),
    group_rows: int = typer.Option(1 << 22, help="Rows per bucket of clusters processed together."),
    key_column: Optional[str] = typer.Option(None, help="Metadata column holding sample keys."),
    group_column: str = typer.Option("duplicate_group", help="Metadata column with ground-truth duplicate groups (precision/recall if present)."),
) -> None:
    """Semantic deduplication (SemDeDup): spherical k-means, then greedy within-cluster pruning."""
    call(DEDUP, store=store, out=out, eps=eps, clusters=clusters, sample_rows=sample_rows, iterations=iterations,
         seed=seed, rule=rule, keep_from=keep_from, chunk_rows=chunk_rows, block_rows=block_rows,
         group_rows=group_rows, key_column=key_column, group_column=group_column)


@command(app, "subset", SUBSET)
def subset(
    keys: Path = typer.Argument(..., help="Key list: parquet with a 'key' column (e.g. kept.parquet) or .txt."),
    shards: List[str] = typer.Option(..., help="Input shards: folder, tar, brace pattern or glob; repeat for several (order kept)."),
    out: Path = typer.Option(..., help="Output folder for the new shards."),
    per_shard: int = typer.Option(10_000, help="Samples per output shard (the last may hold fewer)."),
    workers: int = typer.Option(1, help="Processes (the output does not depend on it)."),
    verify: bool = typer.Option(True, help="Re-index each written tar and check it against the plan."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
) -> None:
    """Copy the samples of a key list out of webdataset shards into new shards, byte for byte."""
    call(SUBSET, keys=keys, shards=shards, out=out, per_shard=per_shard, workers=workers, verify=verify, overwrite=overwrite)
