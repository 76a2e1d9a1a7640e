"""Helpers shared by the training tests: small x2i datasets written on the spot (shards + manifest.json exactly as
`x2i build` lays them out) and mix files. (A uniquely named module in tests/, imported by name.)"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from x2i.core.imageio import encode
from x2i.core.prompt import placeholder
from x2i.core.sample import Sample
from x2i.shapes.world import COLORS, make_scene
from x2i.core.config import from_dict
from x2i.engine.manifest import Manifest
from x2i.engine.shards import PartitionWriter


def mask_record(mask: np.ndarray) -> dict:
    """A change mask in the image_edit builders' `meta.change_mask` form (1-bit PNG, base64)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").convert("1").save(buf, "PNG")
    return {"encoding": "png_base64", "width": int(mask.shape[1]), "height": int(mask.shape[0]),
            "data": base64.b64encode(buf.getvalue()).decode("ascii"), "source": "diff",
            "fraction": float(mask.mean())}


def shapes_sample(task: str, index: int, size: int, seed: int = 0) -> Sample:
    scene = make_scene(index, seed, size, size, max_shapes=1)
    caption, _ = scene.caption()
    if task == "image_edit":
        shape = scene.shapes[0]
        new_colour = [c for c in COLORS if c != shape.color][index % 5]
        after = scene.with_shapes([replace(shape, color=new_colour)])
        before_im, after_im = scene.render(), after.render()
        diff = np.abs(np.asarray(before_im, np.int16) - np.asarray(after_im, np.int16)).max(axis=2) > 0
        s = Sample(task, f"{placeholder(1)} Make the {shape.color} {shape.kind} {new_colour}.",
                   encode(after_im, "PNG"), [encode(before_im, "PNG")], "test", f"{task}-{index}",
                   {"change_mask": mask_record(diff)})
    elif task == "subject_driven":
        s = Sample(task, f"The {scene.shapes[0].kind} is in {placeholder(1)}. {caption}", encode(scene.render(), "PNG"),
                   [encode(scene.render().resize((size // 2, size // 2)), "PNG")], "test", f"{task}-{index}", {})
    else:
        s = Sample(task, caption, encode(scene.render(), "PNG"), [], "test", f"{task}-{index}", {})
    return s.with_id()


def write_dataset(root: Path, rows: dict[str, int], size: int = 32, seed: int = 0, rows_per_group: int = 10,
                  partitions: int = 2, name: str | None = None, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A dataset folder with `rows[task]` shapes rows per task, over `partitions` partitions; returns it."""
    root = Path(root)
    shards = []
    for part in range(partitions):
        writer = PartitionWriter(root, part, rows_per_group=rows_per_group)
        for task, n in rows.items():
            for i in range(part, n, partitions):
                sample = shapes_sample(task, i, size, seed)
                if sizes and task in sizes:  # a non-square output (buckets)
                    w, h = sizes[task]
                    sample.output_image = encode(sample.output_image.pil().resize((w, h)), "PNG")
                writer.write(sample)
        shards += [vars(s) for s in writer.commit()]
    write_manifest(root, shards, name or root.name)
    return root


def write_manifest(root: Path, shards: list[dict], name: str) -> None:
    """The manifest.json of hand-written shards (`vars(ShardInfo)`), complete as `x2i build` writes it."""
    tasks = {}
    for s in shards:
        t = tasks.setdefault(s["task"], {"rows": 0, "shards": 0, "bytes": 0})
        t["rows"] += s["rows"]
        t["shards"] += 1
        t["bytes"] += s["bytes"]
    rows = sum(t["rows"] for t in tasks.values())
    manifest = {"schema_version": 1, "x2i_version": "0.1.0", "created_at": "2025-01-01T00:00:00Z",
                "name": name, "recipe": {}, "source": {}, "limit": None, "rows": rows,
                "tasks": tasks, "source_samples": rows, "rejects": {}, "rejects_total": 0,
                "rejects_files": [], "shards": sorted(shards, key=lambda s: s["path"]), "partitions": []}
    from_dict(Manifest, manifest)  # the layout x2i writes (x2i/engine/manifest.py), checked here, not at first use
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def write_mix(path: Path, datasets: list[dict], **extra) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": "test", "seed": 0, "datasets": datasets, **extra}))
    return path
