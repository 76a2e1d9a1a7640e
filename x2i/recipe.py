"""Build recipes: typed dataclasses loaded strictly from the YAML in `manifests/` (shipped as package data).

A recipe names a builder, a source (format + local paths; no path means the embedded sample), the builder's
parameters (checked against the builder's own dataclass), optional extra steps, the output policy and a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from x2i.config import ConfigError, from_dict, read_yaml, to_dict


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
    rows_per_row_group: int = 100  # <= 100 keeps the Hub's dataset viewer working on image data
    max_shard_bytes: int = 500 * 1024 * 1024
    write_rejects: bool = True


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


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe from a YAML path, or by name from the shipped manifests (`subject_driven`, `subject-driven`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        data = read_yaml(path)
        where = str(path)
    else:
        key = str(name_or_path).replace("-", "_")
        packaged = _packaged()
        if key not in packaged:
            raise ConfigError(f"no recipe named {name_or_path!r}; shipped recipes: {list_recipes()}")
        import yaml

        data = yaml.safe_load(packaged[key].read_text())
        where = f"manifests/{key}.yaml"
    try:
        return Recipe.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
