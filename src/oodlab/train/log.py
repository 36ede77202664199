"""Reading a training run's ``out.log`` (open_clip's format, also written by the memory trainer)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from oodlab.utils.errors import InputError

#: open_clip_train's progress line: "Train Epoch: 3 [ 6464/12032 (54%)] ... Loss: 2.1234 (2.3456)"
_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .*? Loss: ([0-9.]+) \(([0-9.]+)\)")


def read_losses(path: str | Path) -> Any:
    """The training loss along a run.

    Args:
        path: an ``out.log`` of open_clip's trainer or oodlab's memory trainer.

    Returns:
        pandas DataFrame, one row per progress line: epoch (int), samples (int: samples seen
        since the start of the run), loss (float: the batch's contrastive loss), epoch_mean
        (float: the mean so far in the epoch).

    Raises:
        InputError: the file is missing or has no progress lines.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found", "pass the out.log of an `oodlab train` run")
    rows = []
    for m in _LINE.finditer(path.read_text(encoding="utf-8", errors="replace")):
        epoch, seen, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        rows.append((epoch, epoch * total + seen, float(m.group(4)), float(m.group(5))))
    if not rows:
        raise InputError(path, "has no 'Train Epoch ... Loss' lines", "pass the out.log of a run that trained")
    return pd.DataFrame(rows, columns=["epoch", "samples", "loss", "epoch_mean"])
