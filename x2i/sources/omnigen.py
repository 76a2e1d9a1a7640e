"""OmniGen's fine-tuning JSONL (also the format of the released X2I subsets).

One JSON object per line: `{"task_type", "instruction", "input_images": [paths], "output_image": path}`,
paths relative to an image folder (OmniGen's `--image_path`; for the released X2I subsets, the folder the
archives were extracted into). OmniGen's docs name the key `output_images`; its code reads `output_image`:
both are accepted. Partitions are byte ranges of the JSONL files cut at line starts, so a multi-GB file is
read in parallel without loading it.

Image paths are row data: only regular files under the image folder (`image_root`) are read, each at most
`max_image_bytes` (source option, default 64 MiB); any other path is a per-row reject (`image_outside_root`,
`image_not_regular_file`, `image_too_large`, `image_missing`) and the rows beside it are kept.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.core.errors import SourceError, X2IError
from x2i.core.imageio import ImageError, load
from x2i.core.safepath import DEFAULT_MAX_FILE_BYTES, FileRejected, read_confined_file
from x2i.core.sample import Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.engine.steps import Context

LINES_PER_PARTITION = 20_000
# task_type values seen in OmniGen's own files, spelled as released.
TASK_ALIASES = {"text_to_iamge": "text_to_image", "segementation": "segmentation", "try-on": "try_on"}


@dataclass(frozen=True)
class JsonlRange:
    path: str
    start: int  # byte offset of the first line
    end: int  # byte offset after the last line
    first_line: int  # 1-based line number of the first line
    lines: int


def normalise_task(task_type: Any) -> str:
    task = str(task_type or "").strip()
    return TASK_ALIASES.get(task, task.lower().replace("-", "_").replace(" ", "_")) or "unknown"


def image_root(jsonl: str | Path, images: str | Path | None = None) -> Path:
    """Where a JSONL's relative image paths point: `images` when given, else an `images/` folder beside the
    JSONL when there is one (so `x2i import` of an `x2i export` folder needs no flag), else the JSONL's folder."""
    if images:
        return Path(images)
    beside = Path(jsonl).parent / "images"
    return beside if beside.is_dir() else Path(jsonl).parent


def _split(path: Path, per_partition: int) -> list[JsonlRange]:
    ranges, start, line_no, count, pos = [], 0, 1, 0, 0
    with open(path, "rb") as f:
        for line in f:
            pos += len(line)
            count += 1
            if count == per_partition:
                ranges.append(JsonlRange(str(path), start, pos, line_no, count))
                start, line_no, count = pos, line_no + count, 0
    if count:
        ranges.append(JsonlRange(str(path), start, pos, line_no, count))
    return ranges


@register_source("omnigen")
class OmniGenJsonlSource(Source):
    format = "omnigen"

    def __init__(self, config):
        super().__init__(config)
        unknown = sorted(set(config.options) - {"lines_per_partition", "max_image_bytes"})
        if unknown:
            raise X2IError(f"source.options: unknown key(s) {unknown} for format omnigen")
        if config.path is None:
            raise X2IError("the omnigen format needs a path to a JSONL file (or a folder of them)")
        self.path = Path(config.path)
        self.per_partition = int(config.options.get("lines_per_partition", LINES_PER_PARTITION))
        limit = config.options.get("max_image_bytes", DEFAULT_MAX_FILE_BYTES)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise X2IError(f"source.options.max_image_bytes must be a positive integer, got {limit!r}")
        self.max_image_bytes = limit

    def _files(self) -> list[Path]:
        if not self.path.exists():
            raise SourceError(self.path, "no such file or directory")
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.jsonl"))
        if not files:
            raise SourceError(self.path, "no .jsonl files found")
        return files

    def image_root(self, jsonl: Path) -> Path:
        """The only folder this JSONL's images are read from: `--images`, else `images/` beside the JSONL
        (OmniGen's `--image_path` layout, and what `x2i export` writes), else the JSONL's own folder."""
        return image_root(jsonl, self.config.images)

    def partitions(self) -> list[JsonlRange]:
        if self.config.images and not Path(self.config.images).is_dir():
            raise SourceError(self.config.images, "images folder not found (or not a folder)")
        return [r for f in self._files() for r in _split(f, self.per_partition)]

    def count(self, partition: JsonlRange) -> int:
        return partition.lines

    def label(self, partition: JsonlRange) -> str:
        return f"{Path(partition.path).name}:{partition.first_line}-{partition.first_line + partition.lines - 1}"

    def read(self, partition: JsonlRange, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        root = self.image_root(Path(partition.path))
        name = Path(partition.path).name
        with open(partition.path, "rb") as f:
            f.seek(partition.start)
            for i in range(partition.lines if limit is None else min(limit, partition.lines)):
                raw = f.readline()
                line_no = partition.first_line + i
                sample = self._sample(raw, f"{name}:{line_no}", root, ctx)
                if sample is not None:
                    yield sample

    def _sample(self, raw: bytes, key: str, root: Path, ctx: Context) -> Sample | None:
        def reject(reason: str, detail: str) -> None:
            ctx.reject(None, reason, "read_omnigen", detail, source="omnigen", source_key=key, task="")

        if not raw.strip():
            reject("jsonl_empty_line", "empty line")
            return None
        try:
            row = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reject("jsonl_malformed", str(exc))
            return None
        if not isinstance(row, dict):
            reject("jsonl_malformed", "line is not a JSON object")
            return None
        output = row.get("output_image", row.get("output_images"))
        if isinstance(output, list) and len(output) == 1:
            output = output[0]
        instruction = row.get("instruction")
        inputs = row.get("input_images") or []
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(inputs, list):
            reject("jsonl_fields", "needs instruction (string), output_image (path) and input_images (list)")
            return None
        images = []
        for rel in [*inputs, output]:
            # Paths are row data: read only regular files under the images root, size-checked (x2i.core.safepath).
            try:
                images.append(load(read_confined_file(root, rel, self.max_image_bytes), path=Path(str(rel)).name))
            except FileRejected as exc:
                reject(exc.reason, str(exc))
                return None
            except ImageError as exc:
                reject(exc.reason, f"{root / str(rel)}: {exc}")
                return None
        meta: dict[str, Any] = {"task_type": row.get("task_type"), "jsonl": key}
        if isinstance(row.get("meta"), str):
            try:
                meta.update(json.loads(row["meta"]))
            except json.JSONDecodeError:
                pass
        sample = Sample(normalise_task(row.get("task_type")), instruction, images[-1], images[:-1], "omnigen",
                        str(row.get("source_key") or key), meta)
        sample.id = str(row["id"]) if row.get("id") else ""
        if isinstance(row.get("source"), str):
            sample.source = row["source"]
        return sample
