"""The ``oodlab`` command line: a thin layer over public Python functions.

Every command calls one library function and every option is one of its keyword arguments,
with the same name (``--chunk-rows`` -> ``chunk_rows``); ``tests/test_cli.py`` checks it. The
library is imported inside each command so that ``oodlab --help`` is instant.
"""

from __future__ import annotations

import logging
import sys

import typer

from oodlab.cli._app import app
from oodlab.utils.errors import OodlabError

# Each module registers its commands on ``app`` (one module per pipeline stage).
from oodlab.cli import data as _data  # noqa: E402,F401
from oodlab.cli import embeddings as _embeddings  # noqa: E402,F401
from oodlab.cli import similarity as _similarity  # noqa: E402,F401
from oodlab.cli import index as _index  # noqa: E402,F401
from oodlab.cli import analysis as _analysis  # noqa: E402,F401
from oodlab.cli import subsets as _subsets  # noqa: E402,F401
from oodlab.cli import train as _train  # noqa: E402,F401
from oodlab.cli import experiments as _experiments  # noqa: E402,F401
from oodlab.cli import demo as _demo  # noqa: E402,F401


def main() -> None:
    """Console entry point: runs the app and turns oodlab errors into a message and exit code 2."""
    from rich.logging import RichHandler

    from oodlab.utils.progress import console

    # libraries log to the root logger (open_clip's model factory says "Loaded built-in ... config"
    # at INFO for every model it creates): only their warnings show, oodlab's own INFO does
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("oodlab").setLevel(logging.INFO)
    try:
        # click returns the code of a ``typer.Exit`` instead of exiting when not standalone
        code = app(standalone_mode=False)
    except OodlabError as err:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as err:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
