"""Where x2i reads and writes: a local folder or an object-store prefix (`s3://`, `gs://`, `hf://`), one API.

`Storage.for_uri(target)` gives the storage rooted at `target`; every name below is relative to that root
("data/x/part-00000-000.parquet"). Local storage keeps the local guarantees (small files written to a temp
name, fsynced and renamed); an object store has no rename, so an object is written once under its final name
and becomes visible whole when its upload completes (x2i/engine/build.py commits a partition by writing its
completion record last).

Object stores go through pyarrow.fs (S3, GCS) or fsspec (the Hugging Face Hub, `hf://datasets/ORG/NAME/...`).
S3 reads the standard settings: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION), AWS_PROFILE. GCS uses Google's
default credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata server), or STORAGE_EMULATOR_HOST, the variable
Google's client libraries read, for an emulator (anonymous; tests/engine/test_gcs_storage.py runs one).

A string that looks like a URI with a slash missing (`s3:/bucket`, `s3:bucket`, or `s3://` mangled into
`s3:/` by a Path) is refused rather than taken as a local folder named `s3:`.
"""
from __future__ import annotations

import contextlib
import errno as errno_names
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from x2i.core.errors import X2IError
# check_reachable lives with the error wording it shares with StorageError; importers take it from here
from x2i.core.store_errors import check_reachable, http_status, one_line_cause  # noqa: F401

SCHEMES = ("s3", "gs", "gcs", "hf")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:" stays a Windows drive


class StorageError(X2IError, OSError):
    """An OSError while reading or writing the output (disk full, read-only, permissions, an object store
    refusing or unreachable), as one line naming the file and the cause. Also an OSError, so code that
    handles OSError still does."""

    def __init__(self, path: object, code: int | None, strerror: str | None):
        super().__init__(code, strerror)
        self.path = str(path)

    @classmethod
    def wrap(cls, path: object, exc: OSError) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        # pyarrow's object-store errors carry no errno and may span lines: one line, as every x2i error.
        code = exc.errno
        if code is None and isinstance(exc, FileNotFoundError):
            # An fsspec filesystem (hf:// through pyarrow's FSSpecHandler) raises FileNotFoundError(path), without
            # errno: keep it ENOENT, or callers that treat "missing" as normal (the lock's read) see a failure.
            code, strerror = errno_names.ENOENT, "no such file or object"
            return cls(path, code, strerror)
        cause = exc.strerror and " ".join(str(exc.strerror).split()) or one_line_cause(exc)
        if type(exc).__module__.startswith("huggingface_hub") and http_status(exc) in (401, 403):
            cause += "; the Hub refused the token: set HF_TOKEN to a token with access to the repo"
        return cls(path, code, cause)

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


def is_uri(target: object) -> bool:
    """An object-store URI (s3://, gs://, hf://); anything else is a local path."""
    return isinstance(target, str) and _URI.match(target) is not None


def check_target(target: object) -> None:
    """Refuse an unsupported URI scheme, and a local path that is a URI with a slash missing."""
    text = str(target)
    uri = _URI.match(text)
    if uri is not None:
        if uri.group(1).lower() not in SCHEMES:
            raise X2IError(f"{text}: unsupported URI scheme {uri.group(1)!r}; x2i reads and writes local paths, "
                           "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX and hf://datasets/ORG/NAME")
        if not uri.group(2).strip("/"):
            raise X2IError(f"{text}: no bucket in the URI; write {uri.group(1)}://BUCKET/PREFIX")
        return
    mangled = _MANGLED.match(text)
    if mangled is not None and mangled.group(1).lower() in SCHEMES + ("file", "http", "https"):
        scheme = mangled.group(1)
        raise X2IError(f"{text}: looks like a {scheme}:// URI with a '/' missing (x2i never creates a local folder "
                       f"named '{scheme}:'); write {scheme}://BUCKET/PREFIX")


