"""The interface every image codec has, and the scaling between a codec's latents and the model's.

The pipeline and the trainer accept any object with
    encode(images) -> latents, decode(latents) -> images   (images (B, 3, H, W) in [-1, 1])
    scaling_factor, shift_factor (floats), downsample (pixels per latent pixel), latent_channels
    kind ("vae", "pixel", "pca"), fingerprint() (names latent caches), save(directory) (a loadable vae/ folder)
Model latents are `(encode(x) - shift_factor) * scaling_factor` (`to_model_latents`); OmniGen-v1 uses the SDXL VAE
(scaling 0.13025, no shift).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

SDXL_SCALING_FACTOR = 0.13025


class ImageCodec(Protocol):
    kind: str
    scaling_factor: float
    shift_factor: float
    downsample: int
    latent_channels: int

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...

    def save(self, directory: str | Path) -> Path: ...


def to_model_latents(codec: ImageCodec, images: torch.Tensor) -> torch.Tensor:
    return (codec.encode(images) - codec.shift_factor) * codec.scaling_factor


def from_model_latents(codec: ImageCodec, latents: torch.Tensor) -> torch.Tensor:
    return codec.decode(latents / codec.scaling_factor + codec.shift_factor)
