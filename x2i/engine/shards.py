"""Atomic Parquet shard writing and streaming shard reading.

A partition's samples go to `data/<task>/part-<partition>-<k>.parquet`. Shards are written under a hidden
temporary name, fsynced, and renamed into place only when the whole partition is finished, so a crash or
Ctrl-C never leaves a half shard where a reader (or `datasets`) would pick it up.

Every OSError while writing (disk full, read-only storage) surfaces as one `StorageError` naming the file,
and the temp files of the failed write are removed so a full disk does not stay full.
"""
from __future__ import annotations

import contextlib
import errno as errno_names
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.errors import X2IError
from x2i.core.safepath import confined, safe_relpath
from x2i.core.sample import Reject, Sample
from x2i.core.schema import SCHEMA, row_to_sample, rows_to_table, sample_to_row

TMP_PREFIX = ".tmp-"
# Where each split's shards live: `data/<task>/` is what every reader has always loaded (train); a holdout
# (x2i/engine/holdout.py) goes to `test/<task>/`, so `data/**/*.parquet` never picks it up by accident.
SPLIT_ROOTS = {"train": "data", "test": "test"}


def temp_path(path: Path) -> Path:
    """A hidden temp name next to `path`, unique per process and call, so two writers (a retried Ray task, a
    worker of a killed build) never write into one temp file and a dead run's leftovers are recognisable."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


class StorageError(X2IError, OSError):
    """An OSError while reading or writing the output (disk full, read-only, permissions), as one line naming
    the file and the errno text. Also an OSError, so code that handles OSError still does."""

    def __init__(self, path: object, code: int | None, strerror: str | None):
        super().__init__(code, strerror)
        self.path = str(path)

    @classmethod
    def wrap(cls, path: object, exc: OSError) -> StorageError:
        return exc if isinstance(exc, StorageError) else cls(path, exc.errno, exc.strerror or str(exc))

    def __reduce__(self):  # keeps path and errno across process pools and Ray
        return (type(self), (self.path, self.errno, self.strerror))

    def __str__(self) -> str:
        name = errno_names.errorcode.get(self.errno) if self.errno else None
        return f"{self.path}: {self.strerror}" + (f" ({name})" if name else "")


@contextlib.contextmanager
def storage_errors(path: object) -> Iterator[None]:
    """Turn an OSError raised inside into a StorageError naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError.wrap(path, exc) from exc


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


def open_shard_writer(where: Any) -> pq.ParquetWriter:
    """A Parquet writer with the shard settings (one place, so rewritten shards match freshly written ones)."""
    return pq.ParquetWriter(where, SCHEMA, compression="zstd", use_dictionary=["task", "source"],
                            write_statistics=["id", "task", "width", "height"])


