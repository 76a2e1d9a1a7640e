"""Sources: readers of published dataset formats, each split into partitions (one build task each).

A source turns one partition (a file, a shard) into `Sample`s with task `source`, rejecting bad rows with a
counted reason through `ctx.reject`. With no path configured, a source reads the embedded sample written in
its own format (the shapes world, plus photos shipped inside installed packages), so every command works
with nothing downloaded.

Each reader registers its format where it is defined (`@register_source("grit")`, x2i/engine/registry.py);
importing this package imports them all, which is how the registry finds them.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from x2i.core.sample import Sample
from x2i.engine.recipe import SourceConfig
from x2i.engine.registry import SOURCES
from x2i.engine.steps import Context


class Source:
    """Base class of source readers."""

    format = ""
    # Whether `path`/`images` may be object-store URIs (the reader opens files through x2i/sources/files.py);
    # a format that does not refuses a URI before any work, naming itself.
    reads_uris = False
    # How the builder uses the source images: "pil" (crops, draws, annotators) or "array" (resampled and encoded
    # with OpenCV: decoded straight into numpy, no PIL image). Set from the builder by x2i.engine.plan.
    pixels = "pil"

    def __init__(self, config: SourceConfig):
        from x2i.sources.files import check_source_paths

        check_source_paths(self.format, config, self.reads_uris)
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
    """The registered reader of `config.format` (unknown formats: an error with the closest names)."""
    return SOURCES.get(config.format)(config)


# Last, since each reader subclasses Source: importing them registers their formats.
from x2i.sources import edits, grit, laion, omnigen, seed_edit, video  # noqa: E402,F401
