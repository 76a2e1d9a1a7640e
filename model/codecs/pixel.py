"""A lossless, weight-free codec for tiny CPU models: pixels folded into channels (space-to-depth).

Saved as a vae/ folder holding only pixel_codec.json: {"factor": f, "scaling_factor": s}.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

FILE = "pixel_codec.json"


class PixelCodec:
    """latent_channels = 3 * factor^2; latents are the pixels in [-1, 1] times `scaling_factor`."""

    kind = "pixel"

    def __init__(self, factor: int = 1, scaling_factor: float = 1.0):
        self.downsample = factor
        self.latent_channels = 3 * factor * factor
        self.scaling_factor = scaling_factor
        self.shift_factor = 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.downsample) if self.downsample > 1 else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.downsample) if self.downsample > 1 else latents

    def to(self, device=None, dtype=None) -> PixelCodec:
        return self

    def fingerprint(self) -> str:
        return f"pixel-f{self.downsample}-s{self.scaling_factor:g}"

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / FILE).write_text(json.dumps({"factor": self.downsample, "scaling_factor": self.scaling_factor}))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PixelCodec:
        return cls(**json.loads((Path(directory) / FILE).read_text()))
