"""OmniGen's fine-tuning JSONL (also the format of the released X2I subsets).

One JSON object per line: `{"task_type", "instruction", "input_images": [paths], "output_image": path}`,
paths relative to an image folder (OmniGen's `--image_path`; for the released X2I subsets, the folder the
archives were extracted into). OmniGen's docs name the key `output_images`; its code reads `output_image`:
both are accepted. Partitions are byte ranges of the JSONL files cut at line starts, so a multi-GB file is
read in parallel without loading it.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.errors import SourceError, X2IError
from x2i.imageio import ImageError, load
from x2i.sample import Sample
from x2i.sources import Source
from x2i.steps import Context

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


class OmniGenJsonlSource(Source):
    format = "omnigen"

    def __init__(self, config):
        super().__init__(config)
        unknown = sorted(set(config.options) - {"lines_per_partition"})
        if unknown:
            raise X2IError(f"source.options: unknown key(s) {unknown} for format omnigen")
        if config.path is None:
            raise X2IError("the omnigen format needs a path to a JSONL file (or a folder of them)")
        self.path = Path(config.path)
        self.per_partition = int(config.options.get("lines_per_partition", LINES_PER_PARTITION))

    def _files(self) -> list[Path]:
        if not self.path.exists():
            raise SourceError(self.path, "no such file or directory")
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*.jsonl"))
        if not files:
            raise SourceError(self.path, "no .jsonl files found")
        return files

    def image_root(self, jsonl: Path) -> Path:
        return Path(self.config.images) if self.config.images else jsonl.parent

    def partitions(self) -> list[JsonlRange]:
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
            path = root / str(rel)
            try:
                images.append(load(path.read_bytes(), path=Path(str(rel)).name))
            except FileNotFoundError:
                reject("image_missing", f"{path} not found")
                return None
            except ImageError as exc:
                reject(exc.reason, f"{path}: {exc}")
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
