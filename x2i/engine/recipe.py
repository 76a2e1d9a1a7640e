"""Build recipes: typed dataclasses loaded strictly from the YAML in `manifests/` (shipped as package data).

A recipe names a builder, a source (format + local paths; no path means the embedded sample), the builder's
parameters (checked against the builder's own dataclass), optional extra steps, the output policy and a seed.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from x2i.core.config import ConfigError, apply_sets, from_dict, load_yaml, read_yaml, set_dotted, to_dict
from x2i.core.jpeg_settings import JpegSettings, Subsampling


@dataclass
class SourceConfig:
    format: str = "grit"  # the source's published format: grit, laion, instructpix2pix, ...
    path: str | None = None  # metadata file(s) or dataset dir; None: the embedded sample in this format
    images: str | None = None  # img2dataset output holding the images, when separate from `path`
    options: dict[str, Any] = field(default_factory=dict)  # format-specific settings


@dataclass
class OutputConfig:
    max_side: int = 1024  # output images are downscaled so the longer side is at most this
    max_input_side: int = 512  # input (condition) images likewise
    multiple: int = 16  # then centre-cropped to multiples of this (VAE 8 x patch 2)
    jpeg_quality: int = 95
    jpeg_subsampling: Subsampling = "auto"  # chroma: auto (4:4:4 from quality 90 up), 4:4:4 or 4:2:0
    rows_per_row_group: int = 100  # <= 100 keeps the Hub's dataset viewer working on image data
    max_shard_bytes: int = 500 * 1024 * 1024
    write_rejects: bool = True
    holdout: float = 0.0  # share of source items held out as the test split (x2i/engine/holdout.py)

    @property
    def jpeg(self) -> JpegSettings:
        """How builders write output JPEGs (quality and chroma subsampling), checked."""
        try:
            return JpegSettings(self.jpeg_quality, self.jpeg_subsampling)
        except ValueError as exc:
            raise ConfigError(f"output: {exc}") from None


@dataclass
class Recipe:
    name: str
    builder: str
    source: SourceConfig = field(default_factory=SourceConfig)
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # checked by the builder's Params dataclass
    steps: list[dict[str, Any]] = field(default_factory=list)  # extra steps: [{name: ..., <params>}]
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        return from_dict(cls, data)


def _packaged() -> dict[str, Any]:
    return {p.name[:-5]: p for p in resources.files("x2i.manifests").iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the recipes shipped with x2i (the YAML files in manifests/)."""
    return sorted(n for n in _packaged() if not n.startswith("mix"))


def task_names() -> list[str]:
    """The shipped recipes by the names `x2i build --task` takes and `x2i recipes` prints (subject-driven)."""
    return [name.replace("_", "-") for name in list_recipes()]


def _read(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    """A recipe's raw mapping and the file it came from, as error messages name it."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return read_yaml(path), str(path)
    key = str(name_or_path).replace("-", "_")
    packaged = _packaged()
    if key not in packaged:
        close = difflib.get_close_matches(str(name_or_path).replace("_", "-"), task_names(), n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"no recipe named {name_or_path!r}; {hint}shipped recipes: {', '.join(task_names())} "
                          "(see `x2i recipes`)")
    return load_yaml(packaged[key].read_text()), f"manifests/{key}.yaml"


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe from a YAML path, or by name from the shipped manifests (`subject_driven`, `subject-driven`)."""
    data, where = _read(name_or_path)
    with errors_in(where):
        return Recipe.from_dict(data)


@contextmanager
def errors_in(where: str) -> Iterator[None]:
    """Name the recipe file `where` in the config errors raised inside, however deep (a builder checking
    `params`, a source checking `source.options`), so every recipe key error says which file to fix."""
    try:
        yield
    except ConfigError as exc:
        raise exc.in_file(where) from None


def resolve_recipe(name_or_path: str | Path, options: dict[str, Any] | None = None,
                   sets: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, str]:
    """A recipe with command-line changes applied: `options` (dotted key -> value, None meaning not given),
    then `--set key=value` strings. Returns it with its file name for error messages (`errors_in`)."""
    data, where = _read(name_or_path)
    with errors_in(where):
        data = Recipe.from_dict(data).to_dict()  # the recipe's own errors first, with defaults filled in
        for key, value in (options or {}).items():
            if value is not None:
                set_dotted(data, key, value, parse=False)
        apply_sets(data, sets)
        return Recipe.from_dict(data), where
