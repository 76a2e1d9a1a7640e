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
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x2i.core.errors import BuildStopped, X2IError, describe_stop
from x2i.core.schema import SCHEMA_VERSION
from x2i.engine.executor import make_executor
from x2i.engine.lock import LOCK_NAMES, BuildLock, DriverGuard, live_holder, locked_error
from x2i.engine.manifest import (MANIFEST, PROGRESS, Manifest, ManifestError, PartitionRecord, PlanRecord, Policy,
                                 assemble_manifest, plan_path, read_manifest, read_plan, read_records, record_path,
                                 write_plan)
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


def _is_foreign(out: Path) -> bool:
    """A non-empty folder that is not an x2i build (our lock files do not count): never written into."""
    if plan_path(out).exists() or (out / MANIFEST).exists() or not out.is_dir():
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


def _prepare_out(out: Path, planned: PlanRecord, overwrite: bool) -> None:
    """Under the lock: refuse a folder that is not ours or holds another plan, clear it for --overwrite, and
    write plan.json only when it is not already there (a resumed build rewrites nothing)."""
    if _is_foreign(out):
        raise _foreign_error(out)
    ours = plan_path(out).exists() or (out / MANIFEST).exists()
    if overwrite and ours:
        # The manifest first: from this moment the folder no longer claims to hold a complete build.
        for name in (MANIFEST, "data", "rejects", PROGRESS):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif plan_path(out).exists():
        try:
            previous = read_plan(out)
        except ManifestError as exc:
            raise X2IError(f"{out} holds a build whose plan cannot be read ({exc.problem}); use --overwrite to "
                           "replace it or choose another --out") from None
        if previous == planned:
            _remove_dead_temps(out)
            return
        raise X2IError(f"{out} holds a build of a different plan (changed: {', '.join(planned.changed(previous))}); "
                       "use --overwrite to replace it or choose another --out")
    _remove_dead_temps(out)
    write_plan(out, planned)


def _finished(out: Path, planned: PlanRecord) -> Manifest | None:
    """The manifest of a complete build of this very plan, found by reading only (so a re-run of a finished
    build is a no-op, also on read-only storage); None when there is anything to do."""
    try:
        if not (out / MANIFEST).is_file() or not plan_path(out).is_file():
            return None
        if read_plan(out) != planned:
            return None  # the locked path reports the different plan
        holder = live_holder(out)
        if holder is not None:  # e.g. an --overwrite of this folder is running: its manifest is going away
            raise locked_error(out, holder)
        return read_manifest(out)
    except ManifestError:
        return None  # a damaged plan or manifest: rebuild them under the lock
    except OSError as exc:
        raise StorageError.wrap(exc.filename or out, exc) from exc


def run_post_build(plan: Plan, out: Path, records: list[PartitionRecord]
                   ) -> tuple[list[PartitionRecord], dict[str, Any]]:
    """Whole-build passes (e.g. dedup across partitions), run once every partition is complete and before the
    manifest, on the driver, so the result is the same whatever executor ran the partitions.

    A recipe step opts in with `after_build(out, records) -> (records, summary)`: it may rewrite committed
    shards (atomically) and returns the completion records as they now stand (rows, shard sha256/bytes,
    rejects); the partition records on disk are left as the partitions wrote them. Each hook must be
    idempotent: a re-run after a crash calls it again."""
    summaries: dict[str, Any] = {}
    for step in plan.post_build:
        records, summaries[step.name] = step.after_build(out, records)
    return records, summaries


def check_not_empty(manifest: Manifest, out: Path) -> None:
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
    out = Path(out_dir)
    plan = compile_plan(recipe)
    partitions = plan.source.partitions()
    planned = PlanRecord(recipe=recipe.to_dict(), partitions=[plan.source.label(p) for p in partitions],
                         limit=limit, quotas=_quotas(plan.source, partitions, limit), schema_version=SCHEMA_VERSION)
    manifest = None if overwrite else _finished(out, planned)
    if manifest is None:
        manifest = _build_locked(plan, out, planned, partitions, overwrite, progress, on_partition,
                                 _RunPolicy(executor, workers, ray_address, strict, max_error_rate, allow_empty))
    if not allow_empty:
        check_not_empty(manifest, out)
    return manifest


def build_recipe(name_or_path: str | Path, out_dir: str | Path | None = None, *,
                 options: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = (),
                 **run: Any) -> tuple[Manifest, Path]:
    """`x2i build` and `x2i import`: a shipped recipe (by name) or a recipe file, with command-line changes applied
    the one way they are applied (`resolve_recipe`: options, then `--set`), built into `out_dir` (default
    out/<recipe name>). `run`: build()'s keywords. Config errors name the recipe file. Returns (manifest, out)."""
    recipe, where = resolve_recipe(name_or_path, options, sets)
    out = Path(out_dir) if out_dir is not None else Path("out") / recipe.name
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


def _build_locked(plan: Plan, out: Path, planned: PlanRecord, partitions: list[Any], overwrite: bool,
                  progress: bool, on_partition, run: _RunPolicy) -> Manifest:
    labels = planned.partitions
    with storage_errors(out):
        if _is_foreign(out):  # checked before the lock too, so a stranger's folder never gets a lock file
            raise _foreign_error(out)
    try:
        with BuildLock(out) as lock:
            _prepare_out(out, planned, overwrite)
            jobs = [PartitionJob(plan, i, p, labels[i], planned.quotas[i], str(out), run.strict, run.max_error_rate,
                                 lock.guard)
                    for i, p in enumerate(partitions) if not record_path(out, i).exists()]
            _run_jobs(jobs, len(partitions), plan.recipe.name, run, progress, on_partition, lock.guard)
            records, post_build = run_post_build(plan, out, read_records(out, len(partitions)))
            return assemble_manifest(out, planned, plan.source.describe(), plan.notes(), records, post_build,
                                     policy=Policy(run.max_error_rate, run.allow_empty))
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
