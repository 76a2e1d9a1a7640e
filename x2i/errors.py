"""User-facing errors: the CLI prints these as one line and exits with code 2 (never a traceback)."""
from __future__ import annotations


class X2IError(Exception):
    """A problem with the user's input (files, recipes, arguments) rather than a bug in x2i."""


class SourceError(X2IError):
    """A source file that cannot be read as the format it claims: names the file and the problem."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
