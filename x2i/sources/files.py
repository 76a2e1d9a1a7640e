"""Source files wherever they live: a local path, or an object-store URI (s3://, gs://, hf://; x2i/core/storage.py).

The Parquet- and tar-based readers (img2dataset shards, LAION and GRIT metadata) walk their folders with Path
operations and open files by name. `source_path(p)` gives a `Path` for a local path (so local builds run exactly
the code they always ran) and a `UriPath` for a URI: the same few Path operations, answered by listing the store.
The openers (`parquet_file`, `read_schema`, `read_table`, `open_tar`, `open_file`) take either; a URI is read
through pyarrow.fs with the settings x2i/core/storage.py checks (endpoint, credentials), a row group or a range
at a time.

Formats whose reader does not go through here refuse a URI before any work, in one line naming the format
(`check_source_paths`, called by every Source): `s3:` is never taken for a local folder.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from x2i.core.errors import SourceError
from x2i.core.storage import Storage, check_reachable, check_target, is_uri
from x2i.sources.tar_stream import tar_files

TAR_BUFFER = 8 << 20  # a tar is read as a stream: big reads, not one request per 10 KB tar record


class UriPath:
    """An object-store file or prefix with the Path operations the source readers use."""

    def __init__(self, uri: str, listed_file: bool = False):
        self.uri = uri.rstrip("/")
        self._listed_file = listed_file  # found by a listing as a file: is_file() needs no request

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UriPath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: UriPath) -> bool:
        return self.uri < other.uri

    def __truediv__(self, rel: str) -> UriPath:
        return UriPath(f"{self.uri}/{rel.strip('/')}")

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.uri.split("://", 1)[1])

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> UriPath:
        return UriPath(self.uri.rpartition("/")[0])

    def with_suffix(self, suffix: str) -> UriPath:
        return self.parent / self._pure.with_suffix(suffix).name

    def store(self) -> Storage:
        return Storage.for_uri(self.uri)

    def exists(self) -> bool:
        store = self.store()
        try:
            found = store.exists()
        except OSError:
            check_reachable(store)  # refused credentials, a dead endpoint: one line naming the setting to check
            raise
        if not found:
            check_reachable(store)  # a missing bucket or Hub repo is named as such (not "no such file")
        return found

    def is_file(self) -> bool:
        return self._listed_file or self.store().size("") is not None

    def is_dir(self) -> bool:
        return not self.is_file() and bool(self.store().list())

    def rglob(self, pattern: str) -> list[UriPath]:
        """Every file under this prefix whose name matches `pattern` (one listing), in name order."""
        return [UriPath(f"{self.uri}/{rel}", listed_file=True) for rel in sorted(self.store().list())
                if fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)]

    def relative_to(self, root: UriPath) -> PurePosixPath:
        if not self.uri.startswith(root.uri + "/"):
            raise ValueError(f"{self.uri} is not under {root.uri}")
        return PurePosixPath(self.uri[len(root.uri) + 1:])


def source_path(path: str | Path) -> Path | UriPath:
    """A configured source path: a UriPath for an object-store URI, else a Path."""
    return UriPath(path) if is_uri(str(path)) else Path(path)


def check_source_paths(fmt: str, config: Any, reads_uris: bool) -> None:
    """Refuse a mangled URI (`s3:/bucket`) as a source path, and any URI for a format that reads local files only."""
    for value in (config.path, config.images):
        if value is None:
            continue
        check_target(value)
        if is_uri(str(value)) and not reads_uris:
            raise SourceError(value, f"source format '{fmt}' reads local files only, not object-store URIs; copy "
                                     "the data to a local folder (formats that read s3://, gs://, hf:// sources: "
                                     "laion, grit)")


def _located(path: str | Path | UriPath) -> tuple[Any, str]:
    """(pyarrow filesystem or None for local, the path on it)."""
    text = str(path)
    if not is_uri(text):
        return None, text
    store = Storage.for_uri(text)
    return store.fs, store.path()


def parquet_file(path: str | Path | UriPath) -> pq.ParquetFile:
    fs, where = _located(path)
    return pq.ParquetFile(where, filesystem=fs) if fs is not None else pq.ParquetFile(where)


def read_schema(path: str | Path | UriPath):
    fs, where = _located(path)
    return pq.read_schema(where, filesystem=fs) if fs is not None else pq.read_schema(where)


def read_table(path: str | Path | UriPath, columns: list[str]):
    fs, where = _located(path)
    return pq.read_table(where, columns=columns, filesystem=fs)


def open_file(path: str | Path | UriPath):
    """A seekable binary file."""
    fs, where = _located(path)
    return open(where, "rb") if fs is None else fs.open_input_file(where)


class _ReadsOrStops(io.RawIOBase):
    """The raw bytes of a tar, where a failed read (a dropped connection, EIO) is a SourceError that stops the
    build: only what the bytes say (a truncated archive, a corrupt gzip stream, raised by the tar reader and the
    decompressors above this layer) is a damaged shard, counted as data."""

    def __init__(self, raw, path: object):
        self.raw, self.path = raw, path

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self.raw.read(n)
        except OSError as exc:
            raise SourceError(self.path, f"reading failed: {type(exc).__name__}: {exc} (storage or network, not "
                                         "the data; re-run to resume)") from exc


@contextlib.contextmanager
def open_tar(path: str | Path | UriPath) -> Iterator[Iterator[tuple[str, bytes]]]:
    """The regular files of a tar, (name, bytes) streamed in archive order, as the img2dataset reader walks it
    (x2i/sources/tar_stream.py: tarfile's "r|*" members, and its errors for damaged archives)."""
    fs, where = _located(path)
    try:
        opened = open(where, "rb") if fs is None else \
            fs.open_input_stream(where, compression=None, buffer_size=TAR_BUFFER)
    except OSError as exc:  # listed when the build was planned: gone or unreadable now is not a damaged shard
        raise SourceError(path, f"cannot open: {type(exc).__name__}: {exc}") from exc
    with opened as raw:
        yield tar_files(_ReadsOrStops(raw, path))


def relative(path: str, root: Path | UriPath) -> str:
    """`path` (a file under `root`) relative to `root`, as partition labels name it."""
    return str((UriPath(path) if isinstance(root, UriPath) else Path(path)).relative_to(root))


__all__ = ["UriPath", "check_source_paths", "open_file", "open_tar", "parquet_file", "read_schema", "read_table",
           "relative", "source_path"]
