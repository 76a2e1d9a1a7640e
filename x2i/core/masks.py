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

MagicBrush's `mask_img` is not a black/white mask: it is the source photo with the brushed region painted
white. White alone cannot tell the brush from pixels that were already white in the photo (snow, sky, a white
shirt), so `mask_from_pair` reads such masks against the source image: brushed = where the mask image differs
from the source (see PAINT_TOLERANCE for the noise allowance).
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

# Levels (0-255, per channel) a painted mask may differ from its source photo without counting as brushed.
# MagicBrush ships PNG, so an untouched pixel matches exactly (difference 0); 6 levels absorb a 16->8-bit or
# colour-profile conversion or a lossy re-save of a few levels, while white paint over anything darker than
# 249 still differs by more than it. (JPEG q95 re-encoding moves a 90th-percentile pixel by 7 levels and
# 1% of pixels by >= 16 on skimage's astronaut: JPEG masks are not the expected input, see PAINT_MATCH.)
PAINT_TOLERANCE = 6
# Share of the mask image's non-white pixels that must equal the source (within PAINT_TOLERANCE) for it to be
# read as "the source photo with white paint". MagicBrush PNGs: 1.0. A black/white mask over a photo: the
# share of that photo that is black, typically well under 0.5.
PAINT_MATCH = 0.9


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
    black/white image (white = region). A photo with the region painted white (MagicBrush) needs its source
    image: use `mask_from_pair`; without it the `painted_white` reading below also marks every pixel that was
    white in the photo already, so edit sources normalise their masks with `mask_from_pair` when read.
    """
    alpha = _alpha_mask(im)
    if alpha is not None:
        return alpha, "alpha"
    binary, grey = _is_binary(im)
    if binary:
        return grey > 127, "binary"
    rgb = np.asarray(im.convert("RGB"))
    return (rgb >= 250).all(axis=2), "painted_white"


def _alpha_mask(im: Image.Image) -> np.ndarray | None:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 128 <= alpha.max():
            return alpha < 128
    return None


def _is_binary(im: Image.Image) -> tuple[bool, np.ndarray]:
    grey = np.asarray(im.convert("L"))
    return bool(((grey <= 16) | (grey >= 239)).mean() >= 0.98), grey


def mask_from_pair(mask_img: Image.Image, source_img: Image.Image, tolerance: int = PAINT_TOLERANCE
                   ) -> tuple[np.ndarray | None, str, dict[str, Any]]:
    """A dataset mask read against the source image it was drawn on: (mask or None, convention, stats).

    Conventions, in order: transparency (`alpha`); the source photo with the region painted white
    (`painted_diff`: MagicBrush) when the mask's non-white pixels equal the source's; a black/white image
    (`binary`). Painted: a pixel is brushed when some channel differs from the source by more than `tolerance`
    and none got darker by more than it (white paint only brightens; noise goes both ways). Brushed pixels over
    a source pixel that was already white cannot differ; those enclosed by the brushed region are filled back
    in, those on its rim are lost (nothing in the files tells them apart). None: unreadable (sizes differ for a
    painted mask, or neither convention fits); the stats say why.
    """
    alpha = _alpha_mask(mask_img)
    if alpha is not None:
        return alpha, "alpha", {}
    binary, grey = _is_binary(mask_img)
    if mask_img.size != source_img.size:
        if binary:
            return grey > 127, "binary", {}
        return None, "unreadable", {"why": f"mask {mask_img.size} vs source {source_img.size}"}
    m = np.asarray(mask_img.convert("RGB"), dtype=np.int16)
    d = m - np.asarray(source_img.convert("RGB"), dtype=np.int16)
    white = (m >= 255 - tolerance).all(axis=2)
    same = (np.abs(d) <= tolerance).all(axis=2)
    match = float(same[~white].mean()) if (~white).any() else 1.0
    stats = {"source_match": round(match, 4), "tolerance": tolerance}
    if match >= PAINT_MATCH:
        from scipy.ndimage import binary_fill_holes

        brushed = ~same & (d >= -tolerance).all(axis=2)
        hidden = binary_fill_holes(brushed) & ~brushed & white  # white paint over white photo, inside the stroke
        stats["filled"] = int(hidden.sum())
        return brushed | hidden, "painted_diff", stats
    if binary:
        return grey > 127, "binary", stats
    return None, "unreadable", {**stats, "why": "neither black/white nor the source photo with white paint"}


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
