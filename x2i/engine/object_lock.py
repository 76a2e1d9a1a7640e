"""One build at a time per object-store prefix: the lock is an object, `<prefix>/.x2i-lock`.

An object store has no flock, so the lock object records its holder (pid, host, start, a random token) and an
expiry, `X2I_LOCK_TTL` seconds ahead (default 120). The holder renews it every TTL/4 while the build runs. A
lock is stale once it has expired, or at once when its holder ran on this host and that pid is gone (a
killed build re-run on the same machine does not wait out the TTL). A second build meets a live lock and
fails at once, naming the holder.

How the lock object is created and replaced:
- S3 (boto3 present): conditional writes. Create with `If-None-Match: *`; renew and take over a stale lock
  with `If-Match: <etag>`. Two builds can never both hold it: the store refuses the loser's write.
- Elsewhere (gs://, hf://, or S3 without boto3): write, wait `SETTLE_S`, read back and keep the lock only if
  our token is still there. The honest race: two builds that both find no lock and whose writes land more
  than SETTLE_S apart could both see their own token on read-back only if the second's check-then-write took
  longer than SETTLE_S; then both run. Keep to one build per prefix by hand there, or use S3.

Expiry is compared with this machine's clock: hosts whose clocks differ by more than the TTL could take a live
lock over. Workers check, right before committing a partition, that their driver still holds the lock
(`ObjectDriverGuard.check`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from x2i.core.storage import Storage, s3_settings, storage_errors
from x2i.engine.lock import (LOCK_NAME, BuildLock, BuildLocked, DriverGuard, _host,
                             live_holder, locked_error, pid_alive)

SETTLE_S = 1.0
log = logging.getLogger(__name__)


def lock_ttl() -> float:
    return float(os.environ.get("X2I_LOCK_TTL") or 120)


def read_lock(store: Storage) -> tuple[dict[str, Any], str] | None:
    """(holder info, etag-or-token) of the lock object, None when there is none or it is being written."""
    try:
        data = store.read_bytes(LOCK_NAME)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
            return None
        raise
    try:
        info = json.loads(data or b"{}")
    except ValueError:
        info = {}
    return (info, "") if isinstance(info, dict) else ({}, "")


def is_stale(info: dict[str, Any], now: float | None = None) -> bool:
    expires = info.get("expires")
    if not isinstance(expires, (int, float)) or expires < (now or time.time()):
        return True
    pid = info.get("pid")
    return info.get("host") == _host() and isinstance(pid, int) and not pid_alive(pid)


def describe(store: Storage, info: dict[str, Any]) -> str:
    who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}"
    until = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(info["expires"])) if "expires" in info else "?"
    return (f"{store.uri} is being built by {who} (its lock {store.uri_of(LOCK_NAME)} is renewed while it runs, "
            f"else expires at {until}); wait for it, or for the expiry if that process is gone")


def live_object_holder(store: Storage) -> dict[str, Any] | None:
    """The holder of the prefix's lock if it is live, else None (reads only)."""
    found = read_lock(store)
    if found is None or is_stale(found[0]):
        return None
    return found[0]


