"""How a shard file is written: the Parquet settings every shard writer uses (the build's partitions, the
post-build rewrites, the Hub export's merges), so a rewritten or merged shard matches a freshly written one."""
from __future__ import annotations

from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.schema import SCHEMA

IMAGE_BYTES = ("input_images.list.element.bytes", "output_image.bytes")  # Parquet column paths of image bytes


def open_shard_writer(where: Any, compress_images: bool = True) -> pq.ParquetWriter:
    """A Parquet writer with the shard settings (one place, so rewritten shards match freshly written ones).
    Everything is zstd; the image bytes only when `compress_images` (`images_compress` decides per shard)."""
    compression: Any = "zstd"
    if not compress_images:
        compression = {path: ("none" if path in IMAGE_BYTES else "zstd") for path in _COLUMN_PATHS}
    return pq.ParquetWriter(where, SCHEMA, compression=compression, use_dictionary=["task", "source"],
                            write_statistics=["id", "task", "width", "height"])


def _leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """Parquet's dotted leaf column paths for an Arrow schema (lists as `list.element`)."""
    out: list[str] = []

    def walk(prefix: str, t: pa.DataType) -> None:
        if pa.types.is_struct(t):
            for f in t:
                walk(f"{prefix}.{f.name}", f.type)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            walk(f"{prefix}.list.element", t.value_type)
        else:
            out.append(prefix)

    for f in schema:
        walk(f.name, f.type)
    return tuple(out)


_COLUMN_PATHS = _leaf_paths(SCHEMA)


def images_compress(rows: list[dict], sample: int = 8) -> bool:
    """Whether zstd shrinks these rows' image bytes by 5% or more, judged on up to `sample` output and `sample`
    input images compressed together. Photos' JPEG bytes do not shrink (0.0% on bench/e2e_bench.py's photos, for
    0.04 ms of compression a row and the decompression at every read); flat synthetic images and small ones
    (whose repeated JPEG tables are most of their bytes) do (3.6x on the shapes world). Decided from the data
    alone, so the same rows give the same file."""
    blobs = list(islice((r["output_image"]["bytes"] for r in rows if r.get("output_image")), sample))
    blobs += islice((im["bytes"] for r in rows for im in r.get("input_images") or ()), sample)
    joined = b"".join(blobs)  # together, as a Parquet page holds them: repeated JPEG headers count
    if not joined:
        return True
    return len(pa.Codec("zstd").compress(joined, asbytes=True)) <= 0.95 * len(joined)


def images_compressed(pf: pq.ParquetFile) -> bool:
    """Whether a written shard's image bytes are compressed (its first row group's output image column)."""
    meta = pf.metadata
    if meta.num_row_groups == 0:
        return True
    group = meta.row_group(0)
    for i in range(group.num_columns):
        if group.column(i).path_in_schema == "output_image.bytes":
            return group.column(i).compression != "UNCOMPRESSED"
    return True
