"""Running a recipe: plan partitions, run the pending ones on an executor, assemble the manifest.

Output dir layout:
    data/<task>/part-<partition>-<k>.parquet   committed shards (atomic renames)
    rejects/part-<partition>.parquet           the rejects ledger (reason, provenance, url)
    _progress/plan.json                        what this dir is being built from (recipe, partitions, quotas)
    _progress/part-<partition>.json            completion record: a partition is done iff this exists
    _progress/post-*.json, rejects/<step>.parquet  state and ledger of whole-build passes (e.g. dedup)
    manifest.json                              written when every partition is done and the passes ran
    .x2i-lock, .x2i-lock.workers               while a build runs: its lock (x2i/engine/lock.py), removed at the end

A re-run with the same plan skips done partitions, so a crash or Ctrl-C loses at most the partitions in
flight; a re-run with a different plan is refused rather than mixing two builds in one folder. A re-run of
a complete build reads and writes nothing but reads (it works on read-only storage). One build at a time
holds `.x2i-lock` in the folder (x2i/engine/lock.py); a second fails at once naming the holder.

`out_dir` may be an object-store URI (s3://, gs://, hf://; x2i/core/storage.py). There is no rename there:
each shard is uploaded once under its final name and the completion record last, so a partition is done iff
its record exists and every shard it lists is there with its size and sha256; objects no record lists are a
killed attempt's and are removed before the manifest (x2i/engine/object_out.py). The lock is an object with
holder and expiry (x2i/engine/object_lock.py). Below, `out` is a Path for a local folder (the
code paths of local builds are unchanged) and a Storage for an object store.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from x2i import __version__
from x2i.builders import make_builder, make_steps
from x2i.core.errors import BuildStopped, X2IError, describe_stop, require_modules
from x2i.engine.executor import make_executor
from x2i.core.storage import Storage
from x2i.engine.lock import LOCK_NAMES, BuildLock, BuildLocked, DriverGuard, live_holder, locked_error
from x2i.engine import object_out
from x2i.engine.object_lock import ObjectLock
from x2i.core.prompt import problems
from x2i.engine.recipe import Recipe
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.core.schema import SCHEMA_VERSION
from x2i.engine.shards import (TMP_PREFIX, PartitionWriter, StorageError, atomic_write_bytes, storage_errors,
                        task_dir_name, write_rejects)
from x2i.sources import make_source
from x2i.engine.steps import Context, Step, run_steps

PROGRESS = "_progress"


class FinalizeStep(Step):
    """Last line of defence before a row is written: a malformed sample is a counted reject, not a bad row."""

    name = "finalize"

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for s in samples:
            found = []
            if s.task in ("", SOURCE_TASK):
                found.append(f"task is {s.task!r}")
            if s.output_image is None:
                found.append("no output image")
            if not s.id:
                found.append("no id")
            found += problems(s.instruction, len(s.input_images))
            if found:
                ctx.reject(s, "invalid_sample", self.name, "; ".join(found))
                continue
            yield s


@dataclass
class PartitionJob:
    recipe: dict[str, Any]
    index: int
    partition: Any
    label: str
    quota: int | None
    out_dir: str
    strict: bool = False
    max_error_rate: float = 0.0
    guard: DriverGuard | None = None  # set by build(): the worker commits only while its driver holds the lock


def _record_path(out: Path, index: int) -> Path:
    return out / PROGRESS / f"part-{index:05d}.json"


def _store(out: Path | Storage) -> Storage:
    return out if isinstance(out, Storage) else Storage.for_uri(out)


def _write(out: Path | Storage, rel: str, data: bytes) -> None:
    """A small file: atomic (temp, fsync, rename) in a local folder, one upload on an object store."""
    if isinstance(out, Storage):
        out.write_bytes(rel, data)
    else:
        atomic_write_bytes(out / rel, data)


def _as_out(out_dir: str | Path) -> Path | Storage:
    """A Path for a local folder (checked: no mangled URI such as `s3:/bucket`), a Storage for an object store."""
    store = Storage.for_uri(out_dir)
    return store.local_path() if store.is_local else store


def _clear_partition(out: Path, index: int) -> None:
    """Remove what an interrupted attempt at this partition may have left (temp or committed files). Only
    called under the build lock, so no other run's files can be here."""
    for pattern in (f"part-{index:05d}-*.parquet", f"{TMP_PREFIX}*part-{index:05d}-*.parquet"):
        for path in (out / "data").rglob(pattern) if (out / "data").exists() else []:
            path.unlink()
    (out / "rejects" / f"part-{index:05d}.parquet").unlink(missing_ok=True)


