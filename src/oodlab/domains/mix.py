"""``oodlab domains mix``: natural / rendition mixtures (the ICLR 2025 mixture experiments).

From a natural-only and a rendition-only key list (``oodlab domains subset``), two families and
their size-matched random controls, each a key list for ``oodlab subset``:

* (A) a fixed total: ``total`` samples at each rendition:natural ratio (e.g. 1:3, 1:1, 3:1; the
  paper found the best between 1:1 and 3:1), ``mix-a-{r}to{n}/kept.parquet``;
* (B) a fixed natural set plus renditions: all of ``natural`` (or ``total`` of it) and each
  number in ``additions`` of renditions, ``mix-b-plus{k}/kept.parquet``;
* for every mixture, ``{name}-random/kept.parquet``: as many samples drawn uniformly from the
  union of both lists (the control).

Draws are deterministic for a seed and nested: a larger mixture of a family contains the smaller
ones' renditions (a curve varies one thing). Every mixture's counts per domain are in the
manifest, and a request that the lists cannot fill is an error naming the list and the count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from oodlab.subsets.keylists import KeyListWriter, read_keys
from oodlab.utils.errors import InputError
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint


def _ratio(text: str) -> tuple[int, int]:
    try:
        r, n = (int(x) for x in text.split(":"))
    except ValueError:
        raise InputError(None, f"ratio {text!r} is not RENDITION:NATURAL", "pass e.g. --ratio 1:1 (repeat)") from None
    if r < 0 or n < 0 or r + n == 0:
        raise InputError(None, f"ratio {text!r} needs non-negative parts, not both 0", None)
    return r, n


def _write(path: Path, keys: np.ndarray) -> None:
    import pyarrow as pa

    with KeyListWriter(path, pa.schema([("key", pa.string())])) as writer:
        writer.write({"key": pa.array(sorted(keys.tolist()), pa.string())})


def domains_mix(
    natural: str | Path,
    rendition: str | Path,
    out: str | Path,
    *,
    total: int | None = None,
    ratios: Sequence[str] = ("1:3", "1:1", "3:1"),
    additions: Sequence[int] = (),
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the mixtures' key lists and their random controls.

    Args:
        natural: key list of natural samples (``kept.parquet`` of ``domains subset --domain natural``).
        rendition: key list of renditions.
        out: output folder (one folder with ``kept.parquet`` per mixture, ``manifest.json``).
        total: (A) the fixed size of every ratio mixture; (B) the natural set's size (None: A is
            not made and B uses all natural keys).
        ratios: (A) rendition:natural ratios, e.g. ``1:1``.
        additions: (B) renditions added to the natural set, one mixture per number.
        seed: of every draw.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``mixtures``: name -> natural, rendition, total counts).
    """
    nat, ren = read_keys(natural), read_keys(rendition)
    overlap = np.intersect1d(nat, ren)
    if len(overlap):
        raise InputError(rendition, f"shares {len(overlap)} keys with {natural} (e.g. {overlap[:3].tolist()})",
                         "pass disjoint natural and rendition lists")
    parsed = [_ratio(r) for r in ratios] if total is not None else []
    run = RunFolder(out, "domains mix", inputs={"natural": fingerprint(natural), "rendition": fingerprint(rendition)},
                    parameters={"total": total, "ratios": list(ratios) if total is not None else [],
                                "additions": [int(a) for a in additions], "seed": seed}, reads=[natural, rendition])
    done = run.open(overwrite)
    if done is not None:
        return done
    rng = np.random.default_rng(seed)
    nat_order, ren_order = nat[rng.permutation(len(nat))], ren[rng.permutation(len(ren))]
    plan: dict[str, tuple[int, int]] = {}
    for r, n in parsed:
        n_ren = round(total * r / (r + n))
        plan[f"mix-a-{r}to{n}"] = (total - n_ren, n_ren)
    base = len(nat) if total is None else total
    for k in additions:
        plan[f"mix-b-plus{int(k)}"] = (base, int(k))
    for name, (n_nat, n_ren) in plan.items():
        for need, have, path in ((n_nat, len(nat), natural), (n_ren, len(ren), rendition)):
            if need > have:
                raise InputError(path, f"holds {have} keys, mixture {name} needs {need}", "lower --total / --addition")
    union = np.concatenate([nat, ren])
    mixtures = {}
    for name, (n_nat, n_ren) in plan.items():
        # nested draws: prefixes of one permutation per list
        _write(run.out / name / "kept.parquet", np.concatenate([nat_order[:n_nat], ren_order[:n_ren]]))
        control = union[np.random.default_rng([seed, len(mixtures)]).choice(len(union), n_nat + n_ren, replace=False)]
        _write(run.out / f"{name}-random" / "kept.parquet", control)
        mixtures[name] = {"natural": n_nat, "rendition": n_ren, "total": n_nat + n_ren}
        mixtures[f"{name}-random"] = {"natural": int(np.isin(control, nat).sum()),
                                      "rendition": int(np.isin(control, ren).sum()), "total": len(control)}
    manifest = run.finish(counts={"mixtures": len(mixtures)}, outputs={"mixture": "{name}/kept.parquet"},
                          mixtures=mixtures)
    summary(f"domains mix: {len(plan)} mixtures and their random controls -> {run.out}")
    return manifest
