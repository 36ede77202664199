"""``oodlab domains subset``: single-domain key lists (LAION-Natural, LAION-Rendition) from
predictions, for ``oodlab subset`` to materialise.

``kept.parquet`` holds the keys predicted ``domain`` (by the strict, calibrated label by default:
the paper's 0.98-precision subsets), ``removed.parquet`` the others, both in store order with the
domain's probability; streamed part by part (memory: one part's predictions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oodlab.domains.labels import SELECTING
from oodlab.domains.model import prediction_parts
from oodlab.subsets.keylists import KeyListWriter
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint


def domains_subset(
    domain_predictions: str | Path,
    out: str | Path,
    *,
    domain: str = "natural",
    strict: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Keep the samples predicted to be of one domain.

    Args:
        domain_predictions: an ``oodlab domains predict`` folder.
        out: output folder (``kept.parquet``, ``removed.parquet``, ``manifest.json``).
        domain: ``natural`` or ``rendition``.
        strict: use the calibrated label (``label_strict``; the predictions must have been made
            with ``--thresholds``) rather than the argmax.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts``: kept, removed).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if domain not in SELECTING:
        raise InputError(None, f"domain must be one of {list(SELECTING)}, got {domain!r}", None)
    predictions = domain_predictions
    parts = prediction_parts(predictions)
    column = "label_strict" if strict else "label"
    names = pq.read_schema(parts[0]).names if parts else []
    if parts and (column not in names or f"p_{domain}" not in names):
        raise InputError(parts[0], f"has no {column} / p_{domain} column (columns: {names})",
                         "predict with --thresholds for strict subsets, with a head that has this class")
    run = RunFolder(out, "domains subset", inputs={"predictions": fingerprint(predictions)},
                    parameters={"domain": domain, "strict": strict}, reads=[predictions])
    done = run.open(overwrite)
    if done is not None:
        return done
    schema = pa.schema([("key", pa.string()), (f"p_{domain}", pa.float32())])
    with KeyListWriter(run.out / "kept.parquet", schema) as kept, KeyListWriter(run.out / "removed.parquet", schema) as removed:
        for path in parts:
            table = pq.read_table(path, columns=["key", f"p_{domain}", column])
            hit = table.column(column).to_numpy(zero_copy_only=False) == domain
            for writer, mask in ((kept, hit), (removed, ~hit)):
                writer.write({name: table.column(name).filter(pa.array(mask)) for name in schema.names})
    manifest = run.finish(counts={"kept": kept.rows, "removed": removed.rows},
                          outputs={"kept": "kept.parquet", "removed": "removed.parquet"})
    total = max(kept.rows + removed.rows, 1)
    summary(f"domains subset: {kept.rows:,} of {total:,} samples predicted {domain} "
            f"({'strict' if strict else 'argmax'}; {kept.rows / total:.1%}) -> {run.out / 'kept.parquet'}")
    return manifest
