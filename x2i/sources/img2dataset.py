"""Reading img2dataset output: webdataset tars (+ sidecar parquet) or parquet with an image column.

Layout written by img2dataset (and by our shapes world):
- `webdataset`: `{shard:05d}.tar` holding `{key}.jpg`, `{key}.txt`, `{key}.json` per sample, a sidecar
  `{shard:05d}.parquet` with one row per URL tried (status success / failed_to_download / failed_to_resize,
  error_message, url, caption, width, height, original_width, original_height, sha256, plus any
  `--save_additional_columns`), and `{shard:05d}_stats.json`;
- `parquet`: `{shard:05d}.parquet` with the same metadata columns plus the image bytes in a `jpg` column
  (or `png`/`webp`, per `--encode_format`). Hugging Face mirrors that store an `image` struct column
  `{bytes, path}` are read the same way.

The output may be on an object store (s3://, gs://, hf://): paths and files go through x2i/sources/files.py, so
a shard's `path` is then its URI, and tars are streamed from the store.

A parquet shard bigger than a partition's worth of rows is split into row spans (`split_shards`,
x2i/sources/parquet_parts.py); a tar is read as one stream, so it stays one partition.

Records of failed downloads are yielded too (image None, with their status) so callers can count them:
a failed URL is a rejected sample with a reason, and the rejects ledger keeps its URL for a retry.
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from x2i.core.errors import SourceError
from x2i.sources.columns import IMG2DATASET_TYPES, check_file, check_types, read_schema
from x2i.sources.files import UriPath, open_file, open_tar, parquet_file, relative, source_path
from x2i.sources.parquet_parts import iter_span, span_label, split_file

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image")


@dataclass(frozen=True)
class Shard:
    """One image-bearing file of an img2dataset output (a partition of a build)."""

    path: str
    kind: str  # "tar" | "parquet"
    sidecar: str | None = None  # the metadata parquet beside a tar
    rows: tuple[int, int] | None = None  # rows [start, stop) of a split parquet shard; None: all of it


@dataclass
class Record:
    key: str
    meta: dict[str, Any]
    image: bytes | None
    status: str = "success"
    error: str | None = None
    file: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def _image_column(names: list[str]) -> str | None:
    return next((c for c in IMAGE_COLUMNS if c in names), None)


def find_shards(root: str | Path | UriPath) -> list[Shard]:
    """The shards under an img2dataset output folder (or a single tar/parquet file), in name order."""
    root = source_path(str(root))
    if not root.exists():
        raise SourceError(root, "no such file or directory")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    tars = [p for p in files if p.suffix == ".tar"]
    if tars:
        shards = []
        for tar in tars:
            sidecar = tar.with_suffix(".parquet")
            if sidecar.exists():
                check_file(sidecar, IMG2DATASET_TYPES)
            shards.append(Shard(str(tar), "tar", str(sidecar) if sidecar.exists() else None))
        return shards
    shards = []
    for p in files:
        if p.suffix != ".parquet":
            continue
        schema = read_schema(p)
        if _image_column(schema.names):
            check_types(p, schema, IMG2DATASET_TYPES)
            shards.append(Shard(str(p), "parquet"))
    if not shards:
        raise SourceError(root, "no img2dataset shards found (expected *.tar, or *.parquet with a jpg/png/webp/image column)")
    return shards


def split_shards(shards: list[Shard], rows_per_partition: int) -> list[Shard]:
    """Parquet shards of more than `rows_per_partition` rows as several row-span shards, in row order."""
    out = []
    for shard in shards:
        if shard.kind != "parquet":
            out.append(shard)
            continue
        out += [shard if isinstance(part, str) else Shard(shard.path, "parquet", rows=(part.start, part.stop))
                for part in split_file(shard.path, rows_per_partition)]
    return out


def shard_label(shard: Shard, root: Path | UriPath) -> str:
    """The shard's path under `root`, with `[start:stop]` for a row span of a split shard."""
    if shard.rows is None:
        return relative(shard.path, root)
    return span_label(shard.path, *shard.rows, root)


def metadata_columns(shard: Shard) -> list[str]:
    """Column names of a shard's metadata (sidecar or the parquet itself); [] for a tar without sidecar."""
    schema = metadata_schema(shard)
    return schema.names if schema is not None else []


def metadata_schema(shard: Shard):
    """The Arrow schema of a shard's metadata (sidecar or the parquet itself); None for a bare tar."""
    path = shard.sidecar if shard.kind == "tar" else shard.path
    return read_schema(path) if path is not None else None


def _status(meta: dict[str, Any]) -> str:
    status = meta.get("status")
    return status if isinstance(status, str) and status else "success"


