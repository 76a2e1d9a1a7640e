"""One partition of a build: read it from the source, run the plan's steps, write shards, then the completion
record. This is the function executors run, in-process, in a process pool or as a Ray task; it does all of its
own work and writes only its own files, so every executor gives the same bytes.

`out_dir` is a local folder or an object-store URI (x2i/core/storage.py). On an object store the shards are
uploaded under their final names, so the completion record is what commits them: it is written only while the
driver still holds the lock, and a failed attempt removes its objects only while it does (x2i/engine/object_out.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.core.sample import Sample
from x2i.core.storage import Storage
from x2i.engine import object_out
from x2i.engine.lock import DriverGuard
from x2i.engine.manifest import PartitionRecord, write_record
from x2i.engine.plan import Plan
from x2i.engine.shards import TMP_PREFIX, PartitionWriter, write_rejects
from x2i.engine.steps import Context, run_steps


@dataclass
class PartitionJob:
    plan: Plan  # pickled as its recipe and compiled once per worker process (Plan.__reduce__)
    index: int
    partition: Any
    label: str
    quota: int | None
    out_dir: str
    strict: bool = False
    max_error_rate: float = 0.0
    guard: DriverGuard | None = None  # set by build(): the worker commits only while its driver holds the lock


def clear_partition(out: Path, index: int) -> None:
    """Remove what an interrupted attempt at this partition may have left (temp or committed files). Only
    called under the build lock, so no other run's files can be here."""
    for pattern in (f"part-{index:05d}-*.parquet", f"{TMP_PREFIX}*part-{index:05d}-*.parquet"):
        for path in (out / "data").rglob(pattern) if (out / "data").exists() else []:
            path.unlink()
    (out / "rejects" / f"part-{index:05d}.parquet").unlink(missing_ok=True)


def run_partition(job: PartitionJob) -> PartitionRecord:
    """Read, transform and write one partition; return (and persist) its completion record."""
    plan, store = job.plan, Storage.for_uri(job.out_dir)
    output = plan.recipe.output
    ctx = Context(seed=plan.recipe.seed, partition=job.index, strict=job.strict, max_error_rate=job.max_error_rate)
    if store.is_local:  # an object store's leftovers were cleared by the driver (object_out.clear_partitions)
        clear_partition(store.local_path(), job.index)
    writer = PartitionWriter(store, job.index, output.rows_per_row_group, output.max_shard_bytes)
    started = time.time()

    def counted(samples: Iterable[Sample]) -> Iterator[Sample]:
        for s in samples:
            ctx.counts["source_samples"] += 1
            yield s

    try:
        for sample in run_steps(plan.steps, counted(plan.source.read(job.partition, ctx, job.quota)), ctx):
            writer.write(sample)
            ctx.counts[f"rows/{sample.task}"] += 1
        ctx.check_error_budget()
        if job.guard is not None:
            job.guard.check()  # the driver died (or lost the lock): commit nothing, a re-run redoes it
        shards = writer.commit()
    except BaseException:
        writer.abort(remove_objects=store.is_local or object_out.may_remove(job.guard))
        raise
    rejects_file = None
    if output.write_rejects and ctx.rejects:
        rejects_file = f"rejects/part-{job.index:05d}.parquet"
        write_rejects((store, rejects_file), ctx.rejects)
    record = PartitionRecord(
        index=job.index, label=job.label, quota=job.quota, source_samples=ctx.counts["source_samples"],
        rows={k[5:]: v for k, v in sorted(ctx.counts.items()) if k.startswith("rows/")},
        rejects=dict(sorted(ctx.reject_counts.items())), rejects_file=rejects_file,
        unexpected_errors=ctx.counts["unexpected_errors"], shards=shards, seconds=round(time.time() - started, 3))
    if job.guard is not None and not store.is_local:
        job.guard.check()  # the shards are already under their final names: only a live driver's record commits
    write_record(store, record)
    return record


__all__ = ["PartitionJob", "clear_partition", "run_partition"]
