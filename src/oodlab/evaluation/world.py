"""Specs for the datasets of a synthetic world, derived from its ``world.json``.

A world's eval sets are ImageFolder trees with wnid folders (``n1000000X``) holding all classes
or a class subset (r, a, objectnet: like ImageNet-R's 200-class mask); its DomainNet is
``domainnet/{domain}/{class folder}/`` with ``{domain}_{split}.txt`` lists. The class names,
wnids, folders and each dataset's class subset come from ``world.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oodlab.data.synth.plan import DOMAINNET, WORLD_JSON
from oodlab.evaluation.classes import ClassSet
from oodlab.evaluation.specs import DOMAINNET_DOMAINS, WORLD, DatasetSpec
from oodlab.utils.atomic import read_json
from oodlab.utils.errors import InputError

#: how many folders above a dataset path a world.json is looked for
SEARCH_DEPTH = 3


def find_world(path: str | Path) -> Path | None:
    """The world folder (holding ``world.json``) that contains ``path``, or None."""
    path = Path(path).absolute()
    for candidate in [path, *path.parents][: SEARCH_DEPTH + 1]:
        if (candidate / WORLD_JSON).is_file():
            return candidate
    return None


def read_world(root: Path) -> dict[str, Any]:
    world = read_json(root / WORLD_JSON)
    if not isinstance(world, dict) or "classes" not in world or "datasets" not in world:
        raise InputError(root / WORLD_JSON, "is not a synthetic world description", "regenerate the world")
    return world


def world_spec(path: str | Path) -> DatasetSpec:
    """The spec of the world dataset at ``path`` (``WORLD/eval/val``, ``WORLD/domainnet/sketch``,
    ``WORLD/domainnet/sketch_test.txt``).

    Raises:
        InputError: ``path`` is not inside a world, or is not one of its evaluable datasets.
    """
    path = Path(path).absolute()
    root = find_world(path)
    if root is None:
        raise InputError(path, f"is not inside a synthetic world (no {WORLD_JSON} up to {SEARCH_DEPTH} folders above)",
                         "pass a dataset folder of a world made by oodlab synth, or name a spec")
    world = read_world(root)
    rel = path.relative_to(root).as_posix()
    parts = rel.split("/")
    if parts[0] == DOMAINNET and len(parts) == 2:
        domain, _, split = parts[1].removesuffix(".txt").partition("_")
        if domain in DOMAINNET_DOMAINS:
            return DatasetSpec(f"{WORLD}:{rel}", f"synthetic world DomainNet {domain}", WORLD, "domainnet",
                               templates="openai+domainnet", domain=domain, split=split or "test",
                               world_dataset=DOMAINNET)
    if rel in world["datasets"] and world["datasets"][rel].get("format") == "imagefolder":
        return DatasetSpec(f"{WORLD}:{rel}", world["datasets"][rel].get("mirrors", rel), WORLD, "class_folders",
                           world_dataset=rel)
    evaluable = sorted(k for k, v in world["datasets"].items() if v.get("format") == "imagefolder")
    raise InputError(
        path,
        f"is not an evaluable dataset of the world at {root}",
        f"pass one of {evaluable}, {DOMAINNET}/{{domain}} or {DOMAINNET}/{{domain}}_test.txt",
    )


def world_classes(spec: DatasetSpec, path: Path) -> ClassSet:
    """The world's classes restricted to the dataset's class subset: ids are wnids for the
    ImageFolder sets and class folders for DomainNet; names are the class names."""
    root = find_world(path)
    if root is None or spec.world_dataset is None:
        raise InputError(path, "is not inside a synthetic world", "use another spec")
    world = read_world(root)
    key = "folder" if spec.world_dataset == DOMAINNET else "wnid"
    everything = ClassSet(tuple(c["name"] for c in world["classes"]), tuple(c[key] for c in world["classes"]))
    subset = world["datasets"][spec.world_dataset].get("classes")
    if subset is None:
        return everything
    return everything.subset([everything.ids[i] for i in subset])
