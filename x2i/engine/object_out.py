"""The output of a build on an object store (s3://, gs://, hf://): what x2i/engine/build.py does with a local
folder's files, done without rename.

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

import json
from typing import Any

from x2i.core.errors import X2IError
from x2i.core.storage import Storage, check_reachable
from x2i.engine.lock import LOCK_NAMES, BuildLocked
from x2i.engine.object_lock import describe, live_object_holder

PROGRESS = "_progress"


def record_rel(index: int) -> str:
    return f"{PROGRESS}/part-{index:05d}.json"


def is_foreign(store: Storage) -> bool:
    """A non-empty prefix that is not an x2i build (our lock object does not count): never written into."""
    if store.exists(f"{PROGRESS}/plan.json") or store.exists("manifest.json"):
        return False
    return any(name not in LOCK_NAMES for name in store.top())


def check_supported(store: Storage, passes: list[str]) -> None:
    """Before any work: the bucket is reachable, and no whole-build pass would rewrite shards (the passes
    rewrite local files in place; on an object store they would break the records' checksums)."""
    check_reachable(store)
    if passes:
        raise X2IError(f"the whole-build pass(es) {', '.join(passes)} cannot run on an object store yet; build "
                       f"into a local folder and copy it to {store}")


def done_partitions(store: Storage, count: int) -> set[int]:
    """The partitions whose record exists and whose listed shards (and ledger) are all there with the recorded
    size and sha256. One listing for the sizes; every shard of a recorded partition is read once to hash it."""
    present = {**store.list(PROGRESS), **store.list("data"), **store.list("rejects")}
    done = set()
    for i in range(count):
        if record_rel(i) not in present:
            continue
        try:
            record = json.loads(store.read_bytes(record_rel(i)))
        except ValueError:
            continue  # a damaged record: redo the partition
        ok = all(present.get(sh["path"]) == sh["bytes"] and store.sha256(sh["path"]) == sh["sha256"]
                 for sh in record["shards"])
        if ok and (record["rejects_file"] is None or record["rejects_file"] in present):
            done.add(i)
    return done


def clear_partitions(store: Storage, pending: list[int]) -> None:
    """Delete what earlier attempts at the pending partitions left (their records first, then their objects)."""
    names = {f"part-{i:05d}" for i in pending}
    listed = {**store.list(PROGRESS), **store.list("data"), **store.list("rejects")}
    for rel in sorted(listed, key=lambda r: not r.startswith(PROGRESS)):
        if rel.rsplit("/", 1)[-1][:10] in names:
            store.delete(rel)


def sweep_orphans(store: Storage, records: list[dict[str, Any]]) -> None:
    """Every data or rejects object that no completion record lists is a killed attempt's: remove it."""
    keep = {sh["path"] for r in records for sh in r["shards"]} | {r["rejects_file"] for r in records}
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


def prepare(store: Storage, plan: dict[str, Any], overwrite: bool) -> None:
    """_prepare_out on an object store (no temps to remove: nothing is written under a temp name there)."""
    if is_foreign(store):
        raise X2IError(f"{store} exists, is not empty and is not an x2i build; choose another --out")
    ours = store.exists(f"{PROGRESS}/plan.json") or store.exists("manifest.json")
    if overwrite and ours:
        store.delete("manifest.json")  # first: from now on the prefix no longer claims a complete build
        for prefix in ("data", "rejects", PROGRESS):
            for rel in store.list(prefix):
                store.delete(rel)
    elif store.exists(f"{PROGRESS}/plan.json"):
        previous = json.loads(store.read_bytes(f"{PROGRESS}/plan.json"))
        if previous == plan:
            return
        changed = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
        raise X2IError(f"{store} holds a build of a different plan (changed: {', '.join(changed)}); "
                       "use --overwrite to replace it or choose another --out")
    store.write_bytes(f"{PROGRESS}/plan.json", json.dumps(plan, indent=1, sort_keys=True).encode())


def finished(store: Storage, plan: dict[str, Any]) -> dict[str, Any] | None:
    try:
        if not store.exists("manifest.json") or not store.exists(f"{PROGRESS}/plan.json"):
            return None
        if json.loads(store.read_bytes(f"{PROGRESS}/plan.json")) != plan:
            return None
        holder = live_object_holder(store)
        if holder is not None:
            raise BuildLocked(describe(store, holder))
        return json.loads(store.read_bytes("manifest.json"))
    except ValueError:
        return None


