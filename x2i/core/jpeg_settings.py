"""How output JPEGs are written: quality and chroma subsampling (recipe `output.jpeg_quality`,
`output.jpeg_subsampling`), one value handed from the recipe to every `encode` / `fit`.

Chroma subsampling: "auto" keeps full-resolution colour (4:4:4) from quality 90 up, where the point of the
quality is detail (colour edges, small text, thin masks tinted on photos), and halves it both ways (4:2:0,
libjpeg's default) below. "4:2:0" at any quality is what img2dataset (OpenCV's default) and most web JPEGs
write: at quality 95, files ~20% smaller (76 -> 61 KB on bench/e2e_bench.py's photos fitted to 512 px) and an
encode 45% cheaper (0.65 -> 0.36 ms), for colour detail the eye barely sees; "4:4:4" at any quality keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Subsampling = Literal["auto", "4:4:4", "4:2:0"]


@dataclass(frozen=True)
class JpegSettings:
    quality: int = 95
    subsampling: Subsampling = "auto"

    def __post_init__(self):
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.subsampling not in ("auto", "4:4:4", "4:2:0"):
            raise ValueError(f"JPEG subsampling must be auto, 4:4:4 or 4:2:0, got {self.subsampling!r}")

    @property
    def full_chroma(self) -> bool:
        """Whether colour is kept at full resolution (4:4:4) rather than halved both ways (4:2:0)."""
        return self.subsampling == "4:4:4" or (self.subsampling == "auto" and self.quality >= 90)


def jpeg_settings(quality: int | JpegSettings) -> JpegSettings:
    """A bare quality (the settings' "auto" subsampling) or the settings themselves."""
    return quality if isinstance(quality, JpegSettings) else JpegSettings(int(quality))
