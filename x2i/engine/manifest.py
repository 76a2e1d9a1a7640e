"""The build's records as typed dataclasses: `manifest.json`, the completion records `_progress/part-*.json` and
`_progress/plan.json`. Every reader and writer goes through this module, so a key exists in one place only.

Reading uses x2i.core.config's strict loader: an unknown key or a value of the wrong type is an error naming the
key (a manifest from a newer x2i, or a hand-edited one, is never half-understood). Keys added after schema v1 was
first written have defaults, so every v1 manifest still loads: `notes`, `scores`, `post_build` (added early),
`unexpected_errors` and `policy` (added with the error budget). Writing keeps the JSON layout byte for byte as it
has always been (field order is key order, `indent=1`), so existing datasets and the docs stay true.

The root may be a local folder or an object-store prefix (x2i/core/storage.py): the same functions read and write
both, local small files atomically (temp, fsync, rename), objects as one upload under their final name.

`recipe` and `source` stay plain mappings: they record what a build was made from, and must keep loading after the
Recipe dataclass or a source's `describe()` changes; `scores` and `post_build` are free-form summaries.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x2i import __version__
from x2i.core.config import ConfigError, from_dict, to_dict
from x2i.core.errors import X2IError
from x2i.core.schema import SCHEMA_VERSION
from x2i.core.storage import Storage, as_storage, is_uri
from x2i.engine.shards import ShardInfo, atomic_write_bytes  # ShardInfo: what the shard writer commits

MANIFEST = "manifest.json"
PROGRESS = "_progress"


class ManifestError(X2IError):
    """A build record that cannot be read: not JSON, or not the layout of its dataclass. `path`: the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem

    def __reduce__(self):  # keeps path and problem across process pools and Ray
        return type(self), (self.path, self.problem)


@dataclass
class TaskTotals:
    rows: int = 0
    shards: int = 0
    bytes: int = 0


@dataclass(kw_only=True)  # kw_only: fields added later (with defaults) keep their place in the JSON key order
class PartitionRecord:
    """`_progress/part-<index>.json`: a partition is done iff this exists. Post-build passes (dedup) return
    updated copies of these; the files on disk stay as the partitions wrote them."""

    index: int
    label: str
    quota: int | None
    source_samples: int
    rows: dict[str, int]
    rejects: dict[str, int]
    rejects_file: str | None
    unexpected_errors: int = 0
    shards: list[ShardInfo]
    seconds: float

    def summary(self) -> PartitionSummary:
        return PartitionSummary(index=self.index, label=self.label, quota=self.quota,
                                source_samples=self.source_samples, rows=dict(self.rows), seconds=self.seconds)


@dataclass(kw_only=True)
class PartitionSummary:
    """A partition as the manifest lists it (its record less rejects and shards, which the manifest totals)."""

    index: int
    label: str
    quota: int | None
    source_samples: int
    rows: dict[str, int]
    seconds: float


@dataclass
class Policy:
    """The error policy the build ran under (`--max-error-rate`, `--allow-empty`)."""

    max_error_rate: float = 0.0
    allow_empty: bool = False


@dataclass(kw_only=True)
class Manifest:
    """`manifest.json`: written when every partition is done and the post-build passes ran."""

    schema_version: int
    x2i_version: str
    created_at: str
    name: str
    recipe: dict[str, Any]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    limit: int | None
    rows: int
    tasks: dict[str, TaskTotals]
    source_samples: int
    rejects: dict[str, int]
    rejects_total: int
    unexpected_errors: int = 0
    policy: Policy = field(default_factory=Policy)
    rejects_files: list[str]
    scores: dict[str, Any] = field(default_factory=dict)
    post_build: dict[str, Any] = field(default_factory=dict)
    shards: list[ShardInfo]
    partitions: list[PartitionSummary]

    def output_multiple(self) -> int:
        """The size multiple the recipe cropped outputs to (what `validate` checks widths and heights against)."""
        return int((self.recipe.get("output") or {}).get("multiple", 16))

    def top_rejects(self, n: int | None = None) -> list[tuple[str, int]]:
        """Reject reasons, most frequent first."""
        return sorted(self.rejects.items(), key=lambda kv: -kv[1])[:n]


