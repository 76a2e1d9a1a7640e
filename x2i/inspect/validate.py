"""`x2i validate`: check a dataset against the schema and its own manifest, row by row.

Checks, each reported with file, row index and id:
- file level: the Parquet schema (columns, types), the `huggingface` features metadata, the x2i schema version,
  row groups of at most 100 rows;
- row level: non-empty id and task, ids unique across the dataset, instruction placeholders agree with the
  input images (numbered 1..N in order, no stray tags), every image present and decodable, width/height equal
  to the decoded output size and multiples of `multiple`, meta valid JSON, quality scores finite or null;
- manifest level (when manifest.json exists): every listed shard exists with the recorded rows and sha256, no
  unlisted shard, per-task row counts agree.

Completeness: a folder holding an x2i build (`_progress/plan.json`) without manifest.json is an unfinished build
and fails without checking rows, as does a manifest that disagrees with the shards on disk, each with one line
saying how to go on (resume the build, or `partial=True` / `x2i validate --partial` to check what is there).
A finished build whose manifest records 0 rows (every record rejected) is valid. Rejects ledgers (rejects/)
and other folders x2i writes beside the data are never checked as data shards.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from x2i.core.imageio import DEFAULT_MAX_PIXELS, ImageError, decode
from x2i.core.prompt import problems
from x2i.core.schema import ARROW_SCHEMA, HF_FEATURES, SCHEMA_VERSION, schema_version_of
from x2i.engine.manifest import (MANIFEST, PROGRESS, Manifest, ManifestError, manifest_path, plan_path, read_manifest,
                                 read_plan)
from x2i.engine.shards import file_sha256, shard_files

MAX_ROWS_PER_GROUP = 100


@dataclass
class Problem:
    file: str
    row: int | None  # None: a file- or manifest-level problem
    id: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}{f' (id {self.id})' if self.id else ''}: {self.message}"


@dataclass
class Report:
    files: int = 0
    rows: int = 0
    images: int = 0
    problems: list[Problem] = field(default_factory=list)
    incomplete: str | None = None  # why this is not a finished build, and how to go on (fails validation)
    note: str | None = None  # what was checked, when not a whole finished build (partial, empty build)

    @property
    def ok(self) -> bool:
        return not self.problems and self.incomplete is None

    def summary(self) -> str:
        if self.incomplete is not None:
            return f"FAILED: {self.incomplete}"
        status = "OK" if self.ok else f"FAILED with {len(self.problems)} problem(s)"
        note = f" ({self.note})" if self.note else ""
        return f"{status}{note}: {self.files} file(s), {self.rows} row(s), {self.images} image(s) checked"


# What to do about a build that is not finished (or no longer matches its manifest).
HOW_TO_GO_ON = ("resume it by re-running the same `x2i build` command, or check the shards present with "
                "`x2i validate --partial`")


def data_shards(root: Path) -> list[Path]:
    """The data shards of a dataset folder (or the single file given). Without a data/ folder (a zero-row build,
    a plain folder of Parquet files) shard_files searches the whole folder, which would take the rejects
    ledgers and the build's own folders (_progress, a _hub stage) for data."""
    root = Path(root)
    if root.is_file():
        return [root]
    return [f for f in shard_files(root, split=None)  # every split: a holdout's test/ shards are data too
            if not (f.relative_to(root).parts[0] == "rejects" or f.relative_to(root).parts[0][0] in "_.")]


def build_progress(root: Path) -> tuple[int, int | None] | None:
    """(partitions done, partitions planned or None if unreadable) of an x2i build folder; None when `root`
    holds no x2i build (no _progress/plan.json)."""
    if not plan_path(root).is_file():
        return None
    done = len(list((root / PROGRESS).glob("part-*.json")))
    try:
        planned = len(read_plan(root).partitions)
    except ManifestError:
        planned = None  # a damaged plan still marks an unfinished build; only the count is unknown
    return done, planned


def _check_schema(path: Path, rel: str, report: Report) -> bool:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        report.problems.append(Problem(rel, None, None, f"not a readable parquet file: {exc}"))
        return False
    schema = pf.schema_arrow
    missing = [n for n in ARROW_SCHEMA.names if n not in schema.names]
    extra = [n for n in schema.names if n not in ARROW_SCHEMA.names]
    if missing or extra:
        report.problems.append(Problem(rel, None, None, f"columns differ from schema v{SCHEMA_VERSION}: "
                                                        f"missing {missing}, unexpected {extra}"))
        return False
    for f in ARROW_SCHEMA:
        if not schema.field(f.name).type.equals(f.type):
            report.problems.append(Problem(rel, None, None, f"column {f.name} has type {schema.field(f.name).type}, "
                                                            f"expected {f.type}"))
    meta = schema.metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        if features != HF_FEATURES:
            report.problems.append(Problem(rel, None, None, "huggingface features metadata differs from the schema"))
    except (KeyError, ValueError, TypeError):
        report.problems.append(Problem(rel, None, None, "no huggingface features metadata (images would not decode)"))
    version = schema_version_of(schema)
    if version != SCHEMA_VERSION:
        report.problems.append(Problem(rel, None, None, f"x2i schema version {version}, expected {SCHEMA_VERSION}"))
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if n > MAX_ROWS_PER_GROUP:
            report.problems.append(Problem(rel, None, None, f"row group {g} has {n} rows (> {MAX_ROWS_PER_GROUP})"))
    return True


