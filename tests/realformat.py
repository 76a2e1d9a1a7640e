"""Real-format fixtures: LAION-Aesthetics v1/v2 parquet, img2dataset outputs, and the edit datasets' parquet,
with the column names and Arrow types each source publishes (see docs/sources.md), plus the rows that make real
data hard: null URL/TEXT, NaN scores, float WIDTH/HEIGHT, duplicate images under other URLs, corrupt image bytes,
edit pairs of mismatched sizes, pairs without any change.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from x2i.shapes.edits import change_mask, edit_chain
from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard
from x2i.shapes.world import make_scene

NAN = float("nan")
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

LAION_V1 = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.float64()), ("HEIGHT", pa.float64()),
                      ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()),
                      ("pwatermark", pa.float32()), ("aesthetic", pa.float32())])
LAION_V2 = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.float64()), ("HEIGHT", pa.float64()),
                      ("similarity", pa.float64()), ("punsafe", pa.float64()), ("pwatermark", pa.float64()),
                      ("AESTHETIC_SCORE", pa.float64()), ("hash", pa.int64()), ("__index_level_0__", pa.int64())])
IP2P = pa.schema([("original_prompt", pa.string()), ("original_image", IMAGE), ("edit_prompt", pa.string()),
                  ("edited_prompt", pa.string()), ("edited_image", IMAGE)])
MAGICBRUSH = pa.schema([("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", IMAGE),
                        ("mask_img", IMAGE), ("instruction", pa.string()), ("target_img", IMAGE)])
_ULTRA_SCORES = [(c, pa.float64()) for c in ("clip_sim_source", "clip_sim_target", "clip_sim_dir", "clip_sim_image",
                                             "dinov2_sim", "ssim")]
ULTRAEDIT_FREEFORM = pa.schema(_ULTRA_SCORES + [
    ("source_caption", pa.string()), ("target_caption", pa.string()), ("idx", pa.int64()), ("edit_prompt", pa.string()),
    ("edit_object", pa.null()), ("source_image", IMAGE), ("edited_image", IMAGE), ("mask_image", pa.null())])
ULTRAEDIT_REGION = pa.schema(_ULTRA_SCORES + [
    ("source_caption", pa.string()), ("target_caption", pa.string()), ("idx", pa.int64()), ("edit_prompt", pa.string()),
    ("edit_object", pa.string()), ("source_image", IMAGE), ("edited_image", IMAGE), ("mask_image", IMAGE)])
HQ_EDIT = pa.schema([("input", pa.string()), ("input_image", IMAGE), ("edit", pa.string()),
                     ("inverse_edit", pa.string()), ("output", pa.string()), ("output_image", IMAGE)])


def encode(im: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def scene_jpeg(i: int, w: int = 448, h: int = 400, seed: int = 3) -> bytes:
    return encode(make_scene(i, seed, w, h).render())


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema, hf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if hf:  # the `huggingface` features metadata the Hub's parquet files carry
        features = {f.name: ({"_type": "Image"} if f.type == IMAGE else {"dtype": str(f.type), "_type": "Value"})
                    for f in schema}
        schema = schema.with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=4)
    return path


# -- LAION -------------------------------------------------------------------------------------------------------
def laion_cases() -> list[dict[str, Any]]:
    """LAION rows with their image bytes ("_image": None = the download failed) and the reject they must cause."""
    good = [scene_jpeg(i) for i in range(6)]
    corrupt = good[1][: len(good[1]) // 3]
    small = scene_jpeg(9, 300, 200)
    base = "https://example.com/laion"

    def row(n, text="A picture of shapes.", image=None, expect=None, **over):
        values = {"URL": f"{base}/{n}.jpg", "TEXT": text, "WIDTH": 448.0, "HEIGHT": 400.0, "similarity": 0.31,
                  "hash": 1000 + n, "punsafe": 0.02, "pwatermark": 0.1, "aesthetic": 5.5}
        values.update(over)
        return {**values, "_image": image, "_expect": expect}

    return [
        row(0, "A red circle and a blue square.", good[0]),
        row(1, None, good[2], "caption_missing"),  # null TEXT
        row(2, "Scores unknown.", good[3], "aesthetic_nan", aesthetic=NAN),
        row(3, "Watermarked.", good[4], "pwatermark_above_max", pwatermark=0.93),
        row(4, "Unsafe score unknown.", good[5], "punsafe_nan", punsafe=NAN),
        row(5, "Too small.", small, "too_small", WIDTH=300.0, HEIGHT=200.0),
        row(6, "The same picture elsewhere.", good[0], "duplicate_sha256"),  # row 0's bytes under another URL
        row(7, "Broken bytes.", corrupt, "image_corrupt"),
        row(8, "Gone.", None, "img2dataset_failed_to_download"),
        row(9, "Size unknown, image fine.", good[1], None, WIDTH=NAN, HEIGHT=NAN),
        row(10, "Low aesthetic.", scene_jpeg(11), "aesthetic_below_min", aesthetic=4.2),
        row(11, "A <b>yellow</b> star &amp; friends https://spam.example/x", scene_jpeg(12), None),
    ]


def laion_metadata(cases: list[dict[str, Any]], version: int = 1) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(cases):
        r = {k: v for k, v in c.items() if not k.startswith("_")}
        if version == 2:
            r["AESTHETIC_SCORE"] = r.pop("aesthetic")
            r["__index_level_0__"] = 5_000_000 + i
        out.append(r)
    return out


def write_laion(root: Path, cases: list[dict[str, Any]], version: int = 1, self_contained: bool = False,
                per_shard: int = 6) -> tuple[Path, Path]:
    """(metadata parquet, img2dataset output folder). Self-contained: LAION columns saved with the images."""
    meta = laion_metadata(cases, version)
    schema = LAION_V1 if version == 1 else LAION_V2
    meta_path = write_parquet(root / "metadata" / f"laion-v{version}.parquet", meta, schema)
    additional = [(f.name, f.type) for f in schema if f.name not in ("URL", "TEXT")] if self_contained else []
    images = root / "images"
    for shard, first in enumerate(range(0, len(cases), per_shard)):
        records = []
        for c, m in zip(cases[first:first + per_shard], meta[first:first + per_shard]):
            extra = {name: m[name] for name, _ in additional}
            if c["_image"] is None:
                records.append(DownloadRecord(m["URL"], m["TEXT"], None, status="failed_to_download",
                                              error_message="HTTP Error 404: Not Found", additional=extra))
                continue
            try:
                with Image.open(io.BytesIO(c["_image"])) as im:
                    w, h = im.size
            except Exception:
                w, h = 448, 400
            records.append(DownloadRecord(m["URL"], m["TEXT"], c["_image"], w, h, additional=extra))
        write_shard(images, shard, records, additional)
    return meta_path, images


# -- edits -------------------------------------------------------------------------------------------------------
def edit_pairs(n: int, size: int = 96, seed: int = 5) -> list[dict[str, Any]]:
    """n shapes-world edits: PNG bytes of before / after / exact change mask, the instruction and captions."""
    pairs = []
    i = 0
    while len(pairs) < n:
        chain = edit_chain(i, seed, size, max_turns=1)
        i += 1
        if not chain:
            continue
        e = chain[0]
        before, after = np.asarray(e.before.render()), np.asarray(e.after.render())
        mask = Image.fromarray(change_mask(before, after).astype(np.uint8) * 255, "L")
        pairs.append({"before": encode(Image.fromarray(before), "PNG"), "after": encode(Image.fromarray(after), "PNG"),
                      "mask": encode(mask, "PNG"), "instruction": e.instruction, "kind": e.kind,
                      "before_caption": e.before.caption()[0], "after_caption": e.after.caption()[0]})
    return pairs


def bad_variants(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the first pairs broken in the ways real data is: returns them with `_expect` reasons."""
    a, b, c, d = (dict(p) for p in pairs[:4])
    big = Image.open(io.BytesIO(a["after"])).resize((128, 96))
    a.update(after=encode(big, "PNG"), _expect="size_mismatch")
    b.update(after=b["before"], _expect="no_change")
    c.update(after=c["after"][: len(c["after"]) // 2], _expect="image_corrupt")
    d.update(instruction=None, _expect="instruction_missing")
    return [a, b, c, d]


def _img(data: bytes | None, name: str) -> dict[str, Any] | None:
    return None if data is None else {"bytes": data, "path": name}


def ip2p_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"original_prompt": p["before_caption"], "original_image": _img(p["before"], f"{i}_0.jpg"),
             "edit_prompt": p["instruction"], "edited_prompt": p["after_caption"],
             "edited_image": _img(p["after"], f"{i}_1.jpg")} for i, p in enumerate(pairs)]


