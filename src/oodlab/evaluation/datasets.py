"""Resolve ``NAME=PATH`` (+ an optional spec) into an evaluation dataset: label space, samples,
templates.

The spec of a dataset is, in order: the one given explicitly; the world spec when the path lies
in a synthetic world (its ``world.json`` is at most three folders up); the spec registered under
the dataset's name (``imagenet-r``, ``domainnet-sketch-clean``, ``imagenet1k``, ...). Anything
else is an error that lists the specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from oodlab.evaluation.classes import ClassSet, domainnet_classes, imagenet_classes, imagenet_mask
from oodlab.evaluation.layouts import LAYOUTS, Sample
from oodlab.evaluation.objectnet import objectnet_classes
from oodlab.evaluation.specs import WORLD, DatasetSpec, registered_spec, unknown_spec_error
from oodlab.evaluation.templates import TEMPLATE_SETS
from oodlab.evaluation.world import find_world, world_classes, world_spec
from oodlab.utils.errors import InputError

#: vocabulary name -> label space of a dataset (spec, path) -> ordered classes
VOCABULARIES: dict[str, Callable[[DatasetSpec, Path], ClassSet]] = {
    "imagenet": lambda spec, path: imagenet_classes(),
    "imagenet-r": lambda spec, path: imagenet_mask("imagenet_r_wnids.txt"),
    "imagenet-a": lambda spec, path: imagenet_mask("imagenet_a_wnids.txt"),
    "domainnet": lambda spec, path: domainnet_classes(),
    "objectnet": lambda spec, path: objectnet_classes(path),
    WORLD: world_classes,
}


@dataclass
class EvalDataset:
    """A dataset ready to evaluate.

    Attributes:
        name: the name results are stored under.
        spec: how it was read.
        root: the path given.
        classes: the label space (labels index it).
        samples: the images, in a fixed order, with labels in ``[0, len(classes))``.
        templates: the prompt templates (``{c}`` = class name).
    """

    name: str
    spec: DatasetSpec
    root: Path
    classes: ClassSet
    samples: list[Sample]
    templates: tuple[str, ...]

    def describe(self) -> dict:
        """JSON description (recorded in the outputs)."""
        return {
            "path": str(self.root),
            "spec": self.spec.name,
            "description": self.spec.description,
            "templates": self.spec.templates,
            "n_templates": len(self.templates),
            "count": len(self.samples),
            "n_classes": len(self.classes),
            "classes": [{"index": i, "name": n, "id": c}
                        for i, (n, c) in enumerate(zip(self.classes.names, self.classes.ids))],
        }


def resolve_spec(name: str, path: str | Path, spec: str | None = None) -> DatasetSpec:
    """The spec of dataset ``name`` at ``path`` (see module docstring).

    Raises:
        InputError: unknown spec, or no spec found.
    """
    if spec is not None:
        if spec == WORLD:
            return world_spec(path)
        found = registered_spec(spec)
        if found is None:
            raise unknown_spec_error(name, spec)
        return found
    if find_world(path) is not None:
        return world_spec(path)
    found = registered_spec(name)
    if found is not None:
        return found
    raise unknown_spec_error(name, None)


def restrict_to_present(classes: ClassSet, samples: list[Sample]) -> tuple[ClassSet, list[Sample]]:
    """Keep the classes that have samples (in the label space's order) and re-index the labels."""
    present = sorted({s.label for s in samples})
    new_index = {old: new for new, old in enumerate(present)}
    kept = ClassSet(tuple(classes.names[i] for i in present), tuple(classes.ids[i] for i in present))
    return kept, [Sample(s.key, s.path, new_index[s.label]) for s in samples]


def load_dataset(name: str, path: str | Path, spec: str | None = None) -> EvalDataset:
    """List the images and labels of dataset ``name`` at ``path``.

    Args:
        name: the result name (also the spec's name unless ``spec`` is given).
        path: the dataset folder (or DomainNet split list).
        spec: a spec name, ``world``, or None to infer it.

    Raises:
        InputError: missing path, unknown spec, folders outside the label space, no images.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"dataset {name!r} does not exist", "check the path given for it")
    resolved = resolve_spec(name, path, spec)
    classes = VOCABULARIES[resolved.vocabulary](resolved, path)
    samples = LAYOUTS[resolved.layout](path, resolved, classes)
    if resolved.present_only:
        classes, samples = restrict_to_present(classes, samples)
    if not samples:
        raise InputError(path, f"holds no images of the {len(classes)} classes of spec {resolved.name!r}",
                         "check the path and the spec")
    return EvalDataset(name, resolved, path, classes, samples, TEMPLATE_SETS[resolved.templates]())
