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

from oodlab.utils.atomic import atomic_open, write_json
from oodlab.utils.errors import InputError
from oodlab.utils.manifest import build_manifest
from oodlab.utils.progress import Timer, summary

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
        prune_aligned(neighbors, combined, evals=list(evals))
    size = _count(combined / "kept.parquet") if combined.exists() else 0
    rules = {
        "full": lambda folder: None,
        "combined-pruned": lambda folder: None,  # already written
        "near-pruned": lambda folder: prune_near(neighbors, folder, evals=list(evals), keep=size),
        "far-pruned": lambda folder: prune_far(neighbors, folder, evals=list(evals), keep=size),
        "random": lambda folder: prune_random(neighbors, folder, like=combined / "kept.parquet", seed=seed),
    }
    lists: dict[str, Path | None] = {}
    for name in sets:
        if name == "{eval}-pruned":
            for e in evals:
                prune_aligned(neighbors, keys / f"{e}-pruned", evals=[e])
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


def similarity_experiment(
    pool: str | Path,
    neighbors: str | Path,
    evals: Mapping[str, str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    sets: Sequence[str] = TRAINING_SETS,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    full_run: str | Path | None = None,
    per_shard: int = 1000,
    workers: int = 1,
    parallel: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train and evaluate CLIP on the pool and its pruned variants; write the paper's table.

    Args:
        pool: the pool's webdataset shards (a folder of tars or patterns).
        neighbors: an ``oodlab neighbors`` folder of the pool against the eval sets, run with
            ``--reference`` (its margins define the similarity-aligned sets).
        evals: eval set name (as in ``neighbors``) -> dataset folder for zero-shot evaluation.
        out: output folder (``keys/``, ``shards/``, ``runs/``, ``eval/``, ``accuracy/``,
            ``table.md``, ``table.csv``, ``manifest.json``).
        model: the CLIP architecture trained for every row.
        sets: training sets, from :data:`TRAINING_SETS` (``{eval}-pruned`` stands for one per
            eval set).
        epochs, batch_size, lr: training configuration shared by every row (None: the model's
            defaults, see ``oodlab train``).
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

    Returns:
        the manifest, whose ``table`` holds the rows.
    """
    from oodlab.evaluation.evaluate import evaluate
    from oodlab.models.checkpoints import final_checkpoint
    from oodlab.subsets.reshard import subset
    from oodlab.train.run import train

    out, pool, neighbors = Path(out), Path(pool), Path(neighbors)
    if not evals:
        raise InputError(None, "no eval datasets given", "pass --eval NAME=PATH for each eval set")
    names = list(evals)
    with Timer() as timer:
        lists = _key_lists(neighbors, out, names, sets, seed)
        jobs = {}  # training set -> (data, size, removed, run)
        for name, keys in lists.items():
            if keys is None:
                data, size, removed = pool, _pool_size(pool), 0
            else:
                manifest = subset(keys / "kept.parquet", [pool], out / "shards" / name, per_shard=per_shard)
                data, size = out / "shards" / name, manifest["counts"]["written"]
                removed = _count(keys / "removed.parquet")
            run = Path(full_run) if (name == "full" and full_run is not None) else out / "runs" / name
            jobs[name] = (data, size, removed, run)
        threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None

        def fit(name: str) -> dict[str, Any]:
            """Train (a finished run is returned as is, an interrupted one resumed), then evaluate
            right away: the evaluation fills the time another run leaves a core idle."""
            data, _, _, run = jobs[name]
            if not (name == "full" and full_run is not None):
                train(data, model, run, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, workers=workers,
                      threads=threads, device=device)
            # with runs side by side, this thread must not fork DataLoader workers (a fork while
            # another thread holds a lock can deadlock the child): evaluation decodes in-process
            return evaluate(model, final_checkpoint(run), dict(evals), out / "eval" / name, device=device,
                            workers=workers if parallel <= 1 else 0)

        order = sorted(jobs, key=lambda n: -jobs[n][1])  # largest first: the pool stays busy to the end
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool_of_runs:
            evaluated = dict(zip(order, pool_of_runs.map(fit, order)))
        rows = []
        for name, (data, size, removed, run) in jobs.items():
            final = final_checkpoint(run)
            results = evaluated[name]
            accuracy = {n: results["datasets"][n]["metrics"]["acc1"][-1] for n in names}
            rows.append({"training_set": name, "size": size, "removed": removed, "run": str(run),
                         "checkpoint": str(final), "top1": accuracy})
        _accuracy_plots(out, neighbors, names, rows)
        _write_table(out, names, rows)
    manifest = build_manifest(
        "experiment.similarity",
        inputs={"pool": str(pool), "neighbors": str(neighbors), "evals": {k: str(v) for k, v in evals.items()}},
        parameters={"model": model, "sets": list(sets), "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "seed": seed, "full_run": str(full_run) if full_run else None, "parallel": parallel},
        counts={"training_sets": len(rows)},
        outputs={"table": "table.md", "csv": "table.csv"},
    )
    manifest["table"] = rows
    write_json(out / "manifest.json", manifest)
    summary(f"experiment similarity: {len(rows)} training sets x {len(names)} eval sets in {timer.seconds:.0f} s "
            f"-> {out / 'table.md'}")
    return manifest


def _pool_size(pool: Path) -> int:
    from oodlab.train.data import resolve_train_data

    return resolve_train_data(pool).count


def _accuracy_plots(out: Path, neighbors: Path, names: list[str], rows: list[dict]) -> None:
    """Accuracy vs nearest-neighbour similarity to the pool, for the full-pool model."""
    from oodlab.analysis.accuracy import accuracy_vs_similarity

    full = next((r for r in rows if r["training_set"] == "full"), None)
    if full is None:
        return
    label = Path(full["checkpoint"]).stem
    for name in names:
        predictions = out / "eval" / "full" / label / name / "predictions.parquet"
        accuracy_vs_similarity(neighbors, name, predictions, out / "accuracy" / name, bins=8, binning="mass")


def _write_table(out: Path, names: list[str], rows: list[dict]) -> None:
    """``table.md`` and ``table.csv``: rows = training sets (size, removed), columns = eval sets' top-1 (%)."""
    titles = [TITLES.get(n, n) for n in names]
    full = next((r for r in rows if r["training_set"] == "full"), None)
    md = ["| Dataset | Size | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    csv = ["training_set,size,removed," + ",".join(titles)]
    for r in rows:
        label = r["training_set"] if r is full or full is None else f"- {r['training_set']}"
        size = f"{r['size']:,}" if r is full or full is None else f"-{r['removed']:,}"
        md.append(f"| {label} | {size} | " + " | ".join(f"{100 * r['top1'][n]:.2f}" for n in names) + " |")
        csv.append(f"{r['training_set']},{r['size']},{r['removed']}," + ",".join(f"{100 * r['top1'][n]:.2f}" for n in names))
    with atomic_open(out / "table.md", "w", encoding="utf-8") as f:
        f.write("Zero-shot top-1 (%) of CLIP trained on each training set\n\n" + "\n".join(md) + "\n")
    with atomic_open(out / "table.csv", "w", encoding="utf-8") as f:
        f.write("\n".join(csv) + "\n")


def read_table(out: str | Path) -> str:
    """The Markdown table of a finished experiment."""
    path = Path(out) / "table.md"
    if not path.exists():
        raise InputError(path, "is missing", "run `oodlab experiment similarity` first")
    return path.read_text(encoding="utf-8")


