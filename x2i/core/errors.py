"""The two kinds of failure, kept apart.

- A bad row (image, box, caption) is *data*: a step raises `RejectSample` (or `ImageError`), the row is counted
  with its reason and kept in the rejects ledger, and the build goes on (x2i/engine/steps.py).
- Everything else is *not data*: a missing module, missing or unreadable weights, a source column of the wrong
  type, a full disk, an exception no step declared. It stops the build before or as soon as it is met; the CLI
  prints the one-line message (cause and fix) and exits with code 2, never a traceback.
"""
from __future__ import annotations

class ImageError(ValueError):
    """An image that cannot be used (data: a reject); `reason` is a short, countable label, `str(e)` the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class X2IError(Exception):
    """A problem with the user's input or environment (files, recipes, arguments, installs), not a bad row."""


class SourceError(X2IError):
    """A source file that cannot be read as the format it claims: names the file and the problem."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # picklable across process pools and Ray with both arguments
        return (type(self), (self.path, self.problem))


class BuildStopped(X2IError):
    """An error that is not a bad row met while building: the build stops (exit 2) with cause and fix."""


def missing_module_fix(exc: ImportError) -> str:
    """'pip install ...' for a missing optional module, from the module's top-level name."""
    from x2i.core.extras import extra_for

    top = (getattr(exc, "name", None) or "").split(".")[0]
    extra = extra_for(top) if top else None
    if extra:
        return f"install the '{extra}' extra: pip install 'x2i[{extra}]'"
    return f"install the missing module{f' {top!r}' if top else ''} (pip install 'x2i[all]' brings every extra)"


def describe_stop(exc: BaseException, where: str) -> str:
    """One line naming what stopped the build at `where` and how to fix it."""
    if isinstance(exc, X2IError):
        return f"{where}: {exc}"
    if isinstance(exc, ImportError):
        return f"{where}: {type(exc).__name__}: {exc}; {missing_module_fix(exc)}"
    if isinstance(exc, OSError):
        return f"{where}: {type(exc).__name__}: {exc}; check the disk, permissions and paths"
    if isinstance(exc, MemoryError):
        return f"{where}: out of memory; lower --workers or the batch size"
    return (f"{where}: {type(exc).__name__}: {str(exc)[:300]} (an error no step declares: a bug, or input the "
            "step does not handle); re-run with --max-error-rate RATE to count such rows as 'unexpected_error' "
            "rejects instead, and please report it")


def require_modules(what: str, modules: list[tuple[str, str]]) -> None:
    """Stop before any work when an optional module is missing: `modules` are (module, extra that installs it).
    Looked up without importing (find_spec), so checking is cheap and has no side effects."""
    import importlib.util

    from x2i.core.extras import MissingExtra

    for module, extra in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a half-imported module
            found = False
        if not found:
            raise MissingExtra(module, extra, what)
