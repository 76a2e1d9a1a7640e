"""Helpers shared by the object-storage tests (tests/engine/test_object_storage.py on s3://,
tests/engine/test_hf_storage.py on hf://): sources laid out the way x2i reads them, and what a build or a
failed command is compared on."""
from __future__ import annotations

import hashlib
from pathlib import Path


def one_error_line(result) -> str:
    """A CliRunner result that failed as x2i fails on a user or infrastructure error: exit 2, one line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("x2i: error: "), result.output
    return lines[0]


def parquet_shards(tars: Path, dest: Path) -> None:
    """img2dataset's `--output_format parquet` layout made from the embedded webdataset shards: one parquet per
    shard, its sidecar's columns plus the image in a `jpg` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from x2i.sources import img2dataset as i2d

    dest.mkdir()
    for tar in sorted(tars.glob("*.tar")):
        sidecar = tar.with_suffix(".parquet")
        schema = pq.read_schema(sidecar).append(pa.field("jpg", pa.binary()))
        rows = [{**{k: r.meta.get(k) for k in schema.names}, "jpg": r.image}
                for r in i2d.iter_records(i2d.Shard(str(tar), "tar", str(sidecar))) if r.meta.get("key") is not None]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), dest / sidecar.name, row_group_size=8)


def data_hashes(out: Path) -> dict[str, str]:
    """sha256 of every data shard of a local build, by path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "data").rglob("*.parquet"))}
