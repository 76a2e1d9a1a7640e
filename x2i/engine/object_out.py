"""The output of a build on an object store (s3://, gs://, hf://): the parts of x2i/engine/build.py that differ
from a local folder because an object store has no rename (the plan, records and manifest themselves are read and
written by x2i/engine/manifest.py for both).

- A shard is uploaded once under its final, deterministic name (x2i/engine/shards.py); a partition's
  completion record `_progress/part-NNNNN.json` is written after its shards and ledger, so it commits them.
- A partition is done iff its record exists and every shard it lists is there with the recorded size and
  sha256 (`done_partitions`: one listing for sizes, each shard read once for its hash on resume).
- Before pending partitions run, whatever earlier attempts left under their names is deleted (records first);
  before the manifest, every data or rejects object no record lists is deleted (`sweep_orphans`), so a
  killed attempt's objects never outlive the build that follows it.
- `manifest.json` is written last, by the driver, while it still holds the lock (x2i/engine/object_lock.py).
"""
from __future__ import annotations

from typing import Any

from x2i.core.errors import X2IError
from x2i.core.storage import Storage, check_reachable
from x2i.engine.manifest import PROGRESS, ManifestError, PartitionRecord, read_record, record_rel


def check_supported(store: Storage, passes: list[str]) -> None:
    """Before any work: the bucket is reachable, and no whole-build pass would rewrite shards (the passes
    rewrite local files in place; on an object store they would break the records' checksums)."""
    check_reachable(store)
    if passes:
        raise X2IError(f"the whole-build pass(es) {', '.join(passes)} cannot run on an object store yet; build "
                       f"into a local folder and copy it to {store}")


def _listing(store: Storage) -> dict[str, int]:
    return {**store.list(PROGRESS), **store.list("data"), **store.list("rejects")}


def done_partitions(store: Storage, count: int) -> set[int]:
    """The partitions whose record exists and whose listed shards (and ledger) are all there with the recorded
    size and sha256. One listing for the sizes; every shard of a recorded partition is read once to hash it."""
    present = _listing(store)
    done = set()
    for i in range(count):
        if record_rel(i) not in present:
            continue
        try:
            record = read_record(store, i)
        except ManifestError:
            continue  # a damaged record: redo the partition
        ok = all(present.get(sh.path) == sh.bytes and store.sha256(sh.path) == sh.sha256 for sh in record.shards)
        if ok and (record.rejects_file is None or record.rejects_file in present):
            done.add(i)
    return done


def clear_partitions(store: Storage, pending: list[int]) -> None:
    """Delete what earlier attempts at the pending partitions left (their records first, then their objects)."""
    names = {f"part-{i:05d}" for i in pending}
    for rel in sorted(_listing(store), key=lambda r: not r.startswith(PROGRESS)):
        if rel.rsplit("/", 1)[-1][:10] in names:
            store.delete(rel)


def sweep_orphans(store: Storage, records: list[PartitionRecord]) -> None:
    """Every data or rejects object that no completion record lists is a killed attempt's: remove it."""
    keep = {sh.path for r in records for sh in r.shards} | {r.rejects_file for r in records}
    for rel in {**store.list("data"), **store.list("rejects")}:
        if rel not in keep:
            store.delete(rel)


def may_remove(guard: Any) -> bool:
    """Whether a failed partition may delete the objects it uploaded: not once its driver is gone, since a newer
    build may own those (deterministic) names by now."""
    if guard is None:
        return True
    try:
        return guard.driver_alive()
    except OSError:
        return False


__all__ = ["check_supported", "clear_partitions", "done_partitions", "may_remove", "sweep_orphans"]
