"""The small JSON manifest every stage writes next to its outputs.

A manifest records what a stage read, with which parameters and model, and what it wrote, so
that any artifact can be traced back and a re-run can tell whether its inputs changed. It holds
no timestamps: a re-run with the same inputs writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from oodlab.utils.atomic import read_json, write_json

MANIFEST_NAME = "manifest.json"


def build_manifest(
    stage: str,
    *,
    inputs: Mapping[str, Any],
    parameters: Mapping[str, Any],
    counts: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dict (see module docstring) without writing it."""
    from oodlab import __version__

    manifest: dict[str, Any] = {
        "stage": stage,
        "oodlab_version": __version__,
        "inputs": dict(inputs),
        "parameters": dict(parameters),
        "model": dict(model) if model is not None else None,
        "counts": dict(counts),
    }
    if outputs is not None:
        manifest["outputs"] = dict(outputs)
    return manifest


def write_manifest(folder: str | Path, stage: str, *, name: str = MANIFEST_NAME, **fields: Any) -> dict[str, Any]:
    """Build and atomically write a manifest to ``folder/name``. Returns the manifest written."""
    manifest = build_manifest(stage, **fields)
    write_json(Path(folder) / name, manifest)
    return manifest


def read_manifest(folder: str | Path, name: str = MANIFEST_NAME) -> dict[str, Any]:
    return read_json(Path(folder) / name)
