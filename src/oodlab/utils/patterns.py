"""Expansion of brace patterns (``{00000..00099}.tar``) and globs into concrete paths."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from braceexpand import braceexpand

from oodlab.utils.errors import InputError


def expand_paths(patterns: Iterable[str | Path], *, must_exist: bool = True) -> list[Path]:
    """Expand brace patterns and globs, keeping the given order and dropping repeats.

    Raises:
        InputError: when a pattern matches nothing (often a brace pattern the shell mangled).
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if must_exist:
                matches = [m for m in matches if Path(m).exists()]
                if not matches:
                    raise InputError(
                        item,
                        "matches no file",
                        "check the path; quote brace patterns so the shell passes them through",
                    )
            for m in matches:
                p = Path(m)
                if p not in seen:
                    seen.add(p)
                    out.append(p)
    return out


def brace_pattern(paths: list[Path]) -> str:
    """The shortest brace pattern naming ``paths`` when they are ``{prefix}{N:0w}{suffix}`` with
    consecutive N (as open_clip's ``--train-data`` wants); otherwise ``::``-joined paths."""
    import re

    if not paths:
        raise ValueError("no paths")
    rx = re.compile(r"^(.*?)(\d+)(\D*)$")
    parts = [rx.match(str(p)) for p in paths]
    if all(parts):
        prefixes = {m.group(1) for m in parts}
        suffixes = {m.group(3) for m in parts}
        widths = {len(m.group(2)) for m in parts}
        numbers = [int(m.group(2)) for m in parts]
        if len(prefixes) == len(suffixes) == len(widths) == 1 and numbers == list(
            range(numbers[0], numbers[0] + len(numbers))
        ):
            (prefix,), (suffix,), (width,) = prefixes, suffixes, widths
            if len(paths) == 1:
                return str(paths[0])
            return f"{prefix}{{{numbers[0]:0{width}d}..{numbers[-1]:0{width}d}}}{suffix}"
    return "::".join(str(p) for p in paths)
