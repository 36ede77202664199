"""The checkpoints of a training run, as every stage that loads weights resolves them: ``RUN/checkpoints/epoch_{n}.pt`` (n = 0 is the untrained model).

Epochs are read from the file names as integers (``epoch_10`` after ``epoch_9``); open_clip's
``epoch_latest.pt`` and temporaries are not epochs. A file the trainer was killed while writing
(or is writing now) is detected by :func:`complete_checkpoint` and not used.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from oodlab.utils.errors import InputError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
#: the untrained model, saved by oodlab.train.entry before the first step
EPOCH0_NAME = "epoch_0.pt"
#: an open_clip model folder (``local-dir:``) holds this file beside its weights
OPEN_CLIP_CONFIG = "open_clip_config.json"
_EPOCH = re.compile(r"^epoch_(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    """One weights file: ``label`` names its results (``epoch_3``), ``epoch`` is None when unknown."""

    label: str
    path: Path
    epoch: int | None


def checkpoint_dir(run: str | Path) -> Path:
    """``RUN/checkpoints`` when it exists, else ``run`` itself (a folder of ``epoch_*.pt``)."""
    run = Path(run)
    return run / CHECKPOINTS_DIR if (run / CHECKPOINTS_DIR).is_dir() else run


def epoch_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """The ``epoch_{n}.pt`` files of a run or checkpoints folder, by increasing n."""
    folder = checkpoint_dir(folder)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _EPOCH.match(p.name)
            if m and p.is_file():
                found.append(Checkpoint(p.stem, p, int(m.group(1))))
    return sorted(found, key=lambda c: c.epoch)


def resolve_checkpoints(checkpoint: str | Path) -> list[Checkpoint]:
    """What ``--checkpoint`` names: a weights file (one checkpoint), an open_clip model folder
    (``open_clip_config.json`` + weights: one checkpoint) or a training run / checkpoints folder
    (all its complete epochs, as a curve).

    Raises:
        InputError: the path does not exist or the folder holds no ``epoch_*.pt``.
    """
    path = Path(checkpoint)
    if path.is_file():
        m = _EPOCH.match(path.name)
        return [Checkpoint(path.stem, path, int(m.group(1)) if m else None)]
    if path.is_dir() and (path / OPEN_CLIP_CONFIG).is_file():
        return [Checkpoint(path.name, path, None)]
    if path.is_dir():
        found = epoch_checkpoints(path)
        incomplete = [c for c in found if not complete_checkpoint(str(c.path))]
        for c in incomplete:
            log.warning("%s is incomplete (being written, or its run was killed): not evaluated", c.path)
        found = [c for c in found if c not in incomplete]
        if found:
            return found
        raise InputError(path, "holds no epoch_{n}.pt checkpoints (nor checkpoints/ with them)",
                         "pass a weights file or an `oodlab train` run folder")
    raise InputError(path, "checkpoint not found", "pass a weights file or an `oodlab train` run folder")


def final_checkpoint(run: str | Path) -> Path:
    """The last complete ``epoch_{n}.pt`` of a training run (or checkpoints folder).

    Raises:
        InputError: the run holds no complete checkpoint.
    """
    found = [c for c in epoch_checkpoints(run) if complete_checkpoint(str(c.path))]
    if not found:
        raise InputError(run, "has no complete epoch_{n}.pt checkpoint", "train it first (oodlab train)")
    return found[-1].path


def weights_path(checkpoint: str | Path) -> Path:
    """What one model's ``checkpoint`` names: a weights file or an open_clip model folder as is,
    a training run (or checkpoints folder) as its final complete checkpoint."""
    path = Path(checkpoint)
    if path.is_dir() and not (path / OPEN_CLIP_CONFIG).is_file():
        return final_checkpoint(path)
    return path


def complete_checkpoint(path: str) -> bool:
    """Whether a checkpoint file is a complete zip (torch's format): one the trainer was killed
    while writing lacks the zip's central directory, which is at the end."""
    import zipfile

    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def latest_resumable(folder: str) -> str | None:
    """The highest ``epoch_{n}.pt`` with n >= 1 that is complete (epoch 0 has no optimizer state
    to resume from: a run with only epoch 0 starts afresh, from the same seed)."""
    best: tuple[int, str] | None = None
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = _EPOCH.match(name)
        if m and int(m.group(1)) >= 1 and (best is None or int(m.group(1)) > best[0]):
            path = os.path.join(folder, name)
            if complete_checkpoint(path):
                best = (int(m.group(1)), path)
    return None if best is None else best[1]


