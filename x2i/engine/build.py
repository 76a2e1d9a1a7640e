"""Running a recipe: compile its plan, list partitions, run the pending ones on an executor, run the post-build
passes, assemble the manifest.

Output dir layout:
    data/<task>/part-<partition>-<k>.parquet   committed shards (atomic renames)
    rejects/part-<partition>.parquet           the rejects ledger (reason, provenance, url)
    _progress/plan.json                        what this dir is being built from (recipe, partitions, quotas)
    _progress/part-<partition>.json            completion record: a partition is done iff this exists
    _progress/post-*.json, rejects/<step>.parquet  state and ledger of whole-build passes (e.g. dedup)
    manifest.json                              written when every partition is done and the passes ran
    .x2i-lock, .x2i-lock.workers               while a build runs: its lock (x2i/engine/lock.py), removed at the end

The records' layouts live in x2i/engine/manifest.py, the compiled plan in x2i/engine/plan.py, one partition's run
in x2i/engine/partition.py.

A re-run with the same plan skips done partitions, so a crash or Ctrl-C loses at most the partitions in
flight; a re-run with a different plan is refused rather than mixing two builds in one folder. A re-run of
a complete build reads and writes nothing but reads (it works on read-only storage). One build at a time
holds `.x2i-lock` in the folder (x2i/engine/lock.py); a second fails at once naming the holder.

`out_dir` may be an object-store URI (s3://, gs://, hf://; x2i/core/storage.py). The build's root is a `Storage`
either way, and the plan, records and manifest go through x2i/engine/manifest.py for both. What differs is what
rename gives a local folder: on an object store each shard is uploaded once under its final name and the
completion record last, so a partition is done iff its record exists and every shard it lists is there with its
size and sha256; objects no record lists are a killed attempt's and are removed before the manifest
(x2i/engine/object_out.py). The lock there is an object with holder and expiry (x2i/engine/object_lock.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.core.errors import BuildStopped, X2IError, describe_stop
from x2i.core.schema import SCHEMA_VERSION
from x2i.core.storage import Storage, check_target, is_uri
from x2i.engine import object_out
from x2i.engine.executor import make_executor
from x2i.engine.lock import LOCK_NAMES, DriverGuard
from x2i.engine.manifest import (MANIFEST, PLAN, PROGRESS, Manifest, ManifestError, PartitionRecord, PlanRecord,
                                 Policy, assemble_manifest, read_manifest, read_plan, read_records, record_rel,
                                 write_plan)
from x2i.engine.object_lock import held_error, lock_for
from x2i.engine.partition import PartitionJob, run_partition
from x2i.engine.plan import FinalizeStep, Plan, compile_plan
from x2i.engine.recipe import Recipe, errors_in, resolve_recipe
from x2i.engine.shards import TMP_PREFIX, StorageError, storage_errors, task_dir_name


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


def _ours(store: Storage) -> bool:
    return store.exists(PLAN) or store.exists(MANIFEST)


def _is_foreign(store: Storage) -> bool:
    """A non-empty folder that is not an x2i build (our lock files do not count): never written into."""
    if _ours(store):
        return False
    return any(name not in LOCK_NAMES for name in store.top())


def _foreign_error(store: Storage) -> X2IError:
    return X2IError(f"{store} exists, is not empty and is not an x2i build; choose another --out")


def _remove_dead_temps(store: Storage) -> None:
    """Under the lock (and once earlier workers are gone) every temp file here is a dead run's leftover, e.g.
    the half shard of a killed worker: remove them so they stop filling the disk. (An object store has none:
    nothing is written there under a temp name.)"""
    if not store.is_local:
        return
    out = store.local_path()
    for folder in (out / "data", out / "rejects", out / PROGRESS):
        for path in folder.rglob(TMP_PREFIX + "*") if folder.is_dir() else []:
            if path.is_file():
                path.unlink(missing_ok=True)
    for path in out.glob(TMP_PREFIX + "*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _prepare_out(store: Storage, planned: PlanRecord, overwrite: bool) -> None:
    """Under the lock: refuse a folder that is not ours or holds another plan, clear it for --overwrite, and
    write plan.json only when it is not already there (a resumed build rewrites nothing)."""
    if _is_foreign(store):
        raise _foreign_error(store)
    if overwrite and _ours(store):
        # The manifest first: from this moment the folder no longer claims to hold a complete build.
        for name in (MANIFEST, "data", "rejects", PROGRESS):
            store.remove(name)
    elif store.exists(PLAN):
        try:
            previous = read_plan(store)
        except ManifestError as exc:
            raise X2IError(f"{store} holds a build whose plan cannot be read ({exc.problem}); use --overwrite to "
                           "replace it or choose another --out") from None
        if previous == planned:
            _remove_dead_temps(store)
            return
        raise X2IError(f"{store} holds a build of a different plan (changed: {', '.join(planned.changed(previous))}); "
                       "use --overwrite to replace it or choose another --out")
    _remove_dead_temps(store)
    write_plan(store, planned)


def _finished(store: Storage, planned: PlanRecord) -> Manifest | None:
    """The manifest of a complete build of this very plan, found by reading only (so a re-run of a finished
    build is a no-op, also on read-only storage); None when there is anything to do."""
    try:
        if not store.exists(MANIFEST) or not store.exists(PLAN):
            return None
        if read_plan(store) != planned:
            return None  # the locked path reports the different plan
        locked = held_error(store)
        if locked is not None:  # e.g. an --overwrite of this folder is running: its manifest is going away
            raise locked
        return read_manifest(store)
    except ManifestError:
        return None  # a damaged plan or manifest: rebuild them under the lock
    except OSError as exc:
        raise StorageError.wrap(exc.filename or store, exc) from exc


def _pending(store: Storage, count: int) -> list[int]:
    """The partitions to run. Local: those without a completion record (the rename committed their shards).
    Object store: those whose record or listed shards are missing or differ; their leftovers are removed here,
    under the lock, records first."""
    if store.is_local:
        return [i for i in range(count) if not store.exists(record_rel(i))]
    done = object_out.done_partitions(store, count)
    pending = [i for i in range(count) if i not in done]
    object_out.clear_partitions(store, pending)
    return pending


def run_post_build(plan: Plan, out: Path | Storage, records: list[PartitionRecord]
                   ) -> tuple[list[PartitionRecord], dict[str, Any]]:
    """Whole-build passes (e.g. dedup across partitions), run once every partition is complete and before the
    manifest, on the driver, so the result is the same whatever executor ran the partitions.

    A recipe step opts in with `after_build(out, records) -> (records, summary)`: it may rewrite committed
    shards (atomically) and returns the completion records as they now stand (rows, shard sha256/bytes,
    rejects); the partition records on disk are left as the partitions wrote them. Each hook must be
    idempotent: a re-run after a crash calls it again."""
    summaries: dict[str, Any] = {}
    for step in plan.post_build:
        try:
            records, summaries[step.name] = step.after_build(out, records)
        except (X2IError, OSError):  # already one line (OSError: _build_locked makes it a StorageError)
            raise
        except Exception as exc:  # undeclared: stop with one line (the partitions stay, a re-run resumes here)
            raise BuildStopped(describe_stop(exc, f"post-build step {step.name}")) from exc
    return records, summaries


def check_not_empty(manifest: Manifest, out: Path | Storage) -> None:
    """A build that read rows but kept none is almost always a broken setup, not a result: say so."""
    if manifest.rows == 0 and manifest.source_samples > 0:
        reasons = ", ".join(f"{reason} x{n}" for reason, n in manifest.top_rejects(3)) or "none recorded"
        raise BuildStopped(f"{out}: read {manifest.source_samples} source rows but wrote 0 rows (top reject "
                           f"reasons: {reasons}; see {out}/rejects/); pass --allow-empty to accept an empty build")


def build(recipe: Recipe, out_dir: str | Path, *, executor: str = "local", workers: int = 1,
          ray_address: str | None = None, limit: int | None = None, overwrite: bool = False,
          strict: bool = False, progress: bool = True, on_partition=None, max_error_rate: float = 0.0,
          allow_empty: bool = False) -> Manifest:
    """Build `recipe` into `out_dir`; resumes a previous run of the same plan. Returns the manifest.

    Stops (BuildStopped, the CLI's exit 2) at the first failure that is not a bad row; finished partitions
    are kept and a re-run resumes. `max_error_rate` lets that share of source rows fail with undeclared
    errors (counted as `unexpected_error` rejects); `allow_empty` accepts a build that keeps no row.
    Holds the folder's lock throughout; a complete build of the same plan is returned as is (nothing is
    written). An OSError anywhere (disk full, read-only storage) is raised as one StorageError."""
    if not 0.0 <= max_error_rate < 1.0:
        raise X2IError(f"--max-error-rate must be in [0, 1), got {max_error_rate}")
    store = Storage.for_uri(out_dir)  # refuses a mangled URI (`s3:/bucket`): never a local folder named `s3:`
    plan = compile_plan(recipe)
    if not store.is_local:
        object_out.check_supported(store, [step.name for step in plan.post_build])
    partitions = plan.source.partitions()
    planned = PlanRecord(recipe=recipe.to_dict(), partitions=[plan.source.label(p) for p in partitions],
                         limit=limit, quotas=_quotas(plan.source, partitions, limit), schema_version=SCHEMA_VERSION)
    manifest = None if overwrite else _finished(store, planned)
    if manifest is None:
        manifest = _build_locked(plan, store, planned, partitions, overwrite, progress, on_partition,
                                 _RunPolicy(executor, workers, ray_address, strict, max_error_rate, allow_empty))
    if not allow_empty:
        check_not_empty(manifest, store)
    return manifest


def build_recipe(name_or_path: str | Path, out_dir: str | Path | None = None, *,
                 options: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = (),
                 **run: Any) -> tuple[Manifest, Path | str]:
    """`x2i build` and `x2i import`: a shipped recipe (by name) or a recipe file, with command-line changes applied
    the one way they are applied (`resolve_recipe`: options, then `--set`), built into `out_dir` (default
    out/<recipe name>; an object-store URI stays a string). `run`: build()'s keywords. Config errors name the
    recipe file. Returns (manifest, out)."""
    if out_dir is not None:
        check_target(out_dir)  # before any work, and before Path() could turn `ftp://x` into a folder `ftp:/x`
    recipe, where = resolve_recipe(name_or_path, options, sets)
    target = out_dir if out_dir is not None else Path("out") / recipe.name
    out = target if is_uri(target) else Path(target)
    with errors_in(where):  # a builder or source checking its part of the recipe names the recipe file
        return build(recipe, out, **run), out


@dataclass
class _RunPolicy:
    executor: str
    workers: int
    ray_address: str | None
    strict: bool
    max_error_rate: float
    allow_empty: bool


def _build_locked(plan: Plan, store: Storage, planned: PlanRecord, partitions: list[Any], overwrite: bool,
                  progress: bool, on_partition, run: _RunPolicy) -> Manifest:
    labels = planned.partitions
    with storage_errors(store):
        if _is_foreign(store):  # checked before the lock too, so a stranger's folder never gets a lock file
            raise _foreign_error(store)
    try:
        with lock_for(store) as lock:
            _prepare_out(store, planned, overwrite)
            jobs = [PartitionJob(plan, i, partitions[i], labels[i], planned.quotas[i], store.uri, run.strict,
                                 run.max_error_rate, lock.guard)
                    for i in _pending(store, len(partitions))]
            _run_jobs(jobs, len(partitions), plan.recipe.name, run, progress, on_partition, lock.guard)
            # The post-build passes rewrite local files (none runs on an object store: object_out.check_supported).
            out = store.local_path() if store.is_local else store
            records, post_build = run_post_build(plan, out, read_records(store, len(partitions)))
            if not store.is_local:  # what rename gives a folder: only what the records list is output
                object_out.sweep_orphans(store, records)
                lock.check_held()
            return assemble_manifest(store, planned, plan.source.describe(), plan.notes(), records, post_build,
                                     policy=Policy(run.max_error_rate, run.allow_empty))
    except StorageError:
        raise
    except OSError as exc:  # plan, records, post-build passes, manifest: one line, not a traceback
        raise StorageError.wrap(exc.filename or store, exc) from exc


def progress_bar(total: int, done: int, name: str):
    """The partitions bar, without tqdm's monitor thread: a second thread in the driver would make the local
    pool spawn its workers instead of forking them (x2i.engine.executor.start_method)."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, initial=done, unit="part", desc=f"build {name}")


def _run_jobs(jobs: list[PartitionJob], total: int, name: str, run: _RunPolicy, progress: bool, on_partition,
              guard: DriverGuard) -> None:
    """Run the pending partitions; the first failure stops the build (finished partitions are kept, the ones
    in flight are cancelled): a failure that is not a bad row will fail the other partitions alike."""
    if not jobs:
        return
    runner = make_executor(run.executor, run.workers, run.ray_address, guard=guard)
    bar = progress_bar(total, total - len(jobs), name) if progress else None
    rows = 0
    try:
        for job, record, error in runner.map_unordered(run_partition, jobs):
            if error is not None:
                if run.strict or isinstance(error, StorageError):
                    raise error
                raise BuildStopped(describe_stop(error, f"partition {job.index} ({job.label})")
                                   + " (finished partitions are kept; re-run the same command to resume)")
            rows += sum(record.rows.values())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=rows)
            if on_partition is not None:
                on_partition(record)
    finally:
        if bar is not None:
            bar.close()
        runner.close()


__all__ = ["build", "build_recipe", "compile_plan", "run_partition", "run_post_build", "PartitionJob", "FinalizeStep",
           "task_dir_name"]
