"""Change masks of edit pairs: which output pixels an edit changed, stored with the sample for loss weighting.

OmniGen meant to weight the diffusion loss on edited regions (left as a TODO in its code); every `image_edit`
sample therefore records `meta.change_mask`:
    {"encoding": "png_base64", "width", "height", "data": <1-bit PNG, base64>, "source": "dataset" | "diff",
     "fraction": share of pixels in the mask, "bbox": [x0, y0, x1, y1] in pixels (exclusive end) or None,
     "diff_threshold": ... (diff masks)}
`decode_mask(meta["change_mask"])` gives the boolean H x W array back (True = changed), aligned with the
output image (and the input image: edit pairs share one size).

Masks come from the dataset when it ships one (MagicBrush `mask_img`, UltraEdit region `mask_image`), else
from the pixels: a pixel changed when any channel differs by more than a threshold; an opening removes
isolated compression noise and a small dilation covers soft edges.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def diff_mask(before: Image.Image, after: Image.Image, threshold: int = 32, open_px: int = 1,
              dilate_px: int = 2) -> np.ndarray:
    """Pixels that differ beyond `threshold` (0-255, max over channels), cleaned of speckle."""
    import cv2

    if before.size != after.size:
        raise ValueError(f"sizes differ: {before.size} vs {after.size}")
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    mask = (np.abs(a - b).max(axis=2) > threshold).astype(np.uint8)
    if open_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * open_px + 1, 2 * open_px + 1))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    if dilate_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def changed_fraction(before: Image.Image, after: Image.Image, threshold: int = 32) -> float:
    """Share of pixels that visibly changed (no morphology: the honest measure of 'did anything change')."""
    a = np.asarray(before.convert("RGB"), dtype=np.int16)
    b = np.asarray(after.convert("RGB"), dtype=np.int16)
    return float((np.abs(a - b).max(axis=2) > threshold).mean())


def mask_from_image(im: Image.Image) -> tuple[np.ndarray, str]:
    """A dataset's mask image as booleans (True = edit region) and how it was read.

    Conventions met in the wild: a transparent region in an RGBA image (DALL-E 2 inpainting style), a binary
    black/white image (white = region; MagicBrush documents "white region"), or a photo with the region painted
    pure white.
    """
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 128 <= alpha.max():
            return alpha < 128, "alpha"
    grey = np.asarray(im.convert("L"))
    extreme = ((grey <= 16) | (grey >= 239)).mean()
    if extreme >= 0.98:
        return grey > 127, "binary"
    rgb = np.asarray(im.convert("RGB"))
    return (rgb >= 250).all(axis=2), "painted_white"


def encode_mask(mask: np.ndarray, source: str, **extra: Any) -> dict[str, Any]:
    """The JSON-ready record of a boolean mask (1-bit PNG, base64)."""
    h, w = mask.shape
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").convert("1").save(buf, "PNG", optimize=True)
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
    return {"encoding": "png_base64", "width": int(w), "height": int(h),
            "data": base64.b64encode(buf.getvalue()).decode("ascii"), "source": source,
            "fraction": round(float(mask.mean()), 6), "bbox": bbox, **extra}


def decode_mask(record: dict[str, Any]) -> np.ndarray:
    """The boolean H x W mask of a `meta.change_mask` record."""
    if record.get("encoding") != "png_base64":
        raise ValueError(f"unknown change mask encoding {record.get('encoding')!r}")
    im = Image.open(io.BytesIO(base64.b64decode(record["data"])))
    mask = np.asarray(im.convert("L")) > 127
    if mask.shape != (record["height"], record["width"]):
        raise ValueError(f"mask is {mask.shape[::-1]}, record says {record['width']}x{record['height']}")
    return mask