class _S3Conditional:
    """Lock object writes that the store itself makes exclusive (S3 conditional requests)."""

    def __init__(self, store: Storage):
        import boto3

        s = s3_settings()
        self.client = boto3.client("s3", endpoint_url=s["endpoint"], region_name=s["region"],
                                   aws_access_key_id=s["key"], aws_secret_access_key=s["secret"],
                                   aws_session_token=s["token"])
        self.bucket, _, prefix = store.base.partition("/")
        self.key = f"{prefix}/{LOCK_NAME}" if prefix else LOCK_NAME
        self.where = store.uri_of(LOCK_NAME)

    def _put(self, body: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise OSError(None, f"{code}: {exc}") from None

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[dict[str, Any], str] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise OSError(None, f"{exc}") from None
        try:
            info = json.loads(got["Body"].read() or b"{}")
        except ValueError:
            info = {}
        return (info if isinstance(info, dict) else {}), got["ETag"]

    def replace(self, body: bytes, tag: str) -> str | None:
        return self._put(body, IfMatch=tag)

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _ReadBack:
    """Lock object writes on a store without conditional writes: write, settle, read back (see the module doc)."""

    def __init__(self, store: Storage):
        self.store = store

    def _mine(self, body: bytes) -> str | None:
        token = json.loads(body)["token"]
        self.store.write_bytes(LOCK_NAME, body)
        time.sleep(SETTLE_S)
        found = read_lock(self.store)
        return token if found is not None and found[0].get("token") == token else None

    def create(self, body: bytes) -> str | None:
        return None if read_lock(self.store) is not None else self._mine(body)

    def read(self) -> tuple[dict[str, Any], str] | None:
        found = read_lock(self.store)
        return None if found is None else (found[0], str(found[0].get("token", "")))

    def replace(self, body: bytes, tag: str) -> str | None:
        found = self.read()
        if found is None or found[1] != tag:
            return None
        self.store.write_bytes(LOCK_NAME, body)  # a renewal: our token, no settle needed
        return tag if json.loads(body)["token"] == tag else self._mine(body)

    def delete(self, tag: str) -> None:
        found = self.read()
        if found is not None and found[1] == tag:
            self.store.delete(LOCK_NAME)


def _backend(store: Storage):
    if store.scheme == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            return _ReadBack(store)
        return _S3Conditional(store)
    return _ReadBack(store)


@dataclass(frozen=True)
class ObjectDriverGuard(DriverGuard):
    """DriverGuard for a build into an object store: the lock is an object (no flock, no workers file)."""

    def driver_alive(self) -> bool:
        if self.pid == os.getpid():
            return True  # in-process executor: we are the driver
        found = read_lock(Storage.for_uri(self.out))
        if found is None or found[0].get("token") != self.token:
            return False  # no lock, or another build took it over
        return not is_stale(found[0])

    def hold_workers(self) -> None:
        """No workers lock on an object store: local pool workers die with their driver (PDEATHSIG), and
        every worker checks the lock before it commits."""
        return None

    @contextlib.contextmanager
    def holding_workers(self) -> Iterator[None]:
        yield


class ObjectLock:
    """The exclusive lock on one object-store prefix; a context manager around the whole build."""

    def __init__(self, store: Storage, ttl: float | None = None):
        self.store, self.ttl = store, ttl or lock_ttl()
        self.token = secrets.token_hex(8)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.note: str | None = None
        self.tag: str | None = None
        self.lost: str | None = None  # why the lock was lost while held (renewal refused)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backend = None

    @property
    def guard(self) -> ObjectDriverGuard:
        return ObjectDriverGuard(self.store.uri, self.token, os.getpid(), _host())

    def _body(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": _host(), "token": self.token, "started": self.started,
                           "expires": time.time() + self.ttl}).encode()

    def acquire(self) -> None:
        with storage_errors(self.store.uri_of(LOCK_NAME)):
            self._backend = _backend(self.store)
            for _ in range(5):  # a lock released between our create and read: try again
                self.tag = self._backend.create(self._body())
                if self.tag is not None:
                    break
                found = self._backend.read()
                if found is None:
                    continue
                info, tag = found
                if not is_stale(info):
                    raise BuildLocked(describe(self.store, info))
                self.tag = self._backend.replace(self._body(), tag)
                if self.tag is None:  # another build took the stale lock first
                    raise BuildLocked(describe(self.store, (self._backend.read() or ({}, ""))[0]))
                self.note = (f"took over the lock of {self.store.uri} from pid {info.get('pid', '?')} on host "
                             f"{info.get('host', '?')} (since {info.get('started', '?')}), which is gone")
                log.warning(self.note)
                break
            else:
                raise BuildLocked(f"{self.store.uri}: the lock {self.store.uri_of(LOCK_NAME)} keeps changing; retry")
        self._thread = threading.Thread(target=self._renew, name="x2i-lock-renew", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                tag = self._backend.replace(self._body(), self.tag)
            except OSError as exc:  # one failed renewal is not fatal: the lock has 3 more periods to live
                log.warning("could not renew %s: %s", self.store.uri_of(LOCK_NAME), exc)
                continue
            if tag is None:
                self.lost = f"the lock {self.store.uri_of(LOCK_NAME)} was taken over by another build"
                log.error(self.lost)
                return
            self.tag = tag

    def check_held(self) -> None:
        """Raise before a commit of the whole build (the manifest) when the lock was lost meanwhile."""
        if self.lost is not None:
            raise BuildLocked(f"{self.lost}; stopped before writing the manifest")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.tag is None or self.lost is not None:
            return
        tag, self.tag = self.tag, None
        try:
            self._backend.delete(tag)
        except OSError as exc:  # a lock we cannot remove expires by itself
            log.warning("could not remove %s: %s", self.store.uri_of(LOCK_NAME), exc)

    def __enter__(self) -> ObjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- one entry point for local folders and object stores (x2i/engine/build.py) ------------------------------------
def lock_for(store: Storage) -> BuildLock | ObjectLock:
    """The build lock of a root: flock on a local folder (x2i/engine/lock.py), the lock object elsewhere."""
    return BuildLock(store.local_path()) if store.is_local else ObjectLock(store)


def held_error(store: Storage) -> BuildLocked | None:
    """The error naming a live holder of the root's lock, None when nobody holds it (reads only)."""
    if store.is_local:
        holder = live_holder(store.local_path())
        return None if holder is None else locked_error(store.local_path(), holder)
    holder = live_object_holder(store)
    return None if holder is None else BuildLocked(describe(store, holder))
