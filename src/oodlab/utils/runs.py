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

import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping

from oodlab.utils.atomic import (TMP_MARK, as_json, existing_ancestor, raise_output_error, read_json,
                                 remove_stale_temporaries, temp_path_for, write_json)
from oodlab.utils.errors import IncompatibleError, InputError, OutputError
from oodlab.utils.hashing import sha256_file
from oodlab.utils.manifest import MANIFEST_NAME, build_manifest

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
#: the lock file a running stage holds in its output folder
LOCK = ".oodlab.lock"


#: bytes read from each end of a file larger than twice this (smaller files are read whole)
SAMPLE_BYTES = 1 << 20


def content_digest(path: str | Path) -> str:
    """Hex sha256 identifying a file's or folder's content, cheaply enough to run on every start.

    A file up to 2 MiB: the sha256 of its bytes. A larger file: of its size and its first and
    last MiB (a re-written ``.npy`` of another model, a parquet file, whose footer is at the end,
    or a tar with other samples all change there; one byte flipped in the middle of a large file
    does not). A folder: of every file's relative path, size and digest, in sorted order, except
    the run record, temporaries and the lock, which describe a run rather than its result.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.name not in (RUN_RECORD, LOCK) and TMP_MARK not in f.name:
                h.update(f"{f.relative_to(path).as_posix()}\0{content_digest(f)}\0".encode())
        return h.hexdigest()
    size = path.stat().st_size
    if size <= 2 * SAMPLE_BYTES:
        return sha256_file(path)
    with open(path, "rb") as f:
        h.update(f"{size}\0".encode())
        h.update(f.read(SAMPLE_BYTES))
        f.seek(size - SAMPLE_BYTES)
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies an input for a re-run's comparison: its path and :func:`content_digest`
    (``sha256``; None for a path that does not exist). A re-run whose inputs changed content
    (a store re-embedded in place with another model, a re-written key list) is refused."""
    path = Path(path)
    return {"path": str(path), "sha256": content_digest(path) if path.exists() else None}


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


#: this process's held locks: resolved folder -> file descriptor
_HELD: dict[Path, int] = {}


def _release(folder: Path) -> None:
    fd = _HELD.pop(folder, None)
    if fd is not None:
        (folder / LOCK).unlink(missing_ok=True)  # while still holding it: no one else has it
        os.close(fd)


def _acquire(folder: Path, stage: str) -> None:
    """Hold ``folder/LOCK`` (an ``flock``, which the kernel drops when its process dies, so a
    lock left by a killed run is stale by construction and taken over) and write the owner's pid,
    host and stage into it for the message another run gets.

    Raises:
        OutputError: another live run holds the lock, or the folder cannot be written.
    """
    import fcntl

    key = folder.resolve()
    _release(key)  # stages run one after another in a process: an earlier run here has ended
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise_output_error(folder, err)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise OutputError(folder, f"is being written by another run ({owner or 'owner unknown'})",
                              f"wait for it to finish or choose another output folder; if that process is gone "
                              f"(another host), delete {path}") from None
        except OSError as err:  # a file system without flock (some network mounts): run unlocked
            log.warning("%s: cannot lock (%s); concurrent runs into it are not detected", folder, err)
            os.close(fd)
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the previous owner removed it as we opened it
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage}).encode())
    _HELD[key] = fd


def check_writable(out: str | Path) -> None:
    """Refuse an output folder that cannot be created or written (before a stage loads a model
    or reads its inputs).

    Raises:
        OutputError: naming the folder (or its first existing parent) and why.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file, not a folder", "choose an output folder")
    probe = existing_ancestor(out) or Path(".")
    if not probe.is_dir():
        raise OutputError(probe, "is a file, so the output folder cannot be created in it", "choose another --out")
    test = temp_path_for(probe / "probe")  # unique: runs side by side probe the same parent
    try:
        with open(test, "wb"):
            pass
        # missing_ok: a run cleaning its own folder's temporaries may have taken it already
        test.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(probe, f"cannot be written ({err.strerror or err})",
                          "choose a writable --out (or fix its permissions)") from err


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
        check_writable(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        _acquire(self.out, self.stage)  # before anything here is deleted: a live run's files are never touched
        try:
            return self._open_locked(overwrite)
        except BaseException:
            _release(self.out.resolve())
            raise

    def _open_locked(self, overwrite: bool) -> dict[str, Any] | None:
        if overwrite:
            for child in self.out.iterdir():
                if child.name != LOCK:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        run = self.out / RUN_RECORD
        if run.is_file():
            try:
                previous = read_json(run)
                old = {k: previous.get(k) for k in ("stage", "inputs", "parameters")}
            except (ValueError, AttributeError) as err:
                raise IncompatibleError(run, f"is not a readable run record ({err})",
                                        "pass overwrite=True (--overwrite) to start afresh") from err
            if old != self.identity:
                changed = "; ".join(_differences(old, self.identity)[:4])
                raise IncompatibleError(self.out, f"holds a run of {previous.get('stage')} with other inputs or parameters "
                                        f"({changed})",
                                        "choose a new output folder, pass the same arguments to resume, or pass "
                                        "overwrite=True (--overwrite) to start afresh")
            if (self.out / self.record).is_file():
                log.info("%s: %s is complete with the same inputs and parameters: nothing to do", self.stage, self.out)
                record = read_json(self.out / self.record)
                _release(self.out.resolve())
                return record
        elif any(child.name != LOCK for child in self.out.iterdir()):
            raise IncompatibleError(self.out, f"exists and holds files that no {self.stage} run wrote",
                                    "choose a new output folder, or pass overwrite=True (--overwrite) to replace it")
        remove_stale_temporaries(self.out)  # safe: the lock says no other run writes here
        write_json(run, {**self.identity, "settings": self.settings})
        return None

    def finish(self, *, counts: Mapping[str, Any], outputs: Mapping[str, Any] | None = None,
               model: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Write the completion record (the stage's manifest) last; returns what was written."""
        manifest = build_manifest(self.stage, inputs=self.inputs, parameters=self.parameters, counts=counts,
                                  model=model, outputs=outputs)
        manifest.update(as_json(extra))
        write_json(self.out / self.record, manifest)
        self.release()
        return manifest

    def release(self) -> None:
        """Give up the folder's lock (after writing a completion record of the stage's own form)."""
        _release(self.out.resolve())
