"""``oodlab experiment domains``: the ICLR 2025 table, end to end.

Given the pool's shards and its domain predictions (``oodlab domains predict`` with thresholds),
the eval sets and their domain predictions, it:

1. writes the training sets' key lists: ``natural-only`` (the strict natural label), a
   size-matched ``random`` subset of the pool, and ``natural+{k}``: the natural set plus k
   renditions (``oodlab domains mix``; renditions by the strict label where a rendition threshold
   was certified, else by the argmax);
2. trains each with every seed (the full pool's runs can be reused from the ICLR 2024 experiment
   with the same configuration) and evaluates every run on every eval set;
3. writes the slides' table (``table.md`` / ``table.csv``): per training set, top-1 on the
   natural and on the rendition eval sets, standard and clean (only the images predicted to be of
   the set's intended domain), each the mean over those sets with a 95% interval over seeds and
   the paired difference from the full pool; and ``claims.md`` / ``claims.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from oodlab.analysis.claims import Claim, at_least, claims_table, within
from oodlab.analysis.intervals import CONFIDENCE, finite, paired_difference, recovered_share, seed_interval
from oodlab.experiments.outcomes import RESULTS, Outcomes, load_outcomes
from oodlab.experiments.runs import TrainingSet, fit_rows
from oodlab.experiments.tables import difference_cell, interval_cell
from oodlab.utils.atomic import write_json, write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, summary
from oodlab.utils.runs import RunFolder, fingerprint

FULL, NATURAL, RANDOM = "full", "natural-only", "random"
#: "within a few points": the natural accuracy a natural-only model may lose, as a fraction
NATURAL_TOLERANCE = 0.03


@dataclass
class DomainOutcomes:
    """An experiment's outcomes with each eval set's intended domain and clean-sample mask."""

    outcomes: Outcomes
    intended: dict[str, str]
    masks: dict[str, np.ndarray]

    @property
    def rows(self) -> dict[str, Any]:
        return self.outcomes.rows

    @property
    def seeds(self) -> list[int]:
        return self.outcomes.seeds

    def sets(self, domain: str) -> list[str]:
        return [e for e in self.outcomes.eval_sets if self.intended.get(e) == domain]

    def correct(self, row: str, eval_set: str, clean: bool = False) -> np.ndarray:
        """Correctness [S, n] (clean: only the samples predicted of the set's intended domain)."""
        c = self.outcomes.correct(row, eval_set)
        return c[:, self.masks[eval_set]] if clean else c


def _group(o: DomainOutcomes, row: str, domain: str, clean: bool = False) -> list[np.ndarray]:
    return [o.correct(row, e, clean) for e in o.sets(domain)]


def _plus_row(o: DomainOutcomes) -> str | None:
    return next((r for r in o.rows if r.startswith("natural+")), None)


#: the ICLR 2025 claims, tested on the outcomes
DOMAIN_CLAIMS: dict[str, Claim] = {
    "natural-only-loses-renditions": Claim(
        "a natural-only model's rendition accuracy is clearly below the full pool's",
        "top-1 natural-only - full, rendition sets (points)", -1, (NATURAL, FULL),
        lambda o: [("rendition sets", paired_difference(_group(o, NATURAL, "rendition"), _group(o, FULL, "rendition")))]),
    "natural-only-keeps-naturals": Claim(
        f"a natural-only model's natural accuracy stays within {100 * NATURAL_TOLERANCE:.0f} points of the full pool's",
        "top-1 natural-only - full, natural sets (points)", 0, (NATURAL, FULL),
        lambda o: [("natural sets", paired_difference(_group(o, NATURAL, "natural"), _group(o, FULL, "natural")))],
        judge=within(NATURAL_TOLERANCE), predicted=f"within ±{100 * NATURAL_TOLERANCE:.0f}"),
    "few-renditions-recover-most": Claim(
        "adding a few renditions to the natural set recovers most of the rendition accuracy",
        "share of the natural-only to full gap recovered, rendition sets", 0, (NATURAL, FULL),
        lambda o: [] if _plus_row(o) is None else [(_plus_row(o), recovered_share(
            _group(o, _plus_row(o), "rendition"), _group(o, NATURAL, "rendition"), _group(o, FULL, "rendition")))],
        judge=at_least(0.5), predicted="> 0.5", scale="share"),
}


def _clean_mask(predictions: Path, keys: np.ndarray, domain: str) -> np.ndarray:
    from oodlab.domains.model import read_predictions

    predicted = read_predictions(predictions, ["label"])
    label = dict(zip(predicted.key, predicted.label))
    missing = [k for k in keys if k not in label]
    if missing:
        raise InputError(predictions, f"has no prediction for {len(missing)} evaluated samples (e.g. {missing[:3]})",
                         "predict the domains of the same eval store")
    return np.array([label[k] == domain for k in keys])


def experiment_domains(
    train_data: Sequence[str | Path],
    domain_predictions: str | Path,
    eval_data: Mapping[str, str | Path],
    datasets: Mapping[str, str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    additions: Sequence[int] = (),
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    seeds: int = 1,
    full_runs: str | Path | None = None,
    per_shard: int = 10_000,
    workers: int = 1,
    parallel: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate CLIP on the pool, its natural-only subset, a size-matched random subset
    and natural sets with renditions added; write the slides' table and the claims.

    Args:
        train_data: the pool's webdataset shards.
        domain_predictions: the pool's ``oodlab domains predict`` folder (with thresholds).
        eval_data: eval set name -> dataset folder (names with an intended domain, e.g. val, sketch).
        datasets: the same names -> the eval stores' ``oodlab domains predict`` folders (the clean masks).
        out: output folder (``keys/``, ``shards/``, ``runs/``, ``eval/``, ``results.json``,
            ``table.md``, ``table.csv``, ``claims.md``, ``claims.csv``, ``manifest.json``).
        model: the CLIP architecture trained for every row.
        additions: renditions added to the natural set, one ``natural+{k}`` row each.
        epochs, batch_size, lr: shared training configuration (None: the model's defaults; the
            epochs are the full pool's default for every row).
        seed: the first training seed, and the seed of the random subset and the mixtures.
        seeds: training seeds per training set.
        full_runs: an experiment folder (e.g. ``experiment similarity``'s) whose
            ``runs/full/seed-{s}`` were trained with this configuration: reused for the full row.
        per_shard: samples per shard of the materialised training sets.
        workers: data-loading processes for training and evaluation.
        parallel: training runs side by side.
        device: ``cpu`` or ``cuda``.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest: ``table`` / ``table_md`` and ``claims`` / ``claims_md``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oodlab.data.sources import shard_paths
    from oodlab.domains.clean import INTENDED
    from oodlab.domains.mix import domains_mix
    from oodlab.domains.model import prediction_parts
    from oodlab.domains.select import domains_subset
    from oodlab.subsets.keylists import KeyListWriter, count_keys
    from oodlab.subsets.prune import prune_random
    from oodlab.subsets.reshard import subset
    from oodlab.train.config import defaults_for

    if seeds < 1:
        raise InputError(None, f"seeds must be >= 1, got {seeds}", "pass --seeds 3 (or more) for intervals")
    names = check_names(eval_data, "eval set")
    unknown = [n for n in names if n not in INTENDED or n not in datasets]
    if unknown:
        raise InputError(None, f"eval sets {unknown} lack an intended domain or domain predictions",
                         f"pass --dataset NAME=PREDICTIONS for each; names with a domain: {sorted(INTENDED)}")
    pool = shard_paths(train_data)
    run = RunFolder(out, "experiment domains",
                    inputs={"train_data": [str(p) for p in pool], "domain_predictions": fingerprint(domain_predictions),
                            "eval_data": {k: str(v) for k, v in eval_data.items()},
                            "datasets": {k: fingerprint(datasets[k]) for k in names},
                            "full_runs": None if full_runs is None else str(full_runs)},
                    parameters={"model": model, "additions": [int(a) for a in additions], "epochs": epochs,
                                "batch_size": batch_size, "lr": lr, "seed": seed, "seeds": seeds,
                                "per_shard": per_shard, "device": device},
                    settings={"workers": workers, "parallel": parallel},
                    reads=[domain_predictions, *pool, *eval_data.values(), *(datasets[n] for n in names)])
    done = run.open(overwrite)
    if done is not None:
        return done
    out = run.out
    with Timer() as timer:
        keys = out / "keys"
        # a domain by its strict label where its threshold was certified, else by the argmax
        counts = _manifest_counts(domain_predictions)
        natural = domains_subset(domain_predictions, keys / NATURAL, domain="natural",
                                 strict=counts.get("label_strict:natural", 0) > 0)
        domains_subset(domain_predictions, keys / "rendition", domain="rendition",
                       strict=counts.get("label_strict:rendition", 0) > 0)
        with KeyListWriter(keys / "pool.parquet", pa.schema([("key", pa.string())])) as writer:
            for path in prediction_parts(domain_predictions):
                writer.write({"key": pq.read_table(path, columns=["key"]).column("key")})
        prune_random(keys / RANDOM, keys=keys / "pool.parquet", like=keys / NATURAL / "kept.parquet", seed=seed)
        lists = {NATURAL: keys / NATURAL, RANDOM: keys / RANDOM}
        if additions:
            domains_mix(keys / NATURAL / "kept.parquet", keys / "rendition" / "kept.parquet", keys / "mix",
                        additions=list(additions), seed=seed)
            lists.update({f"natural+{int(k)}": keys / "mix" / f"mix-b-plus{int(k)}" for k in additions})
        seed_list = [seed + i for i in range(seeds)]
        pool_size = count_keys(keys / "pool.parquet")
        reuse = None if full_runs is None else {s: Path(full_runs) / "runs" / FULL / f"seed-{s}" for s in seed_list}
        jobs = {FULL: TrainingSet(pool, pool_size, 0, reuse)}
        for name, folder in lists.items():
            written = subset(folder / "kept.parquet", pool, out / "shards" / name, per_shard=per_shard, workers=0)
            size = written["counts"]["written"]
            jobs[name] = TrainingSet([out / "shards" / name], size, pool_size - size)
        if epochs is None:
            epochs = defaults_for(model).epochs_for(pool_size)
        rows = fit_rows(jobs, eval_data, out, seeds=seed_list, model=model, epochs=epochs, batch_size=batch_size,
                        lr=lr, workers=workers, parallel=parallel, device=device)
        write_json(out / RESULTS, {"eval_sets": names, "seeds": seed_list, "neighbors": None, "model": model,
                                   "epochs": epochs, "rows": rows, "natural_kept": natural["counts"]["kept"]})
        outcomes = load_outcomes(out)
        intended = {n: INTENDED[n] for n in names}
        # clean by the argmax: the strict labels leave a class unassigned wherever its threshold
        # was not certified (the demo's renditions), which would empty that class's clean sets
        masks = {n: _clean_mask(Path(datasets[n]), outcomes.keys(n), intended[n]) for n in names}
        view = DomainOutcomes(outcomes, intended, masks)
        table = domain_table(view, out)
        claims = claims_table(view, out, claims=DOMAIN_CLAIMS, paper="ICLR 2025")
    manifest = run.finish(counts={"training_sets": len(jobs), "seeds": seeds,
                                  "clean": {n: int(m.sum()) for n, m in masks.items()}},
                          outputs={"results": RESULTS, "table": "table.md", "claims": "claims.md"},
                          table=table["rows"], table_md=table["markdown"], claims=claims["rows"],
                          claims_md=claims["markdown"])
    summary(f"experiment domains: {len(jobs)} training sets x {seeds} seeds in {timer.seconds:.0f} s -> {out / 'table.md'}")
    return manifest


def _manifest_counts(predictions: str | Path) -> dict[str, int]:
    from oodlab.utils.atomic import read_json

    return read_json(Path(predictions) / "manifest.json").get("counts", {})


#: the slides' columns: (title, domain, clean)
COLUMNS = (("Natural", "natural", False), ("Rendition", "rendition", False),
           ("Clean natural", "natural", True), ("Clean rendition", "rendition", True))


def domain_table(o: DomainOutcomes, out: str | Path | None = None) -> dict[str, Any]:
    """The slides' table: per training set and column, the mean top-1 over the column's eval sets
    (95% t-interval over seeds) and the paired difference from the full pool.

    Returns:
        ``rows`` (per training set: size, per column estimate/low/high and difference) and ``markdown``.
    """
    rows = []
    for name, record in o.rows.items():
        row: dict[str, Any] = {"training_set": name, "size": record["size"], "columns": {}}
        for title, domain, clean in COLUMNS:
            groups = _group(o, name, domain, clean)
            if not groups:
                continue
            per_seed = np.mean([g.mean(axis=1) for g in groups], axis=0)
            i = seed_interval(per_seed)
            cell: dict[str, Any] = {"estimate": i.estimate, "low": finite(i.low), "high": finite(i.high)}
            if name != FULL and FULL in o.rows:
                cell["difference"] = paired_difference(groups, _group(o, FULL, domain, clean)).as_dict()
            row["columns"][title] = cell
        rows.append(row)
    titles = [t for t, d, _ in COLUMNS if o.sets(d)]
    pct = round(100 * CONFIDENCE)
    lines = [f"Zero-shot top-1 (%) by domain: mean over the natural sets ({', '.join(o.sets('natural'))}) and the "
             f"rendition sets ({', '.join(o.sets('rendition'))}), standard and clean, over {len(o.seeds)} seed(s) ± "
             f"half-width of the {pct}% t-interval; in brackets the paired difference from the full pool with its "
             f"{pct}% bootstrap interval, * where it excludes 0", "",
             "| Training set | Size | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for r in rows:
        cells = []
        for t in titles:
            c = r["columns"][t]
            text = interval_cell(c["estimate"], c["low"], c["high"])
            cells.append(f"{text} ({difference_cell(c['difference'])})" if "difference" in c else text)
        lines.append(f"| {r['training_set']} | {r['size']:,} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    if out is not None:
        write_text(Path(out) / "table.md", markdown)
        csv = ["training_set,size,column,top1,top1_low,top1_high,difference,difference_low,difference_high"]
        for r in rows:
            for t, c in r["columns"].items():
                d = c.get("difference", {})
                csv.append(",".join([r["training_set"], str(r["size"]), t,
                                     *("" if c[k] is None else f"{100 * c[k]:.2f}" for k in ("estimate", "low", "high")),
                                     *("" if k not in d else f"{100 * d[k]:.2f}" for k in ("estimate", "low", "high"))]))
        write_text(Path(out) / "table.csv", "\n".join(csv) + "\n")
    return {"rows": rows, "markdown": markdown}

