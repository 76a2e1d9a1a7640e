"""Datasets on object stores for the inspection commands (validate, stats, view, export, publish).

`readable(target)` gives a local path to read a dataset from: the path itself when it is local, else a
temporary mirror of the object-store dataset (every object under the prefix but the lock and a `_hub` stage,
or the single object named), downloaded through x2i/core/storage.py and removed afterwards. The inspection
code then checks exactly the bytes the store holds (validate hashes the downloaded shards against the
manifest, and an object no manifest lists shows up as an unlisted shard). It needs local disk for the
dataset's size; training streams shards straight from the store instead (model/training/mix.py).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from x2i.core.errors import X2IError
from x2i.core.storage import Storage, check_reachable, check_target, is_uri, storage_errors
from x2i.engine.lock import LOCK_NAMES

SKIPPED = ("_hub/",)  # a publish stage kept beside the data is not part of the dataset


def mirror_to(store: Storage, dest: Path) -> Path:
    """Download the file or every object under the prefix of `store` into `dest`; returns the local path."""
    check_reachable(store)
    if store.size("") is not None:  # one object, e.g. a single shard
        target = dest / store.base.rsplit("/", 1)[-1]
        _download(store, "", target)
        return target
    names = [rel for rel in store.list() if rel not in LOCK_NAMES and not rel.startswith(SKIPPED)]
    if not names:
        raise X2IError(f"{store.uri}: no such object or prefix (nothing listed under it)")
    for rel in sorted(names):
        _download(store, rel, dest / rel)
    return dest


def _download(store: Storage, rel: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with store.open_input(rel) as src, open(target, "wb") as dst, storage_errors(store.uri_of(rel)):
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def readable(target: str | Path) -> Iterator[Path]:
    """A local path holding the dataset at `target` (see the module docstring)."""
    check_target(target)
    if not is_uri(str(target)):
        yield Path(target)
        return
    store = Storage.for_uri(target)
    with tempfile.TemporaryDirectory(prefix="x2i-mirror-") as tmp:
        yield mirror_to(store, Path(tmp) / "dataset")


def display(text: str | None, local: Path, target: str | Path) -> str | None:
    """A message about the mirror, naming the object-store URI instead of the temporary folder."""
    return None if text is None else text.replace(str(local), str(target).rstrip("/"))
