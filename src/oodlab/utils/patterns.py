"""The brace pattern (``{00000..00099}.tar``) that names a list of shards, as open_clip wants it.

Expanding patterns into paths is :func:`oodlab.data.sources.resolve_data`'s job."""

from __future__ import annotations

import re
from pathlib import Path


def brace_pattern(paths: list[Path]) -> str:
    """The shortest brace pattern naming ``paths`` when they are ``{prefix}{N:0w}{suffix}`` with
    consecutive N (as open_clip's ``--train-data`` wants); otherwise ``::``-joined paths."""
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
