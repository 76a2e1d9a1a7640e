"""Atomic Parquet shard writing and streaming shard reading.

A partition's samples go to `data/<task>/part-<partition>-<k>.parquet`. On a local disk shards are written
under a hidden temporary name, fsynced, and renamed into place only when the whole partition is finished, so a
crash or Ctrl-C never leaves a half shard where a reader (or `datasets`) would pick it up. An object store has
no rename: each shard is uploaded once under its final, deterministic name (an object appears whole or not at
all) and the partition becomes output only when the build writes its completion record after them.

Every OSError while writing (disk full, read-only storage) surfaces as one `StorageError` naming the file,
and the temp files of the failed write are removed so a full disk does not stay full.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.safepath import confined, safe_relpath
from x2i.core.storage import Storage, StorageError, storage_errors  # noqa: F401 - StorageError re-exported
from x2i.core.sample import Reject, Sample
from x2i.core.schema import SCHEMA, rows_to_table, sample_to_row
# Readers (and the split folders) live in shard_reading; re-exported here, where most callers look for them.
from x2i.engine.shard_format import images_compress, images_compressed, open_shard_writer  # noqa: F401
from x2i.engine.shard_reading import SPLIT_ROOTS, TMP_PREFIX, iter_rows, iter_samples, shard_files  # noqa: F401


def temp_path(path: Path) -> Path:
    """A hidden temp name next to `path`, unique per process and call, so two writers (a retried Ray task, a
    worker of a killed build) never write into one temp file and a dead run's leftovers are recognisable."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def _close_quietly(closeable: Any) -> None:
    """Close a writer or file on the way out of a failed write, so its descriptor (and, once unlinked, its
    disk space) is released. Its own error is dropped: on a full disk closing fails too, and the error that
    made us give up is the one to report."""
    if closeable is None:
        return
    try:
        closeable.close()
    except (OSError, pa.ArrowException):
        pass


def _unlink_quietly(path: Path) -> None:
    """Cleanup after a failed write: a temp we cannot remove (storage gone read-only) must not replace the
    error being reported; the next build's lock takeover removes dead temps."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def task_dir_name(task: str) -> str:
    """The task's folder under `data/`: tasks such as `vision/canny` nest, ordinary names are kept as they are,
    anything else (absolute, `..`, empty, odd characters) becomes a safe, distinct name (see x2i.core.safepath)."""
    return safe_relpath(task)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file atomically (temp + fsync + rename); on failure no temp is left behind."""
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    fsync_dir(path.parent)


class HashingSink:
    """A file being written that hashes its bytes on the way out: the shard's sha256 without reading it back."""

    def __init__(self, path: Path | None, stream: Any = None):
        """A local `path` (fsynced on close), or an object-store `stream` (the upload completes on close)."""
        self.path = path
        self.file = open(path, "wb") if stream is None else stream
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.file.flush()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def close(self) -> None:
        """Flush, fsync and close (the Parquet writer never closes a sink it did not open)."""
        if not self.file.closed:
            self.file.flush()
            if self.path is not None:
                os.fsync(self.file.fileno())
            self.file.close()


def _without(table: pa.Table, drop_ids: set[str]) -> pa.Table:
    """`table` less the rows whose id is in `drop_ids`, as zero-copy slices of the runs kept: Table.filter would
    copy every image's bytes (and importing pyarrow.compute costs ~45 ms, on the driver, while the pool idles)."""
    ids = table.column("id").to_pylist()
    runs, start = [], 0
    for i, row_id in enumerate(ids):
        if row_id in drop_ids:
            if i > start:
                runs.append(table.slice(start, i - start))
            start = i + 1
    if start < len(ids):
        runs.append(table.slice(start))
    if len(runs) == 1:
        return runs[0]
    return pa.concat_tables(runs) if runs else table.slice(0, 0)


