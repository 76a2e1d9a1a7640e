"""One build at a time per output folder.

`<out>/.x2i-lock` is created with O_CREAT|O_EXCL and held with `flock(LOCK_EX)` for the whole build (plan,
partitions, post-build passes, manifest); it records the holder's pid, host, start time and a random token.
The flock, not the file, is the lock: the kernel drops it when the holder dies however it dies, so a lock
file whose flock can be taken is stale and is taken over in place (no unlink/recreate race between two
would-be successors). A live holder makes a second build fail at once with one line naming it.

`<out>/.x2i-lock.workers` lets a new driver wait out the workers of a killed one: every pool worker and Ray
task holds `flock(LOCK_SH)` on it while it runs, and the new driver takes `LOCK_EX` on it before touching
anything. Workers also check, right before committing a partition, that the driver which started them still
holds the lock (`DriverGuard.check`), so a partition is never committed for a driver that is gone.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.core.errors import X2IError
from x2i.engine.shards import storage_errors

LOCK_NAME = ".x2i-lock"
WORKERS_NAME = ".x2i-lock.workers"
LOCK_NAMES = (LOCK_NAME, WORKERS_NAME)
# A worker's commit-time probe takes the lock's flock for a few microseconds; a builder that finds it taken
# retries this long before calling the lock held.
PROBE_RETRY_S = 1.0
# How long a new driver waits for a dead driver's workers (they die with it: PDEATHSIG or a watchdog).
WORKER_WAIT_S = 30.0

log = logging.getLogger(__name__)

# The lock descriptors this process holds as a driver. A forked pool worker (x2i.engine.executor.start_method)
# closes its copies at once: the flock lives while any copy is open, so a worker that kept one could keep the
# lock of a driver that is gone alive. Closing a copy leaves the driver's own hold as it is.
_DRIVER_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_DRIVER_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _DRIVER_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class BuildLocked(X2IError):
    """Another live process is building (or its workers are still running in) this output folder."""


class DriverGone(X2IError):
    """A worker found that the driver that started it no longer holds the lock: it must not commit."""


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_info(path: Path) -> dict[str, Any]:
    """The holder recorded in a lock file; {} when it is missing, empty or being written."""
    try:
        info = json.loads(path.read_bytes() or b"{}")
    except (FileNotFoundError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(out: Path, path: Path, info: dict[str, Any]) -> str:
    who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}"
    pid = info.get("pid")
    if info.get("host") == _host() and isinstance(pid, int) and not pid_alive(pid):
        # The recorded holder is dead yet the flock is taken: a process that inherited its descriptor.
        return f"{out} was being built by {who}, which is gone, but a process it started still holds {path}; " \
               "wait for it to exit or kill it"
    return f"{out} is being built by {who}; wait for it or remove {path} if that process is gone"


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (a releasing holder unlinks it under us)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def live_holder(out: Path) -> dict[str, Any] | None:
    """The holder of `out`'s lock if a live process holds it, else None. Opens read-only and writes nothing,
    so it works on read-only storage."""
    path = Path(out) / LOCK_NAME
    deadline = time.monotonic() + PROBE_RETRY_S
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if _try_flock(fd, fcntl.LOCK_SH):
                return None
        finally:
            os.close(fd)
        if time.monotonic() >= deadline:
            return _read_info(path) or {}
        time.sleep(0.05)


@dataclass(frozen=True)
class DriverGuard:
    """What a worker needs to know about the driver that started it (pickled into every job)."""

    out: str
    token: str
    pid: int
    host: str

    def driver_alive(self) -> bool:
        """The driver still holds `out`'s lock: same token in the lock file and its flock still taken."""
        if self.pid == os.getpid():
            return True  # in-process executor: we are the driver (and probing our own flock could drop it on NFS)
        path = Path(self.out) / LOCK_NAME
        if _read_info(path).get("token") != self.token:
            return False  # no lock, or another build took it over
        if self.host == _host() and not pid_alive(self.pid):
            return False
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if _try_flock(fd, fcntl.LOCK_SH):  # nobody holds LOCK_EX: the driver is dead
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True
        finally:
            os.close(fd)

    def check(self) -> None:
        if not self.driver_alive():
            raise DriverGone(f"the build of {self.out} by pid {self.pid} on host {self.host} is gone "
                             "(no longer holds the lock); not committing")

    def hold_workers(self) -> int:
        """Take LOCK_SH on the workers file for the rest of this process (pool workers); returns the fd,
        which must stay open: the kernel releases the hold when the process exits."""
        fd = os.open(Path(self.out) / WORKERS_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    @contextlib.contextmanager
    def holding_workers(self) -> Iterator[None]:
        """LOCK_SH on the workers file for the duration of one task (Ray tasks share long-lived processes)."""
        fd = self.hold_workers()
        try:
            yield
        finally:
            os.close(fd)


class BuildLock:
    """The exclusive lock on one output folder; use as a context manager around the whole build."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.token = secrets.token_hex(8)
        self.note: str | None = None  # set when a stale lock was taken over

    @property
    def guard(self) -> DriverGuard:
        return DriverGuard(str(self.out), self.token, os.getpid(), _host())

    def acquire(self) -> None:
        with storage_errors(self.path):
            self.out.mkdir(parents=True, exist_ok=True)
            previous = self._take()
            try:
                self._wait_for_workers(previous)
            except BaseException:
                self.release()
                raise
        if previous:
            self.note = (f"took over the lock of {self.out} from pid {previous.get('pid', '?')} on host "
                         f"{previous.get('host', '?')} (since {previous.get('started', '?')}), which is gone")
            log.warning(self.note)

    def _take(self) -> dict[str, Any]:
        """Hold the flock on the file at self.path; return the stale holder it replaces ({} if none)."""
        deadline = time.monotonic() + PROBE_RETRY_S
        while True:
            try:
                fd, created = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:
                    continue  # released between our two opens: try to create it again
            if not _try_flock(fd, fcntl.LOCK_EX):
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise locked_error(self.out, _read_info(self.path))
            if not _same_file(fd, self.path):
                os.close(fd)  # the holder released (unlinked) it while we waited: start over
                continue
            previous = {} if created else _read_info(self.path)
            info = {"pid": os.getpid(), "host": _host(), "token": self.token,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            _DRIVER_FDS.add(fd)
            return previous

    def _wait_for_workers(self, previous: dict[str, Any]) -> None:
        """Wait until no worker of an earlier build still runs here (they hold LOCK_SH on the workers file)."""
        fd = os.open(self.out / WORKERS_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            deadline = time.monotonic() + WORKER_WAIT_S
            while not _try_flock(fd, fcntl.LOCK_EX):
                if time.monotonic() >= deadline:
                    raise BuildLocked(f"workers of an earlier build of {self.out} (pid {previous.get('pid', '?')}) "
                                      f"are still running (they hold {self.out / WORKERS_NAME}); "
                                      "wait for them to exit or kill them")
                time.sleep(0.05)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _DRIVER_FDS.discard(fd)
        try:
            # Unlink while still holding the flock: a waiter that opened this inode sees it unlinked and retries.
            if _same_file(fd, self.path):
                self.path.unlink()
            self._remove_workers_file()
        except OSError as exc:
            # A lock file we cannot remove (storage gone read-only) is harmless: its flock dies with the fd
            # below, so the next build takes it over as stale.
            log.warning("could not remove %s: %s", self.path, exc)
        finally:
            os.close(fd)

    def _remove_workers_file(self) -> None:
        path = self.out / WORKERS_NAME
        try:
            wfd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            if _try_flock(wfd, fcntl.LOCK_EX):  # kept while some worker of ours still runs, so the next waits
                path.unlink()
        finally:
            os.close(wfd)

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def locked_error(out: Path, info: dict[str, Any]) -> BuildLocked:
    return BuildLocked(_describe(Path(out), Path(out) / LOCK_NAME, info))
