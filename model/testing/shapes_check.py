"""Does a generated image show what a shapes-world prompt asked for? The dominant saturated colour and the class of
the shape drawn in it, against the prompt ("A small red circle on a plain background.").

Colour: shapes-world backgrounds are low-saturation pastels and the six shape colours are saturated, so the
pixels with HSV saturation above `SATURATION` and enough brightness are the shape's; each is assigned the nearest
of the six colours (RGB distance) and the most frequent one wins. Anti-aliased edges blend into the background and
lose saturation, so they barely count.

Shape: around the largest connected region of the winning colour, each pixel's coverage by that colour is
estimated (the pixel as a blend of the inpainted background and the colour), and compared with the world's own
anti-aliased renderings of each shape class (x2i.shapes.world.Shape) placed at the coverage's centroid, scaled to
its area and rotated over the world's angle range; the class with the best soft intersection over union wins. Matching against the generator
of the data, instead of hand-tuned features, keeps the checker honest at low resolution (a 64 px image has
6 px small shapes). Validated on real renders by tests/train/test_proof_parts.py and bench/bench_learning.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from x2i.shapes.world import COLORS, SHAPES, SIZES, Shape

SATURATION = 0.4  # backgrounds stay below ~0.25, shape colours are 0.67-0.88
MIN_VALUE = 60  # very dark pixels have unreliable hue
MIN_PIXELS = 6  # fewer saturated pixels than this: no shape was drawn
# Area of each shape class per radius^2 (radius: the world's half-extent), to size the templates.
AREA_PER_R2 = {"circle": math.pi, "square": (2 * 0.86) ** 2, "triangle": 3 * math.sqrt(3) / 4,
               "star": 5 * 0.45 * math.sin(math.radians(36))}
ANGLES = tuple(range(-20, 21, 5))
_PROMPT = re.compile(r"\b(" + "|".join(SIZES) + r")\s+(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")\b",
                     re.IGNORECASE)
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)


@dataclass
class Verdict:
    want_color: str
    want_shape: str
    color: str | None
    shape: str | None
    pixels: int  # pixels of the dominant colour

    @property
    def color_ok(self) -> bool:
        return self.color == self.want_color

    @property
    def shape_ok(self) -> bool:
        return self.shape == self.want_shape

    @property
    def both_ok(self) -> bool:
        return self.color_ok and self.shape_ok


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """(size, colour, shape) of the first shape phrase of a shapes-world caption."""
    m = _PROMPT.search(prompt)
    if m is None:
        raise ValueError(f"no '<size> <colour> <shape>' phrase in {prompt!r}")
    return m.group(1).lower(), m.group(2).lower(), m.group(3).lower()


def colour_map(image: Image.Image) -> np.ndarray:
    """Per pixel: the index of the nearest shape colour, or -1 for unsaturated (background) pixels."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    saturated = (hi >= MIN_VALUE) & ((hi - lo) / np.maximum(hi, 1.0) > SATURATION)
    dist = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=3)
    nearest = dist.argmin(axis=2)
    return np.where(saturated, nearest, -1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    best = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    return labels == best


def coverage_map(image: Image.Image, region: np.ndarray, color: str) -> np.ndarray:
    """How much of each pixel near `region` is the shape colour (0-1): the pixel seen as a blend of the local
    background (the image inpainted under the dilated region) and the colour, solved for the blend weight. It
    recovers anti-aliased edges and thin star arms that a saturation threshold cuts off."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    near = cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    background = cv2.inpaint(rgb, near.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32)
    direction = np.array(COLORS[color], np.float32)[None, None] - background
    alpha = ((rgb.astype(np.float32) - background) * direction).sum(axis=2) / np.maximum(
        (direction ** 2).sum(axis=2), 1.0)
    return np.where(near, np.clip(alpha, 0.0, 1.0), 0.0).astype(np.float32)


def classify_shape(alpha: np.ndarray) -> str | None:
    """The shape class whose anti-aliased rendering best matches the coverage map `alpha` (soft IoU), each class
    placed at the coverage's centroid, scaled to its area and tried over the world's rotations."""
    area = float(alpha.sum())
    if area < MIN_PIXELS:
        return None
    h, w = alpha.shape
    yy, xx = np.mgrid[0:h, 0:w]
    # Pixel centres are at +0.5 in the world's continuous coordinates.
    cx, cy = float((alpha * xx).sum() / area) + 0.5, float((alpha * yy).sum() / area) + 0.5
    best, best_iou = None, -1.0
    for kind in SHAPES:
        radius = math.sqrt(area / AREA_PER_R2[kind])
        for angle in (0.0,) if kind == "circle" else ANGLES:
            template = Shape(kind, "red", "small", cx, cy, radius, float(angle)).coverage(w, h)
            iou = np.minimum(template, alpha).sum() / max(np.maximum(template, alpha).sum(), 1e-6)
            if iou > best_iou:
                best, best_iou = kind, iou
    return best


def check(image: Image.Image, prompt: str) -> Verdict:
    _, want_color, want_shape = parse_prompt(prompt)
    cmap = colour_map(image)
    counts = np.bincount(cmap[cmap >= 0].ravel(), minlength=len(_NAMES))
    if counts.max() < MIN_PIXELS:
        return Verdict(want_color, want_shape, None, None, int(counts.max()))
    k = int(counts.argmax())
    region = largest_component(cmap == k)
    shape = classify_shape(coverage_map(image, region, _NAMES[k]))
    return Verdict(want_color, want_shape, _NAMES[k], shape, int(counts[k]))


def accuracy(verdicts: list[Verdict]) -> dict[str, float]:
    n = max(1, len(verdicts))
    return {"n": len(verdicts), "color": sum(v.color_ok for v in verdicts) / n,
            "shape": sum(v.shape_ok for v in verdicts) / n, "both": sum(v.both_ok for v in verdicts) / n}


# Edits (bench/bench_learning.py --proof edit): the changed object is judged inside the change mask only, the rest
# against the input image. The mask is grown by one pixel because a generated edge rarely lands on the exact
# rendered one.
NEUTRAL = (200, 200, 200)


def _grown(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1,) * 2, np.uint8)) > 0


def check_region(image: Image.Image, mask: np.ndarray, want_color: str, want_shape: str) -> Verdict:
    """Colour and shape of what `image` shows inside `mask`, the rest painted neutral grey."""
    rgb = np.asarray(image.convert("RGB")).copy()
    rgb[~_grown(mask)] = NEUTRAL
    return check(Image.fromarray(rgb), f"small {want_color} {want_shape}")


def colour_left(image: Image.Image, mask: np.ndarray, color: str) -> int:
    """Pixels of shape colour `color` inside `mask` (a removed shape should leave fewer than MIN_PIXELS)."""
    cmap = colour_map(image)
    return int(((cmap == _NAMES.index(color)) & _grown(mask)).sum())


def unchanged_error(output: Image.Image, source: Image.Image, mask: np.ndarray) -> float:
    """Mean absolute pixel error (0-1) between output and the edit's source outside the (grown) change mask."""
    a = np.asarray(output.convert("RGB"), np.float32)
    b = np.asarray(source.convert("RGB").resize(output.size), np.float32)
    keep = ~_grown(mask)
    return float(np.abs(a - b)[keep].mean() / 255.0) if keep.any() else 0.0


def shapes_kept(image: Image.Image, shapes: list[dict], min_share: float = 0.5) -> list[bool]:
    """Per shape the edit should leave alone: is it still there? `shapes`: the expected output's shapes in
    drawing order, dicts of x2i.shapes.world.Shape fields plus `kept` (the edit proof's meta.proof.shapes); one
    verdict per kept shape. A shape is there when at least `min_share` of its visible body (coverage above one
    half, less what later shapes cover) reads as its colour in `image`: an output that loses every shape, or
    paints one in another colour, fails; the edge pixels a codec blurs are few next to the body (a 64 px scene's
    small shapes cover ~60 pixels)."""
    cmap = colour_map(image)
    fields = ("kind", "color", "size", "cx", "cy", "radius", "angle")
    bodies = [Shape(**{k: d[k] for k in fields}).coverage(image.width, image.height) > 0.5 for d in shapes]
    out = []
    for i, d in enumerate(shapes):
        if not d.get("kept", True):
            continue
        visible = bodies[i] & ~np.logical_or.reduce([np.zeros_like(bodies[i])] + bodies[i + 1:])
        n = int(visible.sum())
        out.append(bool(n == 0 or (cmap[visible] == _NAMES.index(d["color"])).sum() >= min_share * n))
    return out
