"""Sources: readers of published dataset formats, each split into partitions (one build task each).

A source turns one partition (a file, a shard) into `Sample`s with task `source`, rejecting bad rows with a
counted reason through `ctx.reject`. With no path configured, a source reads the embedded sample written in
its own format (the shapes world, plus photos shipped inside installed packages), so every command works
with nothing downloaded.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from x2i.core.errors import X2IError
from x2i.engine.recipe import SourceConfig
from x2i.core.sample import Sample
from x2i.engine.steps import Context

# format name -> "module:Class"; imported on use so a build loads only what it reads.
SOURCE_FORMATS: dict[str, str] = {
    "grit": "x2i.sources.grit:GritSource",
    "omnigen": "x2i.sources.omnigen:OmniGenJsonlSource",
    "laion": "x2i.sources.laion:LaionSource",
    "instructpix2pix": "x2i.sources.edits:InstructPix2PixSource",
    "magicbrush": "x2i.sources.edits:MagicBrushSource",
    "ultraedit": "x2i.sources.edits:UltraEditSource",
    "hq_edit": "x2i.sources.edits:HQEditSource",
    "seed_data_edit": "x2i.sources.seed_edit:SeedDataEditSource",
    "video": "x2i.sources.video:VideoSource",
    "image_groups": "x2i.sources.video:ImageGroupsSource",
}


class Source:
    """Base class of source readers."""

    format = ""

    def __init__(self, config: SourceConfig):
        self.config = config

    def partitions(self) -> list[Any]:
        """Picklable partition descriptors, in a stable order. Raise SourceError for unreadable input."""
        raise NotImplementedError

    def count(self, partition: Any) -> int:
        """Records the partition holds (used to split `--limit` deterministically)."""
        raise NotImplementedError

    def read(self, partition: Any, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        """Samples of the first `limit` records of the partition (rejected records count towards it)."""
        raise NotImplementedError

    def label(self, partition: Any) -> str:
        """A short, stable name of the partition (recorded in completion records and the manifest)."""
        return str(partition)

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest."""
        return {"format": self.format, "path": self.config.path, "images": self.config.images}


def make_source(config: SourceConfig) -> Source:
    target = SOURCE_FORMATS.get(config.format)
    if target is None:
        raise X2IError(f"unknown source format {config.format!r}; known: {sorted(SOURCE_FORMATS)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(config)