def rewrite_shard(path: Path, drop_ids: set[str]) -> tuple[int, str | None]:
    """Atomically rewrite a committed shard without the rows whose `id` is in `drop_ids`, row group by row
    group (bounded memory, row groups never grow). Returns the rows left and the new file's sha256 (hashed as it
    is written; None when the file was left as it was or removed); a shard left empty is removed. Dropping ids
    that are not there leaves the file untouched, so a repeated rewrite is a no-op."""
    pf = pq.ParquetFile(path)
    present = set(pf.read(columns=["id"]).column("id").to_pylist())
    if not present & drop_ids:
        return pf.metadata.num_rows, None
    tmp = temp_path(path)
    writer, sink, kept = None, None, 0
    with storage_errors(path):
        try:
            for i in range(pf.num_row_groups):
                table = _without(pf.read_row_group(i).replace_schema_metadata(SCHEMA.metadata), drop_ids)
                if table.num_rows:
                    if writer is None:
                        sink = HashingSink(tmp)
                        writer = open_shard_writer(pa.PythonFile(sink, mode="w"), images_compressed(pf))
                    writer.write_table(table, row_group_size=table.num_rows)
                    kept += table.num_rows
            if writer is not None:
                writer.close()
                sink.close()  # fsynced
                os.replace(tmp, path)
            else:
                path.unlink()
        except BaseException:
            _close_quietly(writer)
            if sink is not None:
                _close_quietly(sink)
            _unlink_quietly(tmp)
            raise
    fsync_dir(path.parent)
    return kept, (sink.hash.hexdigest() if sink is not None else None)


@dataclass
class ShardInfo:
    path: str  # relative to the output dir
    task: str
    rows: int
    bytes: int
    sha256: str
    partition: int


def _remote(out: Path | Storage) -> Storage | None:
    """The object store written to, or None for a local folder (which keeps the temp + rename commit)."""
    return out if isinstance(out, Storage) and not out.is_local else None


def shard_name(task: str, partition: int, index: int, root: str = "data") -> str:
    """A shard's deterministic name relative to the output root (the same on every attempt)."""
    return f"{root}/{task_dir_name(task)}/part-{partition:05d}-{index:03d}.parquet"


class _TaskShards:
    """Open Parquet writers for one task in one partition, rolling to a new shard at `max_bytes`."""

    def __init__(self, out: Path | Storage, task: str, partition: int, rows_per_group: int, max_bytes: int,
                 root: str = "data"):
        self.store = _remote(out)
        self.out_dir = None if self.store is not None else Path(getattr(out, "base", out))
        self.task, self.partition, self.root = task, partition, root
        self.rows_per_group, self.max_bytes = rows_per_group, max_bytes
        self.buffer: list[dict] = []
        self.buffer_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.sink: HashingSink | None = None
        # (tmp, final): local paths; on an object store tmp is None and final the object's relative name.
        self.current: tuple[Any, Any] | None = None
        self.rows = 0
        self.done: list[tuple[Any, Any, int, int, str]] = []  # (tmp, final, rows, bytes, sha256)
        self.index = 0

    def _open(self, compress_images: bool) -> None:
        if self.store is not None:
            # No rename on an object store: the final name, written once; the completion record commits it.
            final = shard_name(self.task, self.partition, self.index, self.root)
            self.current = (None, final)  # before opening: abort() removes it whatever fails next
            self.sink = HashingSink(None, self.store.open_output(final))
        else:
            # The path checked is the path written: confined() returns it only once it is proven under out_dir.
            final = confined(self.out_dir, self.root, task_dir_name(self.task),
                             f"part-{self.partition:05d}-{self.index:03d}.parquet")
            self.current = (temp_path(final), final)  # before opening: abort() removes it whatever fails next
            final.parent.mkdir(parents=True, exist_ok=True)
            self.sink = HashingSink(self.current[0])
        self.writer = open_shard_writer(pa.PythonFile(self.sink, mode="w"), compress_images)
        self.rows = 0
        self.index += 1

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        self.buffer_bytes += len(row["output_image"]["bytes"]) if row["output_image"] else 0
        self.buffer_bytes += sum(len(im["bytes"]) for im in row["input_images"])
        # Row groups stay <= rows_per_group rows (the Hub viewer needs <= 100 for image data) and small in bytes.
        if len(self.buffer) >= self.rows_per_group or self.buffer_bytes >= 64 << 20:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self._open(images_compress(self.buffer))
        self.writer.write_table(rows_to_table(self.buffer), row_group_size=len(self.buffer))
        self.rows += len(self.buffer)
        self.buffer, self.buffer_bytes = [], 0
        if self.sink.size >= self.max_bytes:
            self._close()

    def _close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.sink.close()
        self.done.append((*self.current, self.rows, self.sink.size, self.sink.hash.hexdigest()))
        self.writer, self.sink, self.current = None, None, None

    def finish(self) -> list[tuple[Any, Any, int, int, str]]:
        self.flush()
        self._close()
        return self.done

    @property
    def where(self) -> Any:
        """The shard being written, for error messages."""
        name = self.current[1] if self.current is not None else shard_name(self.task, self.partition, self.index,
                                                                             self.root)
        if self.store is not None:
            return self.store.uri_of(name)
        if self.current is not None:
            return name
        return self.out_dir / name

    def abort(self, remove_objects: bool = True) -> None:
        """Remove every temp file, even when closing fails (on a full disk the footer write fails again). On
        an object store the shards already uploaded are removed too, unless `remove_objects` is False (the
        build that started us is gone: the objects under these names may be a newer build's)."""
        _close_quietly(self.writer)
        if self.sink is not None:
            _close_quietly(self.sink.file)
        if self.store is not None:
            for final in [d[1] for d in self.done] + ([self.current[1]] if self.current else []):
                if remove_objects:
                    self.store.delete_quietly(final)
        else:
            for tmp in [d[0] for d in self.done] + ([self.current[0]] if self.current else []):
                _unlink_quietly(tmp)
        self.writer, self.sink, self.current, self.done = None, None, None, []


