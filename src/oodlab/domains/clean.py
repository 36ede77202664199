"""``oodlab domains clean``: clean test sets, keeping only the images of each set's intended domain.

The ICLR 2025 paper found ~5% of the standard OOD test sets in the other domain (photos in
ImageNet-Sketch, drawings in ImageNet-val); its clean sets keep the images predicted to be of the
set's intended domain (natural for val / V2 / A / ObjectNet / DomainNet real, rendition for
Sketch / R / the DomainNet renditions). Each clean set is written as a folder of the same class
folders (hard links to the images where the file system allows, else copies), which the
``*-clean`` dataset specs read with the label space restricted to the classes that still have
images (``oodlab evaluate --spec NAME=imagenet-sketch-clean``)::

    OUT/{name}/{class}/{file}     the kept images
    OUT/removed_{name}.parquet    key, predicted label of each image left out
    OUT/manifest.json             per set: kept, removed, classes before and after
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from oodlab.domains.model import read_predictions
from oodlab.utils.atomic import write_parquet
from oodlab.utils.errors import InputError
from oodlab.utils.names import check_names
from oodlab.utils.progress import summary
from oodlab.utils.runs import RunFolder, fingerprint

#: eval set name -> the domain its images should be of
INTENDED: dict[str, str] = {
    **{n: "natural" for n in ("val", "v2", "a", "objectnet", "imagenet-val", "imagenet-v2", "imagenet-a",
                              "dn-real", "domainnet-real")},
    **{n: "rendition" for n in ("sketch", "r", "imagenet-sketch", "imagenet-r")},
    **{f"{p}-{d}": "rendition" for p in ("dn", "domainnet") for d in ("clipart", "infograph", "painting", "quickdraw", "sketch")},
}


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    tmp = target.with_name(target.name + ".oodlab-tmp")
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or no hard links: a copy
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def domains_clean(
    eval_data: Mapping[str, str | Path],
    datasets: Mapping[str, str | Path],
    out: str | Path,
    *,
    strict: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a clean copy of each eval set.

    Args:
        eval_data: eval set name -> its image folder (class folders; keys are paths under it).
        datasets: the same names -> their ``oodlab domains predict`` folders (of the eval sets'
            embedding stores).
        out: output folder (see module docstring).
        strict: keep by the calibrated label (else the argmax).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest (``counts`` per set).
    """
    import pyarrow as pa

    names = check_names(eval_data, "eval set")
    missing = [n for n in names if n not in datasets]
    unknown = [n for n in names if n not in INTENDED]
    if missing or unknown:
        raise InputError(None, f"eval sets without predictions {missing} or without an intended domain {unknown}",
                         f"pass --dataset NAME=PREDICTIONS for each eval set; names with a domain: {sorted(INTENDED)}")
    column = "label_strict" if strict else "label"
    run = RunFolder(out, "domains clean",
                    inputs={"eval_data": {n: str(eval_data[n]) for n in names},
                            "datasets": {n: fingerprint(datasets[n]) for n in names}},
                    parameters={"strict": strict}, reads=[*eval_data.values(), *(datasets[n] for n in names)])
    done = run.open(overwrite)
    if done is not None:
        return done
    counts = {}
    for name in names:
        root, keep_domain = Path(eval_data[name]), INTENDED[name]
        predicted = read_predictions(datasets[name], [column])
        keys, labels = predicted.key.tolist(), predicted[column].tolist()
        removed = {"key": [], "label": []}
        kept_classes, all_classes = set(), set()
        for key, label in zip(keys, labels):
            source = root / key
            if not source.is_file() or ".." in Path(key).parts:
                raise InputError(source, f"is not an image of {root} (key {key!r} of {datasets[name]})",
                                 "pass the eval set's folder that its store was embedded from")
            all_classes.add(Path(key).parts[0])
            if label == keep_domain:
                _link(source, run.out / name / key)
                kept_classes.add(Path(key).parts[0])
            else:
                removed["key"].append(key)
                removed["label"].append(label)
        write_parquet(run.out / f"removed_{name}.parquet", pa.table({k: pa.array(v, pa.string()) for k, v in removed.items()}))
        counts[name] = {"kept": len(keys) - len(removed["key"]), "removed": len(removed["key"]), "intended": keep_domain,
                        "classes_before": len(all_classes), "classes_after": len(kept_classes)}
    manifest = run.finish(counts=counts, outputs={"sets": "{name}/", "removed": "removed_{name}.parquet"})
    summary("domains clean: " + "; ".join(f"{n} kept {c['kept']} of {c['kept'] + c['removed']} ({c['classes_after']} "
                                          f"classes)" for n, c in counts.items()) + f" -> {run.out}")
    return manifest