def ultraedit_rows(pairs: list[dict[str, Any]], region: bool) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(pairs):
        r = {"clip_sim_source": 0.28, "clip_sim_target": 0.3, "clip_sim_dir": 0.21, "clip_sim_image": 0.9,
             "dinov2_sim": NAN if i == 1 else 0.85, "ssim": 0.8, "source_caption": p["before_caption"],
             "target_caption": p["after_caption"], "idx": 700 + i, "edit_prompt": p["instruction"],
             "source_image": _img(p["before"], None), "edited_image": _img(p["after"], None)}
        r["edit_object"] = "shape" if region else None
        r["mask_image"] = _img(p["mask"], None) if region else None
        rows.append(r)
    return rows


def hq_edit_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"input": p["before_caption"], "input_image": _img(p["before"], None), "edit": p["instruction"],
             "inverse_edit": f"Undo: {p['instruction']}" if p["instruction"] else None, "output": p["after_caption"],
             "output_image": _img(p["after"], None)} for p in pairs]


def magicbrush_rows(sessions: int = 4, size: int = 96, seed: int = 8) -> list[dict[str, Any]]:
    rows, i = [], 0
    while len({r["img_id"] for r in rows}) < sessions:
        chain = edit_chain(i, seed, size, max_turns=3)
        i += 1
        if len(chain) < 2:
            continue
        img_id = str(500 + i)
        before = np.asarray(chain[0].before.render())
        for k, e in enumerate(chain, 1):
            after = np.asarray(e.after.render())
            mask = Image.fromarray(change_mask(before, after).astype(np.uint8) * 255, "L")
            rows.append({"img_id": img_id, "turn_index": k, "source_img": _img(encode(Image.fromarray(before), "PNG"), None),
                         "mask_img": _img(encode(mask, "PNG"), None), "instruction": e.instruction,
                         "target_img": _img(encode(Image.fromarray(after), "PNG"), None)})
            before = after
    return rows
