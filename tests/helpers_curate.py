"""Shared helpers for the curation / text-to-image / image-edit tests: CLI runs, reading builds, validation."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from x2i.core.prompt import problems
from x2i.engine.shards import iter_rows, shard_files

TINY_EMBEDDED = {"scenes": 10, "per_shard": 4, "size": 128, "photos": False}


def cli(*args: str):
    from x2i.cli.main import app

    return CliRunner().invoke(app, list(args))


def rows(out: Path) -> list[dict[str, Any]]:
    return [r for p in shard_files(out) for r in iter_rows(p)]


def rejects(out: Path) -> list[dict[str, Any]]:
    found = []
    for p in sorted((out / "rejects").glob("*.parquet")):
        found += pq.read_table(p).to_pylist()
    return found


def validate(out: Path) -> dict[str, Any]:
    """What `x2i validate` should hold for a build: manifest == shards, well-formed prompts, decodable images of
    the recorded size, JSON meta, ids unique; the files load with `datasets` with no arguments."""
    manifest = json.loads((out / "manifest.json").read_text())
    from x2i.engine.shards import file_sha256

    listed = {s["path"]: s for s in manifest["shards"]}
    on_disk = {str(p.relative_to(out)) for p in shard_files(out)}
    assert set(listed) == on_disk, (set(listed) ^ on_disk)
    ids = set()
    total = 0
    for rel, info in listed.items():
        assert file_sha256(out / rel) == info["sha256"] and (out / rel).stat().st_size == info["bytes"]
        n = 0
        for row in iter_rows(out / rel):
            n += 1
            assert row["id"] not in ids
            ids.add(row["id"])
            assert not problems(row["instruction"], len(row["input_images"])), row["instruction"]
            with Image.open(io.BytesIO(row["output_image"]["bytes"])) as im:
                im.load()
                assert im.size == (row["width"], row["height"])
            for s in row["input_images"]:
                Image.open(io.BytesIO(s["bytes"])).load()
            json.loads(row["meta"])
        assert n == info["rows"]
        total += n
    assert total == manifest["rows"] == sum(t["rows"] for t in manifest["tasks"].values())
    return manifest
