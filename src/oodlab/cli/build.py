"""Build a click command from a stage function's signature and docstring.

The CLI is generated, not written: each command's options are the keyword arguments of its
function (flags from :mod:`oodlab.cli.glossary`), their types from the annotations, their help from
the docstring's ``Args:`` section, and an option the user did not give is not passed at all, so
the function's own default applies: CLI and Python cannot drift apart. Why by hand: click and typer
build commands from decorators or from a signature with CLI-specific defaults; neither reads a plain
library function's signature and docstring.

Annotations map as follows (``X | None`` makes an option optional):

- ``int``, ``float``, ``str``, ``Path``, ``str | Path``: one value;
- ``bool``: a ``--flag/--no-flag`` switch;
- ``Sequence[X]`` / ``list[X]``: a repeatable option (one value per use, in order);
- ``Mapping[str, X]``: a repeatable ``NAME=VALUE`` option, passed as a dict in the given order.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from oodlab.cli.glossary import flag

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class OptionSpec:
    """How one keyword argument appears on the command line."""

    keyword: str
    flag: str
    scalar: type  # int, float, str (paths too), Path or bool
    repeat: str | None  # None, "list" or "pairs"
    metavar: str
    required: bool
    default: Any
    help: str


def load_target(target: str) -> Callable[..., Any]:
    """Import ``"module:function"``."""
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return tp, False


def _scalar(tp: Any, where: str) -> type:
    if tp in (int, float, str, bool, Path):
        return tp
    args = set(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args == {str, Path}:
        return str
    raise TypeError(f"{where}: annotation {tp!r} has no command-line form")


def option_spec(keyword: str, parameter: inspect.Parameter, annotation: Any, help: str) -> OptionSpec:
    """The :class:`OptionSpec` of one parameter (see the module docstring)."""
    where = f"parameter {keyword!r}"
    tp, _ = _strip_optional(annotation)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    repeat = None
    if origin in (collections.abc.Mapping, dict):
        repeat, tp = "pairs", args[1]
    elif origin in (collections.abc.Sequence, list, tuple) and args:
        repeat, tp = "list", args[0]
    scalar = _scalar(tp, where)
    is_path = tp is Path or Path in typing.get_args(tp)
    metavar = "NAME=PATH" if repeat == "pairs" and is_path else "NAME=VALUE" if repeat == "pairs" else (
        "PATH" if is_path else {int: "N", float: "X", str: "TEXT", bool: ""}[scalar])
    required = parameter.default is _EMPTY
    return OptionSpec(keyword, flag(keyword), scalar, repeat, metavar, required,
                      None if required else parameter.default, help)


def plain_text(text: str) -> str:
    """Docstring markup as terminal text: ``x`` and :role:`x` become x."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(the text before ``Args:``, {keyword: its help}) of a Google-style docstring.

    An entry ``a, b: text`` documents both ``a`` and ``b``; continuation lines are joined.
    """
    text = plain_text(inspect.cleandoc(doc or ""))
    head, _, rest = text.partition("\nArgs:\n")
    args: dict[str, str] = {}
    current: list[str] = []
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        m = re.match(r"^ {4}([A-Za-z_][\w, ]*?):\s+(.*)$", line)
        if m:
            current = [k.strip() for k in m.group(1).split(",")]
            for k in current:
                args[k] = m.group(2).strip()
        elif line.strip() and current:
            for k in current:
                args[k] += " " + line.strip()
    return head.strip(), args


def option_specs(func: Callable[..., Any]) -> list[OptionSpec]:
    """The options of ``func``: one per parameter, in signature order.

    Raises:
        TypeError: a parameter without an annotation of a known form.
        KeyError: a parameter that is not in the glossary.
        ValueError: a parameter without documentation.
    """
    hints = typing.get_type_hints(func)
    _, docs = parse_docstring(func.__doc__)
    specs = []
    for name, parameter in inspect.signature(func).parameters.items():
        if name not in docs:
            raise ValueError(f"{func.__module__}.{func.__name__}: parameter {name!r} is not documented in Args:")
        specs.append(option_spec(name, parameter, hints.get(name), docs[name]))
    return specs


def _pairs(spec: OptionSpec, items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE (e.g. {spec.flag} val=stores/val)", param_hint=spec.flag)
        if name in out:
            raise click.BadParameter(f"names {name!r} twice; give each a distinct name", param_hint=spec.flag)
        out[name] = value
    return out


def _click_option(spec: OptionSpec) -> click.Option:
    name = spec.flag.removeprefix("--")
    if spec.scalar is bool:
        if spec.default is False:  # a plain switch
            return click.Option([spec.flag, spec.keyword], is_flag=True, default=False, help=spec.help)
        return click.Option([f"--{name}/--no-{name}", spec.keyword], default=spec.default, show_default=True, help=spec.help)
    kind = {int: click.INT, float: click.FLOAT}.get(spec.scalar, click.STRING)
    multiple = spec.repeat is not None
    default = None if multiple or spec.required else spec.default
    shown = spec.default if (multiple and spec.default not in (None, ())) else None
    suffix = " (repeat)" if multiple else ""
    if shown is not None:
        suffix += f" [default: {shown}]"
    return click.Option([spec.flag, spec.keyword], type=kind, multiple=multiple, required=spec.required,
                        default=default, show_default=default is not None, metavar=spec.metavar, help=spec.help + suffix)


def _value(spec: OptionSpec, raw: Any) -> Any:
    if spec.repeat == "pairs":
        return _pairs(spec, raw)
    convert = Path if spec.scalar is Path else (lambda v: v)
    if spec.repeat == "list":
        return [convert(v) for v in raw]
    return convert(raw) if raw is not None else None


def build_command(name: str, target: str, show: Callable[[Any], int | None] | None) -> click.Command:
    """A click command that calls ``target`` with the given options and hands the result to ``show``
    (which prints it and may return an exit code)."""
    func = load_target(target)
    specs = option_specs(func)
    summary, _ = parse_docstring(func.__doc__)

    @click.pass_context
    def callback(ctx: click.Context, **values: Any) -> int:
        kwargs = {}
        for spec in specs:
            if ctx.get_parameter_source(spec.keyword) is click.core.ParameterSource.DEFAULT and not spec.required:
                continue  # not given: the function's own default applies
            kwargs[spec.keyword] = _value(spec, values[spec.keyword])
        result = func(**kwargs)
        code = show(result) if show is not None else None
        return code or 0

    return click.Command(name.split()[-1], callback=callback, params=[_click_option(s) for s in specs],
                         help=summary, short_help=summary.split("\n\n")[0].replace("\n", " "))
