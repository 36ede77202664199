"""The typer application and the decorator that ties each command to its library function."""

from __future__ import annotations

from typing import Callable

import typer

app = typer.Typer(
    name="oodlab",
    help=(
        "Where does a CLIP model's out-of-distribution accuracy come from? "
        "Embed data, measure train-test similarity, prune and deduplicate training sets, "
        "train and evaluate CLIP on them. Start with `oodlab demo OUT`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: sub-app -> its name on the command line (for the "store info" style names in TARGETS)
_PREFIX: dict[int, str] = {}


def subapp(name: str, help: str) -> typer.Typer:
    """Create a command group (``oodlab NAME ...``) and attach it to the main app."""
    group = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(group, name=name)
    _PREFIX[id(group)] = f"{name} "
    return group


store_app = subapp("store", "Inspect and check embedding stores.")

#: command name ("embed", "store info", ...) -> "module:function" it calls (checked by tests/test_cli.py)
TARGETS: dict[str, str] = {}


def command(group: typer.Typer, name: str, target: str) -> Callable[[Callable], Callable]:
    """Register a CLI command that is a thin layer over ``target`` ("module:function")."""

    def deco(fn: Callable) -> Callable:
        TARGETS[_PREFIX.get(id(group), "") + name] = target
        group.command(name)(fn)
        return fn

    return deco


def call(target: str, **kwargs):
    """Import ``module:function`` and call it (keeps heavy imports out of ``--help``)."""
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; a clear error for malformed or repeated names."""
    from oodlab.utils.errors import InputError

    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(None, f"{flag} {item!r} is not NAME=VALUE", f"write e.g. {flag} val=stores/val")
        if name in out:
            raise InputError(None, f"{flag} names {name!r} twice", "give each a distinct name")
        out[name] = value
    return out
