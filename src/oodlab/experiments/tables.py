"""The ICLR 2024 table with its uncertainty, computed from an experiment's outcomes.

Each cell: the mean zero-shot top-1 over the seeds with a 95% Student-t interval; each row but the
full pool's also gets its paired difference from the full pool (same seeds, same test samples)
with a 95% two-level bootstrap interval (:mod:`oodlab.analysis.intervals`), marked ``*`` where
the interval excludes 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oodlab.analysis.intervals import CONFIDENCE, finite, paired_difference, seed_interval
from oodlab.experiments.outcomes import Outcomes
from oodlab.utils.atomic import write_text

#: the paper's column titles, by eval set name (others keep their name)
TITLES = {"val": "Val", "sketch": "Sketch", "a": "A", "r": "R", "v2": "V2", "objectnet": "ObjectNet"}
FULL = "full"


def points(x: float | None) -> str:
    """A fraction as percentage points with one decimal (``n/a`` for None)."""
    return "n/a" if x is None else f"{100 * x:.1f}"


def interval_cell(mean: float, low: float | None, high: float | None) -> str:
    """A table cell: the mean in points ± the interval's half-width (the mean alone without one)."""
    return points(mean) if low is None or high is None else f"{points(mean)} ± {100 * (high - low) / 2:.1f}"


def difference_cell(d: dict[str, Any]) -> str:
    """A paired difference in points with its interval, ``*`` where the interval excludes 0."""
    mark = "*" if d["significant"] else ""
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{mark}"


def similarity_table(outcomes: Outcomes, out: str | Path | None = None) -> dict[str, Any]:
    """Rows with intervals; with ``out``, also ``table.md`` and ``table.csv`` there.

    Returns:
        ``rows``: per training set its size, removed count, ``top1_per_seed`` ({eval: [S]}),
        ``top1`` ({eval: {estimate, low, high}}) and, against the full pool, ``difference``
        ({eval: {estimate, low, high, significant}}), all fractions in [0, 1] (differences in
        [-1, 1]); ``markdown``: the table.
    """
    names, full = outcomes.eval_sets, FULL if FULL in outcomes.rows else None
    rows = []
    for name, record in outcomes.rows.items():
        row: dict[str, Any] = {"training_set": name, "size": record["size"], "removed": record["removed"],
                               "top1_per_seed": {}, "top1": {}, "difference": {}}
        for e in names:
            per_seed = outcomes.top1(name, e)
            row["top1_per_seed"][e] = per_seed.tolist()
            i = seed_interval(per_seed)
            row["top1"][e] = {"estimate": i.estimate, "low": finite(i.low), "high": finite(i.high)}
            if full is not None and name != full:
                row["difference"][e] = paired_difference(outcomes.correct(name, e), outcomes.correct(full, e)).as_dict()
        rows.append(row)
    markdown = _markdown(rows, names, len(outcomes.seeds), full)
    if out is not None:
        write_text(Path(out) / "table.md", markdown)
        write_text(Path(out) / "table.csv", _csv(rows, names, len(outcomes.seeds)))
    return {"rows": rows, "markdown": markdown}


def _markdown(rows: list[dict[str, Any]], names: list[str], n_seeds: int, full: str | None) -> str:
    titles = [TITLES.get(n, n) for n in names]
    lines = ["| Dataset | Size | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for r in rows:
        is_base = full is None or r["training_set"] == full
        label = r["training_set"] if is_base else f"- {r['training_set']}"
        size = f"{r['size']:,}" if is_base else f"-{r['removed']:,}"
        cells = []
        for e in names:
            t = r["top1"][e]
            cell = interval_cell(t["estimate"], t["low"], t["high"])
            cells.append(cell if is_base else f"{cell} ({difference_cell(r['difference'][e])})")
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " |")
    pct = round(100 * CONFIDENCE)
    head = (f"Zero-shot top-1 (%) of CLIP trained on each training set: mean over {n_seeds} seed(s) "
            f"± half-width of the {pct}% t-interval")
    if full is not None:
        head += (f"; in brackets each row's paired difference from the {full} pool (points) with its {pct}% "
                 "bootstrap interval over seeds and test samples, * where it excludes 0")
    return head + "\n\n" + "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], names: list[str], n_seeds: int) -> str:
    lines = ["training_set,size,removed,eval_set,seeds,top1,top1_low,top1_high,difference,difference_low,"
             "difference_high,significant"]
    for r in rows:
        for e in names:
            t, d = r["top1"][e], r["difference"].get(e)
            diff = ("", "", "", "") if d is None else (f"{100 * d['estimate']:.2f}", f"{100 * d['low']:.2f}",
                                                       f"{100 * d['high']:.2f}", str(d["significant"]).lower())
            lines.append(",".join([r["training_set"], str(r["size"]), str(r["removed"]), e, str(n_seeds),
                                   *("" if t[k] is None else f"{100 * t[k]:.2f}" for k in ("estimate", "low", "high")),
                                   *diff]))
    return "\n".join(lines) + "\n"