class DecodeCache:
    """What checking an image found (problem, size), by the sha256 of its bytes: an image shared by many rows
    (an entity crop in several subject samples, one photo behind many edits) is decoded once. Bounded: at most
    `max_entries` small results (no pixels are kept), least recently used dropped first; validate starts a
    fresh one per shard, since row groups are written in order and sharing is local to a shard."""

    def __init__(self, max_entries: int = 65536):
        self.max_entries = max_entries
        self.results: OrderedDict[bytes, tuple[str | None, tuple[int, int] | None]] = OrderedDict()
        self.decodes = 0

    def check(self, data: bytes, decode_images: bool) -> tuple[str | None, tuple[int, int] | None]:
        """(problem with `{what}` left to fill, size): the cached verdict of these exact bytes."""
        key = hashlib.sha256(data).digest()
        found = self.results.get(key)
        if found is not None:
            self.results.move_to_end(key)
            return found
        self.decodes += 1
        found = _inspect(data, decode_images)
        self.results[key] = found
        if len(self.results) > self.max_entries:
            self.results.popitem(last=False)
        return found


def _inspect(data: bytes, decode_images: bool) -> tuple[str | None, tuple[int, int] | None]:
    if not decode_images:
        try:
            with Image.open(io.BytesIO(data)) as im:
                return None, im.size
        except MemoryError:  # the machine, not the row
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on garbage headers; each is a row problem
            return f"{{what}} has an unreadable header: {exc}", None
    try:
        return None, decode(data, DEFAULT_MAX_PIXELS).size
    except ImageError as exc:
        return f"{{what}} does not decode ({exc.reason}: {exc})", None


def _image_problem(struct: Any, what: str, decode_images: bool,
                   cache: DecodeCache | None = None) -> tuple[str | None, tuple[int, int] | None]:
    if not isinstance(struct, dict) or not struct.get("bytes"):
        return f"{what} is missing", None
    data = struct["bytes"]
    msg, size = (cache or DecodeCache()).check(data, decode_images)
    return (None if msg is None else msg.replace("{what}", what, 1)), size


def _check_row(row: dict[str, Any], rel: str, index: int, seen: dict[str, str], report: Report,
               multiple: int, decode_images: bool, cache: DecodeCache | None = None) -> None:
    rid = row.get("id") or None
    add = lambda msg: report.problems.append(Problem(rel, index, rid, msg))  # noqa: E731
    if not rid:
        add("empty id")
    elif rid in seen:
        add(f"duplicate id (first seen in {seen[rid]})")
    else:
        seen[rid] = f"{rel} row {index}"
    if not row.get("task"):
        add("empty task")
    inputs = row.get("input_images") or []
    for msg in problems(row.get("instruction") or "", len(inputs)):
        add(f"instruction: {msg}")
    msg, size = _image_problem(row.get("output_image"), "output_image", decode_images, cache)
    report.images += 1
    if msg:
        add(msg)
    elif size is not None:
        if (row.get("width"), row.get("height")) != size:
            add(f"width/height {row.get('width')}x{row.get('height')} but output image is {size[0]}x{size[1]}")
        if multiple > 1 and (size[0] % multiple or size[1] % multiple):
            add(f"output size {size[0]}x{size[1]} is not a multiple of {multiple}")
    for k, struct in enumerate(inputs, 1):
        report.images += 1
        msg, _ = _image_problem(struct, f"input image {k}", decode_images, cache)
        if msg:
            add(msg)
    try:
        if not isinstance(json.loads(row.get("meta") or "null"), dict):
            add("meta is not a JSON object")
    except ValueError as exc:
        add(f"meta is not valid JSON: {exc}")
    for col in ("aesthetic", "clip_score"):
        v = row.get(col)
        if v is not None and not math.isfinite(v):
            add(f"{col} is {v}")


