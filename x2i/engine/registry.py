"""Named parts a recipe can use: source formats, builders, steps, annotators. Each module registers what it
defines, where it defines it (`@register_builder("layout")`), so a reader sees the name next to the class and the
engine never names a plugin module.

Where registrations come from (`load_plugins`, run once per process on the first lookup):
- the core packages x2i.sources and x2i.curation (imported directly: they are part of x2i);
- every module named by a Python entry point in the group `x2i.plugins` (pyproject.toml declares the shipped
  ones, `builders = "x2i.builders"`, `annotators = "x2i.annotators"`; another package can add its own the same
  way). Importing the module registers its parts.

A name not found is an error with the closest known names ("did you mean ...").
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from x2i.core.config import ConfigError
from x2i.core.errors import X2IError

T = TypeVar("T")

ENTRY_POINT_GROUP = "x2i.plugins"
CORE_MODULES = ("x2i.sources", "x2i.curation")  # core parts: registered by importing these packages

_loaded = False


class Registry(Generic[T]):
    """name -> registered object, in registration order."""

    def __init__(self, kind: str, error: type[Exception] = X2IError):
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        known = self._items.get(name)
        # The same class again (a module reloaded) replaces itself; another class under a taken name is a clash.
        if known is not None and _where(known) != _where(obj):
            raise X2IError(f"{self.kind} {name!r} is registered twice: {_where(known)} and {_where(obj)}")
        self._items[name] = obj
        return obj

    def get(self, name: str, where: str = "") -> T:
        load_plugins()
        if name not in self._items:
            raise self.error(self.unknown(name, where))
        return self._items[name]

    def unknown(self, name: Any, where: str = "") -> str:
        """`unknown builder 'layot'; did you mean 'layout'? known: ...`"""
        close = difflib.get_close_matches(str(name), list(self._items), n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        if not self._items:
            hint = (f"no {self.kind} is registered (no `{ENTRY_POINT_GROUP}` entry points found: reinstall x2i, "
                    "e.g. `pip install -e .`) ")
        return f"{where + ': ' if where else ''}unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self._items))}"

    def names(self) -> list[str]:
        load_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _where(obj: Any) -> str:
    target = getattr(obj, "cls", obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


@dataclass(frozen=True)
class AnnotatorEntry:
    """An annotator class and the preset options one of its names stands for (one class can serve several)."""

    cls: type
    preset: dict[str, Any] = field(default_factory=dict)


SOURCES: Registry[type] = Registry("source format")
BUILDERS: Registry[type] = Registry("builder")
STEPS: Registry[type] = Registry("step", ConfigError)  # a recipe's `steps:` entry: a config error in the recipe
ANNOTATORS: Registry[AnnotatorEntry] = Registry("annotator")


def _register(registry: Registry, name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        registry.add(name, cls)
        return cls

    return deco


def register_source(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_source("grit")` on a `x2i.sources.Source` subclass."""
    return _register(SOURCES, name)


def register_builder(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_builder("layout")` on a builder (takes the Recipe; has `Params`, `steps()`)."""
    return _register(BUILDERS, name)


def register_step(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_step("dedup")` on a recipe step (takes its `Params` dataclass)."""
    return _register(STEPS, name)


def register_annotator(name: str, cls: type, preset: dict[str, Any] | None = None) -> None:
    """`register_annotator("depth_dpt", TransformersDepth, {"repo": "Intel/dpt-large"})`."""
    ANNOTATORS.add(name, AnnotatorEntry(cls, dict(preset or {})))


def plugin_modules() -> list[str]:
    """The modules named by the installed `x2i.plugins` entry points, in a stable order."""
    return sorted({ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_plugins() -> None:
    """Import the core packages and every plugin module once per process (importing registers their parts).
    An import error propagates: a plugin that cannot load must not look like an unknown name."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin that looks a name up while it loads must not start a second load
    try:
        for module in (*CORE_MODULES, *plugin_modules()):
            importlib.import_module(module)
    except BaseException:
        _loaded = False
        raise


__all__ = ["ANNOTATORS", "AnnotatorEntry", "BUILDERS", "ENTRY_POINT_GROUP", "Registry", "SOURCES", "STEPS",
           "load_plugins", "plugin_modules", "register_annotator", "register_builder", "register_source",
           "register_step"]
