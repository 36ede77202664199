"""Run folders: the one answer to "is this output already complete, and may I write here?".

Every stage writes into one output folder and follows the same re-run semantics:

- ``run.json`` is written when a run starts: the stage, its inputs and the parameters its result
  depends on (plus ``settings`` that do not change the result, such as worker counts; recorded,
  not compared);
- the *completion record* (``manifest.json``; for embedding stores the ``oodlab.json`` sidecar)
  is written last, when everything else is in place;
- a re-run with the same stage, inputs and parameters resumes an unfinished run (each stage skips
  its completed shard tasks) and returns the completion record of a finished one without doing
  anything; a re-run with anything else is an error that names what differs; ``overwrite=True``
  starts afresh; a folder holding files that no run of the stage wrote is never written into.
- A stage never writes into one of its inputs: an output folder that is, contains or lies inside
  a path the stage reads is refused (before anything is deleted).

:class:`RunFolder` implements this; stages call :meth:`RunFolder.open` first and
:meth:`RunFolder.finish` last.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from oodlab.utils.atomic import as_json, read_json, remove_stale_temporaries, write_json
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.hashing import sha256_file
from oodlab.utils.manifest import MANIFEST_NAME, build_manifest

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies an input for a re-run's comparison: its path and the sha256 of its content
    (a file), or of its completion record (a folder written by an oodlab stage: ``manifest.json``,
    or ``oodlab.json`` for an embedding store). A folder without one is identified by its path only.
    """
    path = Path(path)
    record = next((path / n for n in (MANIFEST_NAME, "oodlab.json") if (path / n).is_file()), None) if path.is_dir() else path
    return {"path": str(path), "sha256": sha256_file(record) if record is not None and record.is_file() else None}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (at most a few, for the message)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(dict.fromkeys([*old, *new])):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} ({old!r} before, {new!r} now)"]


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


class RunFolder:
    """The output folder of one run of ``stage`` (see the module docstring).

    Args:
        out: the output folder.
        stage: the stage's name (``"neighbors"``, ``"prune near"``...).
        inputs: what was read (paths, checksums, identities): JSON-able, compared on re-run.
        parameters: what the result depends on: JSON-able, compared on re-run.
        settings: what does not change the result (workers, threads...): recorded only.
        reads: the paths the stage reads; ``out`` may not be, contain or lie inside any of them.
        record: the completion record's file name in ``out``.
    """

    def __init__(self, out: str | Path, stage: str, *, inputs: Mapping[str, Any], parameters: Mapping[str, Any],
                 settings: Mapping[str, Any] | None = None, reads: Iterable[str | Path] = (),
                 record: str = MANIFEST_NAME):
        self.out = Path(out)
        self.stage = stage
        self.inputs = as_json(dict(inputs))
        self.parameters = as_json(dict(parameters))
        self.settings = as_json(dict(settings or {}))
        self.reads = [Path(p) for p in reads]
        self.record = record

    @property
    def identity(self) -> dict[str, Any]:
        """What must agree for a re-run to resume or skip this folder."""
        return {"stage": self.stage, "inputs": self.inputs, "parameters": self.parameters}

    def _check_outside_inputs(self) -> None:
        out = self.out.resolve()
        for path in self.reads:
            read = path.resolve()
            if _contains(out, read) or _contains(read, out):
                raise InputError(self.out, f"is, contains or lies inside the input {path} of this {self.stage} run",
                                 "choose an output folder outside every input")

    def open(self, overwrite: bool = False) -> dict[str, Any] | None:
        """Prepare the folder for this run.

        Returns:
            the completion record of an identical finished run (the caller returns it and does
            nothing else), or None: the run starts or resumes.

        Raises:
            IncompatibleError: the folder holds a run with other inputs or parameters, or files
                that no run of this stage wrote.
            InputError: the folder is, contains or lies inside an input.
        """
        self._check_outside_inputs()
        if overwrite and self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        run = self.out / RUN_RECORD
        if run.is_file():
            previous = read_json(run)
            old = {k: previous.get(k) for k in ("stage", "inputs", "parameters")}
            if old != self.identity:
                changed = "; ".join(_differences(old, self.identity)[:4])
                raise IncompatibleError(self.out, f"holds a run of {previous.get('stage')} with other inputs or parameters "
                                        f"({changed})",
                                        "choose a new output folder, pass the same arguments to resume, or pass "
                                        "overwrite=True (--overwrite) to start afresh")
            if (self.out / self.record).is_file():
                log.info("%s: %s is complete with the same inputs and parameters: nothing to do", self.stage, self.out)
                return read_json(self.out / self.record)
        elif self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise IncompatibleError(self.out, f"exists and holds files that no {self.stage} run wrote",
                                    "choose a new output folder, or pass overwrite=True (--overwrite) to replace it")
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
        write_json(run, {**self.identity, "settings": self.settings})
        return None

    def finish(self, *, counts: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
               model: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Write the completion record (the stage's manifest) last; returns what was written."""
        manifest = build_manifest(self.stage, inputs=self.inputs, parameters=self.parameters, counts=counts,
                                  model=model, outputs=outputs)
        manifest.update(as_json(extra))
        write_json(self.out / self.record, manifest)
        return manifest
