"""LAION-Aesthetics (v1 and v2) with images from an img2dataset download, or downloaded during the build.

Published columns (both keep LAION's upper-case URL/TEXT/WIDTH/HEIGHT):
- v1 (laion2B-en-aesthetic, ...): URL, TEXT, WIDTH, HEIGHT (float64), similarity (float64), hash (int64),
  punsafe, pwatermark, aesthetic (float32);
- v2 (improved_aesthetics_*plus, aesthetics_v2_4.75): URL, TEXT, WIDTH, HEIGHT, similarity, punsafe, pwatermark,
  AESTHETIC_SCORE (float64), hash, __index_level_0__.
The version is read from which aesthetic column a file has.

Layouts (`source.path` / `source.images` / `source.options`):
- `path` = img2dataset output downloaded with `--url_col URL --caption_col TEXT --save_additional_columns
  '[...LAION columns...]'` (self-contained: url, caption and the LAION columns travel with the images);
- `path` = LAION parquet(s), `images` = an img2dataset output of them: rows joined on the URL;
- `path` = LAION parquet(s), `options.download: true`: images fetched during the build by x2i's safe
  downloader (`options.downloader` tunes it), `options.rows_per_partition` rows per build partition. Every
  failed URL is a reject (`download_<status>`) whose ledger row keeps the URL, for `x2i download --from-rejects`;
- nothing: the embedded sample (shapes world + package photos written as LAION v1 + its img2dataset download).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.config import from_dict
from x2i.core.errors import SourceError, X2IError
from x2i.sources.columns import IMG2DATASET_TYPES, check_file, check_types
from x2i.core.imageio import ImageError, load
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.sources import img2dataset as i2d
from x2i.sources.files import UriPath, parquet_file, read_schema, source_path
from x2i.sources.parquet_parts import iter_span
from x2i.engine.steps import Context, Step

SCORE_COLUMNS = ("similarity", "punsafe", "pwatermark")
# The published metadata columns (v1 and v2 spellings) and img2dataset's columns of a downloaded copy.
LAION_TYPES = {**IMG2DATASET_TYPES, "URL": ("string",), "TEXT": ("string",), "WIDTH": ("number",),
               "HEIGHT": ("number",), "aesthetic": ("number",), "AESTHETIC_SCORE": ("number",),
               **{c: ("number",) for c in SCORE_COLUMNS}}
AESTHETIC_COLUMNS = {"aesthetic": 1, "AESTHETIC_SCORE": 2}
COLUMNS_HELP = ("LAION-Aesthetics columns: URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark and "
                "aesthetic (v1) or AESTHETIC_SCORE (v2)")


@dataclass
class LaionOptions:
    embedded: dict[str, Any] | None = None  # options of the embedded sample (scenes, size, seed, ...)
    download: bool = False  # fetch the images of a LAION parquet during the build
    downloader: dict[str, Any] = field(default_factory=dict)  # x2i.download.fetch.DownloadConfig fields
    # Rows per build partition: LAION rows to download (download mode), and the most rows of an img2dataset
    # parquet shard before it is split into row spans (the other modes; x2i/sources/parquet_parts.py).
    rows_per_partition: int = 2000


@dataclass(frozen=True)
class RowRange:
    """A download-mode partition: rows [start, stop) of one LAION parquet file."""

    path: str
    start: int
    stop: int


def version_of(columns: list[str]) -> int | None:
    return next((v for c, v in AESTHETIC_COLUMNS.items() if c in columns), None)


def check_columns(where: Any, columns: list[str], url: str, text: str) -> int | None:
    """The LAION version of a file (None: no aesthetic column); SourceError naming a missing URL/TEXT column.
    The score columns are not required here: a filter that is on needs its column, one that is off (null)
    does not, and only the builder knows which are on (`require_columns`)."""
    for col in (url, text):
        if col not in columns:
            raise SourceError(where, f"missing column '{col}' ({COLUMNS_HELP})")
    return version_of(columns)


def metadata_names(columns: list[str]) -> tuple[str, str]:
    """The URL and caption columns of a LAION-like metadata file: LAION's URL/TEXT, else img2dataset's
    url/caption (a plain URL list)."""
    url = "URL" if "URL" in columns or "url" not in columns else "url"
    text = "TEXT" if "TEXT" in columns or "caption" not in columns else "caption"
    return url, text


def require_columns(config: Any, needs: dict[str, str]) -> None:
    """Stop (SourceError) when a file of the source lacks a score column a filter that is on reads.
    `needs`: column -> the parameter that turns its filter off ("aesthetic" means aesthetic or AESTHETIC_SCORE).
    Files whose columns are not recorded anywhere (tars without a parquet sidecar) are checked row by row."""
    if not needs or (config.path is None and config.images is None):  # the embedded sample has every column
        return
    for where, columns in _source_columns(config.format, config.path, config.images,
                                          bool((config.options or {}).get("download"))):
        for column, param in needs.items():
            present = version_of(list(columns)) is not None if column == "aesthetic" else column in columns
            if not present:
                name = "aesthetic' (v1) or 'AESTHETIC_SCORE' (v2" if column == "aesthetic" else column
                raise SourceError(where, f"missing column '{name}', which the filter {param} reads: add the column, "
                                  f"or turn the filter off with --set {param}=null ({COLUMNS_HELP})")


@lru_cache(maxsize=8)
def _source_columns(fmt: str, path: str | None, images: str | None, download: bool) -> tuple[tuple[str, tuple], ...]:
    """(file, its column names) of every file that carries the LAION columns, read once per process."""
    from x2i.engine.recipe import SourceConfig

    source = LaionSource(SourceConfig(fmt, path, images, {"download": download} if download else {}))
    if source.metadata_files:
        return tuple((f, tuple(_schema_names(source_path(f)))) for f in source.metadata_files)
    found = []
    for shard in i2d.find_shards(source.root):
        schema = i2d.metadata_schema(shard)
        if schema is not None and schema.names:
            found.append((str(shard.sidecar or shard.path), tuple(schema.names)))
    return tuple(found)


def _number(value: Any) -> float | None:
    """A float (NaN kept: it is rejected with a reason later), or None when absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def laion_meta(row: dict[str, Any]) -> dict[str, Any]:
    """One LAION row (metadata or img2dataset naming) in x2i's meta naming; scores may be NaN."""
    aesthetic_col = next((c for c in AESTHETIC_COLUMNS if c in row), None)
    width, height = _number(row.get("WIDTH")), _number(row.get("HEIGHT"))
    meta = {
        "url": row.get("URL", row.get("url")),
        "caption": row.get("TEXT", row.get("caption")),
        "laion_version": AESTHETIC_COLUMNS.get(aesthetic_col),
        "laion_width": int(width) if width is not None and math.isfinite(width) else None,
        "laion_height": int(height) if height is not None and math.isfinite(height) else None,
        "aesthetic": _number(row.get(aesthetic_col)) if aesthetic_col else None,
        **{c: _number(row.get(c)) for c in SCORE_COLUMNS},
    }
    if row.get("hash") is not None:
        meta["laion_hash"] = int(row["hash"])
    return meta