def join(*parts: str) -> str:
    """A relative object name from parts ("" parts dropped)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Storage:
    """A root (local folder or object-store prefix) and the operations x2i needs under it."""

    def __init__(self, fs: Any, base: str, uri: str, local: bool, scheme: str = "file"):
        self.fs, self.base, self.uri, self.scheme = fs, base.rstrip("/"), uri.rstrip("/"), scheme
        self._local = local

    @classmethod
    def for_uri(cls, target: str | Path) -> Storage:
        """The storage rooted at `target`: a local path, or s3://, gs://, hf:// (checked, one-line errors).
        Creating one writes nothing (a complete re-run must work on read-only storage)."""
        check_target(target)
        if not is_uri(target):
            return cls(None, str(Path(target)), str(Path(target)), local=True)
        scheme, rest = _URI.match(str(target)).groups()
        scheme = "gs" if scheme.lower() == "gcs" else scheme.lower()
        rest = rest.strip("/")
        return cls(_filesystem(scheme), rest, f"{scheme}://{rest}", local=False, scheme=scheme)

    @property
    def is_local(self) -> bool:
        return self._local

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    # ---- names ----------------------------------------------------------------------------------------------
    def child(self, rel: str) -> Storage:
        """The storage rooted at `rel` under this one (same filesystem)."""
        if self._local:
            return Storage(None, str(Path(self.base) / rel), str(Path(self.uri) / rel), local=True)
        return Storage(self.fs, join(self.base, rel), f"{self.uri}/{rel.strip('/')}", False, self.scheme)

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (a local path, or bucket/key for pyarrow.fs)."""
        if self._local:
            return str(Path(self.base) / rel) if rel else self.base
        return join(self.base, rel)

    def uri_of(self, rel: str = "") -> str:
        """`rel` as the user would write it (for messages)."""
        if self._local:
            return self.path(rel)
        return f"{self.uri}/{rel}" if rel else self.uri

    def local_path(self, rel: str = "") -> Path:
        if not self._local:
            raise TypeError(f"{self.uri} is not local")
        return Path(self.path(rel))

    # ---- reading --------------------------------------------------------------------------------------------
    def _info(self, rel: str):
        with storage_errors(self.uri_of(rel)):
            return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        """A file (or, with rel "", the root) exists."""
        if self._local:
            return Path(self.path(rel)).is_file() if rel else Path(self.base).exists()
        import pyarrow.fs as pafs

        info = self._info(rel)
        return info.type == pafs.FileType.File or (not rel and info.type == pafs.FileType.Directory)

    def size(self, rel: str) -> int | None:
        """Bytes of a file, None when there is none."""
        if self._local:
            p = Path(self.path(rel))
            return p.stat().st_size if p.is_file() else None
        import pyarrow.fs as pafs

        info = self._info(rel)
        return info.size if info.type == pafs.FileType.File else None

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every file under `prefix` (recursively), relative to the root, with its size; {} when none."""
        if self._local:
            root = Path(self.base)
            top = root / prefix if prefix else root
            return {str(p.relative_to(root)): p.stat().st_size for p in sorted(top.rglob("*")) if p.is_file()} \
                if top.is_dir() else {}
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        with storage_errors(self.uri_of(prefix)):
            infos = self.fs.get_file_info(selector)
        cut = len(self.base) + 1 if self.base else 0
        return {i.path[cut:]: i.size for i in sorted(infos, key=lambda i: i.path) if i.type == pafs.FileType.File}

    def top(self) -> list[str]:
        """The names directly under the root (one listing call, however much lies below)."""
        if self._local:
            root = Path(self.base)
            return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        import pyarrow.fs as pafs

        with storage_errors(self.uri):
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def open_input(self, rel: str = ""):
        """A seekable binary file (what pyarrow.parquet.ParquetFile and PIL take)."""
        with storage_errors(self.uri_of(rel)):
            if self._local:
                return open(self.path(rel), "rb")
            return self.fs.open_input_file(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.open_input(rel) as f, storage_errors(self.uri_of(rel)):
            return f.read()

    def sha256(self, rel: str, chunk: int = 1 << 20) -> str:
        h = hashlib.sha256()
        with self.open_input(rel) as f, storage_errors(self.uri_of(rel)):
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()

    # ---- writing --------------------------------------------------------------------------------------------
    def open_output(self, rel: str):
        """A binary stream writing `rel` (object stores: the object appears, whole, when it is closed)."""
        with storage_errors(self.uri_of(rel)):
            if self._local:
                Path(self.path(rel)).parent.mkdir(parents=True, exist_ok=True)
                return open(self.path(rel), "wb")
            return self.fs.open_output_stream(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Local: atomic (temp, fsync, rename). Object store: one upload under the final name, which readers
        see either not at all or whole."""
        if self._local:
            from x2i.engine.shards import atomic_write_bytes  # the engine owns the local atomic write

            atomic_write_bytes(Path(self.path(rel)), data)
            return
        with storage_errors(self.uri_of(rel)):
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)

    def delete(self, rel: str) -> None:
        """Remove a file; a missing one is fine (a re-run's cleanup may repeat a killed run's)."""
        with storage_errors(self.uri_of(rel)):
            if self._local:
                Path(self.path(rel)).unlink(missing_ok=True)
                return
            try:
                self.fs.delete_file(self.path(rel))
            except FileNotFoundError:
                pass

    def remove(self, rel: str) -> None:
        """Remove the file `rel`, or everything under the folder (prefix) `rel`; nothing there is fine."""
        if self._local:  # an OSError is the caller's to report (the build names the file it failed on)
            target = Path(self.path(rel))
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            return
        if self.size(rel) is not None:
            self.delete(rel)
        for name in self.list(rel):
            self.delete(name)

    def delete_quietly(self, rel: str) -> None:
        """Cleanup after a failed write must not replace the error being reported: an object left behind has
        no completion record, so it is not output, and the re-run (or its orphan sweep) removes it."""
        try:
            self.delete(rel)
        except OSError:
            pass


