"""The output size policy as numbers (x2i.core.imageio applies it to pixels): scale so the longer side is at most
`max_side`, never up, then centre-crop each side down to a multiple of `multiple`; `FitTransform` records the
scale and crop so boxes can follow the pixels."""
from __future__ import annotations

from dataclasses import dataclass

from x2i.core.errors import ImageError


@dataclass(frozen=True)
class FitTransform:
    """How `fit` changed an image: new = (old * scale) - (crop_left, crop_top), clipped to the new size."""

    scale: float
    crop_left: int
    crop_top: int
    width: int
    height: int

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.crop_left == 0 and self.crop_top == 0

    def box(self, box_px: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Map a pixel box (x0, y0, x1, y1) of the original into the fitted image, clipped to it."""
        x0, y0, x1, y1 = (v * self.scale for v in box_px)
        x0, x1 = x0 - self.crop_left, x1 - self.crop_left
        y0, y1 = y0 - self.crop_top, y1 - self.crop_top
        clip = lambda v, hi: min(max(v, 0.0), float(hi))  # noqa: E731
        return clip(x0, self.width), clip(y0, self.height), clip(x1, self.width), clip(y1, self.height)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size an image is resampled to before the centre crop (each side rounded, at least 1 px)."""
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_size(width: int, height: int, max_side: int, multiple: int = 16) -> FitTransform:
    """The size policy as numbers: scale to max_side (never up), then centre-crop to multiples."""
    scale = min(1.0, max_side / max(width, height))
    sw, sh = scaled_size(width, height, scale)
    if min(sw, sh) < multiple:
        raise ImageError("image_too_small", f"{width}x{height} is smaller than {multiple} px after fitting")
    new_w, new_h = sw - sw % multiple, sh - sh % multiple
    return FitTransform(scale if scale != 1.0 else 1.0, (sw - new_w) // 2, (sh - new_h) // 2, new_w, new_h)


def source_box(region: tuple[int, int, int, int], t: FitTransform) -> tuple[float, float, float, float]:
    """The part of `region` that a scaled fit samples from. The scaled size was rounded (558.25 -> 558 px),
    so the far edge mapped back can overshoot the region by a fraction of a pixel, and PIL refuses a box past
    the image: clamp it (a sub-pixel change of the sampling grid, never a lost row)."""
    x0, y0, x1, y1 = region
    s = t.scale
    return (x0 + t.crop_left / s, y0 + t.crop_top / s, min(x1, x0 + (t.crop_left + t.width) / s),
            min(y1, y0 + (t.crop_top + t.height) / s))