def _files(path: Path | UriPath) -> list[Path | UriPath]:
    if not path.exists():
        raise SourceError(path, "no such file or directory")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise SourceError(path, "no LAION parquet files found")
    return files


def _schema_names(path: Path | UriPath) -> list[str]:
    try:
        return read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(path, f"not a readable parquet file ({exc})") from None


def _is_img2dataset(path: Path | UriPath) -> bool:
    """An img2dataset output (tars, or parquet with an image column) rather than LAION metadata."""
    if path.is_file():
        return path.suffix == ".tar" or (path.suffix == ".parquet" and i2d._image_column(_schema_names(path)))
    return any(path.rglob("*.tar")) or any(i2d._image_column(_schema_names(p)) for p in _files(path)[:1])


@lru_cache(maxsize=4)
def _metadata_index(paths: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """url -> LAION row, for the join layout (only the columns x2i uses are read)."""
    index: dict[str, dict[str, Any]] = {}
    for path in paths:
        pf = parquet_file(path)
        cols = [c for c in pf.schema_arrow.names if c in ("URL", "TEXT", "WIDTH", "HEIGHT", "hash", *SCORE_COLUMNS,
                                                          *AESTHETIC_COLUMNS)]
        for batch in pf.iter_batches(batch_size=8192, columns=cols):
            for row in batch.to_pylist():
                if row.get("URL"):
                    index.setdefault(row["URL"], row)
    return index


@register_source("laion")
class LaionSource(Source):
    format = "laion"
    reads_uris = True  # metadata parquet and img2dataset output may be on s3://, gs://, hf:// (x2i/sources/files.py)

    def __init__(self, config):
        super().__init__(config)
        self.options = from_dict(LaionOptions, config.options, "source.options")
        if self.options.rows_per_partition < 1:
            raise X2IError("source.options.rows_per_partition must be >= 1")
        from x2i.download.fetch import DownloadConfig

        # Checked now so a typo in the downloader settings fails before any work.
        self.download_config = from_dict(DownloadConfig, self.options.downloader, "source.options.downloader")
        self.metadata_files: tuple[str, ...] = ()
        self.embedded = config.path is None and config.images is None
        if self.embedded:
            from x2i.shapes.embedded import embedded_source

            self.mode, self.root = "images", embedded_source("laion", self.options.embedded)
        elif config.path is None:
            self.mode, self.root = "images", source_path(config.images)
        elif config.images is not None:
            self.mode, self.root = "join", source_path(config.images)
            self.metadata_files = self._metadata(source_path(config.path))
        elif _is_img2dataset(source_path(config.path)):
            self.mode, self.root = "images", source_path(config.path)
        else:
            self.mode, self.root = "download", source_path(config.path)
            self.metadata_files = self._metadata(self.root)
            if not self.options.download:
                raise SourceError(self.root, "LAION metadata without images: give the img2dataset output of it "
                                  "as source images (--images), or set source.options.download: true")
        if self.mode != "download" and self.options.download:
            raise X2IError("source.options.download needs LAION parquet as source path and no source images")

    @staticmethod
    def _metadata(path: Path | UriPath) -> tuple[str, ...]:
        files = _files(path)
        for f in files:
            names = check_file(f, LAION_TYPES).names
            check_columns(f, names, *metadata_names(names))
        return tuple(str(f) for f in files)

    # -- planning --------------------------------------------------------------------------------------------
    def partitions(self) -> list[Any]:
        if self.mode == "download":
            parts = []
            for f in self.metadata_files:
                n = parquet_file(f).metadata.num_rows
                step = self.options.rows_per_partition
                parts += [RowRange(f, start, min(n, start + step)) for start in range(0, n, step)]
            return parts
        shards = i2d.find_shards(self.root)
        if self.mode == "images":  # self-contained: the LAION columns must travel with the images
            for shard in shards:
                schema = i2d.metadata_schema(shard)
                cols = schema.names if schema is not None else []
                if cols:
                    check_types(shard.sidecar or shard.path, schema, LAION_TYPES)
                    check_columns(shard.sidecar or shard.path, cols, "url", "caption")
        return i2d.split_shards(shards, self.options.rows_per_partition)

    def count(self, partition: Any) -> int:
        if isinstance(partition, RowRange):
            return partition.stop - partition.start
        return i2d.count(partition)

    def label(self, partition: Any) -> str:
        if isinstance(partition, RowRange):
            return f"{Path(partition.path).name}[{partition.start}:{partition.stop}]"
        return i2d.shard_label(partition, self._label_root)

    @cached_property
    def _label_root(self) -> Path | UriPath:
        """What labels are relative to (looked up once: on an object store each look is a request)."""
        return self.root if self.root.is_dir() else self.root.parent

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.config.path, "images": self.config.images, "mode": self.mode,
                "embedded": self.embedded, "metadata_files": len(self.metadata_files), "resolved": str(self.root)}

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, partition: Any, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        if isinstance(partition, RowRange):
            yield from self._read_download(partition, ctx, limit)
            return
        index = _metadata_index(self.metadata_files) if self.mode == "join" else None
        for n, record in enumerate(i2d.iter_records(partition)):
            if limit is not None and n >= limit:
                return
            sample = self._from_record(record, index, ctx)
            if sample is not None:
                yield sample

    def _reject(self, ctx: Context, reason: str, detail: str, key: str, meta: dict[str, Any]) -> None:
        ctx.reject(None, reason, "read_laion", detail, source="laion", source_key=key, task=SOURCE_TASK, meta=meta)

    def _from_record(self, record: i2d.Record, index: dict | None, ctx: Context) -> Sample | None:
        row = dict(record.meta)
        url = row.get("url")
        where = {"url": url, "file": record.file, "img2dataset_key": record.key}
        if record.status != "success":
            self._reject(ctx, f"img2dataset_{record.status}", record.error or "", record.key, where)
            return None
        if index is not None:
            found = index.get(url) if url else None
            if found is None:
                self._reject(ctx, "laion_row_not_found", f"no LAION row for url {url!r}", record.key, where)
                return None
            row = {**row, **found}
        elif row.get("caption") is None and "txt" in record.extras:
            row["caption"] = record.extras["txt"]
        meta = laion_meta(row)
        meta["img2dataset_key"] = record.key
        for k in ("original_width", "original_height"):
            if isinstance(row.get(k), int):
                meta[k] = row[k]
        return self._sample(record.image, record.key, meta, ctx)

    def _sample(self, data: bytes | None, key: str, meta: dict[str, Any], ctx: Context) -> Sample | None:
        caption = meta.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            self._reject(ctx, "caption_missing", f"TEXT is {caption!r}", key, {"url": meta.get("url")})
            return None
        try:
            image = load(data or b"", path=f"{key.replace('/', '_')}.jpg", as_array=self.pixels == "array")
        except ImageError as exc:
            self._reject(ctx, exc.reason, str(exc), key, {"url": meta.get("url")})
            return None
        return Sample(task=SOURCE_TASK, instruction=caption, output_image=image, source="laion", source_key=key,
                      meta=meta)

    def _rows(self, part: RowRange, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = part.stop if limit is None else min(part.stop, part.start + limit)
        # Only the row groups holding the range are read (not every row before it, once per partition).
        yield from iter_span(parquet_file(part.path), part.start, stop, batch_size=1024)

    def _read_download(self, part: RowRange, ctx: Context, limit: int | None) -> Iterator[Sample]:
        """Rows as samples without an image yet: the builder filters them on their metadata first (a row its
        thresholds rule out is never fetched), then `FetchStep` downloads the rest."""
        stem = Path(part.path).name
        for pos, row in self._rows(part, limit):
            key = f"{stem}#{pos}"
            meta = laion_meta(row)
            if not isinstance(meta["url"], str) or not meta["url"].strip():
                self._reject(ctx, "url_missing", f"URL is {meta['url']!r}", key, {"row": pos})
                continue
            if not isinstance(meta["caption"], str) or not meta["caption"].strip():
                # no point fetching an image nobody can caption
                self._reject(ctx, "caption_missing", f"TEXT is {meta['caption']!r}", key, {"url": meta["url"]})
                continue
            yield Sample(task=SOURCE_TASK, instruction=meta["caption"], output_image=None, source="laion",
                         source_key=key, meta=meta)


class FetchStep(Step):
    """Download mode: fetch the image of each sample that reached this step (the rows the metadata filters
    kept), in input order, with `concurrency` requests in flight across the whole stream (no batch boundary
    where the pipe drains). A failed URL is a reject `download_<status>` whose ledger row keeps the URL."""

    name = "read_laion"  # the ledger's step name for download failures, as when the source fetched them

    def __init__(self, downloader: dict[str, Any], fit_side: int | None = None):
        """`fit_side`: the builder only uses each image fitted to this side, so a large JPEG is decoded at
        a reduced scale (imageio.load); None: full-size pixels."""
        from x2i.download.fetch import DownloadConfig

        self.config = from_dict(DownloadConfig, downloader, "source.options.downloader")
        self.fit_side = fit_side

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        from x2i.download.fetch import Downloader

        waiting: deque[Sample] = deque()

        def urls() -> Iterator[str]:  # pulled by fetch_many in this thread, as its window has room
            for sample in samples:
                waiting.append(sample)
                yield sample.meta["url"]

        for res in Downloader(self.config).fetch_many(urls()):
            sample = waiting.popleft()
            info = {"url": res.url, "status": res.status, "http_status": res.http_status, "error": res.error,
                    "attempts": res.attempts}
            if not res.ok:
                ctx.reject(sample, f"download_{res.status}", self.name, res.error or "", meta=info)
                continue
            sample.meta["download"] = {k: info[k] for k in ("http_status", "attempts")}
            try:
                sample.output_image = load(res.data or b"", path=f"{sample.source_key.replace('/', '_')}.jpg",
                                           fit_side=self.fit_side)
            except ImageError as exc:
                ctx.reject(sample, exc.reason, self.name, str(exc), meta={"url": res.url})
                continue
            yield sample
