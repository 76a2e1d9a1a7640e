"""The `x2i` command line. Each area registers its commands from its own module (see COMMAND_MODULES);
heavy imports (torch, Ray, models) happen inside the commands so `x2i --help` stays instant.

User errors (bad files, bad recipes, bad arguments) print one line and exit with code 2, never a traceback.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

# numpy's OpenBLAS starts a spinning thread per core when numpy is imported (0.1 CPU s in every x2i process,
# python -X importtime / time). x2i's data commands spread work over processes and make no BLAS call worth a
# thread (pHash's 8x32 matrix products), so they run with one unless the user set it; model commands keep the
# default. Before any import of numpy.
DATA_COMMANDS = {"build", "import", "validate", "stats", "export", "download", "publish", "view", "recipes"}
if next((a for a in sys.argv[1:] if not a.startswith("-")), None) in DATA_COMMANDS:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from x2i.core.config import ConfigError  # noqa: E402
from x2i.core.errors import X2IError  # noqa: E402
from x2i.core.extras import missing_extra  # noqa: E402

COMMAND_MODULES = [
    "x2i.cli.data",
    "x2i.cli.publish",
    "x2i.cli.view",
    "x2i.cli.download",
    "x2i.cli.model",
    "x2i.cli.annotators",
    "x2i.cli.train",
]

app = typer.Typer(
    name="x2i",
    help="Build, curate, inspect and train on X2I (anything-to-image) data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    # Commands wrap their bodies with x2i.cli.common.user_errors; this is the net for errors raised while
    # parsing options or importing a command's dependencies.
    try:
        app()
    except (X2IError, ConfigError) as exc:
        typer.echo(f"x2i: error: {exc}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        # Outside a command there is no click context: name the command from argv.
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        error = missing_extra(exc, f"x2i {command}" if command else "x2i")
        if error is None:
            raise
        typer.echo(f"x2i: error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
