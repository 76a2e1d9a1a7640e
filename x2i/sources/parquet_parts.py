"""Splitting one big Parquet file into several build partitions, so one huge file is not one huge task.

A file of at most `rows_per_partition` rows stays one partition, described exactly as before splitting existed
(so the plans of builds of small files, the embedded samples among them, are unchanged). A bigger file becomes
consecutive row spans: whole row groups packed up to `rows_per_partition` rows, and a row group bigger than that
cut into pieces of `rows_per_partition` rows. Spans depend only on the file's row-group layout and the option, so
labels (`<file>[start:stop]`) are stable; rows are numbered in the file, so keys built from row numbers, and the
`--limit` quotas (the first N rows in partition order), are the same split or not.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from x2i.core.errors import X2IError
from x2i.sources.files import UriPath, parquet_file, read_schema, read_table, relative

# A few thousand rows: minutes of work per task at most, far above the embedded samples' files (<= 50 rows).
DEFAULT_ROWS_PER_PARTITION = 2000


@dataclass(frozen=True)
class RowSpan:
    """Rows [start, stop) of one Parquet file: a partition of a file too big to be one."""

    path: str
    start: int
    stop: int


def check_rows_per_partition(value: Any, where: str = "source.options.rows_per_partition") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise X2IError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def spans(path: str | Path, rows_per_partition: int) -> list[tuple[int, int]]:
    """The (start, stop) row spans `path` splits into; [(0, rows)] when it is small enough to stay whole."""
    meta = parquet_file(path).metadata
    if meta.num_rows <= rows_per_partition:
        return [(0, meta.num_rows)]
    out: list[tuple[int, int]] = []
    start = offset = 0
    for rg in range(meta.num_row_groups):
        size = meta.row_group(rg).num_rows
        if offset + size - start > rows_per_partition and offset > start:
            out.append((start, offset))  # this group would overflow the span: close it before the group
            start = offset
        offset += size
        while offset - start > rows_per_partition:  # a group bigger than a partition: cut it
            out.append((start, start + rows_per_partition))
            start += rows_per_partition
    if offset > start:
        out.append((start, offset))
    return out


def align(cuts: list[tuple[int, int]], keys: Sequence[Any]) -> list[tuple[int, int]]:
    """Move every cut forward to the next row whose key differs from the row before, so rows sharing a key
    (a MagicBrush session's turns) stay in one partition; spans left empty are dropped."""
    bounds = [start for start, _ in cuts[1:]]
    moved = []
    for b in bounds:
        b = max(b, moved[-1] if moved else 0)  # a session longer than a span may swallow the next cut
        while 0 < b < len(keys) and keys[b] == keys[b - 1]:
            b += 1
        moved.append(b)
    edges = [0] + moved + [cuts[-1][1] if cuts else 0]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def split_file(path: str, rows_per_partition: int, keys_column: str | None = None) -> list[str | RowSpan]:
    """`path` itself when it stays one partition, else its RowSpans (aligned on `keys_column` if given)."""
    cuts = spans(path, rows_per_partition)
    if len(cuts) == 1:
        return [path]
    if keys_column is not None and keys_column in read_schema(path).names:
        cuts = align(cuts, read_table(path, columns=[keys_column]).column(0).to_pylist())
        if len(cuts) == 1:
            return [path]
    return [RowSpan(path, a, b) for a, b in cuts]


def span_label(path: str, start: int, stop: int, root: Path | UriPath) -> str:
    return f"{relative(path, root)}[{start}:{stop}]"


def iter_span(pf: pq.ParquetFile, start: int, stop: int, batch_size: int,
              columns: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number in the file, row) for rows [start, stop), reading only the row groups that hold them."""
    meta = pf.metadata
    offset = 0
    for rg in range(meta.num_row_groups):
        first, offset = offset, offset + meta.row_group(rg).num_rows
        if offset <= start:
            continue
        if first >= stop:
            return
        pos = first
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[rg], columns=columns):
            lo, hi = max(start - pos, 0), min(stop - pos, batch.num_rows)
            if hi > lo:
                for i, row in enumerate(batch.slice(lo, hi - lo).to_pylist()):
                    yield pos + lo + i, row
            pos += batch.num_rows
            if pos >= stop:
                return