@dataclass
class PlanRecord:
    """`_progress/plan.json`: what a folder is being built from. A re-run with another plan is refused."""

    recipe: dict[str, Any]
    partitions: list[str]
    limit: int | None
    quotas: list[int | None]
    schema_version: int

    def changed(self, other: PlanRecord) -> list[str]:
        mine, theirs = to_dict(self), to_dict(other)
        return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


# -- paths ----------------------------------------------------------------------------------------------------------
# Every reader and writer below takes the build's root as a local path, an object-store URI or a Storage
# (x2i/core/storage.py), and names files relative to it, so local folders and object stores share one code path.
PLAN = f"{PROGRESS}/plan.json"


def record_rel(index: int) -> str:
    """A partition's completion record, relative to the build's root."""
    return f"{PROGRESS}/part-{index:05d}.json"


def manifest_path(root: str | Path) -> Path:
    """`root/manifest.json` for a build folder; a path to the file itself is returned as is."""
    root = Path(root)
    return root if root.name == MANIFEST or root.suffix == ".json" else root / MANIFEST


def record_path(out: Path, index: int) -> Path:
    return Path(out) / record_rel(index)


def plan_path(out: Path) -> Path:
    return Path(out) / PLAN


def _manifest_at(root: str | Path | Storage) -> tuple[Storage, str]:
    """(storage, name) of the manifest of a build root, or of the manifest file itself."""
    if isinstance(root, Storage):
        return root, MANIFEST
    if is_uri(str(root)):
        text = str(root).rstrip("/")
        head, _, name = text.rpartition("/")
        return (Storage.for_uri(head), name) if name.endswith(".json") else (Storage.for_uri(text), MANIFEST)
    path = manifest_path(root)
    return Storage.for_uri(path.parent), path.name


def _shown(store: Storage, rel: str) -> Path | str:
    """A file as error messages name it: a local Path, or the object's URI."""
    return store.local_path(rel) if store.is_local else store.uri_of(rel)


