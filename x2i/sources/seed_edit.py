"""SEED-Data-Edit (AILab-CVC): JSONL annotations next to folders of images.

Two record shapes are read:
- multi-turn (Part 3, `multi_turn_editing/annotations/*.jsonl`): `source_image`, then per turn k `instruction_k`,
  `edit_image_k` (and `inverse_instruction_k`); turn k edits turn k-1's result. Each turn is a sample, and with
  `chains` so is every prefix from the original image (instructions joined in order), as for MagicBrush; with
  `inverse`, each turn's inverse instruction gives the reverse sample.
- single-turn (Parts 1-2): `{"source_image": "source_images/<id>.jpg", "target_image": "target_images/<id>.jpg",
  "instruction": "..."}`, the layout the maintainers gave in AILab-CVC/SEED-X issue #16 (the dataset card lists
  no fields). Those names are tried first, then common alternatives (CANDIDATES); `source.options.fields`
  names them explicitly ({source: ..., target: ..., instruction: ...}).
Image paths are relative to `source.images` (default: the folder holding the JSONL). One JSONL file is one
build partition; a line that is not JSON, lacks a field or names a missing image is a counted reject.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2i.core.config import from_dict
from x2i.core.errors import SourceError, X2IError
from x2i.core.imageio import EncodedImage, ImageError, load
from x2i.core.safepath import FileRejected, read_confined_file
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.sources.edits import join_instructions
from x2i.engine.steps import Context

CANDIDATES = {
    "source": ("source_image", "source", "input_image", "src_image"),
    "target": ("target_image", "edit_image", "edited_image", "target", "output_image", "tgt_image"),
    "instruction": ("instruction", "edit_instruction", "prompt", "edit_prompt", "text"),
}


@dataclass
class SeedEditOptions:
    chains: bool = True
    inverse: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # single-turn field names: source, target, instruction


@register_source("seed_data_edit")
class SeedDataEditSource(Source):
    format = "seed_data_edit"

    def __init__(self, config):
        super().__init__(config)
        self.options = from_dict(SeedEditOptions, config.options, "source.options")
        unknown = sorted(set(self.options.fields) - set(CANDIDATES))
        if unknown:
            raise X2IError(f"source.options.fields: unknown key(s) {unknown}; allowed: {sorted(CANDIDATES)}")
        if config.path is None:
            raise X2IError("seed_data_edit has no embedded sample: give source.path (the JSONL annotations) and "
                           "source.images (the unpacked image folder)")
        self.root = Path(config.path)

    def partitions(self) -> list[str]:
        if not self.root.exists():
            raise SourceError(self.root, "no such file or directory")
        files = [self.root] if self.root.is_file() else sorted(self.root.rglob("*.jsonl"))
        if not files:
            raise SourceError(self.root, "no SEED-Data-Edit .jsonl annotation files found")
        return [str(f) for f in files]

    def count(self, partition: str) -> int:
        with open(partition, "rb") as f:
            return sum(1 for line in f if line.strip())

    def label(self, partition: str) -> str:
        root = self.root if self.root.is_dir() else self.root.parent
        return str(Path(partition).relative_to(root))

    def _images_root(self, partition: str) -> Path:
        return Path(self.config.images) if self.config.images else Path(partition).parent

    def _reject(self, ctx: Context, reason: str, detail: str, key: str, path: str, line: int) -> None:
        ctx.reject(None, reason, "read_seed_data_edit", detail, source=self.format, source_key=key,
                   task=SOURCE_TASK, meta={"file": path, "line": line})

    def _image(self, root: Path, rel: Any, key: str, ctx: Context, path: str, line: int) -> EncodedImage | None:
        if not isinstance(rel, str) or not rel:
            self._reject(ctx, "image_field_missing", f"image path is {rel!r}", key, path, line)
            return None
        file = root / rel.lstrip("/")
        try:  # only regular files under the images root, size checked before reading (x2i/core/safepath.py)
            data = read_confined_file(root, rel.lstrip("/"))
        except FileRejected as exc:
            self._reject(ctx, exc.reason, f"{file}: {exc}", key, path, line)
            return None
        try:
            return load(data, path=Path(rel).name)
        except ImageError as exc:
            self._reject(ctx, exc.reason, f"{file}: {exc}", key, path, line)
            return None

    def read(self, partition: str, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        root = self._images_root(partition)
        stem = Path(partition).stem
        n = 0
        with open(partition, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if limit is not None and n >= limit:
                    return
                n += 1
                key = f"{stem}#{line_no}"
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    self._reject(ctx, "bad_json", str(exc)[:200], key, partition, line_no)
                    continue
                if any(k.startswith(("instruction_", "edit_image_")) for k in record):
                    yield from self._multi(record, root, key, ctx, partition, line_no)
                else:
                    sample = self._single(record, root, key, ctx, partition, line_no)
                    if sample is not None:
                        yield sample

    def _field(self, record: dict[str, Any], role: str) -> Any:
        name = self.options.fields.get(role)
        if name:
            return record.get(name)
        return next((record[c] for c in CANDIDATES[role] if c in record), None)

    def _make(self, src, dst, text, key, kind, extra) -> Sample:
        meta = {"edit_kind": kind, "instruction_raw": text, "_mask": None, **extra}
        return Sample(task=SOURCE_TASK, instruction=text.strip(), output_image=dst, input_images=[src],
                      source=self.format, source_key=key, meta=meta)

    def _single(self, record, root, key, ctx, path, line) -> Sample | None:
        text = self._field(record, "instruction")
        if not isinstance(text, str) or not text.strip():
            self._reject(ctx, "instruction_missing", f"instruction is {text!r}", key, path, line)
            return None
        src = self._image(root, self._field(record, "source"), key, ctx, path, line)
        dst = self._image(root, self._field(record, "target"), key, ctx, path, line) if src else None
        if src is None or dst is None:
            return None
        return self._make(src, dst, text, key, "single", {"file": Path(path).name, "line": line})

    def _multi(self, record, root, key, ctx, path, line) -> Iterator[Sample]:
        images = [self._image(root, record.get("source_image"), f"{key}#0", ctx, path, line)]
        if images[0] is None:
            return
        texts: list[str] = []
        k = 1
        while f"instruction_{k}" in record or f"edit_image_{k}" in record:
            text = record.get(f"instruction_{k}")
            if not isinstance(text, str) or not text.strip():
                self._reject(ctx, "instruction_missing", f"instruction_{k} is {text!r}", f"{key}#{k}", path, line)
                break
            image = self._image(root, record.get(f"edit_image_{k}"), f"{key}#{k}", ctx, path, line)
            if image is None:
                break
            extra = {"file": Path(path).name, "line": line, "turn_index": k}
            yield self._make(images[-1], image, text, f"{key}#{k}", "turn", extra)
            inverse = record.get(f"inverse_instruction_{k}")
            if self.options.inverse and isinstance(inverse, str) and inverse.strip():
                yield self._make(image, images[-1], inverse, f"{key}#{k}#inverse", "inverse", extra)
            images.append(image)
            texts.append(text)
            if self.options.chains and k >= 2:
                yield self._make(images[0], image, join_instructions(texts), f"{key}#chain1-{k}", "chain",
                                 {**extra, "chain_turns": list(range(1, k + 1))})
            k += 1
