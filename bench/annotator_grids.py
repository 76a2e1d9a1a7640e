"""Render built samples as grids (input images | output | instruction) to PNG, to look at what a build made.

    python bench/annotator_grids.py OUT_DIR [--task vision/canny] [--rows 6] [-o grid.png]
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from x2i.engine.shards import iter_samples, shard_files

CELL = 192


def _thumb(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    im.thumbnail((CELL, CELL))
    canvas = Image.new("RGB", (CELL, CELL), (40, 40, 40))
    canvas.paste(im, ((CELL - im.width) // 2, (CELL - im.height) // 2))
    return canvas


def grid(samples, max_inputs: int) -> Image.Image:
    text_w = 420
    rows = list(samples)
    out = Image.new("RGB", ((max_inputs + 1) * (CELL + 4) + text_w, len(rows) * (CELL + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=12)
    for r, s in enumerate(rows):
        y = r * (CELL + 4)
        for k, im in enumerate(s.input_images[:max_inputs]):
            out.paste(_thumb(im.pil()), (k * (CELL + 4), y))
        out.paste(_thumb(s.output_image.pil()), (max_inputs * (CELL + 4), y))
        draw.rectangle([max_inputs * (CELL + 4) - 3, y, max_inputs * (CELL + 4) - 2, y + CELL], fill=(255, 0, 0))
        lines = [s.task] + textwrap.wrap(s.instruction, 64)
        draw.multiline_text(((max_inputs + 1) * (CELL + 4) + 4, y + 4), "\n".join(lines[:13]), fill=(0, 0, 0), font=font)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--task", default=None)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--skip", type=int, default=0, help="skip this many matching samples first")
    ap.add_argument("-o", "--out", default=None)
    a = ap.parse_args()
    picked = []
    seen = 0
    for f in shard_files(a.build):
        for s in iter_samples(f):
            if a.task and s.task != a.task:
                continue
            seen += 1
            if seen > a.skip:
                picked.append(s)
            if len(picked) >= a.rows:
                break
        if len(picked) >= a.rows:
            break
    max_inputs = max(1, max(len(s.input_images) for s in picked))
    out = Path(a.out or Path(a.build) / f"grid-{(a.task or 'all').replace('/', '_')}.png")
    grid(picked, max_inputs).save(out)
    print(out)


if __name__ == "__main__":
    main()
