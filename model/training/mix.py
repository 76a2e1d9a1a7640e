"""Training mixes: built datasets (their manifest.json) and the ratios to sample them in.

A mix YAML (`manifests/mix_*.yaml`, or any file):

    name: shapes
    seed: 0
    datasets:
      - {path: out/shapes-t2i/manifest.json, ratio: 0.8}
      - {path: out/shapes-edit, ratio: 0.2, tasks: [image_edit]}   # a folder means its manifest.json
    task_ratios: {}            # optional, e.g. OmniGen's later stage (below)
    verify: checksum           # checksum | size | none
    train: {}                  # optional: the TrainConfig settings this mix is meant for (CLI options win)

The mix is split into *streams*, one per (dataset, task). Each stream gets a probability:
- without `task_ratios`: P(dataset) = ratio / sum(ratios); inside a dataset, tasks in proportion to their rows;
- with `task_ratios` (keys: a task, a task family prefix such as `control` for `control/canny`, or `other` for
  every task no other key names): P(task key) = its ratio, renormalised over the keys the data has; inside a key,
  datasets by `ratio` and, within one dataset, tasks by rows. Keys with no data and tasks no key names are
  reported, never silently dropped.
OmniGen's later-stage mix: {text_to_image: 0.5, subject_driven: 0.2, control: 0.1, image_edit: 0.1, other: 0.1}.

Relative paths resolve against the current directory; a dataset may also be an object-store URI (s3://, gs://,
hf://: x2i/core/storage.py), whose shards the loader streams from the store. Everything is checked before training starts: a missing
manifest or shard is an error naming it, and a shard whose SHA-256 differs from its manifest is refused.
Verified checksums are remembered in `$X2I_CACHE/verified-shards.json` (keyed by path, size and mtime), so a
re-run does not hash terabytes again.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from x2i.core.config import ConfigError, from_dict, read_yaml
from x2i.core.errors import X2IError
from x2i.core.storage import Storage, check_target, is_uri
from x2i.engine.manifest import MANIFEST, Manifest, read_manifest
from x2i.engine.shards import file_sha256


@dataclass
class MixDataset:
    path: str  # a dataset folder or its manifest.json
    ratio: float = 1.0
    tasks: list[str] | None = None  # only these tasks of the dataset (None: all)
    name: str | None = None  # default: the manifest's name (made unique)


@dataclass
class MixConfig:
    datasets: list[MixDataset]
    name: str = "mix"
    seed: int = 0
    task_ratios: dict[str, float] = field(default_factory=dict)
    verify: Literal["checksum", "size", "none"] = "checksum"
    # Training settings this mix is meant to be trained with (TrainConfig keys); `x2i train` applies them
    # first, under --config, its options and --set.
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardRef:
    path: str  # absolute
    rows: int
    row_groups: list[int]  # rows per row group, from the Parquet footer


@dataclass
class Stream:
    """The rows of one task in one dataset: what the loader samples from with probability `weight`."""

    name: str  # "<dataset>:<task>"
    dataset: str
    task: str
    shards: list[ShardRef]
    weight: float
    group: str  # the task_ratios key it counts towards ("" without task_ratios)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def units(self) -> list[tuple[int, int, int]]:
        """(shard index, row group, rows) of every row group: the unit the loader reads and hands out."""
        return [(i, g, n) for i, s in enumerate(self.shards) for g, n in enumerate(s.row_groups) if n > 0]


@dataclass
class Mix:
    config: MixConfig
    streams: list[Stream]
    notes: list[str]  # what the ratios could not honour (missing task keys, unnamed tasks)

    def report(self) -> str:
        lines = [f"mix {self.config.name}: {len(self.streams)} stream(s), {sum(s.rows for s in self.streams)} rows"]
        for s in self.streams:
            lines.append(f"  {s.name:40s} {s.weight:7.3f}  ({s.rows} rows, {len(s.shards)} shard(s))")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def target_ratios(self) -> dict[str, float]:
        return {s.name: s.weight for s in self.streams}

    def fingerprint(self) -> str:
        """Identifies the data a loader position refers to: a resumed run must read the same streams."""
        blob = json.dumps([[s.name, s.weight, [[sh.path, sh.rows] for sh in s.shards]] for s in self.streams])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_mix_file(spec: str | Path) -> Path:
    """A mix YAML path, or the name of a shipped mix (`shapes` -> manifests/mix_shapes.yaml)."""
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    name = str(spec).replace("-", "_")
    name = name if name.startswith("mix_") else f"mix_{name}"
    packaged = resources.files("x2i.manifests") / f"{name}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    shipped = sorted(p.name[4:-5] for p in resources.files("x2i.manifests").iterdir()
                     if p.name.startswith("mix_") and p.name.endswith(".yaml"))
    raise X2IError(f"no mix file {spec!r} (and no shipped mix of that name; shipped: {shipped})")


def load_mix_config(spec: str | Path, overrides: dict[str, Any] | None = None) -> MixConfig:
    path = find_mix_file(spec)
    data = read_yaml(path)
    data.update(overrides or {})
    try:
        config = from_dict(MixConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not config.datasets:
        raise ConfigError(f"{path}: datasets: the mix names no dataset")
    for i, d in enumerate(config.datasets):
        if not d.ratio > 0:
            raise ConfigError(f"{path}: datasets[{i}].ratio must be > 0, got {d.ratio}")
    for key, value in config.task_ratios.items():
        if value < 0:
            raise ConfigError(f"{path}: task_ratios.{key} must be >= 0, got {value}")
    return config


# ---- shard checks -------------------------------------------------------------------------------------------

def _cache_file() -> Path:
    return Path(os.environ.get("X2I_CACHE") or Path.home() / ".cache" / "x2i") / "verified-shards.json"


def _verify_checksums(items: list[tuple[Path, str, str]], workers: int = 4) -> None:
    """Refuse any shard whose SHA-256 differs from its manifest (`items`: path, expected digest, manifest)."""
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}

    def key(p: Path) -> str:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    todo = [(p, want, m) for p, want, m in items if cache.get(key(p)) != want]
    with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        digests = list(pool.map(lambda item: item[0].sha256() if isinstance(item[0], _ObjectPath)
                                else file_sha256(item[0]), todo))
    for (p, want, manifest), got in zip(todo, digests):
        if got != want:
            raise X2IError(f"shard {p} does not match its manifest {manifest}: sha256 is {got[:16]}..., the "
                           f"manifest says {want[:16]}... (the file changed after the build); refusing to train "
                           "on it (rebuild the dataset, or fix the manifest if the change is intended)")
        cache[key(p)] = want
    if todo:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".tmp-{os.getpid()}-{cache_path.name}")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a cache we cannot write only costs time next run


class _ObjectPath:
    """A file on an object store with the few Path methods resolve_mix and the checksum cache use."""

    def __init__(self, store: Storage, rel: str = ""):
        self.store, self.rel = store, rel

    def __truediv__(self, rel: str) -> _ObjectPath:
        return _ObjectPath(self.store, f"{self.rel}/{rel}".strip("/"))

    def __str__(self) -> str:
        return self.store.uri_of(self.rel)

    @property
    def parent(self) -> _ObjectPath:
        return _ObjectPath(self.store, self.rel.rpartition("/")[0])

    @property
    def name(self) -> str:
        return str(self).rstrip("/").rsplit("/", 1)[-1]

    def resolve(self) -> _ObjectPath:
        return self

    def is_file(self) -> bool:
        return self.store.size(self.rel) is not None

    def stat(self):
        import types

        info = self.store.fs.get_file_info(self.store.path(self.rel))
        return types.SimpleNamespace(st_size=info.size, st_mtime_ns=info.mtime_ns or 0)

    def read_text(self) -> str:
        return self.store.read_bytes(self.rel).decode()

    def open_input(self):
        return self.store.open_input(self.rel)

    def sha256(self) -> str:
        return self.store.sha256(self.rel)


def _row_groups(path: Path | _ObjectPath) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path.open_input() if isinstance(path, _ObjectPath) else path).metadata
    except (OSError, pa.ArrowException) as exc:  # any unreadable footer is the same user problem
        raise X2IError(f"shard {path} is not a readable Parquet file: {exc}") from None
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _read_manifest(spec: str) -> tuple[Path | _ObjectPath, Manifest]:
    check_target(spec)
    if is_uri(spec):
        path = _ObjectPath(Storage.for_uri(spec.rstrip("/").removesuffix(f"/{MANIFEST}")), MANIFEST)
    else:
        path = Path(spec).expanduser()
        if path.is_dir() or path.suffix != ".json":
            path = path / MANIFEST
    if not path.is_file():
        raise X2IError(f"mix dataset manifest {path.resolve()} not found (build the dataset first, e.g. "
                       "`x2i build --task ... --out DIR`, and name DIR or DIR/manifest.json in the mix)")
    # ManifestError (an X2IError) names the file and the bad key; an object store's manifest is read through it.
    return path, read_manifest(path.store if isinstance(path, _ObjectPath) else path)


def _group_of(task: str, keys: list[str]) -> str | None:
    """The task_ratios key a task counts towards: itself, its longest family prefix, else `other`."""
    if task in keys:
        return task
    prefixes = [k for k in keys if task.startswith(k + "/")]
    if prefixes:
        return max(prefixes, key=len)
    return "other" if "other" in keys else None


def resolve_mix(config: MixConfig) -> Mix:
    """Check every manifest and shard, then split the mix into weighted streams."""
    per_dataset: list[tuple[MixDataset, str, dict[str, list[ShardRef]]]] = []
    to_hash: list[tuple[Path, str, str]] = []
    names: set[str] = set()
    for i, d in enumerate(config.datasets):
        manifest_path, manifest = _read_manifest(d.path)
        root = manifest_path.parent
        name = d.name or manifest.name or root.name
        if name in names:
            name = f"{name}#{i}"
        names.add(name)
        by_task: dict[str, list[ShardRef]] = {}
        for entry in manifest.shards:
            if d.tasks is not None and entry.task not in d.tasks:
                continue
            if entry.path.startswith("test/"):  # a holdout split (x2i build --holdout): never trained on
                continue
            shard = root / entry.path
            if not shard.is_file():
                raise X2IError(f"shard {shard} listed in {manifest_path} not found")
            if config.verify != "none" and shard.stat().st_size != entry.bytes:
                raise X2IError(f"shard {shard} is {shard.stat().st_size} bytes, its manifest {manifest_path} says "
                               f"{entry.bytes}: refusing to train on it (rebuild the dataset)")
            if config.verify == "checksum":
                to_hash.append((shard, entry.sha256, str(manifest_path)))
            groups = _row_groups(shard)
            if sum(groups) != entry.rows:
                raise X2IError(f"shard {shard} holds {sum(groups)} rows, its manifest {manifest_path} says "
                               f"{entry.rows}: refusing to train on it")
            by_task.setdefault(entry.task, []).append(ShardRef(str(shard.resolve()), entry.rows, groups))
        if d.tasks is not None:
            missing = sorted(set(d.tasks) - set(by_task))
            if missing:
                raise X2IError(f"{manifest_path}: no rows of task(s) {missing} named in the mix "
                               f"(the dataset has {sorted({e.task for e in manifest.shards})})")
        if not any(s.rows for shards in by_task.values() for s in shards):
            raise X2IError(f"{manifest_path}: the dataset has no rows to train on")
        per_dataset.append((d, name, by_task))
    if to_hash:
        _verify_checksums(to_hash)
    return _weigh(config, per_dataset)


def _weigh(config: MixConfig, per_dataset) -> Mix:
    notes: list[str] = []
    keys = list(config.task_ratios)
    raw: list[tuple[str, str, str, list[ShardRef], str, float]] = []  # name, dataset, task, shards, group, w
    for d, name, by_task in per_dataset:
        rows = {t: sum(s.rows for s in shards) for t, shards in by_task.items()}
        total = sum(rows.values())
        for task in sorted(by_task):
            if rows[task] == 0:
                continue
            group = _group_of(task, keys) if keys else ""
            if group is None:
                notes.append(f"{name}:{task} ({rows[task]} rows) matches no task_ratios key and there is no "
                             "`other` key: not sampled")
                continue
            raw.append((f"{name}:{task}", name, task, by_task[task], group, d.ratio * rows[task] / total))
    if keys:
        present = {g for *_, g, _ in raw}
        absent = [k for k in keys if k not in present]
        if absent:
            notes.append(f"task_ratios key(s) {absent} have no data in the mix: their share goes to the others")
        group_total = {g: sum(w for *_, gg, w in raw if gg == g) for g in present}
        key_total = sum(config.task_ratios[g] for g in present)
        if key_total <= 0:
            raise X2IError("task_ratios give every task present in the mix a ratio of 0")
        weights = [config.task_ratios[g] / key_total * w / group_total[g] for *_, g, w in raw]
    else:
        total = sum(w for *_, w in raw)
        weights = [w / total for *_, w in raw]
    streams = [Stream(n, ds, t, sh, w, g) for (n, ds, t, sh, g, _), w in zip(raw, weights) if w > 0]
    if not streams:
        raise X2IError("the mix leaves nothing to sample (every ratio is 0)")
    return Mix(config, streams, notes)


def load_mix(spec: str | Path, overrides: dict[str, Any] | None = None) -> Mix:
    return resolve_mix(load_mix_config(spec, overrides))
