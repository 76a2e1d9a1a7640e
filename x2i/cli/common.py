"""Helpers shared by the CLI modules."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from x2i.config import ConfigError
from x2i.errors import X2IError


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit with `code`."""
    typer.echo(f"x2i: error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors raised by a command into one line on stderr and exit code 2 (also under CliRunner)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (X2IError, ConfigError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("x2i: interrupted; finished partitions are kept, re-run the same command to resume",
                       err=True)
            sys.exit(130)

    return wrapper
