"""``oodlab prune near|far|aligned|random``: key lists of a pruned pool (the ICLR 2024 subsets).

Every rule reads the pool part by part (see :mod:`oodlab.subsets.sources`) and writes, under
``out``::

    kept.parquet      the keys that STAY in the training set, in training order, with the score
                      that decided (and the eval set / eval sample behind it)
    removed.parquet   the keys that are pruned away, same columns
    manifest.json     rule, parameters, inputs, counts
    counts.csv/.md    (aligned only) samples flagged per eval set and for the union

Both files always hold what their names say: ``kept.parquet`` is the training set. (In the
reference notebook the ``near``/``far`` files held the *kept* keys under names that read the
other way round; see the rules below for the exact mapping.)

Rules (a registry, :data:`RULES`):

- ``near``: score = the maximum similarity of a pool sample to the eval sets (``max_sim__{eval}``,
  max over the chosen sets). Removes the MOST similar samples: ``keep=N`` keeps the N samples with
  the lowest score; ``threshold=T`` removes samples with score ``> T``. This is the paper's
  ``paths_pruned_near_{N}`` (near points thrown away).
- ``far``: same score; removes the LEAST similar: ``keep=N`` keeps the N highest scores;
  ``threshold=T`` removes samples with score ``< T`` (the paper's ``paths_pruned_far_{N}``).
- ``aligned``: similarity-aligned pruning. Removes pool sample j iff some eval sample i has
  ``s(i, j) > t_i`` (strict), ``t_i`` being eval sample i's nearest-neighbour similarity to the
  reference set, i.e. iff ``margin__{eval} = max_i (s_ij - t_i) > 0`` exactly as ``oodlab
  neighbors`` computed it (float64, no candidate truncation). With several eval sets the union is
  removed (the paper's "combined-pruned" set). Score = the largest margin over the chosen sets.
- ``random``: a uniform random subset of a given size, without replacement, seeded: every key gets
  the priority ``u = blake2b-64(key; seed) / 2**64`` (uniform in [0, 1)) and the N keys with the
  lowest priority are kept. The choice depends only on the seed and the keys (not on shard order,
  part layout or position), so there is no bias toward early shards, and the subsets for one
  seed are nested (the 50M keys lie inside the 75M keys).

Ties: ``keep=N`` breaks ties at the cut by training order (the earlier sample is kept), ties in
the eval set behind a score go to the eval set named first.

Memory: one part at a time, plus for ``keep=N`` the score column (8 bytes per considered row)
and for ``keep_from`` the set of its keys.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from oodlab.similarity.layout import ARGMAX, MARGIN, MARGIN_ARGMAX, MAX_SIM, column, sets_with
from oodlab.subsets.keylists import KeyListWriter, count_keys, load_keep_from, membership
from oodlab.subsets.select import KeepLowest, Threshold
from oodlab.subsets.sources import PartSource, open_source, require_columns
from oodlab.utils.atomic import write_text
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder, fingerprint

log = logging.getLogger(__name__)

KEPT, REMOVED = "kept.parquet", "removed.parquet"


# -- scorers ---------------------------------------------------------------------------------
@dataclass
class Scorer:
    """How a rule turns one part's table into scores.

    Attributes:
        columns: source columns it reads (besides ``key``).
        fields: output columns besides ``key`` and their pyarrow types (``score`` first).
        score: ``score(table) -> {field: array}`` for every row of the part.
    """

    columns: list[str]
    fields: list[tuple[str, Any]]
    score: Callable[[Any], dict[str, np.ndarray]]


def _column(table: Any, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def similarity_scorer(evals: Sequence[str]) -> Scorer:
    """score = max over ``evals`` of ``max_sim__{eval}`` (float32), with the set and eval key."""
    import pyarrow as pa

    names = np.array(list(evals), dtype=object)

    def score(table: Any) -> dict[str, np.ndarray]:
        sims = np.stack([_column(table, column(MAX_SIM, e)) for e in evals], axis=1)
        which = np.argmax(sims, axis=1)  # first set wins ties
        rows = np.arange(len(table))
        eval_keys = np.stack([_column(table, column(ARGMAX, e)).astype(object) for e in evals], axis=1)
        return {"score": sims[rows, which].astype(np.float32), "eval_set": names[which], "eval_key": eval_keys[rows, which]}

    columns = [column(kind, e) for e in evals for kind in (MAX_SIM, ARGMAX)]
    return Scorer(columns, [("score", pa.float32()), ("eval_set", pa.string()), ("eval_key", pa.string())], score)


def margin_scorer(evals: Sequence[str]) -> Scorer:
    """score = max over ``evals`` of ``margin__{eval}`` (float64); ``flag__{eval}`` = margin > 0."""
    import pyarrow as pa

    names = np.array(list(evals), dtype=object)

    def score(table: Any) -> dict[str, np.ndarray]:
        margins = np.stack([_column(table, column(MARGIN, e)).astype(np.float64) for e in evals], axis=1)
        which = np.argmax(margins, axis=1)
        rows = np.arange(len(table))
        eval_keys = np.stack([_column(table, column(MARGIN_ARGMAX, e)).astype(object) for e in evals], axis=1)
        out = {"score": margins[rows, which], "eval_set": names[which], "eval_key": eval_keys[rows, which]}
        for i, e in enumerate(evals):
            out[f"flag__{e}"] = margins[:, i] > 0
        return out

    columns = [column(kind, e) for e in evals for kind in (MARGIN, MARGIN_ARGMAX)]
    fields = [("score", pa.float64()), ("eval_set", pa.string()), ("eval_key", pa.string())]
    fields += [(f"flag__{e}", pa.bool_()) for e in evals]
    return Scorer(columns, fields, score)


def random_priority(keys: Sequence[str], seed: int) -> np.ndarray:
    """float64 [n] in [0, 1): ``blake2b(key, key=seed, 8 bytes)`` as a big-endian uint64, top 53
    bits / 2**53. Independent uniform draws per key for a given seed (one draw per distinct key)."""
    salt = int(seed % (1 << 64)).to_bytes(8, "little")
    h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8, key=salt).digest(), "big") >> 11 for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )
    return h.astype(np.float64) * 2.0**-53


def random_scorer(seed: int) -> Scorer:
    import pyarrow as pa

    def score(table: Any) -> dict[str, np.ndarray]:
        return {"score": random_priority(_column(table, "key").tolist(), seed)}

    return Scorer([], [("score", pa.float64())], score)


# -- the shared runner -------------------------------------------------------------------------
@dataclass
class RunResult:
    considered: int
    kept: int
    removed: int
    pool_rows: int
    flagged: dict[str, int]


def _pass_scores(source: PartSource, scorer: Scorer, allowed: set[str] | None) -> np.ndarray:
    out = []
    for table in source.read(["key", *scorer.columns]):
        keep = membership(_column(table, "key"), allowed)
        out.append(scorer.score(table)["score"][keep])
    return np.concatenate(out) if out else np.zeros(0)


def run_rule(source: PartSource, scorer: Scorer, policy: Any, out: Path, *, allowed: set[str] | None,
             description: str) -> RunResult:
    """Score every part, decide keep/remove with ``policy`` and stream both key lists to ``out``."""
    import pyarrow as pa

    if policy.needs_scores:
        scores = _pass_scores(source, scorer, allowed)
        if np.isnan(scores).any():
            raise InputError(source.path, "has NaN scores", "re-run `oodlab neighbors`")
        if policy.n > len(scores):
            raise InputError(None, f"keep={policy.n} exceeds the {len(scores)} samples considered", "ask for fewer samples")
        policy.prepare(scores)
        del scores
    schema = pa.schema([("key", pa.string()), *scorer.fields])
    flag_fields = [name for name, _ in scorer.fields if name.startswith("flag__")]
    flagged = {name.split("__", 1)[1]: 0 for name in flag_fields}
    flagged_union = 0
    pool_rows = considered = 0
    with KeyListWriter(out / KEPT, schema) as kept_w, KeyListWriter(out / REMOVED, schema) as removed_w:
        with progress(description, total=None, unit="parts") as advance:
            for table in source.read(["key", *scorer.columns]):
                keys = _column(table, "key")
                pool_rows += len(keys)
                mask = membership(keys, allowed)
                cols = {name: values[mask] for name, values in scorer.score(table).items()}
                cols["key"] = keys[mask]
                considered += int(mask.sum())
                keep = policy.decide(cols["score"])
                for name in flag_fields:
                    flagged[name.split("__", 1)[1]] += int(cols[name].sum())
                if flag_fields:
                    flagged_union += int(np.logical_or.reduce([cols[n] for n in flag_fields]).sum())
                kept_w.write({k: v[keep] for k, v in cols.items()})
                removed_w.write({k: v[~keep] for k, v in cols.items()})
                advance(1)
    if flag_fields:
        flagged["union"] = flagged_union
    return RunResult(considered, kept_w.rows, removed_w.rows, pool_rows, flagged)


def _policy(keep: int | None, threshold: float | None, sign: float, rule: str) -> Any:
    if (keep is None) == (threshold is None):
        raise InputError(None, f"prune {rule} needs exactly one of keep (a target size) and threshold", "pass --keep N or --threshold T")
    if keep is not None:
        if keep < 0:
            raise InputError(None, f"keep={keep} is negative", "pass a size >= 0")
        return KeepLowest(int(keep), sign=sign)
    if not np.isfinite(threshold):
        raise InputError(None, f"threshold={threshold} is not finite", "pass a cosine similarity in [-1, 1]")
    return Threshold(float(threshold), sign=sign)


def _choose_evals(source: PartSource, evals: Sequence[str] | None, kind: str, fix: str) -> list[str]:
    chosen = check_names(evals, "eval set") if evals else sets_with(source.columns, kind)
    if not chosen:
        raise InputError(source.path, f"has no {kind} columns", fix)
    require_columns(source, [column(kind, e) for e in chosen], fix)
    return chosen


def _open(out: str | Path, rule: str, *, inputs: dict, parameters: dict, reads: list) -> RunFolder:
    return RunFolder(out, f"prune {rule}", inputs=inputs, parameters={"rule": rule, **parameters},
                     reads=[p for p in reads if p is not None])


def _finish(run: RunFolder, rule: str, result: RunResult, *, keep_from_keys: int | None, seconds: float) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "pool_rows": result.pool_rows,
        "considered": result.considered,
        "kept": result.kept,
        "removed": result.removed,
    }
    if keep_from_keys is not None:
        counts["keep_from_keys"] = keep_from_keys
        counts["keep_from_not_in_pool"] = keep_from_keys - result.considered
    if result.flagged:
        counts["flagged"] = result.flagged
    outputs = {"kept": KEPT, "removed": REMOVED}
    if result.flagged:
        outputs.update({"counts_csv": "counts.csv", "counts_md": "counts.md"})
    manifest = run.finish(counts=counts, outputs=outputs)
    pct = 100.0 * result.kept / max(result.considered, 1)
    summary(
        f"prune {rule}: kept {result.kept} of {result.considered} considered samples ({pct:.1f}%), "
        f"removed {result.removed}, in {seconds:.1f} s -> {run.out / KEPT}"
    )
    return manifest


def _keep_from_input(keep_from: str | Path | None) -> dict[str, Any] | None:
    return None if keep_from is None else fingerprint(keep_from)


def _similarity_rule(rule: str, sign: float, neighbors: str | Path, out: str | Path, eval_sets: Sequence[str] | None,
                     keep: int | None, threshold: float | None, keep_from: str | Path | None,
                     overwrite: bool) -> dict[str, Any]:
    source = open_source(neighbors, "neighbors")
    chosen = _choose_evals(source, eval_sets, MAX_SIM, "name eval sets given to `oodlab neighbors --eval-store`")
    policy = _policy(keep, threshold, sign, rule)
    run = _open(out, rule, inputs={"neighbors": fingerprint(source.path), "keep_from": _keep_from_input(keep_from)},
                parameters={"eval_sets": chosen, "keep": keep, "threshold": threshold},
                reads=[source.path, keep_from])
    done = run.open(overwrite)
    if done is not None:
        return done
    allowed = load_keep_from(keep_from)
    with Timer() as timer:
        result = run_rule(source, similarity_scorer(chosen), policy, run.out, allowed=allowed, description=f"prune {rule}")
    return _finish(run, rule, result, keep_from_keys=None if allowed is None else len(allowed), seconds=timer.seconds)


def prune_near(
    neighbors: str | Path,
    out: str | Path,
    *,
    eval_sets: Sequence[str] | None = None,
    keep: int | None = None,
    threshold: float | None = None,
    keep_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Remove the pool samples MOST similar to the eval sets (the paper's near-pruned sets).

    Args:
        neighbors: an ``oodlab neighbors`` output folder.
        out: output folder (``kept.parquet``, ``removed.parquet``, ``manifest.json``).
        eval_sets: eval set names (default: all in the folder); the score is the max over them of
            each sample's maximum similarity to the set (cosine similarity in [-1, 1], float32).
        keep: keep the ``keep`` samples with the LOWEST score (ties: earlier in training order).
        threshold: instead of ``keep``: remove samples with score ``> threshold``.
        keep_from: a key list (e.g. an earlier ``kept.parquet``); only its keys are considered.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest.
    """
    return _similarity_rule("near", 1.0, neighbors, out, eval_sets, keep, threshold, keep_from, overwrite)


