"""The one rule for user-given names that become file or folder names (eval sets, datasets,
checkpoint labels, training sets): a plain file name, so that ``eval/{name}.parquet`` can never
land outside its folder."""

from __future__ import annotations

import re
from typing import Iterable

from oodlab.utils.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a plain file name (letters, digits, ``.``, ``_``, ``-``; not starting
    with ``.`` or ``-``; no ``/``), else raise.

    Raises:
        InputError: naming the bad name and what it names.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(None, f"{what} {name!r} is not a plain file name",
                         "use letters, digits, '.', '_' and '-' (it names output files)")
    return name


def check_names(names: Iterable[str], what: str = "name") -> list[str]:
    """:func:`check_name` for each, and refuse a name given twice."""
    out = [check_name(n, what) for n in names]
    twice = sorted({n for n in out if out.count(n) > 1})
    if twice:
        raise InputError(None, f"{what}s {twice} are given twice", "give each a distinct name")
    return out