class PartitionWriter:
    """Collects one partition's samples into per-task shards; `commit` makes them visible all at once
    (local: renamed into place; object store: already uploaded under their final names, made output by the
    completion record the build writes next)."""

    def __init__(self, out_dir: Path | Storage, partition: int, rows_per_group: int = 100,
                 max_bytes: int = 500 << 20):
        self.store = _remote(out_dir)
        self.out_dir = None if self.store is not None else Path(getattr(out_dir, "base", out_dir))
        self.out, self.partition = out_dir, partition
        self.rows_per_group, self.max_bytes = rows_per_group, max_bytes
        self.tasks: dict[tuple[str, str], _TaskShards] = {}  # (split, task) -> its shards
        self.committed: list[Path] = []  # renamed into place by a commit that has not finished

    def write(self, sample: Sample) -> None:
        key = (sample.split, sample.task)
        shards = self.tasks.get(key)
        if shards is None:
            shards = self.tasks[key] = _TaskShards(self.out, sample.task, self.partition, self.rows_per_group,
                                                   self.max_bytes, SPLIT_ROOTS[sample.split])
        with storage_errors(shards.where):
            shards.add(sample_to_row(sample))

    def commit(self) -> list[ShardInfo]:
        """Close every shard (local: fsync and rename into place); return what was written."""
        infos = []
        for key in sorted(self.tasks, key=lambda k: (k[1], k[0] != "train")):  # tasks in order, as before splits
            task = key[1]
            with storage_errors(self.tasks[key].where):
                shards = self.tasks[key].finish()
            for tmp, final, rows, size, sha in shards:
                if self.store is not None:
                    infos.append(ShardInfo(final, task, rows, size, sha, self.partition))
                    continue
                with storage_errors(final):
                    os.replace(tmp, final)
                self.committed.append(final)
                infos.append(ShardInfo(str(final.relative_to(self.out_dir)), task, rows, size, sha, self.partition))
            if shards and self.store is None:
                fsync_dir(shards[0][1].parent)
        self.committed = []
        return infos

    def abort(self, remove_objects: bool = True) -> None:
        """Remove this partition's temp files, and the shards of a commit that failed half-way: without its
        completion record a partition's shards are not output, and a reader must not pick them up."""
        for shards in self.tasks.values():
            shards.abort(remove_objects)
        for final in self.committed:
            _unlink_quietly(final)
        self.committed = []


REJECT_SCHEMA = pa.schema([
    ("reason", pa.string()), ("source", pa.string()), ("source_key", pa.string()), ("task", pa.string()),
    ("step", pa.string()), ("detail", pa.string()), ("meta", pa.string()),
])


def write_rejects(path: Path | tuple[Storage, str], rejects: list[Reject]) -> None:
    """The rejects ledger of one partition: atomic like the shards on a local disk; on an object store
    (`path` = (storage, relative name)) one upload under its final name."""
    import json

    rows = [{"reason": r.reason, "source": r.source, "source_key": r.source_key, "task": r.task, "step": r.step,
             "detail": r.detail, "meta": json.dumps(r.meta, ensure_ascii=False, sort_keys=True)} for r in rejects]
    table = pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
    if isinstance(path, tuple):
        store, rel = path
        if store.is_local:
            path = store.local_path(rel)
        else:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            return store.write_bytes(rel, sink.getvalue().to_pybytes())
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