def run_partition(job: PartitionJob) -> dict[str, Any]:
    """Read, transform and write one partition; return (and persist) its completion record."""
    recipe = Recipe.from_dict(job.recipe)
    out = _as_out(job.out_dir)
    store = _store(out)
    source = make_source(recipe.source)
    steps = make_builder(recipe).steps() + make_steps(recipe.steps) + [FinalizeStep()]
    ctx = Context(seed=recipe.seed, partition=job.index, strict=job.strict, max_error_rate=job.max_error_rate)
    if store.is_local:  # an object store's leftovers were cleared by the driver (object_out.clear_partitions)
        _clear_partition(out, job.index)
    writer = PartitionWriter(out, job.index, recipe.output.rows_per_row_group, recipe.output.max_shard_bytes)
    started = time.time()

    def counted(samples: Iterable[Sample]) -> Iterator[Sample]:
        for s in samples:
            ctx.counts["source_samples"] += 1
            yield s

    try:
        for sample in run_steps(steps, counted(source.read(job.partition, ctx, job.quota)), ctx):
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
    if recipe.output.write_rejects and ctx.rejects:
        rejects_file = f"rejects/part-{job.index:05d}.parquet"
        write_rejects((store, rejects_file), ctx.rejects)
    record = {
        "index": job.index, "label": job.label, "quota": job.quota,
        "source_samples": ctx.counts["source_samples"],
        "rows": {k[5:]: v for k, v in sorted(ctx.counts.items()) if k.startswith("rows/")},
        "rejects": dict(sorted(ctx.reject_counts.items())),
        "rejects_file": rejects_file,
        "unexpected_errors": ctx.counts["unexpected_errors"],
        "shards": [asdict(s) for s in shards],
        "seconds": round(time.time() - started, 3),
    }
    if job.guard is not None and not store.is_local:
        job.guard.check()  # the shards are uploaded under final names: only the record commits, and only for a live driver
    _write(out, object_out.record_rel(job.index), json.dumps(record, indent=1).encode())
    return record


def _quotas(source, partitions: list[Any], limit: int | None) -> list[int | None]:
    """Split `limit` source records over partitions in order: the first N records of the whole source."""
    if limit is None:
        return [None] * len(partitions)
    quotas, left = [], limit
    for p in partitions:
        take = min(left, source.count(p)) if left > 0 else 0
        quotas.append(take)
        left -= take
    return quotas


def _is_foreign(out: Path | Storage) -> bool:
    """A non-empty folder that is not an x2i build (our lock files do not count): never written into."""
    if isinstance(out, Storage):
        return object_out.is_foreign(out)
    if (out / PROGRESS / "plan.json").exists() or (out / "manifest.json").exists() or not out.is_dir():
        return False
    return any(p.name not in LOCK_NAMES for p in out.iterdir())


def _foreign_error(out: Path) -> X2IError:
    return X2IError(f"{out} exists, is not empty and is not an x2i build; choose another --out")


