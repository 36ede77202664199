"""Bringing an :class:`~oodlab.utils.errors.InputError` raised in a worker process back intact.

An exception leaves a worker pickled, and unpickling rebuilds it as ``type(err)(*err.args)``:
an InputError's one argument is its whole message, not ``(path, problem, fix)``, so the rebuild
fails (a DataLoader then raises a RuntimeError with the worker's traceback; a
``multiprocessing`` pool's result thread dies and the pool waits forever). Workers therefore
return or yield the error as data, a :class:`CarriedError`, and the main process raises it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from oodlab.utils.errors import InputError


@dataclass(frozen=True)
class CarriedError:
    """An InputError as plain, picklable data: its class, its arguments and its attributes."""

    kind: type[InputError]
    path: str | None
    problem: str
    fix: str | None
    attributes: dict[str, Any]

    @classmethod
    def of(cls, err: InputError) -> "CarriedError":
        return cls(type(err), err.path, err.problem, err.fix, dict(vars(err)))

    def reraise(self) -> NoReturn:
        """Raise the error again: the same class, message and attributes (e.g. a
        TruncatedShardError's ``first_lost``)."""
        err = self.kind(self.path, self.problem, self.fix)
        err.__dict__.update(self.attributes)
        raise err


def call_carrying(fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)`` in a worker, with an InputError it raises returned as a :class:`CarriedError`
    (pass the result to :func:`returned`)."""
    try:
        return fn(arg)
    except InputError as err:
        return CarriedError.of(err)


def returned(result: Any) -> Any:
    """``result`` of :func:`call_carrying`, raising again the InputError it carries."""
    if isinstance(result, CarriedError):
        result.reraise()
    return result
