"""`x2i export --format omnigen`: a dataset as OmniGen fine-tuning data.

Writes `<out>/data.jsonl` (one `{"task_type", "instruction", "input_images", "output_image"}` object per row,
paths relative to `<out>/images`, plus `id`, `source`, `source_key` and `meta` which OmniGen ignores and
`x2i import` uses to keep ids) and the image files, byte for byte as stored. Train OmniGen on it with
`--json_file <out>/data.jsonl --image_path <out>/images`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from x2i.core.errors import X2IError
from x2i.core.safepath import confined, safe_component
from x2i.engine.shards import atomic_write_bytes, iter_rows, shard_files, task_dir_name

_EXT = {b"\xff\xd8": "jpg", b"\x89P": "png", b"RI": "webp", b"GI": "gif"}


def _ext(data: bytes) -> str:
    return _EXT.get(data[:2], "bin")


def _write_image(images: Path, task_dir: str, stem: str, data: bytes) -> str:
    """Write one image under `images/<task_dir>/`; return its path relative to `images` (as the JSONL has it)."""
    name = f"{stem}.{_ext(data)}"
    path = confined(images, task_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"{task_dir}/{name}"


def export_omnigen(dataset: str | Path, out: str | Path, tasks: list[str] | None = None,
                   limit: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    src, out = Path(dataset), Path(out)
    files = shard_files(src)
    if not files:
        raise X2IError(f"{src}: no parquet shards found")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise X2IError(f"{out} is not empty; use --overwrite to replace it")
        shutil.rmtree(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines, counts = [], {}
    for f in files:
        if limit is not None and len(lines) >= limit:
            break
        for row in iter_rows(f):
            if tasks and row["task"] not in tasks:
                continue
            if limit is not None and len(lines) >= limit:
                break
            # Task and id are row data: they name files only through safepath (unchanged for ordinary values).
            task_dir, stem = task_dir_name(row["task"]), safe_component(row["id"])
            inputs = []
            for k, struct in enumerate(row["input_images"] or [], 1):
                inputs.append(_write_image(images, task_dir, f"{stem}_in{k}", struct["bytes"]))
            output = _write_image(images, task_dir, f"{stem}_out", row["output_image"]["bytes"])
            lines.append(json.dumps({"task_type": row["task"], "instruction": row["instruction"],
                                     "input_images": inputs, "output_image": output,
                                     "id": row["id"], "source": row["source"], "source_key": row["source_key"],
                                     "meta": row["meta"]}, ensure_ascii=False))
            counts[row["task"]] = counts.get(row["task"], 0) + 1
    atomic_write_bytes(out / "data.jsonl", ("\n".join(lines) + "\n").encode() if lines else b"")
    return {"rows": len(lines), "tasks": counts, "jsonl": str(out / "data.jsonl"), "images": str(images)}