# -- reading --------------------------------------------------------------------------------------------------------
def _load(cls: type, store: Storage, rel: str, what: str) -> Any:
    """`cls` from the JSON file `rel`; ManifestError (an X2IError) when it is not JSON or not that layout.
    OSError (missing, unreadable; a StorageError naming the file) is left to the caller, which knows whether a
    missing file is an error."""
    try:
        data = json.loads(store.read_bytes(rel))
    except ValueError as exc:
        raise ManifestError(_shown(store, rel), f"not valid JSON: {exc}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ManifestError(_shown(store, rel), f"not an x2i {what}: {exc}") from None


def read_manifest(root: str | Path | Storage) -> Manifest:
    """The manifest of a build folder or prefix (or the manifest file itself)."""
    return _load(Manifest, *_manifest_at(root), "manifest")


def read_record(out: str | Path | Storage, index: int) -> PartitionRecord:
    return _load(PartitionRecord, as_storage(out), record_rel(index), "completion record")


def read_records(out: str | Path | Storage, count: int) -> list[PartitionRecord]:
    store = as_storage(out)
    return [read_record(store, i) for i in range(count)]


def read_plan(out: str | Path | Storage) -> PlanRecord:
    return _load(PlanRecord, as_storage(out), PLAN, "build plan")


def records_from(data: list[Any]) -> list[PartitionRecord]:
    """Completion records from their JSON form (e.g. a post-build pass's saved outcome)."""
    return [from_dict(PartitionRecord, r, f"records[{i}]") for i, r in enumerate(data)]


# -- writing --------------------------------------------------------------------------------------------------------
def record_json(record: Any) -> bytes:
    """A record dataclass as written to disk (also for records embedded in another file)."""
    return json.dumps(to_dict(record), indent=1).encode()


def _write(out: str | Path | Storage, rel: str, data: bytes) -> None:
    """A small file: atomic (temp, fsync, rename) in a local folder; on an object store one upload under its final
    name, which readers see whole or not at all."""
    store = as_storage(out)
    if store.is_local:
        atomic_write_bytes(store.local_path(rel), data)
    else:
        store.write_bytes(rel, data)


def write_record(out: str | Path | Storage, record: PartitionRecord) -> None:
    _write(out, record_rel(record.index), record_json(record))


def write_plan(out: str | Path | Storage, plan: PlanRecord) -> None:
    _write(out, PLAN, json.dumps(to_dict(plan), indent=1, sort_keys=True).encode())


def write_manifest(out: str | Path | Storage, manifest: Manifest) -> None:
    _write(out, MANIFEST, json.dumps(to_dict(manifest), indent=1, ensure_ascii=False).encode())


def score_summary(out: str | Path | Storage, shards: list[ShardInfo]) -> dict[str, Any]:
    """Per task: how many rows carry an aesthetic / clip_score / phash, and the scores' spread."""
    import numpy as np
    import pyarrow.parquet as pq

    store = as_storage(out)
    columns: dict[str, dict[str, list]] = {}
    for sh in shards:
        # store.fs is None for a local folder: pyarrow then reads the local path natively.
        table = pq.read_table(store.path(sh.path), columns=["aesthetic", "clip_score", "phash"], filesystem=store.fs)
        cols = columns.setdefault(sh.task, {"aesthetic": [], "clip_score": [], "phash": []})
        for name in cols:
            cols[name] += [v for v in table.column(name).to_pylist() if v is not None]
    summary: dict[str, Any] = {}
    for task, cols in sorted(columns.items()):
        entry: dict[str, Any] = {"phash": len(cols["phash"])}
        for name in ("aesthetic", "clip_score"):
            values = np.asarray(cols[name], dtype=np.float64)
            entry[name] = {"count": int(values.size)}
            if values.size:
                q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
                entry[name].update(mean=round(float(values.mean()), 4), min=round(float(q[0]), 4),
                                   p10=round(float(q[1]), 4), p50=round(float(q[2]), 4),
                                   p90=round(float(q[3]), 4), max=round(float(q[4]), 4))
        summary[task] = entry
    return summary


def assemble_manifest(out: str | Path | Storage, plan: PlanRecord, source_info: dict[str, Any],
                      notes: list[str] | None = None, records: list[PartitionRecord] | None = None,
                      post_build: dict[str, Any] | None = None, policy: Policy | None = None) -> Manifest:
    """Total the completion records (as the post-build passes left them) into the manifest, and write it."""
    if records is None:
        records = read_records(out, len(plan.partitions))
    post_build = post_build or {}
    tasks: dict[str, TaskTotals] = {}
    rejects: Counter = Counter()
    shards: list[ShardInfo] = []
    for rec in records:
        rejects.update(rec.rejects)
        for sh in rec.shards:
            shards.append(sh)
            t = tasks.setdefault(sh.task, TaskTotals())
            t.rows += sh.rows
            t.shards += 1
            t.bytes += sh.bytes
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, x2i_version=__version__,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        name=plan.recipe["name"], recipe=plan.recipe, source=source_info, notes=notes or [], limit=plan.limit,
        rows=sum(t.rows for t in tasks.values()), tasks=dict(sorted(tasks.items())),
        source_samples=sum(r.source_samples for r in records), rejects=dict(sorted(rejects.items())),
        rejects_total=sum(rejects.values()), unexpected_errors=sum(r.unexpected_errors for r in records),
        policy=policy or Policy(),
        rejects_files=[r.rejects_file for r in records if r.rejects_file]
        + [p["rejects_file"] for p in post_build.values() if isinstance(p, dict) and p.get("rejects_file")],
        scores=score_summary(out, shards), post_build=post_build,
        shards=sorted(shards, key=lambda s: s.path), partitions=[r.summary() for r in records])
    write_manifest(out, manifest)
    return manifest


__all__ = ["MANIFEST", "PLAN", "PROGRESS", "Manifest", "ManifestError", "PartitionRecord", "PartitionSummary",
           "PlanRecord", "Policy", "ShardInfo", "TaskTotals", "assemble_manifest", "manifest_path", "read_manifest",
           "read_plan", "read_record", "read_records", "record_json", "record_path", "record_rel", "records_from",
           "score_summary", "write_manifest", "write_plan", "write_record"]
