"""The papers' claims, tested on an experiment's outcomes.

Each claim is a statistic with a 95% interval and the sign the claim predicts; its verdict is
computed, never written: ``holds`` (the interval lies on the predicted side of 0), ``fails``
(it lies on the other side: the world says the opposite) or ``inconclusive`` (it contains 0, or
there is no interval: one seed). ICLR 2024's claims (Mayilvahanan et al.):

* ``accuracy rises with similarity``: per eval set, Spearman's rho of per-sample correctness (the
  full-pool model's, averaged over seeds) with the sample's nearest-neighbour similarity to the
  pool, bootstrap over samples; predicted > 0.
* ``near pruning hurts more than random``: top-1 of ``near-pruned`` minus ``random`` (the same
  size), averaged over the eval sets the pruning targeted, paired bootstrap over seeds and
  samples; predicted < 0.
* ``aligned pruning costs less than near``: ``combined-pruned`` minus ``near-pruned`` (the same
  size); predicted > 0.
* ``far pruning costs less than near``: ``far-pruned`` minus ``near-pruned``; predicted > 0.

A claim whose training sets the experiment did not train is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oodlab.analysis.intervals import CONFIDENCE, Interval, finite, paired_difference, trend
from oodlab.utils.atomic import write_text

VERDICTS = ("holds", "fails", "inconclusive")


def verdict(interval: Interval, sign: int) -> str:
    """``holds`` / ``fails`` / ``inconclusive`` for a statistic predicted to be > 0 (sign +1) or < 0 (-1)."""
    low, high = interval.low * sign, interval.high * sign
    low, high = min(low, high), max(low, high)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    return "holds" if low > 0 else "fails" if high < 0 else "inconclusive"


def within(bound: float) -> Callable[[Interval], str]:
    """The verdict of "the statistic is within +-bound" (an equivalence claim): holds when the
    whole interval is inside, fails when it lies wholly outside, else inconclusive."""
    def judge(interval: Interval) -> str:
        if math.isnan(interval.low) or math.isnan(interval.high):
            return "inconclusive"
        if -bound <= interval.low and interval.high <= bound:
            return "holds"
        return "fails" if interval.low > bound or interval.high < -bound else "inconclusive"
    return judge


def at_least(level: float) -> Callable[[Interval], str]:
    """The verdict of "the statistic exceeds ``level``": the interval above / below / across it."""
    def judge(interval: Interval) -> str:
        shifted = Interval(interval.estimate - level, interval.low - level, interval.high - level)
        return verdict(shifted, +1)
    return judge


@dataclass(frozen=True)
class Claim:
    """A claim: its wording, the statistic that tests it, what it predicts, how it is computed.

    ``test`` maps the outcomes to (scope, interval) pairs: one per eval set, or one for all;
    ``judge`` turns an interval into a verdict (default: the sign ``sign`` predicts);
    ``predicted`` says what the claim predicts in the table (default: from the sign).
    """

    text: str
    statistic: str
    sign: int
    needs: tuple[str, ...]
    test: Callable[[Any], list[tuple[str, Interval]]]
    judge: Callable[[Interval], str] | None = None
    predicted: str | None = None
    scale: str = "points"


def _trend(outcomes: Any) -> list[tuple[str, Interval]]:
    return [(e, trend(outcomes.similarity(e), outcomes.correct("full", e).mean(axis=0))) for e in outcomes.eval_sets]


def _versus(a: str, b: str) -> Callable[[Any], list[tuple[str, Interval]]]:
    def test(outcomes: Any) -> list[tuple[str, Interval]]:
        names = outcomes.eval_sets
        return [("mean over " + ", ".join(names), paired_difference([outcomes.correct(a, e) for e in names],
                                                                     [outcomes.correct(b, e) for e in names]))]
    return test


#: claim id -> claim, in the order of the claims table
CLAIMS: dict[str, Claim] = {
    "accuracy-rises-with-similarity": Claim(
        "accuracy rises with nearest-neighbour similarity to the pool", "Spearman rho(similarity, correct), full pool",
        +1, ("full",), _trend, scale="rho"),
    "near-hurts-more-than-random": Claim(
        "near pruning hurts more than random pruning of the same size", "top-1 near-pruned - random (points)",
        -1, ("near-pruned", "random"), _versus("near-pruned", "random")),
    "aligned-costs-less-than-near": Claim(
        "similarity-aligned pruning costs less than near pruning of the same size",
        "top-1 combined-pruned - near-pruned (points)", +1, ("combined-pruned", "near-pruned"),
        _versus("combined-pruned", "near-pruned")),
    "far-costs-less-than-near": Claim(
        "far pruning costs less than near pruning of the same size", "top-1 far-pruned - near-pruned (points)",
        +1, ("far-pruned", "near-pruned"), _versus("far-pruned", "near-pruned")),
}


def claims_table(outcomes: Any, out: str | Path | None = None, *, claims: dict[str, Claim] | None = None,
                 paper: str = "ICLR 2024") -> dict[str, Any]:
    """Test every claim whose training sets the outcomes hold; with ``out``, write ``claims.md``
    and ``claims.csv`` there.

    Args:
        outcomes: an :class:`oodlab.experiments.outcomes.Outcomes`.
        out: folder for the two files (None: only return them).
        claims: the registry (default: ICLR 2024's :data:`CLAIMS`).
        paper: named in the table's title.

    Returns:
        ``rows``: per claim and scope: claim id, text, scope, statistic, estimate, low, high
        (rho, or differences as fractions), predicted sign, verdict; ``markdown``: the table.
    """
    rows = []
    for cid, claim in (CLAIMS if claims is None else claims).items():
        if not all(n in outcomes.rows for n in claim.needs):
            continue
        for scope, interval in claim.test(outcomes):
            rows.append({"claim": cid, "text": claim.text, "scope": scope, "statistic": claim.statistic,
                         "estimate": finite(interval.estimate), "low": finite(interval.low),
                         "high": finite(interval.high),
                         "predicted": claim.predicted or ("> 0" if claim.sign > 0 else "< 0"),
                         "verdict": claim.judge(interval) if claim.judge else verdict(interval, claim.sign),
                         "scale": claim.scale})
    markdown = _markdown(rows, len(outcomes.seeds), paper)
    if out is not None:
        write_text(Path(out) / "claims.md", markdown)
        write_text(Path(out) / "claims.csv", _csv(rows))
    return {"rows": rows, "markdown": markdown}


def _scaled(row: dict[str, Any], key: str) -> str:
    x = row[key]
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f}" if row["scale"] == "points" else f"{x:+.3f}"


def _markdown(rows: list[dict[str, Any]], n_seeds: int, paper: str) -> str:
    pct = round(100 * CONFIDENCE)
    lines = [f"Claims of {paper} tested on this experiment ({n_seeds} seed(s); {pct}% intervals; verdicts "
             "computed from the outputs)", "",
             f"| Claim | On | Statistic | Estimate | {pct}% interval | Predicted | Verdict |",
             "|---|---|---|---:|---:|:---:|---|"]
    for r in rows:
        lines.append(f"| {r['text']} | {r['scope']} | {r['statistic']} | {_scaled(r, 'estimate')} | "
                     f"[{_scaled(r, 'low')}, {_scaled(r, 'high')}] | {r['predicted']} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["claim", "text", "scope", "statistic", "estimate", "low", "high",
                                                "predicted", "verdict", "scale"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buffer.getvalue()
