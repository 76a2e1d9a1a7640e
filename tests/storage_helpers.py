"""Helpers shared by the object-storage tests (tests/engine/test_object_storage.py on s3://,
tests/engine/test_hf_storage.py on hf://): sources laid out the way x2i reads them, what a build or a failed
command is compared on, and the short training run both stores are read by."""
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


def edit_set_builds_alike(fmt: str, roots: dict[str, str], tmp_path: Path) -> None:
    """`x2i build --task image-edit` of one edit set from each root ("local" and a store URI), in row spans of 8:
    the store's build has the local one's partitions (more than one), data shards and rejects."""
    from typer.testing import CliRunner

    from x2i.cli.main import app
    from x2i.engine.manifest import read_manifest

    for name, root in roots.items():
        result = CliRunner().invoke(app, ["build", "--task", "image-edit", "--format", fmt, "--source", root,
                                          "--set", "source.options.rows_per_partition=8", "--out",
                                          str(tmp_path / name), "-q"])
        assert result.exit_code == 0, result.output
    built = {name: read_manifest(tmp_path / name) for name in roots}
    local = built.pop("local")
    for name, remote in built.items():
        assert remote.rows > 0 and len(remote.partitions) > 1
        assert [p.label for p in remote.partitions] == [p.label for p in local.partitions]
        assert data_hashes(tmp_path / name) == data_hashes(tmp_path / "local")
        assert remote.rejects == local.rejects


def train_two_steps(mix: Path, out: Path):
    """`x2i train` of the tiny model for two steps on `mix`, small enough for CPU; the CliRunner result."""
    from typer.testing import CliRunner

    from x2i.cli.main import app

    return CliRunner().invoke(app, [
        "train", "--mix", str(mix), "--model", "tiny", "--steps", "2", "--batch-size", "4", "--workers", "0",
        "--out", str(out), "-q", "--set", "loader.max_pixels=1024", "--set", "loader.max_input_side=32",
        "--set", "save_every=2", "--set", "log_every=1", "--set", "tensorboard=false",
        "--set", "codec.pixel_factor=2"])
