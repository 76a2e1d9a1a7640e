"""Render rows of an image_edit build as a contact sheet: input | output | change mask over output | instruction.

    python bench/preview_edits.py OUT_DIR --rows 12 --png /tmp/edits.png [--start 0] [--kind chain]

For looking at data, not for tests: every recolour / move / add / remove / resize should show its mask covering
exactly the changed shape(s).
"""
from __future__ import annotations

import argparse
import io
import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from x2i.core.masks import decode_mask
from x2i.engine.shards import iter_rows, shard_files

CELL = 256


def _img(struct) -> Image.Image:
    return Image.open(io.BytesIO(struct["bytes"])).convert("RGB")


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    arr = np.asarray(image).astype(np.float32)
    tint = np.array([255, 0, 255], np.float32)
    arr[mask] = arr[mask] * 0.35 + tint * 0.65
    return Image.fromarray(arr.astype(np.uint8))


def sheet(rows: list[dict], path: Path) -> None:
    text_w = 360
    canvas = Image.new("RGB", (3 * CELL + text_w, CELL * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        meta = json.loads(row["meta"])
        inp, out = _img(row["input_images"][0]), _img(row["output_image"])
        mask = decode_mask(meta["change_mask"])
        for c, im in enumerate((inp, out, overlay(out, mask))):
            canvas.paste(im.resize((CELL, CELL)), (c * CELL, r * CELL))
        label = (f"{row['source_key']} [{meta.get('edit_kind')}] mask={meta['change_mask']['source']} "
                 f"{meta['change_mask']['fraction']:.3f}\n\n{row['instruction']}")
        y = r * CELL + 8
        for line in label.split("\n"):
            for piece in textwrap.wrap(line, 52) or [""]:
                draw.text((3 * CELL + 8, y), piece, fill="black")
                y += 14
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--kind", default=None, help="only rows whose meta.edit_kind is this (turn, chain, inverse, ...)")
    ap.add_argument("--png", default="/tmp/edits.png")
    a = ap.parse_args()
    picked = []
    for path in shard_files(Path(a.build)):
        for row in iter_rows(path):
            if a.kind and json.loads(row["meta"]).get("edit_kind") != a.kind:
                continue
            picked.append(row)
    sheet(picked[a.start:a.start + a.rows], Path(a.png))
    print(a.png)


if __name__ == "__main__":
    main()
