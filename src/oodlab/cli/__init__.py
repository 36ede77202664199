"""The ``oodlab`` command line: generated from the public functions it calls.

Commands are listed in :mod:`oodlab.cli.commands`, their options built from each function's
signature and docstring (:mod:`oodlab.cli.build`) with the vocabulary of :mod:`oodlab.cli.glossary`.
A command's module is imported only when that command runs (or shows its help), so that
``oodlab --help`` is instant: the listing reads the functions' first docstring lines from source.
"""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path
from typing import Any

import click

from oodlab.cli.commands import COMMANDS, GROUPS, Command
from oodlab.utils.errors import OodlabError

_HELP = ("Where does a CLIP model's out-of-distribution accuracy come from? Embed data, measure train-test "
         "similarity, prune and deduplicate training sets, train and evaluate CLIP on them. "
         "Start with `oodlab demo --out demo-out`.")


def short_help(target: str) -> str:
    """The first docstring line of ``module:function``, read from its source without importing it."""
    module, func = target.split(":")
    path = Path(__file__).resolve().parents[1].joinpath(*module.split(".")[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
    return ""


class LazyGroup(click.Group):
    """A group whose commands are built on first use (see the module docstring)."""

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefix = prefix

    def _children(self) -> dict[str, Command | str]:
        """name at this level -> a command, or the prefix of a sub-group."""
        out: dict[str, Command | str] = {}
        for cmd in COMMANDS:
            if not cmd.name.startswith(self.prefix):
                continue
            rest = cmd.name[len(self.prefix):].split(" ")
            out.setdefault(rest[0], cmd if len(rest) == 1 else f"{self.prefix}{rest[0]} ")
        return out

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._children())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        child = self._children().get(name)
        if child is None:
            return None
        if isinstance(child, str):
            return LazyGroup(name, prefix=child, help=GROUPS.get(name.strip()), no_args_is_help=True)
        from oodlab.cli.build import build_command

        return build_command(child.name, child.target, child.show)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name, child in self._children().items():
            rows.append((name, GROUPS.get(name, "") if isinstance(child, str) else short_help(child.target)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = LazyGroup("oodlab", help=_HELP, no_args_is_help=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors exit 2 with the usage; oodlab's input errors exit 2 with
    the message (no traceback); a command's result may set the exit code (``store validate``: 1)."""
    from rich.logging import RichHandler

    from oodlab.utils.progress import console

    # libraries log to the root logger (open_clip's model factory says "Loaded built-in ... config"
    # at INFO for every model it creates): only their warnings show, oodlab's own INFO does
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("oodlab").setLevel(logging.INFO)
    try:
        try:
            code = app.main(args=argv, prog_name="oodlab", standalone_mode=False)
        except OSError as err:  # a write that no stage wraps (a folder made, a scratch file): same message
            from oodlab.utils.atomic import raise_output_error

            raise_output_error(None, err)
    except OodlabError as err:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(2)
    except click.exceptions.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
