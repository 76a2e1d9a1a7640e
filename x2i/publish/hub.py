"""`x2i publish`: lay a built dataset out as a Hugging Face Hub dataset repo and upload it.

Two halves, so `--dry-run` produces exactly what would be uploaded:

1. `stage(dataset, out)` writes the repo folder locally:
       data/<task>/train-<k>-of-<n>.parquet   one folder per task (tasks with a slash nest), shards of ~500 MB
       README.md                              the dataset card (YAML configs + dataset_info, provenance)
   Built shards are hard-linked (or copied) when they are already Hub-sized; runs of small shards of one task
   are merged into one file, streaming a row group at a time (row groups stay <= 100 rows, which the Hub's
   dataset viewer needs for image data). A record of what was staged lets a re-run skip the work.
2. `upload(staged, repo_id, api)` sends it in batched commits (< 100 files each, the Hub's limit), skipping files
   the remote already has with the same content. Every commit is atomic on the Hub, so an interrupted upload is
   resumed by running the same command again. Data goes first, stale `data/` files are removed next, and the card
   comes last, so the configs it declares only appear once their files are there.

Task -> config mapping: see `config_names` (one config per task family, plus `default` covering every task).
The token comes from huggingface_hub's own resolution (HF_TOKEN, the login file); it is handed to `HfApi` and
never printed or written.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.errors import X2IError
from x2i.core.schema import SCHEMA
from x2i.engine.manifest import Manifest
from x2i.engine.shard_format import images_compressed, open_shard_writer
from x2i.engine.shards import TMP_PREFIX, atomic_write_bytes, file_sha256, fsync_dir, shard_files

STAGE_RECORD = ".x2i-stage.json"
CARD = "README.md"
MAX_FILES_PER_COMMIT = 99  # the Hub refuses commits of 100 files or more
MAX_FILES_PER_FOLDER = 9_999  # and folders of 10k files or more
ROW_GROUP_BYTES = 64 << 20  # the same byte cap the shard writer uses per row group

_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9_./-]")
_UNSAFE_CONFIG_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class PublishConfig:
    repo_id: str
    private: bool = False
    revision: str | None = None  # a branch; None: the repo's default branch (main)
    license: str = "other"  # the card's `license:` (a Hub licence id); per-row licences are listed in the card
    pretty_name: str | None = None
    target_shard_bytes: int = 500 << 20  # Hub-friendly shard size; small built shards are merged up to it
    rows_per_group: int = 100
    files_per_commit: int = 50
    endpoint: str | None = None  # None: huggingface_hub's default ($HF_ENDPOINT or huggingface.co)


@dataclass
class StagedFile:
    path: str  # relative to the staged folder, POSIX separators (= path in the repo)
    bytes: int
    sha256: str
    rows: int = 0
    task: str | None = None  # None for the card


@dataclass
class Staged:
    root: Path
    files: list[StagedFile]
    configs: dict[str, list[str]]  # config name -> tasks it covers
    tasks: dict[str, int] = field(default_factory=dict)  # task -> rows


# ---------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------

def check_repo_id(repo_id: str) -> str:
    """`ORG/NAME` with the Hub's rules for each part; raises X2IError naming the problem."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    bad = (len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts)
           or any("--" in p or ".." in p for p in parts) or parts[1].endswith(".git"))
    if bad:
        raise X2IError(f"malformed repo id {repo_id!r}: expected ORG/NAME, each part 1-96 characters of letters, "
                       "digits, '-', '_' or '.', not starting or ending with '-' or '.', without '--' or '..'")
    return repo_id


def task_family(task: str) -> str:
    """`vision/canny` -> `vision`; a task without a slash is its own family."""
    return task.split("/", 1)[0]


def hub_task_dir(task: str) -> str:
    """The task's folder under data/: the task name, nesting at '/', other unsafe characters as '_'."""
    parts = [p for p in task.split("/") if p not in ("", ".", "..")]
    return "/".join(_UNSAFE_PATH_CHARS.sub("_", p) for p in parts) or "_"


def config_names(tasks: list[str]) -> dict[str, list[str]]:
    """Config name -> the tasks it covers: `default` (every task) plus one per task family.

    A family's config name is the family with characters other than letters, digits, '_', '.', '-' replaced by
    '_' (config names become folder names in `datasets`' cache, so '/' and the like are not allowed); a family
    called `default` becomes `default_family`; should two families still collide, later ones get `_2`, `_3`...
    """
    configs: dict[str, list[str]] = {"default": sorted(tasks)}
    families: dict[str, list[str]] = {}
    for task in sorted(tasks):
        families.setdefault(task_family(task), []).append(task)
    for family, members in sorted(families.items()):
        base = _UNSAFE_CONFIG_CHARS.sub("_", family).strip("._-") or "family"
        base = "default_family" if base == "default" else base
        name, k = base, 1
        while name in configs:
            k += 1
            name = f"{base}_{k}"
        configs[name] = members
    return configs


