"""Progress bars and the one-line summary that long-running stages print (on stderr)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
#: bars shown now; rich draws one live display at a time, so a bar started while another runs
#: (nested stages, or runs side by side in threads) stays hidden
_active = 0
_lock = threading.Lock()


def _quiet() -> bool:
    return os.environ.get("OODLAB_QUIET", "") not in ("", "0")


@contextlib.contextmanager
def progress(description: str, total: float | None, unit: str = "items") -> Iterator["Advance"]:
    """A progress bar on stderr; yields a callable ``advance(n)``.

    Hidden when ``OODLAB_QUIET=1`` or stderr is not a terminal (CI logs stay readable).
    """
    global _active
    with _lock:
        disable = _quiet() or not sys.stderr.isatty() or _active > 0
        if not disable:
            _active += 1
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    try:
        with Progress(*columns, console=console, disable=disable, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield Advance(bar, task)
    finally:
        if not disable:
            with _lock:
                _active -= 1


class Advance:
    def __init__(self, bar: Progress, task: int):
        self._bar, self._task = bar, task

    def __call__(self, n: float = 1) -> None:
        self._bar.advance(self._task, n)

    def total(self, total: float) -> None:
        self._bar.update(self._task, total=total)


def summary(message: str) -> None:
    """Print the one-line summary of a stage (suppressed with ``OODLAB_QUIET=1``)."""
    if not _quiet():
        console.print(message, soft_wrap=True)


class Timer:
    """Wall-clock timer for summaries: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
