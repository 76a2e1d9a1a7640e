"""Confinement: every path x2i writes under an output root, or reads under an input root, goes through here.

Row data (a task name from a JSONL's `task_type`, a row's `id`, an image path in a JSONL) is untrusted: it may
be absolute, climb with `..`, be empty, be unicode or thousands of characters long. Writers turn such values
into path components with `safe_component` / `safe_relpath` (ordinary names pass through unchanged, so the
on-disk layout of normal datasets does not move) and build the final path with `confined`, which proves the
result stays under the root after symlinks are resolved. Readers of source files use `read_confined_file`:
only regular files under the root, size-checked before a byte is read, with a countable reject reason.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath

from x2i.core.errors import X2IError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# A changed value gets `~<hash>` appended: '~' is never kept from the input, so a changed value can never equal
# an unchanged one, and two different changed values differ unless 48 bits of sha256 collide.
_MARK = "~"
_HASH_CHARS = 12
MAX_COMPONENT = 100  # characters before the marker: far below every filesystem's 255-byte limit
MAX_DEPTH = 8  # nested task folders; deeper names fold their tail into the last component
DEFAULT_MAX_FILE_BYTES = 64 << 20


class UnsafePathError(X2IError):
    """A path that would land outside the folder it must stay in (a bug or a hostile value: never written)."""

    def __init__(self, path: object, root: object, problem: str):
        super().__init__(f"{path}: {problem} (must stay under {root})")
        self.path, self.root, self.problem = str(path), str(root), problem


class FileRejected(Exception):
    """A source file that cannot be used for one row; `reason` is the countable reject label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _digest(value: str) -> str:
    # surrogatepass: a str from a lone-surrogate JSON escape still hashes (and differs from its neighbours).
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _clean(part: str) -> str:
    """Characters outside [A-Za-z0-9._-] become '_', length is capped; '', '.' and '..' become underscores."""
    out = _UNSAFE.sub("_", part)[:MAX_COMPONENT]
    return "_" * max(1, len(out)) if out in ("", ".", "..") else out


def safe_component(value: object) -> str:
    """One file-name-safe path component for any value (an id, a name); unchanged when already safe.

    Deterministic, never empty, never '.' or '..', never containing '/'; a value that had to change carries a
    short hash of the original, so distinct values stay distinct."""
    text = str(value)
    out = _clean(text)
    return out if out == text else f"{out}{_MARK}{_digest(text)}"


def safe_relpath(value: object) -> str:
    """A relative folder path for a task name: nests at '/', each component made safe; unchanged when safe.

    `vision/canny` stays `vision/canny`. Empty, '.' and '..' components are dropped (so `/tmp/evil` and
    `a/../../b` cannot leave the root), and a value that changed in any way gets the hash of the whole original
    on its last component (so `/tmp/evil` never shares a folder with a task really named `tmp/evil`)."""
    text = str(value)
    parts = [_clean(p) for p in text.split("/") if p not in ("", ".", "..")]
    if len(parts) > MAX_DEPTH:
        parts = parts[:MAX_DEPTH - 1] + [_clean("_".join(parts[MAX_DEPTH - 1:]))]
    out = "/".join(parts)
    if out and out == text:
        return out
    parts = parts or ["_"]
    parts[-1] = f"{parts[-1]}{_MARK}{_digest(text)}"
    return "/".join(parts)


def _within(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def confined(root: str | Path, *parts: str | Path) -> Path:
    """`root / parts...`, proven to stay under `root`: no absolute part, no '..', and, with every symlink that
    exists resolved, still inside the resolved root. Raises `UnsafePathError` naming the path otherwise.

    Returns the unresolved path (callers compute paths relative to `root` from it)."""
    root = Path(root)
    rel = PurePosixPath()
    for part in parts:
        p = PurePosixPath(os.fspath(part))
        if p.is_absolute() or Path(os.fspath(part)).is_absolute():
            raise UnsafePathError(part, root, "absolute path")
        if ".." in p.parts:
            raise UnsafePathError(part, root, "'..' in path")
        rel = rel / p
    path = root.joinpath(*rel.parts)
    # realpath resolves symlinks in the part that exists (a symlinked folder or final file pointing elsewhere).
    if not _within(os.path.realpath(path), os.path.realpath(root)):
        raise UnsafePathError(path, root, "resolves outside the output folder (symlink)")
    return path


def read_confined_file(root: str | Path, rel: object, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file `rel` under `root`, or `FileRejected` with reason `image_outside_root`,
    `image_missing`, `image_not_regular_file`, `image_too_large` or `image_unreadable`.

    The file is stat'ed before it is opened (a FIFO would block, a device such as /dev/zero never ends, a
    directory cannot be read), opened without following a last-moment symlink and without blocking, and
    re-checked on the open descriptor so a file swapped in between is caught; at most `max_bytes` are read."""
    root_real = os.path.realpath(root)
    text = str(rel)
    if not text or "\0" in text:
        raise FileRejected("image_missing", f"{text!r} is not a file path")
    real = os.path.realpath(os.path.join(root_real, text))
    if not _within(real, root_real):
        raise FileRejected("image_outside_root", f"{text} resolves to {real}, outside {root_real}")
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRejected("image_missing", f"{real} not found") from None
    except OSError as exc:  # ELOOP, EACCES on a parent folder, ...: this row's file, not the whole build
        raise FileRejected("image_unreadable", f"{real}: {exc.strerror or exc}") from None
    _check(st, real, max_bytes)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileRejected("image_missing", f"{real} not found") from None
    except OSError as exc:
        raise FileRejected("image_unreadable", f"{real}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st2 = os.fstat(f.fileno())
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            raise FileRejected("image_unreadable", f"{real} changed while it was being opened")
        _check(st2, real, max_bytes)
        data = f.read(max_bytes + 1)  # +1: a file that grew after the stat is still caught
    if len(data) > max_bytes:
        raise FileRejected("image_too_large", f"{real} grew past {max_bytes} bytes while being read")
    return data


def _check(st: os.stat_result, path: str, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise FileRejected("image_not_regular_file", f"{path} is {kind}")
    if st.st_size > max_bytes:
        raise FileRejected("image_too_large", f"{path} is {st.st_size} bytes (max {max_bytes})")