def git_blob_sha1(path: Path) -> str:
    """Git's object id of a file (what the Hub reports for files stored in git rather than LFS)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------------------------

def _plan(dataset: Path, cfg: PublishConfig) -> dict[str, list[dict[str, Any]]]:
    """Output file -> the built shards (in order) it is made of; zero-row shards are left out."""
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (task, split) -> its shards
    for split, path in [(s, p) for s in ("train", "test") for p in shard_files(dataset, s)]:
        md = pq.ParquetFile(path).metadata
        if md.num_rows == 0:
            continue  # a task whose shards hold no rows gets no files and so no config
        names = pq.read_table(path, columns=["task"]).column("task").unique().to_pylist()
        if len(names) != 1:
            raise X2IError(f"{path}: a shard should hold one task, this one holds {names}")
        task = names[0]
        st = path.stat()
        by_task.setdefault((task, split), []).append({"path": str(path.relative_to(dataset)), "rows": md.num_rows,
                                                      "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    plan: dict[str, list[dict[str, Any]]] = {}
    folders: dict[str, str] = {}
    for (task, split), shards in sorted(by_task.items()):
        folder = hub_task_dir(task)
        if folders.get(folder, task) != task:
            raise X2IError(f"tasks {folders[folder]!r} and {task!r} would share the folder data/{folder}")
        folders[folder] = task
        groups: list[list[dict[str, Any]]] = []
        for shard in shards:  # greedy: consecutive shards while the group stays within the target size
            if groups and sum(s["bytes"] for s in groups[-1]) + shard["bytes"] <= cfg.target_shard_bytes:
                groups[-1].append(shard)
            else:
                groups.append([shard])
        if len(groups) > MAX_FILES_PER_FOLDER:
            raise X2IError(f"task {task} would need {len(groups)} files in one folder (the Hub allows "
                           f"{MAX_FILES_PER_FOLDER}); raise the shard size")
        for k, group in enumerate(groups):
            # `<split>-NNNNN-of-NNNNN.parquet`: the split is in the name, as the Hub's own layout has it.
            plan[f"data/{folder}/{split}-{k:05d}-of-{len(groups):05d}.parquet"] = [{"task": task, **s} for s in group]
    return plan


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(TMP_PREFIX + dst.name)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # built shards are never modified in place, so sharing the inode is safe
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _merge(sources: list[Path], dst: Path, rows_per_group: int) -> None:
    """Concatenate shards into one file, a row group at a time; output row groups hold <= rows_per_group rows."""
    tmp = dst.with_name(TMP_PREFIX + dst.name)
    writer = open_shard_writer(tmp, all(images_compressed(pq.ParquetFile(src)) for src in sources))
    pending: list[pa.Table] = []

    def flush(final: bool) -> None:
        nonlocal pending
        table = pa.concat_tables(pending) if pending else None
        pending = []
        while table is not None and table.num_rows:
            n = min(rows_per_group, table.num_rows)
            if not final and n < rows_per_group and table.nbytes < ROW_GROUP_BYTES:
                pending = [table]  # not a full group yet: wait for more rows
                return
            writer.write_table(table.slice(0, n), row_group_size=n)
            table = table.slice(n)

    try:
        for src in sources:
            pf = pq.ParquetFile(src)
            for g in range(pf.num_row_groups):
                pending.append(pf.read_row_group(g).replace_schema_metadata(SCHEMA.metadata))
                if sum(t.num_rows for t in pending) >= rows_per_group or sum(t.nbytes for t in pending) >= ROW_GROUP_BYTES:
                    flush(final=False)
        flush(final=True)
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _prepare_stage_dir(out: Path) -> dict[str, Any] | None:
    """The previous stage record, if `out` is a staging folder of ours; refuse to write into anything else."""
    record = out / STAGE_RECORD
    if record.exists():
        try:
            return json.loads(record.read_text())
        except ValueError:
            return None
    if out.exists() and any(out.iterdir()):
        raise X2IError(f"{out} exists, is not empty and is not an x2i staging folder; choose another --stage")
    return None


def stage(dataset: str | Path, out: str | Path, cfg: PublishConfig, *, manifest: Manifest | None = None,
          log=lambda msg: None) -> Staged:
    """Write the Hub repo folder for `dataset` into `out` (data files + README.md); see the module docstring."""
    from x2i.publish.card import render_card  # the card reads the staged files

    dataset, out = Path(dataset), Path(out)
    plan = _plan(dataset, cfg)
    if not plan:
        raise X2IError(f"{dataset}: no rows to publish")
    key = hashlib.sha256(json.dumps([plan, cfg.rows_per_group], sort_keys=True).encode()).hexdigest()
    previous = _prepare_stage_dir(out)
    files: list[StagedFile] = []
    if previous and previous.get("key") == key and all((out / f["path"]).exists() for f in previous["files"]):
        files = [StagedFile(**f) for f in previous["files"]]
        log(f"staged data in {out} is up to date ({len(files)} file(s))")
    else:
        # Mark the folder as ours (with no valid data) first: a staging run that dies half-way can be re-run.
        atomic_write_bytes(out / STAGE_RECORD, json.dumps({"key": None, "files": []}).encode())
        if (out / "data").exists():
            shutil.rmtree(out / "data")
        for rel, group in plan.items():
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            sources = [dataset / s["path"] for s in group]
            if len(sources) == 1:
                _link_or_copy(sources[0], dst)
            else:
                log(f"merging {len(sources)} shards into {rel}")
                _merge(sources, dst, cfg.rows_per_group)
            files.append(StagedFile(rel, dst.stat().st_size, file_sha256(dst), sum(s["rows"] for s in group),
                                    group[0]["task"]))
        for folder in {(out / f.path).parent for f in files}:
            fsync_dir(folder)
    tasks: Counter = Counter()
    for f in files:
        tasks[f.task] += f.rows
    configs = config_names(sorted(tasks))
    atomic_write_bytes(out / STAGE_RECORD, json.dumps(
        {"key": key, "dataset": str(dataset.resolve()), "files": [asdict(f) for f in files]}, indent=1).encode())
    staged = Staged(out, list(files), configs, dict(sorted(tasks.items())))
    card = render_card(dataset, staged, cfg, manifest)  # always rewritten: cheap, and options may differ
    atomic_write_bytes(out / CARD, card.encode("utf-8"))
    staged.files.append(StagedFile(CARD, (out / CARD).stat().st_size, file_sha256(out / CARD)))
    return staged


# ---------------------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class UploadResult:
    commits: list[str]  # commit messages, in order
    uploaded: list[str]  # paths sent
    skipped: list[str]  # paths the remote already had with the same content
    deleted: list[str]  # stale remote data files removed
    url: str = ""  # the dataset's page


def _same(remote: Any, local: StagedFile, root: Path) -> bool:
    if remote is None or getattr(remote, "size", None) != local.bytes:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return lfs.sha256 == local.sha256
    return getattr(remote, "blob_id", None) == git_blob_sha1(root / local.path)


def _batches(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def upload(staged: Staged, api: Any, cfg: PublishConfig, log=lambda msg: None) -> UploadResult:
    """Create the repo (and branch) if needed and commit the staged files in batches; resumable (re-run it)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    per_commit = max(1, min(cfg.files_per_commit, MAX_FILES_PER_COMMIT))
    # private=None (not False) when not asked for: an organisation whose repos default to private keeps that default.
    api.create_repo(cfg.repo_id, repo_type="dataset", private=True if cfg.private else None, exist_ok=True)
    if cfg.revision and cfg.revision != "main":
        api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True)
    remote = {f.path: f for f in api.list_repo_tree(cfg.repo_id, repo_type="dataset", revision=cfg.revision,
                                                    recursive=True) if hasattr(f, "blob_id")}
    local = {f.path for f in staged.files}
    todo, skipped = [], []
    for f in staged.files:
        (skipped if _same(remote.get(f.path), f, staged.root) else todo).append(f)
    data = [f for f in todo if f.path != CARD]
    card = [f for f in todo if f.path == CARD]
    # Files under data/ that this publish does not contain would still match the configs' globs: remove them.
    stale = sorted(p for p in remote if p.startswith("data/") and p not in local)
    result = UploadResult([], [], [f.path for f in skipped], [], f"{api.endpoint}/datasets/{cfg.repo_id}"
                          + (f"/tree/{cfg.revision}" if cfg.revision else ""))
    if skipped:
        log(f"{len(skipped)} file(s) already on the Hub with the same content: skipped")

    def commit(ops: list, message: str) -> None:
        api.create_commit(cfg.repo_id, repo_type="dataset", revision=cfg.revision, operations=ops,
                          commit_message=message)
        result.commits.append(message)
        log(message)

    batches = _batches(data, per_commit)
    for i, batch in enumerate(batches, 1):
        commit([CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(staged.root / f.path)) for f in batch],
               f"x2i publish: add {len(batch)} data file(s) ({i}/{len(batches)})")
        result.uploaded += [f.path for f in batch]
    for batch in _batches(stale, per_commit):
        commit([CommitOperationDelete(path_in_repo=p) for p in batch],
               f"x2i publish: remove {len(batch)} data file(s) not in this version")
        result.deleted += batch
    if card:
        commit([CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=str(staged.root / CARD))],
               "x2i publish: dataset card")
        result.uploaded.append(CARD)
    return result


def resolve_token() -> str:
    """The token from huggingface_hub's usual sources, or a clear error (the token itself is never shown)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise X2IError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` "
                       "(nothing was uploaded)")
    return token


def hub_api(cfg: PublishConfig, token: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=cfg.endpoint, token=token) if cfg.endpoint else HfApi(token=token)


def redact(text: str, secret: str | None) -> str:
    """Error text with the token cut out, in case a library ever echoes it."""
    return text.replace(secret, "***") if secret else text