def _remove_dead_temps(out: Path) -> None:
    """Under the lock (and once earlier workers are gone) every temp file here is a dead run's leftover, e.g.
    the half shard of a killed worker: remove them so they stop filling the disk."""
    for folder in (out / "data", out / "rejects", out / PROGRESS):
        for path in folder.rglob(TMP_PREFIX + "*") if folder.is_dir() else []:
            if path.is_file():
                path.unlink(missing_ok=True)
    for path in out.glob(TMP_PREFIX + "*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _prepare_out(out: Path | Storage, plan: dict[str, Any], overwrite: bool) -> None:
    """Under the lock: refuse a folder that is not ours or holds another plan, clear it for --overwrite, and
    write plan.json only when it is not already there (a resumed build rewrites nothing)."""
    if isinstance(out, Storage):
        return object_out.prepare(out, plan, overwrite)
    plan_path = out / PROGRESS / "plan.json"
    if _is_foreign(out):
        raise _foreign_error(out)
    ours = plan_path.exists() or (out / "manifest.json").exists()
    if overwrite and ours:
        # The manifest first: from this moment the folder no longer claims to hold a complete build.
        for name in ("manifest.json", "data", "rejects", PROGRESS):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif plan_path.exists():
        previous = json.loads(plan_path.read_text())
        if previous == plan:
            _remove_dead_temps(out)
            return
        changed = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
        raise X2IError(f"{out} holds a build of a different plan (changed: {', '.join(changed)}); "
                       "use --overwrite to replace it or choose another --out")
    _remove_dead_temps(out)
    atomic_write_bytes(plan_path, json.dumps(plan, indent=1, sort_keys=True).encode())


def _finished(out: Path | Storage, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete build of this very plan, found by reading only (so a re-run of a finished
    build is a no-op, also on read-only storage); None when there is anything to do."""
    if isinstance(out, Storage):
        return object_out.finished(out, plan)
    try:
        if not (out / "manifest.json").is_file() or not (out / PROGRESS / "plan.json").is_file():
            return None
        if json.loads((out / PROGRESS / "plan.json").read_text()) != plan:
            return None  # the locked path reports the different plan
        holder = live_holder(out)
        if holder is not None:  # e.g. an --overwrite of this folder is running: its manifest is going away
            raise locked_error(out, holder)
        return json.loads((out / "manifest.json").read_text())
    except ValueError:
        return None  # a damaged plan or manifest: rebuild them under the lock
    except OSError as exc:
        raise StorageError.wrap(exc.filename or out, exc) from exc


def _records(out: Path | Storage, count: int) -> list[dict[str, Any]]:
    if isinstance(out, Storage):
        return [json.loads(out.read_bytes(object_out.record_rel(i))) for i in range(count)]
    return [json.loads(_record_path(out, i).read_text()) for i in range(count)]


def run_post_build(recipe: Recipe, out: Path, records: list[dict[str, Any]]) -> tuple[list[dict], dict[str, Any]]:
    """Whole-build passes (e.g. dedup across partitions), run once every partition is complete and before the
    manifest, on the driver, so the result is the same whatever executor ran the partitions.

    A recipe step opts in with `after_build(out, records) -> (records, summary)`: it may rewrite committed
    shards (atomically) and returns the completion records as they now stand (rows, shard sha256/bytes,
    rejects); the partition records on disk are left as the partitions wrote them. Each hook must be
    idempotent: a re-run after a crash calls it again."""
    summaries: dict[str, Any] = {}
    for step in make_steps(recipe.steps):
        hook = getattr(step, "after_build", None)
        if hook is not None:
            records, summaries[step.name] = hook(out, records)
    return records, summaries


def score_summary(out: Path, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: how many rows carry an aesthetic / clip_score / phash, and the scores' spread."""
    import numpy as np
    import pyarrow.parquet as pq

    columns: dict[str, dict[str, list]] = {}
    for sh in shards:
        where = out.open_input(sh["path"]) if isinstance(out, Storage) else out / sh["path"]
        table = pq.read_table(where, columns=["aesthetic", "clip_score", "phash"])
        cols = columns.setdefault(sh["task"], {"aesthetic": [], "clip_score": [], "phash": []})
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


def assemble_manifest(out: Path, plan: dict[str, Any], source_info: dict[str, Any],
                      notes: list[str] | None = None, records: list[dict[str, Any]] | None = None,
                      post_build: dict[str, Any] | None = None, policy: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    if records is None:
        records = _records(out, len(plan["partitions"]))
    post_build = post_build or {}
    tasks: dict[str, dict[str, int]] = {}
    rejects: Counter = Counter()
    shards = []
    for rec in records:
        rejects.update(rec["rejects"])
        for sh in rec["shards"]:
            shards.append(sh)
            t = tasks.setdefault(sh["task"], {"rows": 0, "shards": 0, "bytes": 0})
            t["rows"] += sh["rows"]
            t["shards"] += 1
            t["bytes"] += sh["bytes"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "x2i_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": plan["recipe"]["name"],
        "recipe": plan["recipe"],
        "source": source_info,
        "notes": notes or [],
        "limit": plan["limit"],
        "rows": sum(t["rows"] for t in tasks.values()),
        "tasks": dict(sorted(tasks.items())),
        "source_samples": sum(r["source_samples"] for r in records),
        "rejects": dict(sorted(rejects.items())),
        "rejects_total": sum(rejects.values()),
        "unexpected_errors": sum(r.get("unexpected_errors", 0) for r in records),
        "policy": policy or {"max_error_rate": 0.0, "allow_empty": False},
        "rejects_files": [r["rejects_file"] for r in records if r["rejects_file"]]
        + [p["rejects_file"] for p in post_build.values() if isinstance(p, dict) and p.get("rejects_file")],
        "scores": score_summary(out, shards),
        "post_build": post_build,
        "shards": sorted(shards, key=lambda s: s["path"]),
        "partitions": [{k: r[k] for k in ("index", "label", "quota", "source_samples", "rows", "seconds")}
                       for r in records],
    }
    _write(out, "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    return manifest


def preflight(recipe: Recipe) -> tuple[Any, Any, list[Step]]:
    """Everything a build needs, checked before any work: the builder's params, the recipe's steps, their
    weights (resolved when they are made) and optional modules, and the source's files and column types
    (read when its partitions are listed). Returns (builder, source, steps); raises BuildStopped/X2IError."""
    try:
        builder = make_builder(recipe)
        steps = builder.steps() + make_steps(recipe.steps)
        source = make_source(recipe.source)
    except ImportError as exc:
        raise BuildStopped(describe_stop(exc, f"recipe {recipe.name}")) from None
    for step in steps:
        require_modules(f"recipe {recipe.name} (step {step.name})", step.needs())
    return builder, source, steps


def check_not_empty(manifest: dict[str, Any], out: Path) -> None:
    """A build that read rows but kept none is almost always a broken setup, not a result: say so."""
    if manifest["rows"] == 0 and manifest["source_samples"] > 0:
        top = sorted(manifest["rejects"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{reason} x{n}" for reason, n in top) or "none recorded"
        raise BuildStopped(f"{out}: read {manifest['source_samples']} source rows but wrote 0 rows (top reject "
                           f"reasons: {reasons}; see {out}/rejects/); pass --allow-empty to accept an empty build")


def build(recipe: Recipe, out_dir: str | Path, *, executor: str = "local", workers: int = 1,
          ray_address: str | None = None, limit: int | None = None, overwrite: bool = False,
          strict: bool = False, progress: bool = True, on_partition=None, max_error_rate: float = 0.0,
          allow_empty: bool = False) -> dict[str, Any]:
    """Build `recipe` into `out_dir`; resumes a previous run of the same plan. Returns the manifest.

    Stops (BuildStopped, the CLI's exit 2) at the first failure that is not a bad row; finished partitions
    are kept and a re-run resumes. `max_error_rate` lets that share of source rows fail with undeclared
    errors (counted as `unexpected_error` rejects); `allow_empty` accepts a build that keeps no row.
    Holds the folder's lock throughout; a complete build of the same plan is returned as is (nothing is
    written). An OSError anywhere (disk full, read-only storage) is raised as one StorageError."""
    if not 0.0 <= max_error_rate < 1.0:
        raise X2IError(f"--max-error-rate must be in [0, 1), got {max_error_rate}")
    out = _as_out(out_dir)
    builder, source, _ = preflight(recipe)
    if isinstance(out, Storage):
        object_out.check_supported(out, [s.name for s in make_steps(recipe.steps) if hasattr(s, "after_build")])
    partitions = source.partitions()
    labels = [source.label(p) for p in partitions]
    plan = {"recipe": recipe.to_dict(), "partitions": labels, "limit": limit,
            "quotas": _quotas(source, partitions, limit), "schema_version": SCHEMA_VERSION}
    manifest = None if overwrite else _finished(out, plan)
    if manifest is None:
        manifest = _build_locked(recipe, out, plan, partitions, builder, source, overwrite, progress,
                                 on_partition, _RunPolicy(executor, workers, ray_address, strict, max_error_rate,
                                                          allow_empty))
    if not allow_empty:
        check_not_empty(manifest, out)
    return manifest


@dataclass
class _RunPolicy:
    executor: str
    workers: int
    ray_address: str | None
    strict: bool
    max_error_rate: float
    allow_empty: bool


def _build_locked(recipe: Recipe, out: Path | Storage, plan: dict[str, Any], partitions: list[Any], builder, source,
                  overwrite: bool, progress: bool, on_partition, run: _RunPolicy) -> dict[str, Any]:
    labels = plan["partitions"]
    with storage_errors(out):
        if _is_foreign(out):  # checked before the lock too, so a stranger's folder never gets a lock file
            raise _foreign_error(out)
    try:
        with (ObjectLock(out) if isinstance(out, Storage) else BuildLock(out)) as lock:
            _prepare_out(out, plan, overwrite)
            if isinstance(out, Storage):
                done = object_out.done_partitions(out, len(partitions))
                object_out.clear_partitions(out, [i for i in range(len(partitions)) if i not in done])
            else:
                done = {i for i in range(len(partitions)) if _record_path(out, i).exists()}
            jobs = [PartitionJob(recipe.to_dict(), i, p, labels[i], plan["quotas"][i], str(out), run.strict,
                                 run.max_error_rate, lock.guard)
                    for i, p in enumerate(partitions) if i not in done]
            _run_jobs(jobs, len(partitions), recipe.name, run, progress, on_partition, lock.guard)
            records, post_build = run_post_build(recipe, out, _records(out, len(partitions)))
            if isinstance(out, Storage):
                object_out.sweep_orphans(out, records)
                lock.check_held()
            return assemble_manifest(out, plan, source.describe(), builder.notes(), records, post_build,
                                     policy={"max_error_rate": run.max_error_rate, "allow_empty": run.allow_empty})
    except StorageError:
        raise
    except OSError as exc:  # plan, records, post-build passes, manifest: one line, not a traceback
        raise StorageError.wrap(exc.filename or out, exc) from exc


def _run_jobs(jobs: list[PartitionJob], total: int, name: str, run: _RunPolicy, progress: bool, on_partition,
              guard: DriverGuard) -> None:
    """Run the pending partitions; the first failure stops the build (finished partitions are kept, the ones
    in flight are cancelled): a failure that is not a bad row will fail the other partitions alike."""
    if not jobs:
        return
    runner = make_executor(run.executor, run.workers, run.ray_address, guard=guard)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=total - len(jobs), unit="part", desc=f"build {name}")
    rows = 0
    try:
        for job, record, error in runner.map_unordered(run_partition, jobs):
            if error is not None:
                if run.strict or isinstance(error, StorageError):
                    raise error
                raise BuildStopped(describe_stop(error, f"partition {job.index} ({job.label})")
                                   + " (finished partitions are kept; re-run the same command to resume)")
            rows += sum(record["rows"].values())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=rows)
            if on_partition is not None:
                on_partition(record)
    finally:
        if bar is not None:
            bar.close()
        runner.close()


__all__ = ["build", "preflight", "run_partition", "PartitionJob", "FinalizeStep", "task_dir_name"]
