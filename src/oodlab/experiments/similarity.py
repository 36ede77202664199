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
3. writes the table shaped like the paper's (rows: training sets with their sizes; columns: the
   eval sets' top-1) as ``table.md`` and ``table.csv``, and accuracy-vs-similarity plots of the
   full-pool model (``accuracy/{eval}/``).

Every step is resumable: a re-run skips what is complete (each tool keeps its own manifest).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from oodlab.utils.atomic import write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

#: the paper's column titles, by eval set name (others keep their name)
TITLES = {"val": "Val", "sketch": "Sketch", "a": "A", "r": "R", "v2": "V2", "objectnet": "ObjectNet"}
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
    # the controls are size-matched to the combined-pruned set, which is built first
    if any(s in sets for s in ("combined-pruned", "near-pruned", "far-pruned", "random")):
        prune_aligned(neighbors, combined, eval_sets=list(evals))
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
            for e in evals:
                prune_aligned(neighbors, keys / f"{e}-pruned", eval_sets=[e])
                lists[f"{e}-pruned"] = keys / f"{e}-pruned"
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
        out: output folder (``keys/``, ``shards/``, ``runs/``, ``eval/``, ``accuracy/``,
            ``table.md``, ``table.csv``, ``manifest.json``).
        model: the CLIP architecture trained for every row.
        training_sets: training sets, from :data:`TRAINING_SETS` (``{eval}-pruned`` stands for one
            per eval set; default: all).
        epochs, batch_size, lr: training configuration shared by every row (None: the model's
            defaults, see ``oodlab train``; the epochs are the full pool's default for every row).
        seed: seed of training and of the random control.
        full_run: an existing ``oodlab train`` run on the full pool to reuse for its row (e.g.
            the model that embedded the data), trained with the same configuration.
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
        the manifest: ``table`` holds the rows, ``table_md`` the Markdown table.
    """
    from oodlab.data.sources import shard_paths
    from oodlab.evaluation.evaluate import evaluate
    from oodlab.models.checkpoints import final_checkpoint
    from oodlab.subsets.reshard import subset
    from oodlab.train.config import defaults_for
    from oodlab.train.run import train

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
                                "lr": lr, "seed": seed, "per_shard": per_shard, "device": device},
                    settings={"workers": workers, "parallel": parallel},
                    reads=[neighbors, *pool, *eval_data.values()] + ([full_run] if full_run else []))
    done = run.open(overwrite)
    if done is not None:
        return done
    out = run.out
    with Timer() as timer:
        lists = _key_lists(neighbors, out, names, sets, seed)
        jobs = {}  # training set -> (data, size, removed, run)
        for name, keys in lists.items():
            if keys is None:
                data, size, removed = pool, _pool_size(pool), 0
            else:
                # the key lists are small and copied in a second: in this process, no worker start-up
                manifest = subset(keys / "kept.parquet", pool, out / "shards" / name, per_shard=per_shard, workers=0)
                data, size = [out / "shards" / name], manifest["counts"]["written"]
                removed = _count(keys / "removed.parquet")
            run_dir = Path(full_run) if (name == "full" and full_run is not None) else out / "runs" / name
            jobs[name] = (data, size, removed, run_dir)
        threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
        if epochs is None:  # the full pool's default, for every row: the papers train each subset
            # for the same epochs, and a smaller set must not get more passes than the pool
            epochs = defaults_for(model).epochs_for(_pool_size(pool))

        def fit(name: str) -> dict[str, Any]:
            """Train (a finished run is returned as is, an interrupted one resumed), then evaluate
            right away: the evaluation fills the time another run leaves a core idle."""
            data, _, _, run_dir = jobs[name]
            if not (name == "full" and full_run is not None):
                train(data, run_dir, model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      workers=workers, threads=threads, device=device)
            # with runs side by side, this thread must not fork DataLoader workers (a fork while
            # another thread holds a lock can deadlock the child): evaluation decodes in-process
            return evaluate(final_checkpoint(run_dir), dict(eval_data), out / "eval" / name, model=model, device=device,
                            workers=workers if parallel <= 1 else 0)

        order = sorted(jobs, key=lambda n: -jobs[n][1])  # largest first: the pool stays busy to the end
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool_of_runs:
            evaluated = dict(zip(order, pool_of_runs.map(fit, order)))
        rows = []
        for name, (data, size, removed, run_dir) in jobs.items():
            results = evaluated[name]
            accuracy = {n: results["datasets"][n]["metrics"]["acc1"][-1] for n in names}
            rows.append({"training_set": name, "size": size, "removed": removed, "run": str(run_dir),
                         "checkpoint": str(final_checkpoint(run_dir)), "top1": accuracy})
        _accuracy_plots(out, neighbors, names, rows)
        table_md = _write_table(out, names, rows)
    manifest = run.finish(counts={"training_sets": len(rows)}, outputs={"table": "table.md", "csv": "table.csv"},
                          table=rows, table_md=table_md)
    summary(f"experiment similarity: {len(rows)} training sets x {len(names)} eval sets in {timer.seconds:.0f} s "
            f"-> {out / 'table.md'}")
    return manifest


def _pool_size(pool: list[Path]) -> int:
    from oodlab.train.data import resolve_train_data

    return resolve_train_data(pool).count


def _accuracy_plots(out: Path, neighbors: Path, names: list[str], rows: list[dict]) -> None:
    """Accuracy vs nearest-neighbour similarity to the pool, for the full-pool model."""
    from oodlab.analysis.accuracy import similarity_accuracy

    full = next((r for r in rows if r["training_set"] == "full"), None)
    if full is None:
        return
    label = Path(full["checkpoint"]).stem
    predictions = {name: out / "eval" / "full" / label / name / "predictions.parquet" for name in names}
    similarity_accuracy(neighbors, predictions, out / "accuracy", bins=8, binning="mass")


def _write_table(out: Path, names: list[str], rows: list[dict]) -> str:
    """``table.md`` and ``table.csv``: rows = training sets (size, removed), columns = eval sets' top-1 (%).

    Returns:
        the Markdown table.
    """
    titles = [TITLES.get(n, n) for n in names]
    full = next((r for r in rows if r["training_set"] == "full"), None)
    md = ["| Dataset | Size | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    csv = ["training_set,size,removed," + ",".join(titles)]
    for r in rows:
        label = r["training_set"] if r is full or full is None else f"- {r['training_set']}"
        size = f"{r['size']:,}" if r is full or full is None else f"-{r['removed']:,}"
        md.append(f"| {label} | {size} | " + " | ".join(f"{100 * r['top1'][n]:.2f}" for n in names) + " |")
        csv.append(f"{r['training_set']},{r['size']},{r['removed']}," + ",".join(f"{100 * r['top1'][n]:.2f}" for n in names))
    text = "Zero-shot top-1 (%) of CLIP trained on each training set\n\n" + "\n".join(md) + "\n"
    write_text(out / "table.md", text)
    write_text(out / "table.csv", "\n".join(csv) + "\n")
    return text
