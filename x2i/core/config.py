"""Typed dataclass configs from YAML/dicts with strict keys and type checks.

`from_dict(Cls, data)` refuses unknown keys, missing required keys and values of the wrong type, naming the
dotted path of the offending key (and the closest known key for a typo), so a typo in a recipe fails before any
work starts. Errors raised while checking a file's contents get the file name prefixed once, by
`ConfigError.in_file`, however deep the check ran (e.g. a builder checking a recipe's `params`).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or config that does not match its dataclass. `file`: the file it is in, when known."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(f"{file}: {message}" if file else message)
        self.message = message
        self.file = file

    def in_file(self, file: str | Path) -> "ConfigError":
        """This error as found in `file` (itself when it already names a file, so the prefix appears once)."""
        return self if self.file else ConfigError(self.message, str(file))


def unknown_key(where: str, key: object, allowed: list[str]) -> str:
    """`params.nme: unknown key; did you mean 'name'?` (or the allowed keys, when none is close)."""
    path = f"{where}.{key}" if where else str(key)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f"{path}: unknown key; " + (f"did you mean {close[0]!r}?" if close else f"allowed: {sorted(allowed)}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if value is None:
        raise ConfigError(f"{where}: must not be null")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError("; ".join(unknown_key(where, key, sorted(fields)) for key in unknown))
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: required key missing")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested structure of them) as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _Loader(yaml.SafeLoader):
    """YAML without YAML 1.1's base-60 numbers: `4:2:0` (a JPEG subsampling) or `1:30` stays the string it reads
    as, where safe_load makes it 14520 or 90."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, re.compile(r"(?!.*:)" + rx.pattern, rx.flags) if tag.endswith((":int", ":float")) else rx)
            for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_yaml(text: str) -> Any:
    """safe_load, with colons never making numbers (_Loader)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any, parse: bool = True) -> None:
    """Apply a `a.b.c=value` style override to nested dicts (a string value parsed as YAML unless `parse` is
    False: a path option must stay a string even when it reads as a number). Unknown keys are caught later, by
    from_dict, which knows the allowed ones."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}={value}: empty key")
    node = data
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys[:depth + 1])}: not a mapping, cannot set {dotted}")
    if parse and isinstance(value, str):
        try:
            value = load_yaml(value)
        except yaml.YAMLError as exc:
            reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"{dotted}: value {value!r} is not valid YAML ({reason})") from None
    node[keys[-1]] = value


def apply_sets(data: dict[str, Any], items: list[str] | tuple[str, ...]) -> None:
    """Apply `--set key=value` strings in order (a later one wins)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        set_dotted(data, key.strip(), value)
