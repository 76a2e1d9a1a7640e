"""Resolution buckets: every output image is resized to cover one of a few fixed sizes and centre-cropped to it,
so a batch (drawn from one bucket) has no padding at all.

Buckets are made from a pixel budget (`max_pixels`) and the size step (`multiple` = codec downsampling x patch
size): for each width a multiple of the step, the largest height that keeps width x height <= max_pixels, kept
when its aspect ratio is at most `max_aspect` (SDXL's bucketing, computed instead of tabled). An image goes to
the bucket whose aspect ratio is nearest its own (in log space), so the crop removes as little as possible.

Change masks of image_edit samples follow the same resize and crop, then are reduced to the latent grid with a
max-pool: a latent pixel counts as changed when any image pixel under it changed.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
from PIL import Image


def make_buckets(max_pixels: int, multiple: int, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """(height, width) buckets, each a multiple of `multiple` with height x width <= max_pixels."""
    if max_pixels < multiple * multiple:
        raise ValueError(f"max_pixels {max_pixels} is below one {multiple}x{multiple} patch")
    buckets = set()
    w = multiple
    while w * multiple <= max_pixels:
        h = (max_pixels // w) // multiple * multiple
        if h >= multiple and max(h / w, w / h) <= max_aspect:
            buckets.add((h, w))
        w += multiple
    return sorted(buckets, key=lambda hw: hw[1] / hw[0])


def choose_bucket(buckets: list[tuple[int, int]], width: int, height: int) -> tuple[int, int]:
    """The bucket nearest in log aspect ratio (ties: the larger one)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - aspect), -hw[0] * hw[1]))


def cover_crop_box(width: int, height: int, bucket: tuple[int, int]) -> tuple[float, tuple[int, int, int, int]]:
    """Scale that makes (width, height) cover the bucket, and the centred crop box in the scaled image."""
    bh, bw = bucket
    scale = max(bw / width, bh / height)
    sw, sh = max(bw, round(width * scale)), max(bh, round(height * scale))
    left, top = (sw - bw) // 2, (sh - bh) // 2
    return scale, (left, top, left + bw, top + bh)


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    bh, bw = bucket
    scale, box = cover_crop_box(image.width, image.height, bucket)
    sw, sh = max(bw, round(image.width * scale)), max(bh, round(image.height * scale))
    if (sw, sh) != image.size:
        image = image.resize((sw, sh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.crop(box) if image.size != (bw, bh) else image


def mask_to_latent(mask: np.ndarray, bucket: tuple[int, int], downsample: int) -> np.ndarray:
    """A boolean H x W mask (aligned with the output image) -> float32 (h/f, w/f) on the latent grid."""
    bh, bw = bucket
    scale, box = cover_crop_box(mask.shape[1], mask.shape[0], bucket)
    sw, sh = max(bw, round(mask.shape[1] * scale)), max(bh, round(mask.shape[0] * scale))
    im = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    if (sw, sh) != im.size:
        im = im.resize((sw, sh), Image.Resampling.BILINEAR)  # soft edges: any coverage counts below
    arr = np.asarray(im.crop(box)) > 0
    f = downsample
    return arr.reshape(bh // f, f, bw // f, f).any(axis=(1, 3)).astype(np.float32)


def decode_change_mask(record: Any) -> np.ndarray:
    """The boolean mask of a `meta.change_mask` record (x2i's image_edit builders: a 1-bit PNG, base64; see
    x2i/core/masks.py on the curation branch), True = changed."""
    if not isinstance(record, dict) or record.get("encoding") != "png_base64":
        raise ValueError(f"unknown change mask encoding {record.get('encoding') if isinstance(record, dict) else record!r}")
    with Image.open(io.BytesIO(base64.b64decode(record["data"]))) as im:
        mask = np.asarray(im.convert("L")) > 127
    if mask.shape != (record["height"], record["width"]):
        raise ValueError(f"change mask is {mask.shape[1]}x{mask.shape[0]}, its record says "
                         f"{record['width']}x{record['height']}")
    return mask