def prune_far(
    neighbors: str | Path,
    out: str | Path,
    *,
    eval_sets: Sequence[str] | None = None,
    keep: int | None = None,
    threshold: float | None = None,
    keep_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Remove the pool samples LEAST similar to the eval sets (the paper's far-pruned sets).

    Args:
        neighbors: an ``oodlab neighbors`` output folder.
        out: output folder.
        eval_sets: eval set names (default: all); score = max over them of each sample's maximum
            similarity to the set.
        keep: keep the ``keep`` samples with the HIGHEST score (ties: earlier in training order).
        threshold: instead of ``keep``: remove samples with score ``< threshold``.
        keep_from: a key list; only its keys are considered.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest.
    """
    return _similarity_rule("far", -1.0, neighbors, out, eval_sets, keep, threshold, keep_from, overwrite)


def prune_aligned(
    neighbors: str | Path,
    out: str | Path,
    *,
    eval_sets: Sequence[str] | None = None,
    keep_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Similarity-aligned pruning: remove pool sample j iff ``s(i, j) > t_i`` for some eval sample i.

    Uses the exact margins ``max_i (s_ij - t_i)`` of ``oodlab neighbors`` (run with
    ``--reference-store`` or ``--threshold-file``); j is removed iff the margin is ``> 0`` for
    any chosen eval set (the union, "combined-pruned", when several are given). A sample exactly
    at a threshold (margin 0) is kept.

    Args:
        neighbors: an ``oodlab neighbors`` output folder with margins.
        out: output folder; also ``counts.csv`` / ``counts.md``: samples flagged per eval set and
            for the union (the paper's table of prune-set sizes).
        eval_sets: eval set names (default: every set with margins).
        keep_from: a key list; only its keys are considered.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts.flagged`` = {eval: n, ..., "union": n}).
    """
    source = open_source(neighbors, "neighbors")
    chosen = _choose_evals(
        source, eval_sets, MARGIN,
        "run `oodlab neighbors` with --reference-store NAME=STORE (or --threshold-file) so that margins are computed for these sets",
    )
    run = _open(out, "aligned", inputs={"neighbors": fingerprint(source.path), "keep_from": _keep_from_input(keep_from)},
                parameters={"eval_sets": chosen, "rule": "remove iff max_i (s_ij - t_i) > 0"},
                reads=[source.path, keep_from])
    done = run.open(overwrite)
    if done is not None:
        return done
    allowed = load_keep_from(keep_from)
    with Timer() as timer:
        result = run_rule(source, margin_scorer(chosen), Threshold(0.0), run.out, allowed=allowed, description="prune aligned")
    _write_counts_table(run.out, result)
    return _finish(run, "aligned", result, keep_from_keys=None if allowed is None else len(allowed), seconds=timer.seconds)


def _write_counts_table(out: Path, result: RunResult) -> None:
    rows = []
    for name, n in result.flagged.items():
        label = "union (combined)" if name == "union" else name
        rows.append((label, n, result.considered - n, n / max(result.considered, 1)))
    csv = ["eval_set,flagged,kept_if_pruned_alone,fraction_flagged"]
    csv += [f"{label},{n},{k},{frac:.6f}" for label, n, k, frac in rows]
    write_text(out / "counts.csv", "\n".join(csv) + "\n")
    md = ["| Eval set | Pool samples flagged for pruning | Kept | Fraction flagged |", "|---|---:|---:|---:|"]
    md += [f"| {label} | {n:,} | {k:,} | {100 * frac:.2f}% |" for label, n, k, frac in rows]
    write_text(out / "counts.md", "\n".join(md) + f"\n\nConsidered pool samples: {result.considered:,}.\n")


#: where ``prune random`` draws from: keyword -> source kind
_RANDOM_POOLS = ("neighbors", "store", "keys")


def prune_random(
    out: str | Path,
    *,
    neighbors: str | Path | None = None,
    store: str | Path | None = None,
    keys: str | Path | None = None,
    keep: int | None = None,
    like: str | Path | None = None,
    seed: int = 0,
    keep_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A uniform random subset of ``keep`` samples (the paper's size-matched controls).

    Args:
        out: output folder (``kept.parquet`` / ``removed.parquet`` with ``score`` = the key's
            random priority in [0, 1)).
        neighbors: draw from the training keys of this ``oodlab neighbors`` output folder ...
        store: ... or from the keys of this embedding store ...
        keys: ... or from this key list (exactly one of the three).
        keep: the subset size.
        like: instead of ``keep``: a key list (e.g. another rule's ``kept.parquet``) whose row
            count is the size.
        seed: the seed (see the module docstring: one hash-based priority per key).
        keep_from: a key list; only its keys are considered.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest.
    """
    given = {kind: path for kind, path in zip(_RANDOM_POOLS, (neighbors, store, keys)) if path is not None}
    if len(given) != 1:
        raise InputError(None, "prune random needs exactly one of neighbors, store and keys (the keys to draw from)",
                         "pass one of --neighbors, --store, --keys")
    if (keep is None) == (like is None):
        raise InputError(None, "prune random needs exactly one of keep and like", "pass --keep N or --like KEPT.parquet")
    ((kind, path),) = given.items()
    size = int(keep) if keep is not None else count_keys(like)
    source = open_source(path, kind)
    policy = _policy(size, None, 1.0, "random")
    run = _open(out, "random", inputs={kind: fingerprint(source.path), "like": None if like is None else fingerprint(like),
                                       "keep_from": _keep_from_input(keep_from)},
                parameters={"keep": size, "seed": seed, "method": "keep the lowest blake2b(key; seed) priorities"},
                reads=[source.path, like, keep_from])
    done = run.open(overwrite)
    if done is not None:
        return done
    allowed = load_keep_from(keep_from)
    with Timer() as timer:
        result = run_rule(source, random_scorer(seed), policy, run.out, allowed=allowed, description="prune random")
    return _finish(run, "random", result, keep_from_keys=None if allowed is None else len(allowed), seconds=timer.seconds)


#: rule name -> the public function implementing it (the CLI and docs list these)
RULES: dict[str, Callable[..., dict[str, Any]]] = {
    "near": prune_near,
    "far": prune_far,
    "aligned": prune_aligned,
    "random": prune_random,
}
