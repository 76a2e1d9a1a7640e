"""GRIT-20M (Kosmos-2's grounded image-text pairs) with images from img2dataset output.

GRIT rows: key, clip_similarity_vitb32, clip_similarity_vitl14, id, url, caption, width, height, noun_chunks,
ref_exps. Each chunk is [char_start, char_end, x_min, y_min, x_max, y_max, confidence] with the box
normalized to [0, 1] and the span indexing the caption.

Two layouts are read:
- self-contained img2dataset output, downloaded with `--save_additional_columns` holding the GRIT columns
  (the way GRIT's own instructions download it): `path` (or `images`) is that output folder;
- GRIT metadata parquet(s) as released plus a separate img2dataset output: `path` = the metadata,
  `images` = the image folder; rows are joined on `url` (img2dataset keys differ between downloads).
With neither, the embedded sample (shapes world + package photos) is written in this layout and read.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from x2i.core.errors import SourceError, X2IError
from x2i.sources.columns import IMG2DATASET_TYPES, check_file, check_types
from x2i.core.imageio import ImageError, load
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.sources import img2dataset as i2d
from x2i.sources.files import UriPath, parquet_file, source_path
from x2i.sources.parquet_parts import DEFAULT_ROWS_PER_PARTITION, check_rows_per_partition
from x2i.engine.steps import Context

# GRIT-20M's published columns (noun_chunks/ref_exps: lists of [start, end, x1, y1, x2, y2, score], or the same
# as a JSON string in some re-exports).
GRIT_TYPES = {**IMG2DATASET_TYPES, "id": ("string", "number"), "clip_similarity_vitb32": ("number",),
              "clip_similarity_vitl14": ("number",), "noun_chunks": ("list", "string"), "ref_exps": ("list", "string")}

GRIT_ANNOTATION_COLUMNS = ("noun_chunks", "ref_exps")
BOX_TOLERANCE = 0.01  # detector boxes a hair outside [0, 1] are clipped; further out they are rejected
MAX_ASPECT_DRIFT = 0.02  # img2dataset resize modes other than keep_ratio invalidate normalized boxes


_NUMBER_TYPES = (int, float)


def _finite(*values: Any) -> bool:
    """All plain finite numbers (bool excluded). Runs ~8 times per noun chunk, hence the exact-type fast path."""
    for v in values:
        if type(v) not in _NUMBER_TYPES:  # numpy scalars and int/float subclasses (but not bool) take this path
            if isinstance(v, bool) or not isinstance(v, _NUMBER_TYPES):
                return False
        if not math.isfinite(v):
            return False
    return True


def parse_chunk(chunk: Any, caption: str) -> tuple[dict[str, Any] | None, str]:
    """One GRIT chunk as {phrase, span, box, confidence}, or (None, reason)."""
    if isinstance(chunk, dict):  # tolerate a keyed form
        chunk = [chunk.get(k) for k in ("char_start", "char_end", "x_min", "y_min", "x_max", "y_max", "confidence")]
    if not isinstance(chunk, (list, tuple)) or len(chunk) < 6:
        return None, "chunk_malformed"
    start, end, x0, y0, x1, y1 = chunk[:6]
    confidence = chunk[6] if len(chunk) > 6 else None
    if not _finite(start, end) or int(start) != start or int(end) != end:
        return None, "chunk_span_invalid"
    start, end = int(start), int(end)
    if not 0 <= start < end <= len(caption):
        return None, "chunk_span_invalid"
    if not _finite(x0, y0, x1, y1):
        return None, "chunk_box_invalid"
    if min(x0, y0, x1, y1) < -BOX_TOLERANCE or max(x0, y0, x1, y1) > 1 + BOX_TOLERANCE:
        return None, "chunk_box_out_of_range"
    if x1 < x0 or y1 < y0:
        return None, "chunk_box_inverted"
    box = [min(max(float(v), 0.0), 1.0) for v in (x0, y0, x1, y1)]
    if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        return None, "chunk_box_empty"
    if confidence is not None and not _finite(confidence):
        confidence = None
    phrase = caption[start:end].strip()
    if not phrase:
        return None, "chunk_span_invalid"
    return {"phrase": phrase, "span": [start, end], "box": box,
            "confidence": None if confidence is None else float(confidence)}, ""


def _as_chunk_list(value: Any) -> list | None:
    """noun_chunks arrive as lists, numpy arrays, or JSON text depending on who wrote the file."""
    if value is None:
        return []
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return None
    return [c.tolist() if hasattr(c, "tolist") else c for c in value]


@lru_cache(maxsize=4)
def _metadata_index(paths: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """url -> GRIT row, for the split layout (metadata parquet + separate images)."""
    index: dict[str, dict[str, Any]] = {}
    for path in paths:
        pf = parquet_file(path)
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                if row.get("url"):
                    index.setdefault(row["url"], row)
    return index


@register_source("grit")
class GritSource(Source):
    format = "grit"
    reads_uris = True  # metadata parquet and img2dataset output may be on s3://, gs://, hf:// (x2i/sources/files.py)

    def __init__(self, config):
        super().__init__(config)
        unknown = sorted(set(config.options) - {"embedded", "rows_per_partition"})
        if unknown:
            raise X2IError(f"source.options: unknown key(s) {unknown} for format grit; allowed: ['embedded', "
                           "'rows_per_partition']")
        # img2dataset parquet shards bigger than this are split into partitions of whole row groups/row spans
        self.rows_per_partition = check_rows_per_partition(
            config.options.get("rows_per_partition", DEFAULT_ROWS_PER_PARTITION))
        if config.path is None and config.images is None:
            from x2i.shapes.embedded import embedded_source

            self.images_root = embedded_source("grit", config.options.get("embedded"))
            self.embedded = True
            self.metadata_files: tuple[str, ...] = ()
        else:
            self.embedded = False
            meta_path = source_path(config.path) if config.path and config.images else None
            self.images_root = source_path(config.images or config.path)
            self.metadata_files = self._metadata_files(meta_path) if meta_path else ()

    @staticmethod
    def _metadata_files(path: Path | UriPath) -> tuple[str, ...]:
        if not path.exists():
            raise SourceError(path, "no such file or directory")
        files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
        if not files:
            raise SourceError(path, "no GRIT parquet files found")
        for f in files:
            schema = check_file(f, GRIT_TYPES)
            for col in ("url", "caption", "noun_chunks"):
                if col not in schema.names:
                    raise SourceError(f, f"missing column '{col}' (GRIT columns: key, url, caption, width, height, noun_chunks, ref_exps, ...)")
        return tuple(str(f) for f in files)

    def partitions(self) -> list[i2d.Shard]:
        shards = i2d.find_shards(self.images_root)
        if not self.metadata_files:  # self-contained: GRIT columns must travel with the images
            for shard in shards:
                schema = i2d.metadata_schema(shard)
                cols = schema.names if schema is not None else []
                if cols:
                    check_types(shard.sidecar or shard.path, schema, GRIT_TYPES)
                    for col in ("caption", "noun_chunks"):
                        if col not in cols:
                            where = shard.sidecar or shard.path
                            raise SourceError(where, f"missing column '{col}': download GRIT with img2dataset "
                                                     "--save_additional_columns, or give the GRIT parquet as "
                                                     "source path and this folder as images")
        return i2d.split_shards(shards, self.rows_per_partition)

    def count(self, partition: i2d.Shard) -> int:
        return i2d.count(partition)

    def label(self, partition: i2d.Shard) -> str:
        return i2d.shard_label(partition, self._label_root)

    @cached_property
    def _label_root(self) -> Path | UriPath:
        """What labels are relative to (looked up once: on an object store each look is a request)."""
        return self.images_root if self.images_root.is_dir() else self.images_root.parent

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.config.path, "images": self.config.images,
                "embedded": self.embedded, "metadata_files": len(self.metadata_files),
                "resolved_images": str(self.images_root)}

    def read(self, partition: i2d.Shard, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        index = _metadata_index(self.metadata_files) if self.metadata_files else None
        for n, record in enumerate(i2d.iter_records(partition)):
            if limit is not None and n >= limit:
                return
            sample = self._sample(record, index, ctx)
            if sample is not None:
                yield sample

    def _sample(self, record: i2d.Record, index: dict | None, ctx: Context) -> Sample | None:
        meta = dict(record.meta)
        url = meta.get("url")
        key = record.key

        def reject(reason: str, detail: str = "") -> None:
            ctx.reject(None, reason, "read_grit", detail, source="grit", source_key=str(source_key),
                       task=SOURCE_TASK, meta={"url": url, "file": record.file, "img2dataset_key": key})

        source_key = meta.get("id") if meta.get("id") is not None else (url or key)
        if record.status != "success":
            reject(f"img2dataset_{record.status}", record.error or "")
            return None
        if index is not None:
            row = index.get(url) if url else None
            if row is None:
                reject("grit_row_not_found", f"no GRIT metadata row for url {url!r}")
                return None
            meta = {**meta, **row}
            source_key = row.get("id") if row.get("id") is not None else url
        caption = meta.get("caption")
        if caption is None and "txt" in record.extras:
            caption = record.extras["txt"]
        if not isinstance(caption, str) or not caption.strip():
            reject("caption_missing", f"caption is {caption!r}")
            return None
        chunks = _as_chunk_list(meta.get("noun_chunks"))
        refs = _as_chunk_list(meta.get("ref_exps"))
        if chunks is None:
            reject("noun_chunks_malformed", f"noun_chunks is {type(meta.get('noun_chunks')).__name__}")
            return None
        ow, oh, w, h = (meta.get(k) for k in ("original_width", "original_height", "width", "height"))
        if _finite(ow, oh, w, h) and min(ow, oh, w, h) > 0:
            drift = abs((w / h) / (ow / oh) - 1.0)
            if drift > MAX_ASPECT_DRIFT + 2.0 / min(w, h):
                reject("aspect_changed", f"downloaded {w}x{h} from original {ow}x{oh}: boxes would not fit")
                return None
        try:
            image = load(record.image, path=f"{key}.jpg", as_array=self.pixels == "array")
        except ImageError as exc:
            reject(exc.reason, str(exc))
            return None
        entities = []
        for i, chunk in enumerate(chunks):
            entity, why = parse_chunk(chunk, caption)
            if entity is None:
                ctx.reject(None, why, "read_grit", f"noun_chunks[{i}] = {chunk!r}", source="grit",
                           source_key=f"{source_key}#chunk{i}", task=SOURCE_TASK)
            else:
                entity["chunk_index"] = i
                entities.append(entity)
        ref_exps = [e for e, _ in (parse_chunk(c, caption) for c in (refs or [])) if e is not None]
        clip = {k: meta.get(k) for k in ("clip_similarity_vitb32", "clip_similarity_vitl14") if _finite(meta.get(k))}
        info = {"caption": caption, "url": url, "entities": entities, "ref_exps": ref_exps,
                "img2dataset_key": key, **clip}
        if meta.get("licence") or meta.get("license"):
            info["licence"] = meta.get("licence") or meta.get("license")
        return Sample(task=SOURCE_TASK, instruction=caption, output_image=image, source="grit",
                      source_key=str(source_key), meta=info)