def count(shard: Shard) -> int:
    """Number of records a shard will yield (successful and failed), read from metadata where possible."""
    if shard.rows is not None:
        return shard.rows[1] - shard.rows[0]
    if shard.kind == "parquet":
        return parquet_file(shard.path).metadata.num_rows
    if shard.sidecar:
        return parquet_file(shard.sidecar).metadata.num_rows
    keys = set()
    try:
        with open_tar(shard.path) as files:
            for name, _ in files:
                keys.add(Path(name).name.split(".", 1)[0])
    except (tarfile.TarError, EOFError, OSError):
        pass
    return len(keys)


def _sidecar_rows(shard: Shard) -> dict[str, dict[str, Any]]:
    """key -> metadata row of the sidecar parquet beside a tar ({} when there is none)."""
    if not shard.sidecar:
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for batch in parquet_file(shard.sidecar).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            rows[str(row.get("key"))] = row
    return rows


def _has_end_marker(path: str) -> bool:
    """A complete tar ends with (at least) two zero blocks; a killed writer leaves none."""
    with open_file(path) as f:
        f.seek(0, 2)
        if f.tell() < 1024:
            return False
        f.seek(-1024, 2)
        return f.read(1024) == bytes(1024)


def _tar_records(shard: Shard, sidecar: dict[str, dict[str, Any]]) -> Iterator[Record]:
    """Stream a webdataset tar, grouping members by key; damage yields one 'tar_truncated' record."""
    current_key: str | None = None
    parts: dict[str, bytes] = {}

    def emit(key: str, parts: dict[str, bytes]) -> Record:
        meta: dict[str, Any] = dict(sidecar.get(key, {}))
        error = None
        # img2dataset writes the same metadata into the sidecar and each json member: parse the member only
        # when the sidecar does not have the row.
        if "json" in parts and not meta:
            try:
                loaded = json.loads(parts["json"].decode("utf-8"))
                if isinstance(loaded, dict):
                    meta.update(loaded)
                else:
                    error = "json member is not an object"
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                error = f"unreadable json member: {exc}"
        elif not meta:
            error = "no json member and no sidecar row"
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        extras = {"txt": parts["txt"].decode("utf-8", errors="replace")} if "txt" in parts else {}
        status = "bad_json" if error else ("success" if image is not None else "image_missing")
        return Record(key, meta, image, status, error, shard.path, extras)

    damaged = None
    try:
        with open_tar(shard.path) as files:
            for name, data in files:
                key, _, ext = name.rpartition("/")[2].partition(".")
                if key != current_key:
                    if current_key is not None:
                        yield emit(current_key, parts)
                    current_key, parts = key, {}
                parts[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        damaged = str(exc)
    if current_key is not None and parts:
        yield emit(current_key, parts)
    if damaged is None and not _has_end_marker(shard.path):
        damaged = "no end-of-archive marker (writer killed?)"
    if damaged is not None:
        yield Record(f"{Path(shard.path).name}#truncated", {}, None, "tar_truncated", damaged, shard.path)


def _numbered_rows(shard: Shard, pf: pq.ParquetFile) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number in the file, row) of the shard's rows."""
    if shard.rows is not None:
        yield from iter_span(pf, *shard.rows, batch_size=64)
        return
    for batch_index, batch in enumerate(pf.iter_batches(batch_size=64)):
        for i, row in enumerate(batch.to_pylist()):
            yield batch_index * 64 + i, row


def _parquet_records(shard: Shard) -> Iterator[Record]:
    pf = parquet_file(shard.path)
    image_col = _image_column(pf.schema_arrow.names)
    for n, row in _numbered_rows(shard, pf):
        blob = row.pop(image_col, None)
        if isinstance(blob, dict):  # Hugging Face Image struct {bytes, path}
            blob = blob.get("bytes")
        status = _status(row)
        if blob is None and status == "success":
            status = "image_missing"
        key = row.get("key")
        key = str(key) if key is not None else f"{Path(shard.path).stem}#{n}"
        yield Record(key, row, blob, status, row.get("error_message"), shard.path)


def iter_records(shard: Shard) -> Iterator[Record]:
    """Every record of a shard: the images in file order, then the URLs only the sidecar knows of."""
    if shard.kind == "parquet":
        yield from _parquet_records(shard)
        return
    sidecar = _sidecar_rows(shard)
    seen: set[str] = set()
    for record in _tar_records(shard, sidecar):
        seen.add(record.key)
        yield record
    # URLs the sidecar lists but the tar lacks: failed downloads, or successes lost with a damaged tar.
    for key, row in sidecar.items():
        if key not in seen:
            status = _status(row)
            yield Record(key, row, None, status if status != "success" else "missing_from_tar",
                         row.get("error_message"), shard.sidecar)
