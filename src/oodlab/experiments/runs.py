"""The experiments' one way to train training sets with several seeds and evaluate every run.

Each (training set, seed) is an ``oodlab train`` run under ``OUT/runs/{set}/seed-{s}/`` (or an
existing run reused for it), evaluated zero-shot on every eval set right after it ends under
``OUT/eval/{set}/seed-{s}/``; runs go side by side (``parallel``), largest training set first.
The records become the ``rows`` of an experiment's ``results.json``
(:mod:`oodlab.experiments.outcomes`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class TrainingSet:
    """A row of an experiment: its data (shards), size and removed count, and runs to reuse by seed."""

    data: Sequence[Path]
    size: int
    removed: int = 0
    reuse: Mapping[int, Path] | None = None


def fit_rows(
    rows: Mapping[str, TrainingSet],
    eval_data: Mapping[str, str | Path],
    out: Path,
    *,
    seeds: Sequence[int],
    model: str,
    epochs: int,
    batch_size: int | None = None,
    lr: float | None = None,
    workers: int = 1,
    parallel: int = 1,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train every training set with every seed (a finished run is kept, an interrupted one
    resumed) and evaluate each run on every eval set.

    Returns:
        per training set, in the order given: {training_set, size, removed, seeds: {"s": {run,
        checkpoint, predictions: {eval set: path relative to ``out``}}}}.
    """
    from oodlab.evaluation.evaluate import evaluate
    from oodlab.models.checkpoints import final_checkpoint
    from oodlab.train.run import train

    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    names = list(eval_data)

    def fit(job: tuple[str, int]) -> dict[str, Any]:
        """Train, then evaluate right away: the evaluation fills the time another run leaves a
        core idle."""
        name, s = job
        reuse = (rows[name].reuse or {}).get(s)
        folder = Path(reuse) if reuse is not None else out / "runs" / name / f"seed-{s}"
        if reuse is None:
            train(rows[name].data, folder, model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=s,
                  workers=workers, threads=threads, device=device)
        # with runs side by side, this thread must not fork DataLoader workers (a fork while
        # another thread holds a lock can deadlock the child): evaluation decodes in-process
        evaluate(final_checkpoint(folder), dict(eval_data), out / "eval" / name / f"seed-{s}", model=model,
                 device=device, workers=workers if parallel <= 1 else 0)
        label = final_checkpoint(folder).stem
        return {"run": str(folder), "checkpoint": str(final_checkpoint(folder)),
                "predictions": {n: f"eval/{name}/seed-{s}/{label}/{n}/predictions.parquet" for n in names}}

    # largest first, seeds interleaved: the pool of runs stays busy to the end
    order = sorted(((n, s) for n in rows for s in seeds), key=lambda j: (-rows[j[0]].size, j[1]))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool_of_runs:
        fitted = dict(zip(order, pool_of_runs.map(fit, order)))
    return [{"training_set": name, "size": r.size, "removed": r.removed,
             "seeds": {str(s): fitted[(name, s)] for s in seeds}} for name, r in rows.items()]