def _check_manifest(root: Path, files: list[Path], report: Report) -> Manifest | None:
    try:
        manifest = read_manifest(root)
    except ManifestError as exc:
        report.problems.append(Problem(MANIFEST, None, None, exc.problem))
        return None
    listed = {s.path: s for s in manifest.shards}
    on_disk = {str(p.relative_to(root)) for p in files}
    for rel in sorted(on_disk - set(listed)):
        report.problems.append(Problem(rel, None, None, "shard not listed in manifest.json"))
    task_rows: dict[str, int] = {}
    for rel, info in sorted(listed.items()):
        task_rows[info.task] = task_rows.get(info.task, 0) + info.rows
        p = root / rel
        if rel not in on_disk:
            report.problems.append(Problem(rel, None, None, "listed in manifest.json but missing"))
            continue
        rows = pq.ParquetFile(p).metadata.num_rows
        if rows != info.rows:
            report.problems.append(Problem(rel, None, None, f"{rows} rows, manifest says {info.rows}"))
        if file_sha256(p) != info.sha256:
            report.problems.append(Problem(rel, None, None, "sha256 differs from manifest.json"))
    for task, totals in manifest.tasks.items():
        if task_rows.get(task, 0) != totals.rows:
            report.problems.append(Problem(MANIFEST, None, None,
                                           f"task {task}: shards hold {task_rows.get(task, 0)} rows, tasks says {totals.rows}"))
    return manifest


def _completeness(root: Path, files: list[Path], report: Report, partial: bool) -> Manifest | None:
    """Manifest and build-progress checks of a dataset folder; returns the manifest when there is one."""
    progress = build_progress(root)
    if partial:
        if progress is not None:
            done, planned = progress
            report.note = f"partial: {done} of {planned if planned is not None else '?'} partitions done"
        else:
            report.note = "partial: manifest not checked"
        return None
    if manifest_path(root).exists():
        before = len(report.problems)
        manifest = _check_manifest(root, files, report)
        if len(report.problems) > before:
            count = len(report.problems) - before
            report.incomplete = (f"{root}: the shards on disk do not match manifest.json ({count} problem(s) "
                                 f"above; an interrupted re-run or files changed since the build): {HOW_TO_GO_ON}")
        return manifest
    if progress is not None:
        done, planned = progress
        report.incomplete = (f"{root} is an unfinished build: no manifest.json ({done} of "
                             f"{planned if planned is not None else '?'} partitions done); {HOW_TO_GO_ON}")
    return None


def validate(path: str | Path, multiple: int = 16, decode_images: bool = True, max_problems: int = 10_000,
             progress: bool = False, partial: bool = False) -> Report:
    """Validate a dataset folder (an x2i build with manifest.json, or a plain folder of shards) or a single
    Parquet file. `partial`: check the shards present in a build folder without requiring its manifest."""
    root = Path(path)
    report = Report()
    if not root.exists():
        report.problems.append(Problem(str(root), None, None, "no such file or directory"))
        return report
    files = data_shards(root)
    base = root if root.is_dir() else root.parent
    manifest = _completeness(root, files, report, partial) if root.is_dir() else None
    if report.incomplete is not None and not report.problems:
        return report  # no manifest: nothing to check the rows against, and the fix is to finish the build
    if not files:
        if manifest is not None and manifest.rows == 0:
            report.note = (f"0 rows: an empty build, {manifest.rejects_total} source record(s) rejected"
                           + (" (ledgers in rejects/)" if manifest.rejects_files else ""))
            return report
        report.problems.append(Problem(str(root), None, None, "no parquet shards found"))
        return report
    seen: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(pq.ParquetFile(f).metadata.num_rows for f in files), unit="row", desc="validate")
    for f in files:
        rel = str(f.relative_to(base))
        report.files += 1
        if not _check_schema(f, rel, report):
            continue
        pf = pq.ParquetFile(f)
        index = 0
        cache = DecodeCache()
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                _check_row(row, rel, index, seen, report, multiple, decode_images, cache)
                index += 1
                report.rows += 1
            if bar is not None:
                bar.update(batch.num_rows)
            if len(report.problems) >= max_problems:
                report.problems.append(Problem(rel, None, None, f"stopped after {max_problems} problems"))
                return report
    if bar is not None:
        bar.close()
    return report


def require_valid(path: str | Path, decode_images: bool = True, action: str = "publish",
                  log: Any = None, shown: int = 20) -> Manifest | None:
    """Validate a dataset folder before `action` (publishing, ...) with its recipe's size multiple; return its
    manifest (None without one). Raise X2IError when it fails, after passing the first `shown` problems to
    `log` (e.g. a print to stderr): an unfinished or broken build must never be published."""
    from x2i.core.errors import X2IError

    root = Path(path)
    manifest = None
    if manifest_path(root).exists():
        try:
            manifest = read_manifest(root)
        except ManifestError:
            pass  # validate() reports the unreadable manifest as a problem, and so refuses below
    multiple = manifest.output_multiple() if manifest is not None else 16
    report = validate(root, multiple=multiple, decode_images=decode_images)
    if not report.ok:
        for problem in report.problems[:shown] if log is not None else []:
            log(str(problem))
        if log is not None and len(report.problems) > shown:
            log(f"... and {len(report.problems) - shown} more (x2i validate {root})")
        raise X2IError(f"{root} fails validation ({report.summary()}); refusing to {action}")
    return manifest
