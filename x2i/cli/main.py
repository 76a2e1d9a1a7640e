"""The `x2i` command line. Each area registers its commands from its own module (see COMMAND_MODULES);
heavy imports (torch, Ray, models) happen inside the commands so `x2i --help` stays instant.

User errors (bad files, bad recipes, bad arguments) print one line and exit with code 2, never a traceback.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading

# numpy's OpenBLAS starts a spinning thread per core when numpy is imported (0.1 CPU s in every x2i process,
# python -X importtime / time). x2i's data commands spread work over processes and make no BLAS call worth a
# thread (pHash's 8x32 matrix products), so they run with one unless the user set it; model commands keep the
# default. Before any import of numpy.
DATA_COMMANDS = {"build", "import", "validate", "stats", "export", "download", "publish", "view", "recipes"}
_COMMAND = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
if _COMMAND in DATA_COMMANDS:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# pyarrow's allocator (mimalloc) reserves a 1 GiB arena at its first allocation and asks for transparent huge
# pages on it: every first touch of a 2 MiB range then zeroes all of it, and freed ranges are purged and touched
# again. Row groups come and go all build long: 1.4-3.4% of a download-mode build's CPU went to zeroing huge
# pages, 0.1% without them (perf record, bench/e2e_bench.py's build). Read once, when pyarrow loads.
os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")

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


class _NoPandas:
    """A finder that refuses `pandas` (x2i.cli.main._pyarrow_without_pandas)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ImportError("kept out of pyarrow's first conversion by x2i")
        return None


def _pyarrow_without_pandas() -> None:
    """pyarrow imports pandas (when installed) at its first conversion of Python values, to see whether they are
    pandas objects, which x2i never gives it: 0.15 s at start and more at exit in every data command (a 20-URL
    `x2i build` with 2 workers: 0.66 -> 0.51 s, docs/benchmarks.md), and pool workers fork with it loaded.
    That first check is made here with pandas out of reach, so pyarrow records "no pandas" and does not import it
    (its pandas functions, `to_pandas` / `from_pandas`, still import it when called). Only in the `x2i` process of
    a data command: a library user's process keeps pyarrow's default."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


def main() -> None:
    # Commands wrap their bodies with x2i.cli.common.user_errors; this is the net for errors raised while
    # parsing options or importing a command's dependencies.
    try:
        if _COMMAND in DATA_COMMANDS and _COMMAND != "recipes":  # `recipes` never loads pyarrow
            _pyarrow_without_pandas()
        app()
    except (X2IError, ConfigError) as exc:
        typer.echo(f"x2i: error: {exc}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        # Outside a command there is no click context: name the command from argv.
        error = missing_extra(exc, f"x2i {_COMMAND}" if _COMMAND else "x2i")
        if error is None:
            raise
        typer.echo(f"x2i: error: {error}", err=True)
        sys.exit(2)


def run() -> None:
    """The `x2i` console script: `main`, then leave without tearing the interpreter down.

    Python's normal exit frees every module and object one by one (pyarrow, OpenCV, numpy, the build's plan):
    ~0.07 s on one core after a build has finished, a fifth of a small build's fixed cost (docs/benchmarks.md).
    The exit handlers still run (multiprocessing's, logging's, whatever a library registered) and the standard
    streams are flushed, then the process ends with the code `main` chose. While another thread still runs
    (a server a command left up), the normal exit waits for it, as Python's does."""
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): the message goes to stderr and the code is 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(code & 0xFF)


if __name__ == "__main__":
    run()
