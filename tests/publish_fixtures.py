"""Datasets for the publish / gallery / notebook tests (their fixtures are imported by tests/conftest.py).

- `write_mixed_dataset(out)`: a small dataset written directly with `PartitionWriter`, so it does not depend on
  builders that live in other branches: tasks with 0, 1 and 3 input images, two tasks of one family with a slash
  (`vision/canny`, `vision/mask`), a `control/canny` task, a task whose only shard has zero rows (`layout`),
  tiny row groups (2 rows) spread over two partitions (so publishing merges shards), a rejects ledger and a
  manifest.json whose source path is an absolute local path (which a published card must not show).
- `build_shapes(out)`: the real shapes-world build (`x2i build --task subject-driven`).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from x2i.core.imageio import encode
from x2i.core.prompt import placeholder
from x2i.core.sample import Reject, Sample
from x2i.core.schema import SCHEMA
from x2i.shapes.world import COLORS, make_scene
from x2i.engine.shards import PartitionWriter, file_sha256, write_rejects

SIDE = 128
SECRET_DIR = "/home/alice/secret-projects/source-data"  # must never reach a card


def _scene(i: int):
    scene = make_scene(i, seed=7, width=SIDE, height=SIDE)
    return scene, scene.render()


def _samples() -> list[tuple[int, Sample]]:
    """(partition, sample) pairs."""
    out: list[tuple[int, Sample]] = []
    rng = np.random.default_rng(0)

    def add(partition: int, sample: Sample, params) -> None:
        sample.source, sample.source_key = "shapes", f"{sample.task}-{params}"
        sample.aesthetic = float(np.round(rng.uniform(4, 7), 3)) if params % 3 else None
        sample.clip_score = float(np.round(rng.uniform(0.2, 0.35), 3))
        sample.meta.setdefault("licence", "CC0 (x2i shapes world)")
        out.append((partition, sample.with_id(params)))

    for i in range(6):
        scene, im = _scene(i)
        add(i % 2, Sample("text_to_image", scene.caption()[0], encode(im)), i)
    for i in range(4):
        scene, im = _scene(10 + i)
        shape = scene.shapes[0]
        new = next(c for c in COLORS if c != shape.color)
        edited = scene.with_shapes([replace(s, color=new) if s is shape else s for s in scene.shapes]).render()
        add(i % 2, Sample("image_edit", f"{placeholder(1)} Make the {shape.phrase} {new}.", encode(edited),
                          [encode(im)], meta={"edit": {"from": shape.color, "to": new}}), i)
    for i in range(4):
        scene, im = _scene(20 + i)
        edges = Image.fromarray(cv2.Canny(np.asarray(im.convert("L")), 60, 160)).convert("RGB")
        annot = {"name": "canny", "version": cv2.__version__}
        add(i % 2, Sample("vision/canny", f"Detect the edges of this image: {placeholder(1)}", encode(edges, "PNG"),
                          [encode(im)], meta={"annotator": annot}), i)
        add(i % 2, Sample("control/canny", f"Generate an image following this edge map {placeholder(1)}: "
                          f"{scene.caption()[0]}", encode(im), [encode(edges, "PNG")], meta={"annotator": annot}), i)
    for i in range(3):
        scene, im = _scene(30 + i)
        mask = np.zeros((SIDE, SIDE, 3), np.uint8)
        for m, s in zip(scene.masks(), scene.shapes):
            mask[m] = COLORS[s.color]
        add(0, Sample("vision/mask", f"Segment the shapes in {placeholder(1)}", encode(Image.fromarray(mask), "PNG"),
                      [encode(im)], meta={"annotator": {"name": "shapes-truth", "version": "1"}}), i)
    for i in range(2):  # few-shot: a solved example (before -> after), then the query: 3 input images
        (_, a), (_, c) = _scene(40 + i), _scene(60 + i)
        text = (f"Example: {placeholder(1)} becomes {placeholder(2)}. "
                f"Do the same to {placeholder(3)}: make it grey.")
        add(1, Sample("few_shot/image_edit", text, encode(c.convert("L").convert("RGB")),
                      [encode(a), encode(a.convert("L").convert("RGB")), encode(c)]), i)
    return out


def write_mixed_dataset(out: Path) -> Path:
    out = Path(out)
    writers = {p: PartitionWriter(out, p, rows_per_group=2) for p in (0, 1)}
    for partition, sample in _samples():
        writers[partition].write(sample)
    shards = [vars(info) for p in (0, 1) for info in writers[p].commit()]
    empty = out / "data" / "layout" / "part-00000-000.parquet"  # a task with zero rows
    empty.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(SCHEMA.empty_table(), empty)
    shards.append({"path": "data/layout/part-00000-000.parquet", "task": "layout", "rows": 0,
                   "bytes": empty.stat().st_size, "sha256": file_sha256(empty), "partition": 0})
    rejects = [Reject("too_small", "shapes", "k1", "image_edit", "filter"),
               Reject("too_small", "shapes", "k2", "image_edit", "filter"),
               Reject("no_entity", "shapes", "k3", "subject_driven", "crop")]
    write_rejects(out / "rejects" / "part-00000.parquet", rejects)
    tasks: dict[str, dict[str, int]] = {}
    for s in shards:
        t = tasks.setdefault(s["task"], {"rows": 0, "shards": 0, "bytes": 0})
        t["rows"] += s["rows"]
        t["shards"] += 1
        t["bytes"] += s["bytes"]
    manifest = {
        "schema_version": 1, "x2i_version": "0.1.0", "created_at": "2026-01-01T00:00:00Z", "name": "mixed-test",
        "recipe": {"name": "mixed-test", "builder": "handmade", "seed": 0,
                   "source": {"format": "shapes", "path": SECRET_DIR}, "output": {"multiple": 16}},
        "source": {"format": "shapes", "path": SECRET_DIR, "embedded": False},
        "notes": [], "limit": None, "rows": sum(t["rows"] for t in tasks.values()), "tasks": dict(sorted(tasks.items())),
        "source_samples": 40, "rejects": {"too_small": 2, "no_entity": 1}, "rejects_total": 3,
        "rejects_files": ["rejects/part-00000.parquet"], "shards": sorted(shards, key=lambda s: s["path"]),
        "partitions": [],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def build_shapes(out: Path) -> Path:
    """The shapes-world subject-driven build; reused when `out` already holds it."""
    from x2i.engine.build import build
    from x2i.engine.recipe import load_recipe

    out = Path(out)
    if not (out / "manifest.json").exists():
        build(load_recipe("subject_driven"), out, progress=False)
    return out


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder shared by every test folder of this session (fixtures of several conftests reuse it)."""
    return tmp_path_factory.getbasetemp() / name


def set_cache(tmp_path_factory) -> None:
    # The embedded shapes source is written into the x2i cache once; keep it out of the user's home in tests.
    os.environ.setdefault("X2I_CACHE", str(shared_dir(tmp_path_factory, "x2i-cache")))


# -- pytest fixtures (imported by tests/conftest.py) -----------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory) -> Path:
    """Read-only: copy it before changing anything."""
    out = shared_dir(tmp_path_factory, "mixed-dataset")
    if not (out / "manifest.json").exists():
        write_mixed_dataset(out)
    return out


@pytest.fixture(scope="session")
def shapes_build(tmp_path_factory) -> Path:
    """Read-only: copy it before changing anything."""
    set_cache(tmp_path_factory)
    return build_shapes(shared_dir(tmp_path_factory, "shapes-build"))