class HashingSink:
    """A file being written that hashes its bytes on the way out: the shard's sha256 without reading it back."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
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
            os.fsync(self.file.fileno())
            self.file.close()


def rewrite_shard(path: Path, drop_ids: set[str]) -> int:
    """Atomically rewrite a committed shard without the rows whose `id` is in `drop_ids`, row group by row
    group (bounded memory, row groups never grow). Returns the rows left; a shard left empty is removed.
    Dropping ids that are not there leaves the file untouched, so a repeated rewrite is a no-op."""
    import pyarrow.compute as pc

    pf = pq.ParquetFile(path)
    present = set(pf.read(columns=["id"]).column("id").to_pylist())
    if not present & drop_ids:
        return pf.metadata.num_rows
    tmp = temp_path(path)
    drop = pa.array(sorted(drop_ids), pa.string())
    writer, kept = None, 0
    with storage_errors(path):
        try:
            for i in range(pf.num_row_groups):
                table = pf.read_row_group(i).replace_schema_metadata(SCHEMA.metadata)
                table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=drop)))
                if table.num_rows:
                    writer = writer or open_shard_writer(tmp)
                    writer.write_table(table, row_group_size=table.num_rows)
                    kept += table.num_rows
            if writer is not None:
                writer.close()
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                path.unlink()
        except BaseException:
            _close_quietly(writer)
            _unlink_quietly(tmp)
            raise
    fsync_dir(path.parent)
    return kept


@dataclass
class ShardInfo:
    path: str  # relative to the output dir
    task: str
    rows: int
    bytes: int
    sha256: str
    partition: int


class _TaskShards:
    """Open Parquet writers for one task in one partition, rolling to a new shard at `max_bytes`."""

    def __init__(self, out_dir: Path, task: str, partition: int, rows_per_group: int, max_bytes: int,
                 root: str = "data"):
        self.out_dir, self.task, self.partition, self.root = out_dir, task, partition, root
        self.rows_per_group, self.max_bytes = rows_per_group, max_bytes
        self.buffer: list[dict] = []
        self.buffer_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.sink: HashingSink | None = None
        self.current: tuple[Path, Path] | None = None
        self.rows = 0
        self.done: list[tuple[Path, Path, int, int, str]] = []  # (tmp, final, rows, bytes, sha256)
        self.index = 0

    def _open(self) -> None:
        # The path checked is the path written: confined() returns it only once it is proven under out_dir.
        final = confined(self.out_dir, self.root, task_dir_name(self.task),
                         f"part-{self.partition:05d}-{self.index:03d}.parquet")
        self.current = (temp_path(final), final)  # before opening: abort() removes it whatever fails next
        final.parent.mkdir(parents=True, exist_ok=True)
        self.sink = HashingSink(self.current[0])
        self.writer = open_shard_writer(pa.PythonFile(self.sink, mode="w"))
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
            self._open()
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

    def finish(self) -> list[tuple[Path, Path, int, int, str]]:
        self.flush()
        self._close()
        return self.done

    @property
    def where(self) -> Path:
        """The shard being written, for error messages."""
        if self.current is not None:
            return self.current[1]
        return self.out_dir / self.root / task_dir_name(self.task) / f"part-{self.partition:05d}-{self.index:03d}.parquet"

    def abort(self) -> None:
        """Remove every temp file, even when closing fails (on a full disk the footer write fails again)."""
        _close_quietly(self.writer)
        if self.sink is not None:
            _close_quietly(self.sink.file)
        for tmp in [d[0] for d in self.done] + ([self.current[0]] if self.current else []):
            _unlink_quietly(tmp)
        self.writer, self.sink, self.current, self.done = None, None, None, []


class PartitionWriter:
    """Collects one partition's samples into per-task shards; `commit` makes them visible all at once."""

    def __init__(self, out_dir: Path, partition: int, rows_per_group: int = 100, max_bytes: int = 500 << 20):
        self.out_dir, self.partition = Path(out_dir), partition
        self.rows_per_group, self.max_bytes = rows_per_group, max_bytes
        self.tasks: dict[tuple[str, str], _TaskShards] = {}  # (split, task) -> its shards
        self.committed: list[Path] = []  # renamed into place by a commit that has not finished

    def write(self, sample: Sample) -> None:
        key = (sample.split, sample.task)
        shards = self.tasks.get(key)
        if shards is None:
            shards = self.tasks[key] = _TaskShards(self.out_dir, sample.task, self.partition, self.rows_per_group,
                                                   self.max_bytes, SPLIT_ROOTS[sample.split])
        with storage_errors(shards.where):
            shards.add(sample_to_row(sample))

    def commit(self) -> list[ShardInfo]:
        """Close, fsync and rename every shard into place; return what was written."""
        infos = []
        for key in sorted(self.tasks, key=lambda k: (k[1], k[0] != "train")):  # tasks in order, as before splits
            task = key[1]
            with storage_errors(self.tasks[key].where):
                shards = self.tasks[key].finish()
            for tmp, final, rows, size, sha in shards:
                with storage_errors(final):
                    os.replace(tmp, final)
                self.committed.append(final)
                infos.append(ShardInfo(str(final.relative_to(self.out_dir)), task, rows, size, sha, self.partition))
            if shards:
                fsync_dir(shards[0][1].parent)
        self.committed = []
        return infos

    def abort(self) -> None:
        """Remove this partition's temp files, and the shards of a commit that failed half-way: without its
        completion record a partition's shards are not output, and a reader must not pick them up."""
        for shards in self.tasks.values():
            shards.abort()
        for final in self.committed:
            _unlink_quietly(final)
        self.committed = []


REJECT_SCHEMA = pa.schema([
    ("reason", pa.string()), ("source", pa.string()), ("source_key", pa.string()), ("task", pa.string()),
    ("step", pa.string()), ("detail", pa.string()), ("meta", pa.string()),
])


def write_rejects(path: Path, rejects: list[Reject]) -> None:
    """The rejects ledger of one partition (atomic, like the shards)."""
    import json

    rows = [{"reason": r.reason, "source": r.source, "source_key": r.source_key, "task": r.task, "step": r.step,
             "detail": r.detail, "meta": json.dumps(r.meta, ensure_ascii=False, sort_keys=True)} for r in rejects]
    table = pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
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


def shard_files(root: Path, split: str | None = "train") -> list[Path]:
    """Every committed shard of `split` under a dataset dir (None: every split; train lives in data/, a holdout
    in test/), or the single file given, in a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not (root / "data").is_dir() and not (root / "test").is_dir():
        return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(TMP_PREFIX))  # a bare folder
    splits = SPLIT_ROOTS if split is None else {split: SPLIT_ROOTS[split]}
    return [p for name in splits.values() if (root / name).is_dir()
            for p in sorted((root / name).rglob("*.parquet")) if not p.name.startswith(TMP_PREFIX)]


def iter_rows(path: Path, columns: list[str] | None = None, batch_rows: int = 64) -> Iterator[dict]:
    """Stream rows of one shard as dicts, a row group at a time (bounded memory)."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        yield from batch.to_pylist()


def iter_samples(root: Path) -> Iterator[Sample]:
    for path in shard_files(root):
        for row in iter_rows(path):
            yield row_to_sample(row)
