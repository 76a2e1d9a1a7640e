"""Embedded-sample writers for LAION-Aesthetics (text-to-image) and MagicBrush (edit triplets).

- `write_laion`: LAION-Aesthetics v1 metadata parquet (URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe,
  pwatermark, aesthetic with LAION's own types) and its img2dataset download (`--url_col URL --caption_col TEXT
  --save_additional_columns [WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark, aesthetic]`), exactly as a
  real download leaves it, including what makes real data hard: two failed downloads, an exact duplicate and a
  re-encoded near-duplicate under other URLs, a few rows over the watermark / NSFW / aesthetic thresholds, and a
  photo below the X2I minimum side.
- `write_magicbrush`: MagicBrush's parquet layout (img_id, turn_index, source_img, mask_img, instruction,
  target_img; images as `{bytes, path}` structs with the `huggingface` features metadata) holding shapes-world
  edit sessions of 1-3 turns; `mask_img` is the exact change mask (white = changed), so the same reader handles
  the embedded sample and real MagicBrush.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from x2i.shapes.edits import change_mask, edit_chain
from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard
from x2i.shapes.photos import PHOTOS
from x2i.shapes.world import make_scene

if TYPE_CHECKING:
    from x2i.shapes.embedded import EmbeddedOptions

LAION_V1_SCHEMA = pa.schema([
    ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.float64()), ("HEIGHT", pa.float64()),
    ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()), ("pwatermark", pa.float32()),
    ("aesthetic", pa.float32()),
])
LAION_ADDITIONAL = [(f.name, f.type) for f in LAION_V1_SCHEMA if f.name not in ("URL", "TEXT")]

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MAGICBRUSH_SCHEMA = pa.schema([
    ("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", IMAGE_STRUCT), ("mask_img", IMAGE_STRUCT),
    ("instruction", pa.string()), ("target_img", IMAGE_STRUCT),
])
_HF_MAGICBRUSH = {"info": {"features": {
    "img_id": {"dtype": "string", "_type": "Value"}, "turn_index": {"dtype": "int32", "_type": "Value"},
    "source_img": {"_type": "Image"}, "mask_img": {"_type": "Image"},
    "instruction": {"dtype": "string", "_type": "Value"}, "target_img": {"_type": "Image"}}}}


def _encode(im: Image.Image, fmt: str, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 6}))
    return buf.getvalue()


def _url_hash(url: str) -> int:
    return int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "little", signed=True)


def laion_rows(opts: "EmbeddedOptions") -> list[tuple[dict[str, Any], bytes | None, str]]:
    """(LAION v1 row, image bytes or None for a failed download, error message) in a fixed order."""
    rng = np.random.default_rng([opts.seed, 4750])
    rows: list[tuple[dict[str, Any], bytes | None, str]] = []

    def row(url: str, text: str | None, w: int, h: int, data: bytes | None, error: str = "", **over) -> None:
        values = {"URL": url, "TEXT": text, "WIDTH": float(w), "HEIGHT": float(h),
                  "similarity": round(float(rng.uniform(0.28, 0.38)), 6), "hash": _url_hash(url),
                  "punsafe": round(float(rng.uniform(0.0, 0.12)), 6),
                  "pwatermark": round(float(rng.uniform(0.02, 0.3)), 6),
                  "aesthetic": round(float(rng.uniform(4.9, 6.6)), 6)}
        values.update(over)
        rows.append((values, data, error))

    if opts.photos:
        for photo in PHOTOS:
            im = photo.load()
            row(f"https://x2i.invalid/embedded/photos/{photo.name}.jpg", photo.caption, im.width, im.height,
                _encode(im, "JPEG", 95))
    base = f"https://shapes.x2i.invalid/laion/v1/s{opts.seed}"
    scene_bytes = []
    for index in range(opts.scenes):
        scene = make_scene(index, opts.seed, opts.size, opts.size)
        data = _encode(scene.render(), "JPEG")
        scene_bytes.append((scene, data))
        over: dict[str, Any] = {}
        if index % 20 == 7:
            over["pwatermark"] = 0.81  # a watermarked image by LAION's watermark model
        if index % 29 == 11:
            over["punsafe"] = 0.74
        if index % 17 == 5:
            over["aesthetic"] = 4.31  # below X2I's 4.75
        row(f"{base}/{index:06d}.jpg", scene.caption()[0], scene.width, scene.height, data, **over)
    if len(scene_bytes) >= 2:  # the same picture under other URLs: byte-identical and re-encoded
        scene, data = scene_bytes[0]
        row(f"{base}/mirror/{0:06d}.jpg", scene.caption()[0], scene.width, scene.height, data)
        scene, _ = scene_bytes[1]
        row(f"{base}/reencoded/{1:06d}.jpg", scene.caption()[0], scene.width, scene.height,
            _encode(scene.render(), "JPEG", 70))
    row(f"{base}/gone-404.jpg", "A picture that no longer exists.", 640, 480, None, "HTTP Error 404: Not Found")
    row(f"{base}/gone-timeout.jpg", "A picture behind a slow server.", 800, 600, None, "timed out")
    return rows


def write_laion(out: Path, opts: "EmbeddedOptions") -> Path:
    """LAION v1 metadata + its img2dataset download with the LAION columns saved; returns the image folder."""
    rows = laion_rows(opts)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([r for r, _, _ in rows], schema=LAION_V1_SCHEMA),
                   out / "metadata" / "laion-aesthetic-v1-00000.parquet")
    images = out / "images"
    for shard, first in enumerate(range(0, len(rows), opts.per_shard)):
        records = []
        for values, data, error in rows[first:first + opts.per_shard]:
            extra = {name: values[name] for name, _ in LAION_ADDITIONAL}
            if data is None:
                records.append(DownloadRecord(values["URL"], values["TEXT"], None, status="failed_to_download",
                                              error_message=error, additional=extra))
            else:
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
                records.append(DownloadRecord(values["URL"], values["TEXT"], data, w, h, additional=extra))
        write_shard(images, shard, records, LAION_ADDITIONAL)
    return images


def _struct(data: bytes, path: str) -> dict[str, Any]:
    return {"bytes": data, "path": path}


def magicbrush_rows(opts: "EmbeddedOptions") -> list[list[dict[str, Any]]]:
    """Edit sessions (one list of turn rows per source scene) in MagicBrush's columns."""
    sessions = []
    # Half as many sessions as scenes: each session renders 2-4 images, and this keeps first use quick.
    for index in range(max(1, opts.scenes // 2)):
        chain = edit_chain(index, opts.seed, opts.size)
        if not chain:
            continue
        img_id = str(100000 * (opts.seed + 1) + index)
        before = np.asarray(chain[0].before.render())
        turns = []
        for k, edit in enumerate(chain, 1):
            after = np.asarray(edit.after.render())
            mask = Image.fromarray(change_mask(before, after).astype(np.uint8) * 255, "L")
            turns.append({
                "img_id": img_id, "turn_index": k,
                "source_img": _struct(_encode(Image.fromarray(before), "PNG"), f"{img_id}_{k}_source.png"),
                "mask_img": _struct(_encode(mask, "PNG"), f"{img_id}_{k}_mask.png"),
                "instruction": edit.instruction,
                "target_img": _struct(_encode(Image.fromarray(after), "PNG"), f"{img_id}_{k}_target.png"),
            })
            before = after
        sessions.append(turns)
    return sessions


def write_magicbrush(out: Path, opts: "EmbeddedOptions") -> Path:
    """MagicBrush-format parquet files (whole sessions per file, ~per_shard rows each); returns their folder."""
    sessions = magicbrush_rows(opts)
    files: list[list[dict[str, Any]]] = [[]]
    for turns in sessions:
        if files[-1] and len(files[-1]) + len(turns) > opts.per_shard:
            files.append([])
        files[-1].extend(turns)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    schema = MAGICBRUSH_SCHEMA.with_metadata({b"huggingface": json.dumps(_HF_MAGICBRUSH).encode()})
    for k, rows in enumerate(files):
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, data / f"train-{k:05d}-of-{len(files):05d}.parquet", row_group_size=50)
    return data