def as_storage(where: str | Path | Storage) -> Storage:
    """`where` as a Storage: itself, or the storage rooted at that path or URI."""
    return where if isinstance(where, Storage) else Storage.for_uri(where)


# ---- filesystems ------------------------------------------------------------------------------------------------

_FILESYSTEMS: dict[tuple, Any] = {}
_ENV_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "HF_TOKEN", "HF_ENDPOINT",
             "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")


def _filesystem(scheme: str):
    """One filesystem per scheme and settings (a reader opening thousands of shards reuses its connections)."""
    key = (scheme, *(os.environ.get(k) for k in _ENV_KEYS))
    if key not in _FILESYSTEMS:
        if scheme == "s3":
            _FILESYSTEMS[key] = _s3_filesystem()
        elif scheme == "gs":
            _FILESYSTEMS[key] = _gcs_filesystem()
        else:
            _FILESYSTEMS[key] = _hf_filesystem()
    return _FILESYSTEMS[key]


def s3_settings() -> dict[str, Any]:
    """Endpoint, region and credentials for S3 from the standard AWS variables (shared with the S3 lock)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        raise X2IError("S3 credentials are half set: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    other_sources = ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                     "AWS_CONTAINER_CREDENTIALS_FULL_URI", "X2I_S3_DEFAULT_CREDENTIALS")
    files = [Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser(),
             Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()]
    if not key and not any(os.environ.get(v) for v in other_sources) and not any(f.is_file() for f in files):
        # Without this check the SDK would wait on the EC2 metadata service and fail minutes later.
        raise X2IError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); "
                       "on a machine with an instance role set X2I_S3_DEFAULT_CREDENTIALS=1")
    return {"endpoint": endpoint, "region": region, "key": key, "secret": secret,
            "token": os.environ.get("AWS_SESSION_TOKEN")}


def _s3_filesystem():
    import pyarrow.fs as pafs

    s = s3_settings()
    kwargs: dict[str, Any] = {"region": s["region"], "connect_timeout": 5, "request_timeout": 60,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
                              "allow_bucket_creation": False, "allow_bucket_deletion": False}
    if s["endpoint"]:
        url = urlparse(s["endpoint"] if "://" in s["endpoint"] else f"https://{s['endpoint']}")
        kwargs.update(endpoint_override=url.netloc, scheme=url.scheme)
    if s["key"]:
        kwargs.update(access_key=s["key"], secret_key=s["secret"], session_token=s["token"])
    return pafs.S3FileSystem(**kwargs)


def _gcs_filesystem():
    import datetime

    import pyarrow.fs as pafs

    retry = datetime.timedelta(seconds=15)  # a dead endpoint fails in seconds, not pyarrow's default 15 minutes
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        url = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=url.netloc, scheme=url.scheme or "http",
                                  retry_time_limit=retry)
    return pafs.GcsFileSystem(retry_time_limit=retry)


def _hf_filesystem():
    try:
        from huggingface_hub import HfFileSystem
    except ImportError:
        raise X2IError("hf:// paths need huggingface_hub: pip install 'x2i[publish]'") from None
    import pyarrow.fs as pafs

    # HF_ENDPOINT and HF_TOKEN as they are now (this cache is keyed on them): huggingface_hub reads HF_ENDPOINT once,
    # at import, and fsspec would hand back a cached instance (with its listings and "repo not found" answers)
    # made under other settings; so the endpoint is passed and fsspec's instance cache skipped.
    fs = HfFileSystem(endpoint=os.environ.get("HF_ENDPOINT") or None, skip_instance_cache=True)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def open_file(target: str | Path):
    """A seekable binary file for a local path or an object URI (e.g. a shard a manifest lists)."""
    if not is_uri(str(target)):
        return open(target, "rb")
    head, _, name = str(target).rpartition("/")
    return Storage.for_uri(head).open_input(name)
