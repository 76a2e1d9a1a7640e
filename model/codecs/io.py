"""The one codec loader: the kind is read off the folder's files, never passed around.

    codec.json + codec.safetensors                        a fitted patch-PCA codec (patch_pca.py)
    pixel_codec.json                                      the weight-free pixel codec (pixel.py)
    config.json + diffusion_pytorch_model.safetensors     a diffusers AutoencoderKL (vae.py)

Every codec saves itself in the form this reads back (`codec.save(directory)`).
"""
from __future__ import annotations

from pathlib import Path

from .base import ImageCodec


def codec_kind(directory: str | Path) -> str:
    """"pca", "pixel" or "vae" for a codec folder (a folder with neither marker is taken for a diffusers VAE,
    whose loader names the files it misses)."""
    from . import patch_pca, pixel

    directory = Path(directory)
    if (directory / patch_pca.SPEC).is_file():
        return "pca"
    if (directory / pixel.FILE).is_file():
        return "pixel"
    return "vae"


def load_codec(directory: str | Path) -> ImageCodec:
    """The codec saved in `directory` (a checkpoint's vae/ folder, or a run's codec/ folder)."""
    kind = codec_kind(directory)
    if kind == "pca":
        from .patch_pca import PatchPCACodec

        return PatchPCACodec.load(directory)
    if kind == "pixel":
        from .pixel import PixelCodec

        return PixelCodec.load(directory)
    from .vae import DiffusersVAE

    return DiffusersVAE.load(directory)
