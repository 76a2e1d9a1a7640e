"""Helpers shared by the CLI modules."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from x2i.core.config import ConfigError
from x2i.core.errors import X2IError
from x2i.core.extras import missing_extra

# The extra a command group installs, for modules several extras provide (torch is in model, annotators and
# curation): `x2i annotators fetch` without torch should point at x2i[annotators], not x2i[model].
COMMAND_EXTRA = {"train": "model", "generate": "model", "annotators": "annotators", "publish": "publish"}


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit with `code`."""
    typer.echo(f"x2i: error: {message}", err=True)
    raise typer.Exit(code)


def as_user_error(exc: ModuleNotFoundError, command: str) -> X2IError | None:
    """A missing optional dependency as the one-line MissingExtra for `command` ("x2i annotators fetch"); None
    when the module is no optional dependency, i.e. a bug (reported as an internal error, X2I_DEBUG=1 for the
    traceback)."""
    words = command.split()
    prefer = COMMAND_EXTRA.get(words[1]) if len(words) > 1 else None
    return missing_extra(exc, command, prefer)


def user_errors(fn: Callable[..., Any] | None = None, *, command: str | None = None) -> Any:
    """Turn user errors raised by a command into one line on stderr and exit code 2 (also under CliRunner).

    `command` names the command in messages (default: "x2i " + the function's name less `_command`); use
    `@user_errors(command="x2i annotators fetch")` for subcommands. Click 8.5 keeps no current context
    during the callback, so the name cannot be looked up at run time."""
    if fn is None:
        return functools.partial(user_errors, command=command)
    name = command or "x2i " + fn.__name__.removesuffix("_command").replace("_", "-")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (X2IError, ConfigError) as exc:
            fail(str(exc))
        except ModuleNotFoundError as exc:
            error = as_user_error(exc, name)
            if error is None:
                _internal(exc, name)
            fail(str(error))
        except KeyboardInterrupt:
            typer.echo("x2i: interrupted; finished partitions are kept, re-run the same command to resume",
                       err=True)
            sys.exit(130)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - nobody declared it: still one line and exit 2
            _internal(exc, name)

    return wrapper


def _internal(exc: BaseException, command: str) -> None:
    """An error no code path declares is a bug: one line and exit 2 (X2I_DEBUG=1 re-raises for the traceback)."""
    import os

    if os.environ.get("X2I_DEBUG"):
        raise exc
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    at = f" at {os.path.basename(where.tb_frame.f_code.co_filename)}:{where.tb_lineno}" if where else ""
    fail(f"{command}: internal error {type(exc).__name__}: {str(exc)[:300]}{at} (a bug: please report it with "
         "the command; X2I_DEBUG=1 shows the traceback)")
