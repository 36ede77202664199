"""``oodlab experiment similarity``: the ICLR 2024 table, end to end.

Given a pool (webdataset shards), the ``oodlab neighbors`` run of the pool against the eval sets
*with reference thresholds* (margins), and the eval datasets, it:

1. defines the training sets (key lists, :mod:`oodlab.subsets.prune`): the full pool; the
   similarity-aligned pool per eval set (``{eval}-pruned``) and for all of them at once
   (``combined-pruned``); and three controls of the combined-pruned size: ``near-pruned``
   (removes the samples most similar to the eval sets), ``far-pruned`` (removes the least similar)
   and ``random`` (a uniform subset);
2. materialises each as shards (``oodlab subset``), trains CLIP on each with one configuration
   (``oodlab train``) and evaluates the final checkpoint zero-shot on every eval set
   (``oodlab eval``);
3. trains every training set with each of ``seeds`` seeds (the pruning rules stay fixed: only
   initialisation and sample order change) and writes ``results.json`` (every seed's run and
   numbers); from it, the table shaped like the paper's with 95% intervals and each row's paired
   difference from the full pool (``table.md``, ``table.csv``, :mod:`oodlab.experiments.tables`),
   the paper's claims tested on the outputs (``claims.md``, ``claims.csv``,
   :mod:`oodlab.analysis.claims`) and accuracy-vs-similarity plots of the full-pool model
   (``accuracy/{eval}/``).

Every step is resumable: a re-run skips what is complete (each tool keeps its own manifest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from oodlab.analysis.claims import claims_table
from oodlab.experiments.outcomes import RESULTS, Outcomes, load_outcomes
from oodlab.experiments.runs import TrainingSet, fit_rows
from oodlab.experiments.tables import TITLES, similarity_table
from oodlab.utils.atomic import write_json, write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

#: LAION-200M samples flagged by similarity-aligned pruning in the paper, per eval set and for
#: all six at once (notebook output of get_paths.ipynb; ../shared/reference), of about 200M keys
PAPER_PRUNED = {"val": 377_340, "v2": 274_325, "sketch": 8_342_783, "r": 5_735_749, "a": 138_852,
                "objectnet": 266_025, "combined": 12_352_759}
PAPER_POOL = 200_000_000
#: the training sets the experiment knows, in table order (``{eval}-pruned`` expands per eval set)
TRAINING_SETS = ("full", "{eval}-pruned", "combined-pruned", "near-pruned", "far-pruned", "random")


def _key_lists(neighbors: Path, out: Path, evals: Sequence[str], sets: Sequence[str], seed: int) -> dict[str, Path | None]:
    """Write the kept-key lists (``keys/{set}/kept.parquet``) of the requested training sets.

    Returns:
        training set name -> its key-list folder (None: the full pool).
    """
    from oodlab.subsets.prune import prune_aligned, prune_far, prune_near, prune_random

    keys = out / "keys"
    combined = keys / "combined-pruned"
    # every aligned list is written (a second each): the pruned-fractions table needs them all, and
    # the controls are size-matched to the combined-pruned set
    prune_aligned(neighbors, combined, eval_sets=list(evals))
    for e in evals:
        prune_aligned(neighbors, keys / f"{e}-pruned", eval_sets=[e])
    size = _count(combined / "kept.parquet") if combined.exists() else 0
    rules = {
        "full": lambda folder: None,
        "combined-pruned": lambda folder: None,  # already written
        "near-pruned": lambda folder: prune_near(neighbors, folder, eval_sets=list(evals), keep=size),
        "far-pruned": lambda folder: prune_far(neighbors, folder, eval_sets=list(evals), keep=size),
        "random": lambda folder: prune_random(folder, neighbors=neighbors, like=combined / "kept.parquet", seed=seed),
    }
    lists: dict[str, Path | None] = {}
    for name in sets:
        if name == "{eval}-pruned":
            lists.update({f"{e}-pruned": keys / f"{e}-pruned" for e in evals})
        elif name in rules:
            rules[name](keys / name)
            lists[name] = None if name == "full" else keys / name
        else:
            raise InputError(None, f"unknown training set {name!r}", f"choose from {list(TRAINING_SETS)}")
    return lists


def _count(parquet: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(parquet).metadata.num_rows


def experiment_similarity(
    train_data: Sequence[str | Path],
    neighbors: str | Path,
    eval_data: Mapping[str, str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    training_sets: Sequence[str] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    seeds: int = 1,
    full_run: str | Path | None = None,
    per_shard: int = 10_000,
    workers: int = 1,
    parallel: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate CLIP on the pool and its pruned variants; write the paper's table.

    Args:
        train_data: the pool's webdataset shards (a folder of tars or patterns).
        neighbors: an ``oodlab neighbors`` folder of the pool against the eval sets, run with a
            reference store (its margins define the similarity-aligned sets).
        eval_data: eval set name (as in ``neighbors``) -> dataset folder for zero-shot evaluation.
        out: output folder (``keys/``, ``shards/``, ``runs/{set}/seed-{s}/``,
            ``eval/{set}/seed-{s}/``, ``accuracy/``, ``results.json``, ``table.md``, ``table.csv``,
            ``claims.md``, ``claims.csv``, ``manifest.json``).
        model: the CLIP architecture trained for every row.
        training_sets: training sets, from :data:`TRAINING_SETS` (``{eval}-pruned`` stands for one
            per eval set; default: all).
        epochs, batch_size, lr: training configuration shared by every row (None: the model's
            defaults, see ``oodlab train``; the epochs are the full pool's default for every row).
        seed: the first training seed, and the seed of the random control.
        seeds: training seeds per training set (``seed``, ``seed + 1``, ...): the tables report
            the mean and a 95% interval over them (3 or more for a usable interval).
        full_run: an existing ``oodlab train`` run on the full pool to reuse for its row's first
            seed (e.g. the model that embedded the data), trained with the same configuration.
        per_shard: samples per shard of the materialised training sets.
        workers: data-loading processes for training and evaluation (evaluation decodes
            in-process when ``parallel > 1``).
        parallel: training runs side by side, each with ``cores / parallel`` compute threads (on
            CPU, two single-threaded runs of a tiny model do ~25% more work than one run with two
            threads: its small matrix products do not scale across cores).
        device: ``cpu`` or ``cuda``.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`); each step
            (key lists, shards, runs, evaluations) resumes on its own.

    Returns:
        the manifest: ``table`` holds the rows with their intervals, ``table_md`` the Markdown
        table, ``claims`` and ``claims_md`` the claims table.
    """
    from oodlab.data.sources import shard_paths
    from oodlab.subsets.reshard import subset
    from oodlab.train.config import defaults_for

    if seeds < 1:
        raise InputError(None, f"seeds must be >= 1, got {seeds}", "pass --seeds 3 (or more) for intervals")
    if not eval_data:
        raise InputError(None, "no eval datasets given", "pass --eval-data NAME=PATH for each eval set")
    names = check_names(eval_data, "eval set")
    sets = list(training_sets or TRAINING_SETS)
    pool = shard_paths(train_data)
    neighbors = Path(neighbors)
    run = RunFolder(out, "experiment similarity",
                    inputs={"train_data": [str(p) for p in pool], "neighbors": fingerprint(neighbors),
                            "eval_data": {k: str(v) for k, v in eval_data.items()},
                            "full_run": None if full_run is None else str(full_run)},
                    parameters={"model": model, "training_sets": sets, "epochs": epochs, "batch_size": batch_size,
                                "lr": lr, "seed": seed, "seeds": seeds, "per_shard": per_shard, "device": device},
                    settings={"workers": workers, "parallel": parallel},
                    reads=[neighbors, *pool, *eval_data.values()] + ([full_run] if full_run else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    out = run.out
    with Timer() as timer:
        lists = _key_lists(neighbors, out, names, sets, seed)
        jobs: dict[str, TrainingSet] = {}
        for name, keys in lists.items():
            if keys is None:
                reuse = {seed: Path(full_run)} if (name == "full" and full_run is not None) else None
                jobs[name] = TrainingSet(pool, _pool_size(pool), 0, reuse)
            else:
                # the key lists are small and copied in a second: in this process, no worker start-up
                manifest = subset(keys / "kept.parquet", pool, out / "shards" / name, per_shard=per_shard, workers=0)
                jobs[name] = TrainingSet([out / "shards" / name], manifest["counts"]["written"],
                                         _count(keys / "removed.parquet"))
        seed_list = [seed + i for i in range(seeds)]
        if epochs is None:  # the full pool's default, for every row: the papers train each subset
            # for the same epochs, and a smaller set must not get more passes than the pool
            epochs = defaults_for(model).epochs_for(_pool_size(pool))
        rows = fit_rows(jobs, eval_data, out, seeds=seed_list, model=model, epochs=epochs, batch_size=batch_size,
                        lr=lr, workers=workers, parallel=parallel, device=device)
        results = {"eval_sets": names, "seeds": seed_list, "neighbors": str(neighbors), "model": model,
                   "epochs": epochs, "rows": rows}
        write_json(out / RESULTS, results)
        pruned = _pruned_table(out, names, _pool_size(pool))
        outcomes = load_outcomes(out)
        _accuracy_plots(out, neighbors, names, outcomes)
        table = similarity_table(outcomes, out)
        claims = claims_table(outcomes, out)
    manifest = run.finish(counts={"training_sets": len(jobs), "seeds": seeds},
                          outputs={"results": RESULTS, "pruned": "pruned.md", "table": "table.md", "csv": "table.csv", "claims": "claims.md",
                                   "claims_csv": "claims.csv"},
                          pruned=pruned["rows"], pruned_md=pruned["markdown"],
                          table=table["rows"], table_md=table["markdown"], claims=claims["rows"], claims_md=claims["markdown"])
    summary(f"experiment similarity: {len(jobs)} training sets x {seeds} seeds x {len(names)} eval sets in "
            f"{timer.seconds:.0f} s "
            f"-> {out / 'table.md'}")
    return manifest


def _pruned_table(out: Path, names: list[str], pool_size: int) -> dict[str, Any]:
    """``pruned.md`` / ``pruned.csv``: the share of the pool that similarity-aligned pruning removes
    per eval set and combined, next to the paper's share of LAION-200M (:data:`PAPER_PRUNED`).

    Returns:
        ``rows`` (eval_set, removed, share, paper_removed, paper_share, ratio; shares are
        fractions, ratio = share / paper_share) and ``markdown``.
    """
    rows = []
    for e in [*names, "combined"]:
        removed = _count(out / "keys" / ("combined-pruned" if e == "combined" else f"{e}-pruned") / "removed.parquet")
        paper = PAPER_PRUNED.get(e)
        share = removed / pool_size
        paper_share = None if paper is None else paper / PAPER_POOL
        rows.append({"eval_set": e, "removed": removed, "share": share, "paper_removed": paper, "paper_share": paper_share,
                     "ratio": None if not paper_share else share / paper_share})
    md = [f"Similarity-aligned pruning: share of the pool ({pool_size:,} samples) removed, next to the paper's share of "
          "LAION-200M (about 200M samples)", "",
          "| Eval set | Removed | Share of pool (%) | LAION-200M removed | Share of LAION-200M (%) | Ratio |",
          "|---|---:|---:|---:|---:|---:|"]
    csv = ["eval_set,removed,share,paper_removed,paper_share,ratio"]
    for r in rows:
        paper = ("n/a", "n/a", "n/a") if r["paper_removed"] is None else (
            f"{r['paper_removed']:,}", f"{100 * r['paper_share']:.2f}", f"{r['ratio']:.1f}x")
        md.append(f"| {TITLES.get(r['eval_set'], r['eval_set'])} | {r['removed']:,} | {100 * r['share']:.2f} | "
                  + " | ".join(paper) + " |")
        csv.append(",".join("" if r[k] is None else str(r[k]) for k in ("eval_set", "removed", "share", "paper_removed",
                                                                         "paper_share", "ratio")))
    markdown = "\n".join(md) + "\n"
    write_text(out / "pruned.md", markdown)
    write_text(out / "pruned.csv", "\n".join(csv) + "\n")
    return {"rows": rows, "markdown": markdown}


def _pool_size(pool: list[Path]) -> int:
    from oodlab.train.data import resolve_train_data

    return resolve_train_data(pool).count


def _accuracy_plots(out: Path, neighbors: Path, names: list[str], outcomes: Outcomes) -> None:
    """Accuracy vs nearest-neighbour similarity to the pool, for the full-pool model's first seed."""
    from oodlab.analysis.accuracy import similarity_accuracy

    if "full" not in outcomes.rows:
        return
    first = outcomes.rows["full"]["seeds"][str(outcomes.seeds[0])]
    predictions = {name: out / first["predictions"][name] for name in names}
    similarity_accuracy(neighbors, predictions, out / "accuracy", bins=8, binning="mass")
