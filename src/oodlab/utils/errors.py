"""The errors oodlab raises for bad input: each names the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class OodlabError(Exception):
    """Base class of the errors that the CLI reports as a message instead of a traceback."""


class InputError(OodlabError, ValueError):
    """Bad input data or arguments.

    Args:
        path: the file or folder at fault (None when the problem is an argument).
        problem: what is wrong, in a sentence.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        how = f" Fix: {fix}" if fix else ""
        super().__init__(f"{where}{problem}.{how}")


class IncompatibleError(InputError):
    """Two inputs that must agree (model, dimension, parameters) do not."""


class OutputError(InputError):
    """An output cannot be written: the disk is full, the folder is read-only or not ours, or
    another run is writing it. What was already written stays as it was."""
