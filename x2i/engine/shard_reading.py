"""Reading committed shards: which files a dataset folder holds (per split), and their rows, streamed."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from x2i.core.sample import Sample
from x2i.core.schema import row_to_sample

TMP_PREFIX = ".tmp-"
# Where each split's shards live: `data/<task>/` is what every reader has always loaded (train); a holdout
# (x2i/engine/holdout.py) goes to `test/<task>/`, so `data/**/*.parquet` never picks it up by accident.
SPLIT_ROOTS = {"train": "data", "test": "test"}


def shard_files(root: Path, split: str | None = "train") -> list[Path]:
    """Every committed shard of `split` under a dataset dir (None: every split; train lives in data/, a holdout
    in test/), or the single file given, in a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not (root / "data").is_dir() and not (root / "test").is_dir():
        return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(TMP_PREFIX))  # a bare folder
    splits = SPLIT_ROOTS if split is None else {split: SPLIT_ROOTS[split]}
    return [p for name in splits.values() if (root / name).is_dir()
            for p in sorted((root / name).rglob("*.parquet")) if not p.name.startswith(TMP_PREFIX)]


def iter_rows(path: Path, columns: list[str] | None = None, batch_rows: int = 64) -> Iterator[dict]:
    """Stream rows of one shard as dicts, a row group at a time (bounded memory)."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        yield from batch.to_pylist()


def iter_samples(root: Path) -> Iterator[Sample]:
    for path in shard_files(root):
        for row in iter_rows(path):
            yield row_to_sample(row)
