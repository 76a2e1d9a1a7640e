"""Instruction-editing datasets published as Hugging Face parquet (images as `{bytes, path}` struct columns).

Published columns read here:
- InstructPix2Pix (timbrooks/instructpix2pix-clip-filtered): original_prompt, original_image, edit_prompt,
  edited_prompt, edited_image;
- MagicBrush (osunlp/MagicBrush): img_id, turn_index (int32), source_img, mask_img (the source photo with the
  edit region painted white: decoded against source_img, see `binary_mask`), instruction, target_img; turn k's
  source is turn k-1's target;
- UltraEdit (BleachNick/UltraEdit*): clip_sim_source, clip_sim_target, clip_sim_dir, clip_sim_image, dinov2_sim,
  ssim, source_caption, target_caption, idx, edit_prompt, source_image, edited_image, and in the region-based
  release edit_object and mask_image (a null-typed column in the free-form release);
- HQ-Edit (UCSC-VLAA/HQ-Edit): input, input_image, edit, inverse_edit, output, output_image.

Each row becomes a `source` sample: `input_images = [source]`, `output_image = edited`, `instruction = the edit
text`, the dataset's mask (if any) in `meta["_mask"]` for the image_edit builder, the row's other columns in meta.
Options: `chains` (MagicBrush): also one sample per session prefix, from the original image to turn k's target
with the turns' instructions in order (OmniGen-style multi-turn data); `inverse` (HQ-Edit): also the inverse
edit (output -> input with `inverse_edit`). Files are read a few rows at a time (bounded memory); a file is one
build partition, or several row spans when it holds more than `rows_per_partition` rows (MagicBrush spans never
cut a session: x2i/sources/parquet_parts.py). A bad row (missing or corrupt image, empty instruction) is a counted reject naming file
and row; a missing column stops the build at planning time naming file and column.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from x2i.core.config import from_dict
from x2i.sources.columns import check_file
from x2i.sources.files import parquet_file, relative, source_path
from x2i.core.errors import SourceError, X2IError
from x2i.core.imageio import EncodedImage, ImageError, encode, load
from x2i.core.masks import mask_from_image, mask_from_pair
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.sources.parquet_parts import (DEFAULT_ROWS_PER_PARTITION, RowSpan, check_rows_per_partition, iter_span,
                                       span_label, split_file)
from x2i.engine.steps import Context

ROWS_PER_BATCH = 8  # rows decoded at a time: edit rows carry 2-3 full-size images each


@dataclass
class EditOptions:
    embedded: dict[str, Any] | None = None  # options of the embedded sample (MagicBrush format only)
    chains: bool = True  # MagicBrush: also the samples from the original image to each later turn's target
    inverse: bool = True  # HQ-Edit: also the inverse edit as a second sample
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION  # a bigger file is split into row spans


def path_of(partition: str | RowSpan) -> str:
    return partition.path if isinstance(partition, RowSpan) else partition


def join_instructions(texts: list[str]) -> str:
    """Instructions of successive turns as one: each ends with a period, in order."""
    parts = [t.strip() for t in texts if t and t.strip()]
    return " ".join(p if p[-1] in ".!?" else p + "." for p in parts)


def union_mask(masks: list[EncodedImage]) -> EncodedImage | None:
    """The union of several dataset masks (same size) as one binary mask image, or None if they differ."""
    arrays = [mask_from_image(m.pil())[0] for m in masks]
    if any(a.shape != arrays[0].shape for a in arrays):
        return None
    union = np.logical_or.reduce(arrays)
    return encode(Image.fromarray(union.astype(np.uint8) * 255, "L"), "PNG")


def binary_mask(mask: EncodedImage, source: EncodedImage) -> tuple[EncodedImage | None, dict[str, Any]]:
    """A dataset mask as a black/white PNG, read against the image it was drawn on (x2i.core.masks.mask_from_pair):
    MagicBrush paints the region white on the source photo, so only the pixels that differ are the region.
    Done here, where mask and source are still paired (a chain's turns have different sources). An unreadable
    mask is dropped with a note in meta: the image_edit builder then falls back to the pixel difference."""
    arr, convention, stats = mask_from_pair(mask.pil(), source.pil())
    mask.release()
    if arr is None:
        return None, {"mask_convention": convention, "mask_unreadable": stats.get("why", "")}
    info: dict[str, Any] = {"mask_convention": convention}
    if convention == "painted_diff":
        info["mask_read"] = stats
    return encode(Image.fromarray(arr.astype(np.uint8) * 255, "L"), "PNG", path=mask.path), info


class ParquetEditSource(Source):
    reads_uris = True  # the dataset's parquet files may be on s3://, gs://, hf:// (x2i/sources/files.py)
    """Shared reading: files -> row batches -> samples. Subclasses name the columns and build samples."""

    format = ""
    roles: dict[str, str] = {}  # source, target, instruction (required); mask, key (optional)
    meta_columns: tuple[str, ...] = ()
    help = ""

    def __init__(self, config):
        super().__init__(config)
        self.options = from_dict(EditOptions, config.options, "source.options")
        self.embedded = config.path is None
        if self.embedded:
            if self.format != "magicbrush":
                raise X2IError(f"source format {self.format} has no embedded sample: give source.path (the "
                               "dataset's parquet files)")
            from x2i.shapes.embedded import embedded_source

            self.root = embedded_source("magicbrush", self.options.embedded)
        else:
            self.root = source_path(config.path)
        if self.options.embedded is not None and not self.embedded:
            raise X2IError("source.options.embedded applies only without a source path")
        check_rows_per_partition(self.options.rows_per_partition)

    session_column: str | None = None  # rows sharing its value are never split over two partitions

    def partitions(self) -> list[str | RowSpan]:
        root = self.root
        if not root.exists():
            raise SourceError(root, "no such file or directory")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise SourceError(root, f"no {self.format} parquet files found")
        for f in files:
            names = check_file(f, self.column_types()).names
            for role in ("source", "target", "instruction"):
                if self.roles[role] not in names:
                    raise SourceError(f, f"missing column '{self.roles[role]}' ({self.help})")
        return [part for f in files for part in split_file(str(f), self.options.rows_per_partition,
                                                          self.session_column)]

    def column_types(self) -> dict[str, tuple[str, ...]]:
        """Image roles hold HF Image structs (or raw bytes), text roles strings."""
        types = {self.roles[r]: ("image", "binary") for r in ("source", "target", "mask") if r in self.roles}
        types.update({self.roles[r]: ("string",) for r in ("instruction", "inverse") if r in self.roles})
        if "key" in self.roles:  # UltraEdit numbers its rows (idx int64)
            types[self.roles["key"]] = ("string", "number")
        return types

    def count(self, partition: str | RowSpan) -> int:
        if isinstance(partition, RowSpan):
            return partition.stop - partition.start
        return parquet_file(partition).metadata.num_rows

    def label(self, partition: str | RowSpan) -> str:
        root = self.root if self.root.is_dir() else self.root.parent
        if isinstance(partition, RowSpan):
            return span_label(partition.path, partition.start, partition.stop, root)
        return relative(partition, root)

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.config.path, "embedded": self.embedded,
                "resolved": str(self.root), "options": {k: v for k, v in vars(self.options).items() if k != "embedded"}}

    # -- rows ------------------------------------------------------------------------------------------------
    def _columns(self, names: list[str]) -> list[str]:
        wanted = list(self.roles.values()) + list(self.meta_columns)
        return [c for c in dict.fromkeys(wanted) if c in names]

    def rows(self, partition: str | RowSpan, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row number in the file, row) of the partition's first `limit` rows."""
        pf = parquet_file(path_of(partition))
        columns = self._columns(pf.schema_arrow.names)
        if isinstance(partition, RowSpan):
            stop = partition.stop if limit is None else min(partition.stop, partition.start + limit)
            yield from iter_span(pf, partition.start, stop, ROWS_PER_BATCH, columns)
            return
        n = 0
        for batch in pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            for row in batch.to_pylist():
                if limit is not None and n >= limit:
                    return
                yield n, row
                n += 1

    def reject(self, ctx: Context, reason: str, detail: str, key: str, path: str, row: int) -> None:
        ctx.reject(None, reason, f"read_{self.format}", detail, source=self.format, source_key=key, task=SOURCE_TASK,
                   meta={"file": path, "row": row})

    def image(self, value: Any, role: str, key: str, ctx: Context, path: str, row: int) -> EncodedImage | None:
        data = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(data, (bytes, bytearray)) or not data:
            self.reject(ctx, f"{role}_image_missing", f"column {self.roles.get(role, role)!r} holds no image bytes",
                        key, path, row)
            return None
        try:
            return load(bytes(data), path=f"{key.replace('/', '_').replace('#', '_')}_{role}.png")
        except ImageError as exc:
            self.reject(ctx, exc.reason, f"{role} image: {exc}", key, path, row)
            return None

    def pair(self, row: dict[str, Any], key: str, ctx: Context, path: str, n: int, source_col: str = "source",
             target_col: str = "target", instruction_col: str = "instruction", kind: str = "single") -> Sample | None:
        """One edit sample from a row's (source, target, instruction[, mask]) columns, or None (rejected)."""
        text = row.get(self.roles[instruction_col])
        if not isinstance(text, str) or not text.strip():
            self.reject(ctx, "instruction_missing", f"{self.roles[instruction_col]} is {text!r}", key, path, n)
            return None
        src = self.image(row.get(self.roles[source_col]), "source", key, ctx, path, n)
        dst = self.image(row.get(self.roles[target_col]), "target", key, ctx, path, n) if src else None
        if src is None or dst is None:
            return None
        mask, mask_meta = None, {}
        if "mask" in self.roles and row.get(self.roles["mask"]) is not None:
            mask = self.image(row[self.roles["mask"]], "mask", key, ctx, path, n)
            if mask is None:
                return None
            mask, mask_meta = binary_mask(mask, src)
        meta = {c: row[c] for c in self.meta_columns if c in row and not isinstance(row[c], (bytes, dict))}
        meta.update(edit_kind=kind, instruction_raw=text, file=Path(path).name, row=n, _mask=mask, **mask_meta)
        return Sample(task=SOURCE_TASK, instruction=text.strip(), output_image=dst, input_images=[src],
                      source=self.format, source_key=key, meta=meta)

    def key(self, row: dict[str, Any], path: str, n: int) -> str:
        col = self.roles.get("key")
        if col and row.get(col) is not None:
            return str(row[col])
        return f"{Path(path).stem}#{n}"

    def read(self, partition: str | RowSpan, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        path = path_of(partition)
        for n, row in self.rows(partition, limit):
            sample = self.pair(row, self.key(row, path, n), ctx, path, n)
            if sample is not None:
                yield sample


@register_source("instructpix2pix")
class InstructPix2PixSource(ParquetEditSource):
    format = "instructpix2pix"
    roles = {"source": "original_image", "target": "edited_image", "instruction": "edit_prompt"}
    meta_columns = ("original_prompt", "edited_prompt")
    help = "InstructPix2Pix columns: original_prompt, original_image, edit_prompt, edited_prompt, edited_image"


@register_source("ultraedit")
class UltraEditSource(ParquetEditSource):
    format = "ultraedit"
    roles = {"source": "source_image", "target": "edited_image", "instruction": "edit_prompt", "mask": "mask_image",
             "key": "idx"}
    meta_columns = ("clip_sim_source", "clip_sim_target", "clip_sim_dir", "clip_sim_image", "dinov2_sim", "ssim",
                    "source_caption", "target_caption", "edit_object")
    help = ("UltraEdit columns: clip_sim_source, clip_sim_target, clip_sim_dir, clip_sim_image, dinov2_sim, ssim, "
            "source_caption, target_caption, idx, edit_prompt, source_image, edited_image[, edit_object, mask_image]")


@register_source("hq_edit")
class HQEditSource(ParquetEditSource):
    format = "hq_edit"
    roles = {"source": "input_image", "target": "output_image", "instruction": "edit", "inverse": "inverse_edit"}
    meta_columns = ("input", "output")
    help = "HQ-Edit columns: input, input_image, edit, inverse_edit, output, output_image"

    def read(self, partition: str | RowSpan, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        path = path_of(partition)
        for n, row in self.rows(partition, limit):
            key = self.key(row, path, n)
            forward = self.pair(row, key, ctx, path, n)
            if forward is not None:
                yield forward
            if self.options.inverse and "inverse_edit" in row:
                inverse = self.pair(row, f"{key}#inverse", ctx, path, n, source_col="target",
                                    target_col="source", instruction_col="inverse", kind="inverse")
                if inverse is not None:
                    yield inverse


@register_source("magicbrush")
class MagicBrushSource(ParquetEditSource):
    format = "magicbrush"
    roles = {"source": "source_img", "target": "target_img", "instruction": "instruction", "mask": "mask_img"}
    meta_columns = ("img_id", "turn_index")
    help = "MagicBrush columns: img_id, turn_index, source_img, mask_img, instruction, target_img"
    session_column = "img_id"  # a session's turns (and so its chains) stay in one partition

    def read(self, partition: str | RowSpan, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        path = path_of(partition)
        session: list[tuple[int, Sample, EncodedImage | None]] = []
        current = None
        for n, row in self.rows(partition, limit):
            img_id, turn = row.get("img_id"), row.get("turn_index")
            if img_id != current:
                yield from self._chains(session, ctx, path)
                session, current = [], img_id
            key = f"{img_id}#{turn}" if img_id is not None else self.key(row, path, n)
            sample = self.pair(row, key, ctx, path, n, kind="turn")
            if sample is not None:
                if isinstance(turn, int):  # kept before the builder consumes the sample's transient mask
                    session.append((turn, sample, sample.meta.get("_mask")))
                yield sample
        yield from self._chains(session, ctx, path)

    def _chains(self, session: list[tuple[int, Sample, EncodedImage | None]], ctx: Context,
                path: str) -> Iterator[Sample]:
        """Samples from the session's original image to turn k's target (k >= 2), turns 1..k all present."""
        if not self.options.chains or len(session) < 2:
            return
        turns = sorted(session, key=lambda t: t[0])
        usable = 0
        for i, (turn, _, _) in enumerate(turns):
            if turn != i + 1:
                break
            usable = i + 1
        first = turns[0][1]
        img_id = first.meta.get("img_id")
        if usable < len(turns):
            self.reject(ctx, "chain_incomplete", f"turns {[t for t, _, _ in turns]}: chains need turns 1..k",
                        f"{img_id}#chain", path, first.meta.get("row", -1))
        for k in range(2, usable + 1):
            parts = turns[:k]
            masks = [m for _, _, m in parts]
            mask = union_mask(masks) if all(m is not None for m in masks) else None
            meta = {"img_id": img_id, "turn_index": k, "edit_kind": "chain", "chain_turns": list(range(1, k + 1)),
                    "instruction_raw": [s.meta.get("instruction_raw") for _, s, _ in parts],
                    "file": first.meta.get("file"), "row": first.meta.get("row"), "_mask": mask}
            yield Sample(task=SOURCE_TASK, instruction=join_instructions([s.instruction for _, s, _ in parts]),
                         output_image=parts[-1][1].output_image, input_images=[first.input_images[0]],
                         source=self.format, source_key=f"{img_id}#chain1-{k}", meta=meta)
